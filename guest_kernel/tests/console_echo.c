/*
 * console_echo.c - "lgemu.test=console_echo": console input through the virtio console.
 *
 * Brings up the lguest bus (the console switches to its vring), then polls console input the
 * way hvc did - once per clock tick, halting in between - and prints every input line back as
 * "echo: <line>".  Lines end in "\n", "\r" or "\r\n"; control bytes are shown as \xNN, and a
 * line longer than the buffer is echoed in pieces.  It ends, and the guest powers down:
 *   - on a line "quit":                         "console_echo: quit after N lines"
 *   - when the Host returns an empty input
 *     buffer (its end of input):                "console_echo: end of input after N lines"
 *   - after console.idle=TICKS (default 500,
 *     5 s of guest time) without input:         "FAIL console_echo: no input for T ticks ..."
 * An unterminated last line is echoed before the end of input or the idle timeout.
 */
#include "kernel.h"
#include "tests.h"
#include "devtest.h"
#include "../drivers/irq.h"
#include "../drivers/lguest_bus.h"
#include "../drivers/virtio_console.h"

#define LINE_MAX	160
#define DEFAULT_IDLE	500

static char line[LINE_MAX];
static unsigned int line_len, lines;

static void echo_line(void)
{
	char shown[4 * LINE_MAX + 1];
	unsigned int i, n = 0;

	for (i = 0; i < line_len; i++) {
		u8 c = line[i];

		if (c < 0x20 || c == 0x7F)
			n += snprintf(shown + n, sizeof(shown) - n, "\\x%02x", c);
		else
			shown[n++] = c;
	}
	shown[n] = '\0';
	printk("echo: %s\n", shown);
	lines++;
	line_len = 0;
}

/* Feed input bytes; true when a "quit" line was seen. */
static bool feed(const char *buf, int n, bool *after_cr)
{
	int i;

	for (i = 0; i < n; i++) {
		char c = buf[i];

		if (c == '\n' && *after_cr) {	/* the "\n" of "\r\n" */
			*after_cr = false;
			continue;
		}
		*after_cr = c == '\r';
		if (c == '\r' || c == '\n') {
			bool quit = line_len == 4 && !memcmp(line, "quit", 4);

			if (quit)
				return true;
			echo_line();
			continue;
		}
		if (line_len == LINE_MAX)
			echo_line();
		line[line_len++] = c;
	}
	return false;
}

void test_console_echo(void)
{
	u32 idle = cmdline_u32("console.idle", DEFAULT_IDLE);
	bool after_cr = false;
	u32 last_input;
	char buf[64];

	lguest_devices_init();
	if (!virtcons_ready()) {
		printk("FAIL console_echo: no virtio console\n");
		return;
	}
	printk("console_echo: ready (idle limit %u ticks)\n", idle);
	last_input = jiffies;
	for (;;) {
		int n = virtcons_get_chars(buf, sizeof(buf));

		if (n > 0) {
			if (feed(buf, n, &after_cr)) {
				printk("console_echo: quit after %u lines\n", lines);
				return;
			}
			last_input = jiffies;
			continue;
		}
		if (virtcons_input_ended()) {
			if (line_len)
				echo_line();
			printk("console_echo: end of input after %u lines\n", lines);
			return;
		}
		if (time_reached(last_input + idle)) {
			if (line_len)
				echo_line();
			printk("FAIL console_echo: no input for %u ticks after %u lines\n", idle, lines);
			return;
		}
		sleep_ticks(1);	/* hvc's poll interval: the input queue never interrupts */
	}
}
