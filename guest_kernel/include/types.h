/* types.h - fixed-size types for a freestanding i386 build (no libc headers at all). */
#ifndef TYPES_H
#define TYPES_H

typedef unsigned char		u8;
typedef unsigned short		u16;
typedef unsigned int		u32;
typedef unsigned long long	u64;
typedef signed char		s8;
typedef short			s16;
typedef int			s32;
typedef long long		s64;
typedef __SIZE_TYPE__		size_t;
typedef __PTRDIFF_TYPE__	ptrdiff_t;
typedef _Bool			bool;
#define true	1
#define false	0
#define NULL	((void *)0)

_Static_assert(sizeof(long) == 4 && sizeof(void *) == 4, "this is an i386 (ILP32) kernel");
_Static_assert(sizeof(u64) == 8, "u64");

typedef __builtin_va_list va_list;
#define va_start(ap, last)	__builtin_va_start(ap, last)
#define va_arg(ap, type)	__builtin_va_arg(ap, type)
#define va_end(ap)		__builtin_va_end(ap)

#define offsetof(t, m)		__builtin_offsetof(t, m)

#endif /* TYPES_H */
