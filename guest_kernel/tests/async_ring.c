/*
 * async_ring.c - "lgemu.test=async_ring": the async hypercall ring (ABI §3.5) from the guest side.
 *
 * Only a synchronous hypercall makes the Host look at the ring, so:
 *  1. queue a few calls: their status bytes must stay 0 ("ready");
 *  2. one synchronous call: the Host must have run them all and written 0xFF back;
 *  3. fill all 64 slots, then make one more async call: the slot after the last is still
 *     busy, so async_hcall makes it synchronously, which drains the ring first.
 * The calls are LHCALL_FLUSH_TLB(0) (forget user translations), harmless at any time.
 */
#include "kernel.h"
#include "hcall.h"
#include "tests.h"

/* How many ring slots hold a call the Host has not run yet (status byte not 0xFF). */
unsigned int async_pending_slots(void)
{
	unsigned int i, n = 0;

	for (i = 0; i < LHCALL_RING_SIZE; i++)
		if (READ_ONCE(lguest_data.hcall_status[i]) != LHCALL_SLOT_FREE)
			n++;
	return n;
}

void test_async_ring(void)
{
	unsigned int i, queued, after;

	for (i = 0; i < 8; i++)
		async_hcall(LHCALL_FLUSH_TLB, 0, 0, 0);
	queued = async_pending_slots();
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0);
	after = async_pending_slots();
	printk("async_ring: queued 8, %u pending before FLUSH_ASYNC, %u after\n", queued, after);
	if (queued != 8 || after != 0)
		panic("async_ring: Host did not drain the ring (%u/%u)", queued, after);

	for (i = 0; i < LHCALL_RING_SIZE; i++)
		async_hcall(LHCALL_FLUSH_TLB, 0, 0, 0);
	queued = async_pending_slots();
	async_hcall(LHCALL_FLUSH_TLB, 0, 0, 0);	/* ring full: goes synchronous */
	after = async_pending_slots();
	printk("async_ring: ring full with %u, one more call drained it to %u\n", queued, after);
	if (queued != LHCALL_RING_SIZE || after != 0)
		panic("async_ring: full ring not drained (%u/%u)", queued, after);
	printk("async_ring: ok\n");
}
