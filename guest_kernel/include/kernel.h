/* kernel.h - the little runtime every guest source file uses. */
#ifndef KERNEL_H
#define KERNEL_H

#include "types.h"
#include "lguest_abi.h"

#define PAGE_SHIFT	12
#define PAGE_SIZE	(1UL << PAGE_SHIFT)
#define PAGE_MASK	(~(PAGE_SIZE - 1))
#define PAGE_ALIGN(x)	(((x) + PAGE_SIZE - 1) & PAGE_MASK)

/* Page-table bits (ABI §7). */
#define _PAGE_PRESENT	0x001
#define _PAGE_RW	0x002
#define _PAGE_USER	0x004
#define _PAGE_ACCESSED	0x020
#define _PAGE_DIRTY	0x040
/* A PDE may carry only P|RW|US|A|D (ABI §7.1: anything else is "bad page directory entry"). */
#define _PAGE_TABLE	(_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)
/* Kernel pages: no US, no PWT, no PSE (ABI §7.1 step 4); A and D preset as Linux does. */
#define _PAGE_KERNEL	(_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY)

/* Kernel virtual <-> guest physical: a fixed offset, as in Linux's lowmem. */
#define __pa(x)		((unsigned long)(x) - PAGE_OFFSET)
#define __va(x)		((void *)((unsigned long)(x) + PAGE_OFFSET))

#define STR_(x)		#x
#define STR(x)		STR_(x)
#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))
#define MIN(a, b)	((a) < (b) ? (a) : (b))

/* The compiler must not cache or reorder memory the Host reads or writes behind its back. */
#define barrier()	__asm__ __volatile__("" ::: "memory")
#define READ_ONCE(x)	(*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))

#define __noreturn	__attribute__((noreturn))
#define __printf(a, b)	__attribute__((format(printf, a, b)))

/* Linker-script symbols (kernel virtual addresses). */
extern char _text[], _etext[], _edata[], __bss_start[], __bss_stop[], _end[];

/* string.c */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);

/* printk.c */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __printf(3, 4);
int printk(const char *fmt, ...) __printf(1, 2);
void panic(const char *fmt, ...) __printf(1, 2) __noreturn;
u32 div64_u32(u64 *n, u32 base);

/* console.c: the hvc-style console writer and its back end (early_put_chars for now). */
typedef int (*put_chars_fn)(u32 vtermno, const char *buf, int count);
void console_register(put_chars_fn fn);
void console_write(const char *text, unsigned int count);

/* lguest.c */
int early_put_chars(u32 vtermno, const char *buf, int count);
void lguest_init(void) __noreturn;
void lguest_power_off(void) __noreturn;
void lguest_crash(const char *msg) __noreturn;

/* cmdline.c: the copy of the command line startup_32 made. */
bool cmdline_has_word(const char *word);
bool cmdline_get(const char *key, const char **value, size_t *len);
size_t cmdline_shown_len(void);

/* mm.c */
struct e820entry;
void memory_setup(void);
void paging_init(void);
void *early_alloc_page(void);
extern u32 swapper_pg_dir[1024];
extern u64 ram_start, ram_size;
extern u32 ram_type;

/* main.c */
void start_kernel(void) __noreturn;

static inline unsigned int current_cpl(void)
{
	u16 cs;

	__asm__ __volatile__("mov %%cs, %0" : "=r"(cs));
	return cs & 3;
}

#endif /* KERNEL_H */
