/*
 * printk.c - formatted output, a log buffer, and panic.
 *
 * vsnprintf understands what a small kernel needs:
 *   flags "-", "0", "#";  width and precision (digits or "*");  sizes "hh", "h", "l", "ll",
 *   "z";  conversions d i u x X o c s p %.
 * "%p" prints like 2.6.24 did: 8 zero-padded hex digits, no "0x".
 * There is no libgcc, so 64-bit values are converted without 64-bit "/": hex and octal by
 * shifting, decimal through div64_u32(), two 32-bit divl instructions.
 */
#include "kernel.h"
#include "hcall.h"

/* *n /= base, returning the remainder: the high word first, then (remainder:low) / base,
 * which cannot overflow divl because the remainder is smaller than base. */
u32 div64_u32(u64 *n, u32 base)
{
	u32 high = (u32)(*n >> 32), low = (u32)*n, rem;
	u32 qhigh = high / base;

	high %= base;
	__asm__("divl %4" : "=a"(low), "=d"(rem) : "a"(low), "d"(high), "rm"(base));
	*n = ((u64)qhigh << 32) | low;
	return rem;
}

struct out {
	char *buf;
	size_t size;
	size_t len;	/* what would have been written: C99 vsnprintf semantics */
};

static void put(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void pad(struct out *o, char c, int n)
{
	while (n-- > 0)
		put(o, c);
}

enum { F_LEFT = 1, F_ZERO = 2, F_ALT = 4, F_UPPER = 8 };

static void number(struct out *o, u64 v, unsigned int base, bool negative,
		   int flags, int width, int precision)
{
	const char *digits = (flags & F_UPPER) ? "0123456789ABCDEF" : "0123456789abcdef";
	char tmp[24];		/* 22 octal digits of 2^64 - 1 */
	int n = 0, prefix_len = 0;
	const char *prefix = "";

	if (v == 0 && precision != 0)
		tmp[n++] = '0';
	while (v) {
		if (base == 10)
			tmp[n++] = digits[div64_u32(&v, 10)];
		else if (base == 16)
			tmp[n++] = digits[v & 15], v >>= 4;
		else
			tmp[n++] = digits[v & 7], v >>= 3;
	}
	if (negative)
		prefix = "-";
	else if ((flags & F_ALT) && base == 16)
		prefix = (flags & F_UPPER) ? "0X" : "0x";
	else if ((flags & F_ALT) && base == 8 && tmp[n - 1] != '0')
		prefix = "0";
	prefix_len = strlen(prefix);

	int zeros = precision > n ? precision - n : 0;
	int total = prefix_len + zeros + n;

	if ((flags & F_ZERO) && !(flags & F_LEFT) && precision < 0 && width > total) {
		zeros += width - total;
		total = width;
	}
	if (!(flags & F_LEFT))
		pad(o, ' ', width - total);
	while (*prefix)
		put(o, *prefix++);
	pad(o, '0', zeros);
	while (n > 0)
		put(o, tmp[--n]);
	if (flags & F_LEFT)
		pad(o, ' ', width - total);
}

static void string(struct out *o, const char *s, int flags, int width, int precision)
{
	int n;

	if (!s)
		s = "(null)";
	n = strnlen(s, precision < 0 ? (size_t)-1 : (size_t)precision);
	if (!(flags & F_LEFT))
		pad(o, ' ', width - n);
	for (int i = 0; i < n; i++)
		put(o, s[i]);
	if (flags & F_LEFT)
		pad(o, ' ', width - n);
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { buf, size, 0 };

	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(&o, *fmt);
			continue;
		}
		int flags = 0, width = -1, precision = -1, size_l = 0;

		for (;; fmt++) {
			if (fmt[1] == '-')
				flags |= F_LEFT;
			else if (fmt[1] == '0')
				flags |= F_ZERO;
			else if (fmt[1] == '#')
				flags |= F_ALT;
			else
				break;
		}
		fmt++;
		if (*fmt == '*') {
			width = va_arg(ap, int);
			if (width < 0) {
				flags |= F_LEFT;
				width = -width;
			}
			fmt++;
		} else {
			while (*fmt >= '0' && *fmt <= '9')
				width = (width < 0 ? 0 : width * 10) + (*fmt++ - '0');
		}
		if (*fmt == '.') {
			fmt++;
			precision = 0;
			if (*fmt == '*') {
				precision = va_arg(ap, int);
				fmt++;
			} else {
				while (*fmt >= '0' && *fmt <= '9')
					precision = precision * 10 + (*fmt++ - '0');
			}
		}
		/* size_l: -2 hh, -1 h, 0 int, 1 long (32-bit here), 2 long long */
		if (*fmt == 'h') {
			size_l = -1;
			if (*++fmt == 'h') {
				size_l = -2;
				fmt++;
			}
		} else if (*fmt == 'l') {
			size_l = 1;
			if (*++fmt == 'l') {
				size_l = 2;
				fmt++;
			}
		} else if (*fmt == 'z') {
			size_l = 1;
			fmt++;
		}

		unsigned int base = 10;
		bool is_signed = false;

		switch (*fmt) {
		case 'c':
			if (!(flags & F_LEFT))
				pad(&o, ' ', width - 1);
			put(&o, (char)va_arg(ap, int));
			if (flags & F_LEFT)
				pad(&o, ' ', width - 1);
			continue;
		case 's':
			string(&o, va_arg(ap, const char *), flags, width, precision);
			continue;
		case 'p':
			if (width < 0) {
				width = 2 * sizeof(void *);
				flags |= F_ZERO;
			}
			number(&o, (unsigned long)va_arg(ap, void *), 16, false, flags, width, precision);
			continue;
		case '%':
			put(&o, '%');
			continue;
		case 'd':
		case 'i':
			is_signed = true;
			break;
		case 'u':
			break;
		case 'X':
			flags |= F_UPPER;
			/* fall through */
		case 'x':
			base = 16;
			break;
		case 'o':
			base = 8;
			break;
		default:
			/* Unknown conversion: print it verbatim so the mistake is visible. */
			put(&o, '%');
			if (!*fmt)
				goto done;
			put(&o, *fmt);
			continue;
		}

		u64 v;
		bool negative = false;

		if (size_l == 2) {
			v = va_arg(ap, u64);
			if (is_signed && (s64)v < 0) {
				negative = true;
				v = -v;		/* modulo 2^64: right even for the most negative value */
			}
		} else {
			u32 w = va_arg(ap, u32);

			if (size_l == -1)
				w = is_signed ? (u32)(s32)(s16)w : (u16)w;
			else if (size_l == -2)
				w = is_signed ? (u32)(s32)(s8)w : (u8)w;
			if (is_signed && (s32)w < 0) {
				negative = true;
				w = -w;
			}
			v = w;
		}
		number(&o, v, base, negative, flags, width, precision);
	}
