/*
 * cmdline.c - reading the command line startup_32 copied into boot_command_line.
 *
 * The Launcher joins the kernel arguments with a space after each one (ABI §1.2), so the line
 * usually ends in one space that nobody typed.  Words are separated by spaces; there is no
 * quoting.
 */
#include "kernel.h"
#include "bootparam.h"

char boot_command_line[COMMAND_LINE_SIZE] __attribute__((aligned(4)));

/* Walk the words: returns the next word at or after *pos and its length, 0 at the end. */
static size_t next_word(const char **pos, const char **word)
{
	const char *p = *pos;
	size_t n = 0;

	while (*p == ' ')
		p++;
	*word = p;
	while (p[n] && p[n] != ' ')
		n++;
	*pos = p + n;
	return n;
}

/* Is word one of the words, exactly ("crash" matches "crash", not "crashkernel=64M")? */
bool cmdline_has_word(const char *word)
{
	const char *pos = boot_command_line, *w;
	size_t len = strlen(word), n;

	while ((n = next_word(&pos, &w)) != 0)
		if (n == len && !memcmp(w, word, n))
			return true;
	return false;
}

/* Find "key=value"; the value is not NUL-terminated, hence the length.  The last one wins,
 * as a later argument overrides an earlier one in Linux. */
bool cmdline_get(const char *key, const char **value, size_t *len)
{
	const char *pos = boot_command_line, *w;
	size_t klen = strlen(key), n;
	bool found = false;

	while ((n = next_word(&pos, &w)) != 0) {
		if (n > klen && w[klen] == '=' && !memcmp(w, key, klen)) {
			*value = w + klen + 1;
			*len = n - klen - 1;
			found = true;
		}
	}
	return found;
}

/* The length of the line as the user gave it: without the one space the Launcher added. */
size_t cmdline_shown_len(void)
{
	size_t n = strlen(boot_command_line);

	if (n > 0 && boot_command_line[n - 1] == ' ')
		n--;
	return n;
}
