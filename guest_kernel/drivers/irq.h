/*
 * irq.h - what the device drivers need from interrupts: IRQ lines, a clock tick, and a way
 * to sleep until something happens (ABI §5.3, §8, §9.1).
 *
 * lguest's interrupt controller is two words in lguest_data: irq_enabled is "sti/cli", and
 * blocked_interrupts is the mask of each line.  IRQ n arrives through IDT vector 0x20 + n as an
 * interrupt gate, so the handler starts with irq_enabled = 0 and lguest_iret puts it back.
 * Handlers are level-style, as 2.6.24's lguest irq chip with handle_level_irq: the line is
 * masked while its handlers run and unmasked afterwards; a line nobody requested stays masked.
 *
 * Waiting is the 2.6.24 idle loop: interrupts off, check the condition, LHCALL_HALT.  The Host
 * wakes a halted guest only with a deliverable interrupt, turning irq_enabled back on to
 * deliver it, so nothing that arrives between the check and the halt is lost.  The clock tick
 * (IRQ 0, every TICK_NS of guest time) bounds every wait: timeouts are counted in ticks, which
 * under lgemu's default virtual clock makes them deterministic.
 */
#ifndef DRIVERS_IRQ_H
#define DRIVERS_IRQ_H

#include "kernel.h"
#include "hcall.h"

#define FIRST_EXTERNAL_VECTOR	0x20	/* IRQ n is vector 0x20 + n (ABI §0) */
#define IRQ_TIMER		0
#define HZ			100	/* ticks per second of guest time */
#define TICK_NS			(1000000000UL / HZ)

typedef void (*irq_handler_t)(unsigned int irq, void *dev);

/* Ticks since irq_init(); advanced by the IRQ 0 handler. */
extern volatile u32 jiffies;

/*
 * Install the IDT (the conformance framework's 2.6.24 gates), mask every device line, start
 * the tick and turn interrupts on.  Idempotent: later calls do nothing.
 */
void irq_init(void);

/* Add a handler to a line (shared lines allowed) and unmask it; 0 or -EINVAL. */
int request_irq(unsigned int irq, irq_handler_t handler, void *dev);

/* Remove the handler registered with dev; the line is masked when none is left. */
void free_irq(unsigned int irq, void *dev);

/* Interrupts that arrived on lines nobody requested (they stay masked). */
extern u32 spurious_irqs;

static inline void local_irq_disable(void)
{
	barrier();
	WRITE_ONCE(lguest_data.irq_enabled, 0);
	barrier();
}

/* A store, no hypercall: the Host delivers what is pending at its next look (ABI §5.3). */
static inline void local_irq_enable(void)
{
	barrier();
	WRITE_ONCE(lguest_data.irq_enabled, X86_EFLAGS_IF);
	barrier();
}

/* LHCALL_HALT: sleep until an interrupt is delivered (the Host re-enables interrupts). */
static inline void lguest_halt(void)
{
	hcall(LHCALL_HALT, 0, 0, 0);
}

/* Has the tick count reached `deadline` (wrap-safe)? */
static inline bool time_reached(u32 deadline)
{
	return (s32)(READ_ONCE(jiffies) - deadline) >= 0;
}

/*
 * Sleep with LHCALL_HALT until `condition` holds or `ticks` clock ticks have passed; true if
 * the condition held.  The condition is evaluated with interrupts off, so a handler cannot
 * change it between the check and the halt.  The caller's interrupt state is restored.
 */
#define wait_event_timeout(condition, ticks)					\
({										\
	unsigned long __flags = irq_save();					\
	u32 __deadline = READ_ONCE(jiffies) + (ticks);				\
	bool __ok;								\
	for (;;) {								\
		local_irq_disable();						\
		if ((__ok = (condition)))					\
			break;							\
		if (time_reached(__deadline))					\
			break;							\
		lguest_halt();							\
	}									\
	irq_restore(__flags);							\
	__ok;									\
})

/* Sleep for `ticks` clock ticks. */
void sleep_ticks(u32 ticks);

#endif /* DRIVERS_IRQ_H */
