/*
 * timer.c - "lgemu.test=timer": the clock event, IRQ 0 and the rules for injecting it
 * (ABI §5.3, §8, §9.1).
 *
 * IRQ 0 arrives through vector 0x20 once its bit in blocked_interrupts is clear, and only
 * while irq_enabled is 0x200 and EIP is outside [noirq_start, noirq_end).  The Host writes
 * lguest_data.time whenever it delivers, so the tick handler reads the delivery time there.
 * Deltas are measured tick to tick: the handler of one tick arms the next, so the request
 * time is the previous delivery time plus the handful of instructions before the hypercall.
 *
 * Bounds assume lgemu's default virtual clock, 10 ns per instruction: a loop of N
 * instructions takes N * 10 ns of guest time, and "soon" means within SOON_TSC time-stamp
 * counts (one count per virtual CPU cycle, i.e. per instruction).  Output includes the
 * measured times, so two runs printing the same bytes shows virtual time is deterministic.
 */
#include "ktest.h"
#include "tests.h"

#define NS_PER_INSN	10		/* lgemu's default --insn-ns */
#define SLACK_NS	20000		/* handler entry to SET_CLOCKEVENT, generously */
#define SOON_TSC	20000		/* "right after": within 20k instructions (200 us) */
#define MAX_TICKS	16

static volatile u32 ticks;
static u64 tick_time[MAX_TICKS];
static u32 tick_eip[MAX_TICKS], tick_eflags[MAX_TICKS], tick_irq[MAX_TICKS];
static u64 tick_tsc[MAX_TICKS];

/* What the handler does besides recording (set before arming, read by the handler). */
static const u32 *chain;		/* arm chain[k + 1] from tick k */
static u32 chain_len;
static bool block_in_handler;		/* mask IRQ 0 from the handler, as a level chip does */

static void tick(struct trap_frame *f)
{
	u32 k = ticks;

	if (k < MAX_TICKS) {
		tick_time[k] = guest_time_ns();
		tick_tsc[k] = rdtsc();
		tick_eip[k] = f->eip;
		tick_eflags[k] = f->eflags;
		tick_irq[k] = last_trap.irq_enabled;
	}
	ticks = k + 1;
	if (block_in_handler)
		set_blocked(READ_ONCE(lguest_data.blocked_interrupts) | 1);
	if (chain && k + 1 < chain_len)
		hcall(LHCALL_SET_CLOCKEVENT, chain[k + 1], 0, 0);
}

static void reset(void)
{
	hcall(LHCALL_SET_CLOCKEVENT, 0, 0, 0);
	set_irq_enabled(0);
	set_blocked(0);
	chain = NULL;
	chain_len = 0;
	block_in_handler = false;
	ticks = 0;
}

/* The 2.6.24 idle loop: interrupts off, check, LHCALL_HALT; the Host wakes us with
 * irq_enabled = 0x200 and delivers. */
static void wait_ticks(u32 n)
{
	for (;;) {
		set_irq_enabled(0);
		if (ticks >= n)
			break;
		hcall(LHCALL_HALT, 0, 0, 0);
	}
}

/* Spin (interrupts as they are) until ticks reaches n or `limit` loop iterations pass. */
static bool spin_for_ticks(u32 n, u32 limit)
{
	while (limit--)
		if (ticks >= n)
			return true;
	return ticks >= n;
}

static void test_deltas(void)
{
	static const u32 deltas[] = { 100, 100, 1000, 10000, 100000, 1000000, 3000000, 250 };
	u32 k, bad = 0;
	char detail[96] = "";

	reset();
	chain = deltas;
	chain_len = ARRAY_SIZE(deltas);
	hcall(LHCALL_SET_CLOCKEVENT, deltas[0], 0, 0);
	wait_ticks(chain_len);
	hcall(LHCALL_SET_CLOCKEVENT, 0, 0, 0);

	for (k = 1; k < chain_len; k++) {
		u64 d = tick_time[k] - tick_time[k - 1];

		printk("timer: tick %u came %llu ns after tick %u (asked %u ns)\n", k, d, k - 1,
		       deltas[k]);
		if (d < deltas[k] || d > deltas[k] + SLACK_NS) {
			if (!bad++)
				snprintf(detail, sizeof(detail), "tick %u after %llu ns, asked %u",
					 k, d, deltas[k]);
		}
	}
	check(ticks == chain_len, "timer.ticks_arrive", "%u ticks of %u", ticks, chain_len);
	check(!bad, "timer.delta_bounds", "%u out of [delta, delta + %u ns]; first: %s", bad,
	      SLACK_NS, detail);

	bad = 0;
	for (k = 0; k < chain_len; k++)
		if (tick_irq[k] != 0 || !(tick_eflags[k] & X86_EFLAGS_IF) ||
		    tick_eip[k] < (u32)_text || tick_eip[k] >= (u32)_end)
			bad++;
	check(!bad, "timer.interrupt_gate_frame",
	      "%u ticks with irq_enabled != 0 in the handler, IF clear in the frame or a bad EIP",
	      bad);
	for (k = 1, bad = 0; k < chain_len; k++)
		if (tick_time[k] <= tick_time[k - 1] || tick_tsc[k] <= tick_tsc[k - 1])
			bad++;
	check(!bad, "timer.time_monotonic", "%u ticks not after the one before", bad);
}

