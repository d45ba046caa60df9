/*
 * console.c - the console writer, behaving like 2.6.24's hvc_console_print().
 *
 * It sits between printk and a put_chars back end (early_put_chars until a virtio console
 * exists).  Its chunking is guest-visible - every chunk is one NOTIFY - so it follows hvc:
 *   - each "\n" becomes "\r\n";
 *   - bytes collect in a 16-byte buffer that is handed to put_chars when it is full or the
 *     text has run out; put_chars may take fewer bytes, the rest move to the front;
 *   - a call never leaves bytes behind, and printk calls us once per log line, so no chunk
 *     holds the end of one line and the start of the next.
 * As in hvc, the "\r" of a "\r\n" pair can be the 16th byte of a full chunk, in which case
 * the "\n" starts the next chunk (a line of 15, 31, ... characters ends "...\r" + "\n").
 */
#include "kernel.h"

#define HVC_CHUNK	16

static put_chars_fn put_chars;

void console_register(put_chars_fn fn)
{
	put_chars = fn;
}

void console_write(const char *text, unsigned int count)
{
	char chunk[HVC_CHUNK];
	unsigned int used = 0;		/* bytes waiting in chunk[] */
	bool cr_sent = false;		/* the "\r" for text[0] == '\n' is already in chunk[] */

	if (!put_chars)
		return;
	while (count > 0 || used > 0) {
		if (count > 0 && used < HVC_CHUNK) {
			if (*text == '\n' && !cr_sent) {
				chunk[used++] = '\r';
				cr_sent = true;
			} else {
				chunk[used++] = *text++;
				count--;
				cr_sent = false;
			}
			continue;
		}
		int taken = put_chars(0, chunk, used);

		if (taken <= 0) {
			/* hvc throws the bytes away on error; also do so for 0 instead of spinning. */
			used = 0;
		} else {
			unsigned int done = MIN((unsigned int)taken, used);

			used -= done;
			memmove(chunk, chunk + done, used);
		}
	}
}