done:
	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return (int)o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

/*
 * The log: everything printk formats is appended to log_buf (a ring, for a debugger or a
 * post-mortem look from the Host) and written to the console one line at a time, as
 * 2.6.24's console code does.  A printk without a trailing newline is written as it is; the
 * line continues with the next printk.  Messages are at most PRINTK_MAX bytes.
 */
#define PRINTK_MAX	1024
#define LOG_BUF_LEN	16384

char log_buf[LOG_BUF_LEN];
u32 log_end;			/* total bytes ever logged; log_buf[log_end % LOG_BUF_LEN] is next */

static void log_store(const char *s, size_t n)
{
	while (n--)
		log_buf[log_end++ % LOG_BUF_LEN] = *s++;
}

int printk(const char *fmt, ...)
{
	static char text[PRINTK_MAX];
	va_list ap;
	size_t len, start;
	unsigned long flags = irq_save();

	va_start(ap, fmt);
	len = vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (len >= sizeof(text))
		len = sizeof(text) - 1;
	log_store(text, len);
	for (start = 0; start < len;) {
		size_t end = start;

		while (end < len && text[end] != '\n')
			end++;
		if (end < len)
			end++;		/* the newline belongs to its line */
		console_write(text + start, end - start);
		start = end;
	}
	irq_restore(flags);
	return len;
}

/*
 * panic - print the reason and ask the Host to stop us with it: LHCALL_CRASH (ABI §9.2), which
 * the Launcher reports as "CRASH: <message>".  The Host reads the message physically, so it
 * is formatted into a static buffer, never into a stack it might not see as contiguous.
 */
void panic(const char *fmt, ...)
{
	static char msg[128];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	printk("Kernel panic - not syncing: %s\n", msg);
	lguest_crash(msg);
}
