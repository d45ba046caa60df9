/*
 * main.c - start_kernel: the boot banner, our page tables, then one guest program.
 *
 * The banner is compared byte for byte by tests; change it only together with them.
 *
 * Which program runs is chosen on the command line with "lgemu.test=NAME"; without it the
 * default, "banner", runs and does nothing beyond the banner.  A program returning means
 * success: we power down ("Power down", Launcher exit 0).  The word "crash" on the command
 * line ends in LHCALL_CRASH("guest requested crash") instead (Launcher exit 1), so the
 * crash path can be tested without a failing program.  New programs go in tests/ and get a
 * line in the table below.
 */
#include "kernel.h"
#include "bootparam.h"
#include "tests/tests.h"

u8 boot_params[BOOT_PARAMS_SIZE] __attribute__((aligned(4)));	/* startup_32's copy */

static void program_banner(void)
{
}

static const struct guest_program {
	const char *name;
	void (*run)(void);
} programs[] = {
	{ "banner", program_banner },
	{ "async_ring", test_async_ring },
	{ "printk", test_printk_formats },
	{ "segments", test_segments },
	{ "traps", test_traps },
	{ "usermode", test_usermode },
	{ "timer", test_timer },
	{ "paging", test_paging },
	{ "ioports", test_ioports },
	{ "cpuid", test_cpuid },
	{ "async_batch", test_async_batch },
	{ "initcalls", test_initcalls },
	{ "console_echo", test_console_echo },
	{ "blk_read", test_blk_read },
	{ "blk_write", test_blk_write },
	{ "net_echo", test_net_echo },
	{ "net_ping", test_net_ping },
	{ "net_send", test_net_send },
};

static const struct guest_program *select_program(void)
{
	const char *name;
	size_t len, i;

	if (!cmdline_get("lgemu.test", &name, &len))
		return &programs[0];
	for (i = 0; i < ARRAY_SIZE(programs); i++)
		if (strlen(programs[i].name) == len && !memcmp(programs[i].name, name, len))
			return &programs[i];
	panic("unknown lgemu.test=%.*s", (int)len, name);
}

void start_kernel(void)
{
	const struct guest_program *program;

	printk("lgemu guest: Linux 2.6.24 lguest ABI, running in ring %u\n", current_cpl());

	memory_setup();
	printk("lgemu guest: RAM %llu MiB (e820 0: 0x%llx-0x%llx type %u)\n",
	       ram_size >> 20, ram_start, ram_start + ram_size, ram_type);
	printk("lgemu guest: command line: \"%.*s\"\n",
	       (int)cmdline_shown_len(), boot_command_line);

	paging_init();
	printk("lgemu guest: page tables switched (pgdir 0x%lx)\n", __pa(swapper_pg_dir));

	program = select_program();
	program->run();

	if (cmdline_has_word("crash")) {
		printk("lgemu guest: crash requested\n");
		lguest_crash("guest requested crash");
	}
	printk("lgemu guest: power down\n");
	lguest_power_off();
}
