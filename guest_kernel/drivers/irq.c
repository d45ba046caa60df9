/*
 * irq.c - IRQ lines, the level-style irq chip over blocked_interrupts, and the clock tick
 * (irq.h says why each works the way it does).
 *
 * The IDT is the one the conformance framework builds (tests/ktest.c: 2.6.24's trap_init and
 * lguest_init_IRQ, interrupt gates on 0x20-0x3F, every vector through trapentry.S to
 * trap_dispatch), so a fault inside a driver panics with a readable line instead of getting
 * the guest killed.  This file only claims the 32 IRQ vectors from it.
 */
#include "irq.h"
#include "errno.h"
#include "../tests/ktest.h"

#define MAX_ACTIONS	64

struct irqaction {
	irq_handler_t handler;
	void *dev;
	struct irqaction *next;
};

static struct irqaction action_pool[MAX_ACTIONS];
static struct irqaction *actions[LGUEST_IRQS];
static bool irq_ready;

volatile u32 jiffies;
u32 spurious_irqs;

static void mask_irq(unsigned int irq)
{
	WRITE_ONCE(lguest_data.blocked_interrupts,
		   READ_ONCE(lguest_data.blocked_interrupts) | (1U << irq));
}

static void unmask_irq(unsigned int irq)
{
	WRITE_ONCE(lguest_data.blocked_interrupts,
		   READ_ONCE(lguest_data.blocked_interrupts) & ~(1U << irq));
}

/*
 * Vector 0x20 + irq: handle_level_irq.  Mask the line, run its handlers, unmask it again
 * (a line without handlers stays masked: nobody could quiet it).  We run on an interrupt gate,
 * so irq_enabled is already 0 and lguest_iret restores the interrupted EFLAGS on the way out.
 */
static void irq_entry(struct trap_frame *f)
{
	unsigned int irq = f->vector - FIRST_EXTERNAL_VECTOR;
	struct irqaction *a;

	mask_irq(irq);
	if (!actions[irq]) {
		spurious_irqs++;
		return;
	}
	for (a = actions[irq]; a; a = a->next)
		a->handler(irq, a->dev);
	if (actions[irq])
		unmask_irq(irq);
}

int request_irq(unsigned int irq, irq_handler_t handler, void *dev)
{
	struct irqaction *a = NULL;
	unsigned long flags;
	unsigned int i;

	if (irq >= LGUEST_IRQS || !handler)
		return -EINVAL;
	for (i = 0; i < MAX_ACTIONS && !a; i++)
		if (!action_pool[i].handler)
			a = &action_pool[i];
	if (!a)
		return -ENOMEM;
	flags = irq_save();
	a->handler = handler;
	a->dev = dev;
	a->next = actions[irq];
	actions[irq] = a;
	unmask_irq(irq);
	irq_restore(flags);
	return 0;
}

void free_irq(unsigned int irq, void *dev)
{
	struct irqaction **p;
	unsigned long flags;

	if (irq >= LGUEST_IRQS)
		return;
	flags = irq_save();
	for (p = &actions[irq]; *p; p = &(*p)->next) {
		if ((*p)->dev == dev) {
			struct irqaction *a = *p;

			*p = a->next;
			a->handler = NULL;
			break;
		}
	}
	if (!actions[irq])
		mask_irq(irq);
	irq_restore(flags);
}

/* IRQ 0: one tick, and the next one-shot clock event (2.6.24's clockevent is one-shot). */
static void timer_tick(unsigned int irq, void *dev)
{
	(void)irq;
	(void)dev;
	jiffies++;
	hcall(LHCALL_SET_CLOCKEVENT, TICK_NS, 0, 0);
}

void irq_init(void)
{
	unsigned int i;

	if (irq_ready)
		return;
	irq_ready = true;
	local_irq_disable();
	trap_init();
	WRITE_ONCE(lguest_data.blocked_interrupts, ~0U);
	for (i = 0; i < LGUEST_IRQS; i++)
		trap_handlers[FIRST_EXTERNAL_VECTOR + i] = irq_entry;
	hcall(LHCALL_SET_CLOCKEVENT, TICK_NS, 0, 0);
	request_irq(IRQ_TIMER, timer_tick, NULL);
	local_irq_enable();
}

void sleep_ticks(u32 ticks)
{
	wait_event_timeout(false, ticks);
}
