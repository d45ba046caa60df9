/*
 * initcalls.c - "lgemu.test=initcalls": an initcall table, run the way 2.6.24's
 * do_initcalls runs its own.
 *
 * The linker gathers every pointer put in section .initcall.init between __initcall_start
 * and __initcall_end (lgemu-guest.lds); the loop below calls them in that order and reports
 * a nonzero return.  lgemu's --timeline finds these calls from the table and the symbols
 * alone, so the work each one does is fixed and distinct: the test can tell them apart by
 * their durations, and the third returns -ENODEV as a failing driver would.
 */
#include "kernel.h"
#include "tests.h"

typedef int (*initcall_t)(void);
extern initcall_t __initcall_start[], __initcall_end[];

#define initcall(fn) \
	static initcall_t __initcall_##fn __attribute__((used, section(".initcall.init"))) = fn

#define ENODEV 19

static volatile u32 sink;

static void __attribute__((noinline)) spin(u32 rounds)
{
	u32 i;

	for (i = 0; i < rounds; i++)
		sink += i;
}

static int __attribute__((noinline)) quick_setup_init(void)
{
	spin(1000);
	return 0;
}

static int __attribute__((noinline)) slow_driver_init(void)
{
	spin(20000);
	return 0;
}

static int __attribute__((noinline)) missing_device_init(void)
{
	spin(10);
	return -ENODEV;
}

initcall(quick_setup_init);
initcall(slow_driver_init);
initcall(missing_device_init);

void test_initcalls(void)
{
	initcall_t *call;

	for (call = __initcall_start; call < __initcall_end; call++) {
		int result = (*call)();

		if (result)
			printk("lgemu guest: initcall %u returned %d\n",
			       (unsigned int)(call - __initcall_start), result);
	}
}
