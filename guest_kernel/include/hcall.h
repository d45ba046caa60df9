/*
 * hcall.h - talking to the Host (ABI §3).
 *
 * A hypercall is "int $0x1f" at ring 1 with the call number in EAX and up to three arguments
 * in EDX, EBX, ECX.  No 2.6.24 call returns a result; the Host hands every register back
 * untouched.  Addresses are guest-physical unless the call says otherwise.
 */
#ifndef HCALL_H
#define HCALL_H

#include "kernel.h"

static inline unsigned long hcall(unsigned long call, unsigned long arg1,
				  unsigned long arg2, unsigned long arg3)
{
	/* "memory": the Host may read anything we wrote (a NOTIFY string, a page table) and
	 * write lguest_data, so nothing may be cached across the trap. */
	__asm__ __volatile__("int $" STR(LGUEST_TRAP_ENTRY)
			     : "+a"(call)
			     : "d"(arg1), "b"(arg2), "c"(arg3)
			     : "memory");
	return call;
}

/*
 * Our "interrupts off" is a word in lguest_data, not EFLAGS.IF (the real IF stays 1 in
 * ring 1).  The Host checks it before injecting, so saving and clearing it is a plain store.
 */
static inline unsigned long irq_save(void)
{
	unsigned long flags = READ_ONCE(lguest_data.irq_enabled);

	WRITE_ONCE(lguest_data.irq_enabled, 0);
	barrier();
	return flags;
}

static inline void irq_restore(unsigned long flags)
{
	barrier();
	WRITE_ONCE(lguest_data.irq_enabled, flags);
}

/* lguest.c: queue a call in the async ring (synchronous when the ring is full). */
void async_hcall(unsigned long call, unsigned long arg1, unsigned long arg2, unsigned long arg3);

/* Lazy mode: between enter and leave, batchable calls (ABI §3.3: 4, 5, 7, 8, 14, 15, 16) go
 * through the ring; leaving issues FLUSH_ASYNC so the Host drains it. */
void lazy_mode_enter(void);
void lazy_mode_leave(void);
void lazy_hcall(unsigned long call, unsigned long arg1, unsigned long arg2, unsigned long arg3);

#endif /* HCALL_H */
