/*
 * tests.h - guest programs selected with "lgemu.test=NAME" (see main.c's table).
 *
 * A program runs after the banner, on our own page tables, with the early console.  It
 * returns on success (the guest then powers down) and calls panic() on failure, so the
 * Launcher's exit status and "CRASH: ..." line carry the verdict.
 */
#ifndef GUEST_TESTS_H
#define GUEST_TESTS_H

void test_async_ring(void);
unsigned int async_pending_slots(void);	/* async_ring.c, also for async_batch */
void test_printk_formats(void);

/* The conformance suite (ktest.h): each prints PASS/FAIL lines per case. */
void test_segments(void);
void test_traps(void);
void test_usermode(void);
void test_timer(void);
void test_paging(void);
void test_ioports(void);
void test_cpuid(void);
void test_async_batch(void);
void test_initcalls(void);	/* an initcall table, for lgemu --timeline */

/* Device programs over the lguest bus (drivers/): console input, disks, network. */
void test_console_echo(void);
void test_blk_read(void);
void test_blk_write(void);
void test_net_echo(void);
void test_net_ping(void);
void test_net_send(void);

#endif
