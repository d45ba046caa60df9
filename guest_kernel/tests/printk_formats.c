/*
 * printk_formats.c - "lgemu.test=printk": the guest's vsnprintf checked against expected
 * strings, inside the guest (the image has no libc to compare with and the build host has
 * no 32-bit one).  Any mismatch panics with the case number; success prints one line.
 */
#include "kernel.h"
#include "tests.h"

static unsigned int failures;

static void check(unsigned int n, const char *want, const char *fmt, ...)
{
	char got[64];
	va_list ap;
	int len;

	va_start(ap, fmt);
	len = vsnprintf(got, sizeof(got), fmt, ap);
	va_end(ap);
	if (strcmp(got, want) || len != (int)strlen(want)) {
		printk("printk: case %u: got \"%s\" (%d), want \"%s\"\n", n, got, len, want);
		failures++;
	}
}

void test_printk_formats(void)
{
	char small[8];

	check(1, "42 -42 4294967254", "%d %i %u", 42, -42, -42);
	check(2, "ff FF 0xff 377", "%x %X %#x %o", 255, 255, 255, 255);
	check(3, "c0100000 0010a000", "%p %08lx", (void *)0xC0100000, 0x10a000UL);
	check(4, "[   7] [7   ] [007]", "[%4d] [%-4d] [%03d]", 7, 7, 7);
	check(5, "[  -7] [-007]", "[%4d] [%04d]", -7, -7);
	check(6, "123456789abcdef0", "%llx", 0x123456789abcdef0ULL);
	check(7, "18446744073709551615", "%llu", ~0ULL);
	check(8, "-9223372036854775808", "%lld", (s64)(1ULL << 63));
	check(9, "1099511627776", "%llu", 1ULL << 40);
	check(10, "x A %", "%c %c %%", 'x', 'A');
	check(11, "[abc] [  abc] [abc  ] [ab]", "[%s] [%5s] [%-5s] [%.2s]", "abc", "abc", "abc", "abc");
	check(12, "[ab] [(null)]", "[%.*s] [%s]", 2, "abcdef", (char *)NULL);
	check(13, "0 0", "%u %llx", 0, 0ULL);
	check(14, "-2147483648 2147483647", "%d %d", (int)0x80000000, 0x7fffffff);
	check(15, "255 65535 -1", "%hhu %hu %hhd", 0x1ff, 0x1ffff, 0xff);
	check(16, "4096 [%q]", "%zu [%q]", (size_t)4096);
	if (snprintf(small, sizeof(small), "%s", "truncated") != 9 || strcmp(small, "truncat"))
		printk("printk: truncation: got \"%s\"\n", small), failures++;
	if (failures)
		panic("printk: %u format case(s) failed", failures);
	printk("printk: all format cases ok\n");
}