/* HALT with irq_enabled 0: the Host sets it to 0x200, delivers with IF in the frame, at the
 * instruction after the hypercall; lguest_iret then leaves it on. */
static void test_halt(void)
{
	u32 after_halt, irq_after;

	reset();
	hcall(LHCALL_SET_CLOCKEVENT, 50000, 0, 0);
	__asm__ __volatile__("movl $1f, %0\n\tint $" STR(LGUEST_TRAP_ENTRY) "\n1:"
			     : "=&m"(after_halt) : "a"(LHCALL_HALT), "d"(0), "b"(0), "c"(0)
			     : "memory");
	irq_after = READ_ONCE(lguest_data.irq_enabled);
	set_irq_enabled(0);
	check(ticks == 1 && tick_eip[0] == after_halt && (tick_eflags[0] & X86_EFLAGS_IF) &&
	      tick_irq[0] == 0 && (irq_after & X86_EFLAGS_IF), "timer.halt_wakeup",
	      "%u ticks, eip %#x (want %#x), frame EFLAGS %#x, irq_enabled %#x in handler and "
	      "%#x after", ticks, tick_eip[0], after_halt, tick_eflags[0], tick_irq[0],
	      irq_after);
}

/* A due IRQ waits while EIP is in the noirq window.  One tick arms 5 us, and we then sit in
 * noirq_spin (boot.S: inside the window) for 2 ms: the next tick must come after that. */
static void test_noirq(void)
{
	static const u32 deltas[] = { 1000, 5000 };
	const u32 iterations = 100000;			/* 2 instructions each */
	const u64 spin_ns = 2ULL * iterations * NS_PER_INSN;
	u64 d;
	u32 start = READ_ONCE(lguest_data.noirq_start), end = READ_ONCE(lguest_data.noirq_end);

	reset();
	chain = deltas;
	chain_len = 2;
	hcall(LHCALL_SET_CLOCKEVENT, deltas[0], 0, 0);
	wait_ticks(1);
	/* tick 0's handler armed 5 us; wait_ticks left interrupts off, so turn them on and go
	 * straight into the window, well before the tick is due. */
	set_irq_enabled(X86_EFLAGS_IF);
	noirq_spin(iterations);
	spin_for_ticks(2, 100000);
	set_irq_enabled(0);
	d = tick_time[1] - tick_time[0];
	printk("timer: tick in the noirq window came %llu ns later (window spin %llu ns)\n", d,
	       spin_ns);
	check(ticks == 2 && (tick_eip[1] < start || tick_eip[1] >= end) && d >= spin_ns &&
	      d <= spin_ns + SOON_TSC * NS_PER_INSN, "timer.noirq_window",
	      "%u ticks, delivered at eip %#x (window %#x-%#x) %llu ns after arming (spin %llu)",
	      ticks, tick_eip[1], start, end, d, spin_ns);
}

/* A tick while IRQ 0 is blocked stays pending and comes right after unblocking. */
static void test_blocked(void)
{
	static const u32 deltas[] = { 1000, 1000 };
	u32 held;
	u64 unblock_tsc;

	reset();
	chain = deltas;
	chain_len = 2;
	block_in_handler = true;
	hcall(LHCALL_SET_CLOCKEVENT, deltas[0], 0, 0);
	wait_ticks(1);
	block_in_handler = false;
	set_irq_enabled(X86_EFLAGS_IF);
	spin(50000);			/* 1 ms with the 1 us tick due and blocked */
	held = ticks;
	unblock_tsc = rdtsc();
	set_blocked(0);
	spin_for_ticks(2, 100000);
	set_irq_enabled(0);
	check(held == 1 && ticks == 2 && tick_tsc[1] - unblock_tsc <= SOON_TSC,
	      "timer.blocked_then_unblocked",
	      "%u ticks while blocked (want 1), %u after; delivered %llu cycles after unblocking",
	      held, ticks, tick_tsc[1] - unblock_tsc);
}

