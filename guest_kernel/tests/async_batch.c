/*
 * async_batch.c - "lgemu.test=async_batch": batched hypercalls through the async ring (ABI §3.5).
 *
 * Calls queued with async_hcall (2.6.24's lazy mode) must not run until the next synchronous
 * hypercall; then the Host runs them all, in the order they were queued, writes 0xFF back to
 * every status byte, and only then executes the synchronous call itself.  Order is made
 * visible with calls whose last one wins: LOAD_TLS (which base %gs ends up with), TS (whether
 * the FPU traps), LOAD_IDT_ENTRY (whether int3 is a breakpoint or a #GP).
 */
#include "ktest.h"
#include "tests.h"

static u64 tls[3][3] __attribute__((aligned(8)));
static u32 tls_value[3] = { 0xA5C00000, 0xA5C00001, 0xA5C00002 };
static const char ring_message[] = "async_batch: printed from the ring\r\n";

static u64 data_descriptor(u32 base)
{
	u32 lo = 0xFFF | (base << 16);
	u32 hi = ((base >> 16) & 0xFF) | (0xF2 << 8) | (0x4 << 20) | (base & 0xFF000000);

	return ((u64)hi << 32) | lo;
}

/* Which of the three TLS tables is loaded: the index whose value %gs:0 reads. */
static int tls_loaded(void)
{
	u32 v = 0;
	int i;

	__asm__ __volatile__("movw %w1, %%gs\n\tmovl %%gs:0, %0\n\tmovw %w2, %%gs"
			     : "=&r"(v) : "r"(0x33), "r"(0) : "memory");
	for (i = 0; i < 3; i++)
		if (v == tls_value[i])
			return i;
	return -1;
}

/* Does the FPU trap (#NM) right now?  Leaves TS clear either way. */
static bool fpu_traps(void)
{
	u32 before = nm_count;

	__asm__ __volatile__("fninit" : : : "memory");
	return nm_count != before;
}

static void load_tls(int i)
{
	hcall(LHCALL_LOAD_TLS, __pa(tls[i]), 0, 0);
}

void test_async_batch(void)
{
	unsigned int i, queued, n;
	int before, after;

	ktest_begin("async_batch");
	trap_init();
	trap_handlers[7] = nm_handler;
	for (i = 0; i < 3; i++)
		tls[i][0] = data_descriptor((u32)&tls_value[i]);
	__asm__ __volatile__("movw %w0, %%gs" : : "r"(0) : "memory");
	load_tls(0);

	/* Queued calls wait for a synchronous hypercall, then run in order. */
	async_hcall(LHCALL_LOAD_TLS, __pa(tls[1]), 0, 0);
	async_hcall(LHCALL_LOAD_TLS, __pa(tls[2]), 0, 0);
	queued = async_pending_slots();
	before = tls_loaded();
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0);
	after = tls_loaded();
	check(queued == 2 && before == 0, "async_batch.queued_calls_wait",
	      "%u slots pending (want 2), TLS table %d in use before FLUSH_ASYNC (want 0)",
	      queued, before);
	check(after == 2 && async_pending_slots() == 0, "async_batch.flush_runs_in_order",
	      "TLS table %d after FLUSH_ASYNC (want 2), %u slots still pending", after,
	      async_pending_slots());

	/* The synchronous call runs after everything in the ring. */
	async_hcall(LHCALL_LOAD_TLS, __pa(tls[2]), 0, 0);
	load_tls(1);
	check(tls_loaded() == 1, "async_batch.sync_call_runs_last",
	      "TLS table %d (want 1: the synchronous LOAD_TLS)", tls_loaded());

	/* TS(8) then TS(0) leaves the FPU usable; TS(0) then TS(8) does not. */
	async_hcall(LHCALL_TS, 8, 0, 0);
	async_hcall(LHCALL_TS, 0, 0, 0);
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0);
	check(!fpu_traps(), "async_batch.ts_order_clear", "#NM after queued TS(8), TS(0)");
	async_hcall(LHCALL_TS, 0, 0, 0);
	async_hcall(LHCALL_TS, 8, 0, 0);
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0);
	check(fpu_traps(), "async_batch.ts_order_set", "no #NM after queued TS(0), TS(8)");

	/* A full ring: 64 gates for vector 3 alternating interrupt/trap, the last a DPL-3 trap
	 * gate, so int3 must be a breakpoint (vector 3), not #GP.  Twice, to wrap around. */
	for (n = 0; n < 2; n++) {
		u32 handler = (u32)trap_stubs + 16 * 3, count;
		u32 lo = (__KERNEL_CS << 16) | (handler & 0xFFFF);

		for (i = 0; i < LHCALL_RING_SIZE; i++) {
			u32 type = (i & 1) ? GATE_TRAP : GATE_INTERRUPT;
			u32 hi = (handler & 0xFFFF0000) | 0x8000 | (3 << 13) | (type << 8);

			async_hcall(LHCALL_LOAD_IDT_ENTRY, 3, lo, hi);
		}
		queued = async_pending_slots();
		hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0);
		count = last_trap.count;
		__asm__ __volatile__(PROBE_ASM("int3") : : : "memory");
		if (queued != LHCALL_RING_SIZE || async_pending_slots() != 0)
			fail(n ? "async_batch.full_ring_wrapped" : "async_batch.full_ring",
			     "%u slots pending before, %u after", queued, async_pending_slots());
		else
			expect_trap(n ? "async_batch.full_ring_wrapped" : "async_batch.full_ring",
				    count, 3, -1, probe_end);
	}
	set_gate(3, GATE_INTERRUPT, 3);

	/* A NOTIFY in the ring: the Host stops there, hands it to the Launcher (the early
	 * console prints it), and goes on with the rest before the synchronous call. */
	async_hcall(LHCALL_LOAD_TLS, __pa(tls[0]), 0, 0);
	async_hcall(LHCALL_NOTIFY, __pa(ring_message), 0, 0);
	async_hcall(LHCALL_LOAD_TLS, __pa(tls[2]), 0, 0);
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0);
	check(tls_loaded() == 2 && async_pending_slots() == 0, "async_batch.notify_in_ring",
	      "TLS table %d after the batch (want 2), %u slots pending", tls_loaded(),
	      async_pending_slots());

	trap_handlers[7] = NULL;
	ktest_end();
}