/* irq_enabled = 0 holds delivery off; 0x200 lets it through soon after. */
static void test_irq_disabled(void)
{
	u32 held;
	u64 enable_tsc;

	reset();
	hcall(LHCALL_SET_CLOCKEVENT, 1000, 0, 0);
	spin(50000);
	held = ticks;
	enable_tsc = rdtsc();
	set_irq_enabled(X86_EFLAGS_IF);
	spin_for_ticks(1, 100000);
	set_irq_enabled(0);
	check(held == 0 && ticks == 1 && tick_tsc[0] - enable_tsc <= SOON_TSC,
	      "timer.irq_enabled_gates_delivery",
	      "%u ticks while disabled (want 0), %u after; delivered %llu cycles after enabling",
	      held, ticks, tick_tsc[0] - enable_tsc);
}

/* Through a trap gate the Host leaves irq_enabled alone (ABI §5.2 step 6). */
static void test_trap_gate(void)
{
	reset();
	set_gate(0x20, GATE_TRAP, 0);
	set_irq_enabled(X86_EFLAGS_IF);
	hcall(LHCALL_SET_CLOCKEVENT, 1000, 0, 0);
	spin_for_ticks(1, 100000);
	set_irq_enabled(0);
	set_gate(0x20, GATE_INTERRUPT, 0);
	check(ticks == 1 && tick_irq[0] == X86_EFLAGS_IF, "timer.trap_gate_keeps_irq_enabled",
	      "%u ticks, irq_enabled in handler %#x (want 0x200)", ticks, tick_irq[0]);
}

/* With no gate at vector 0x20 the IRQ stays pending (ABI §5.3 step 5) until there is one. */
static void test_no_gate(void)
{
	u32 held;
	u64 gate_tsc;

	reset();
	clear_gate(0x20);
	set_irq_enabled(X86_EFLAGS_IF);
	hcall(LHCALL_SET_CLOCKEVENT, 1000, 0, 0);
	spin(50000);
	held = ticks;
	gate_tsc = rdtsc();
	set_gate(0x20, GATE_INTERRUPT, 0);
	spin_for_ticks(1, 100000);
	set_irq_enabled(0);
	check(held == 0 && ticks == 1 && tick_tsc[0] - gate_tsc <= SOON_TSC,
	      "timer.no_gate_stays_pending",
	      "%u ticks without a gate (want 0), %u after; delivered %llu cycles after the gate",
	      held, ticks, tick_tsc[0] - gate_tsc);
}

/* SET_CLOCKEVENT(0) cancels; a new delta replaces the old one (one-shot, one timer). */
static void test_cancel_and_rearm(void)
{
	reset();
	set_irq_enabled(X86_EFLAGS_IF);
	hcall(LHCALL_SET_CLOCKEVENT, 1000, 0, 0);
	hcall(LHCALL_SET_CLOCKEVENT, 0, 0, 0);
	spin(100000);			/* 2 ms */
	set_irq_enabled(0);
	check(ticks == 0, "timer.cancel", "%u ticks after SET_CLOCKEVENT(0)", ticks);

	/* Arm 3 ms, then 10 us: only the second deadline exists. */
	reset();
	hcall(LHCALL_SET_CLOCKEVENT, 3000000, 0, 0);
	hcall(LHCALL_SET_CLOCKEVENT, 10000, 0, 0);
	set_irq_enabled(X86_EFLAGS_IF);
	spin_for_ticks(1, 1000000);
	spin(200000);			/* 4 ms: past the replaced 3 ms deadline */
	set_irq_enabled(0);
	check(ticks == 1, "timer.rearm_replaces", "%u ticks (want exactly 1)", ticks);
}

void test_timer(void)
{
	ktest_begin("timer");
	/* LGUEST_INIT wrote the wall clock (ABI §3.4 step 6); nothing has been delivered yet. */
	printk("timer: lguest_data.time at boot %d.%09d\n", lguest_data.time.tv_sec,
	       lguest_data.time.tv_nsec);
	check(lguest_data.time.tv_sec > 0, "timer.time_set_at_init", "time %d.%09d",
	      lguest_data.time.tv_sec, lguest_data.time.tv_nsec);
	trap_init();
	trap_handlers[0x20] = tick;

	test_deltas();
	test_halt();
	test_noirq();
	test_blocked();
	test_irq_disabled();
	test_trap_gate();
	test_no_gate();
	test_cancel_and_rearm();

	reset();
	set_blocked(1);
	trap_handlers[0x20] = NULL;
	ktest_end();
}
