/*
 * lguest.c - the paravirtualisation layer: what arch/x86/lguest/boot.c is to 2.6.24.
 *
 * It owns the page we share with the Host (lguest_data), the two ways of making hypercalls
 * (synchronous and through the async ring), the early console back end and the two ways of
 * stopping (power off and crash), and it is where lguest_entry lands in C.
 */
#include "kernel.h"
#include "hcall.h"
#include "bootparam.h"

/*
 * The shared page.  Static values the Host reads once, at LHCALL_LGUEST_INIT (ABI §3.4, §4):
 * every ring slot free, the noirq window around lguest_iret's last instructions (virtual
 * addresses: they are compared with EIP), our kernel base, the timer (IRQ 0) blocked until
 * a clock exists, and the only system call vector the Host accepts.  Everything else starts
 * at 0, so irq_enabled = 0: "interrupts off" until we decide otherwise.
 */
struct lguest_data lguest_data = {
	.hcall_status = { [0 ... LHCALL_RING_SIZE - 1] = LHCALL_SLOT_FREE },
	.noirq_start = (u32)lguest_noirq_start,
	.noirq_end = (u32)lguest_noirq_end,
	.kernel_address = PAGE_OFFSET,
	.blocked_interrupts = 1,
	.syscall_vec = SYSCALL_VECTOR,
};

/*
 * Async ring (ABI §3.5).  Fill a free slot's arguments, then mark it ready; the Host runs ready
 * slots in order the next time we make a synchronous hypercall.  If the next slot is still
 * pending the ring is full: making this call synchronously lets the Host drain the ring
 * first, so the order of calls is kept.  Interrupts are masked so a handler cannot take the
 * same slot.
 */
void async_hcall(unsigned long call, unsigned long arg1, unsigned long arg2, unsigned long arg3)
{
	static unsigned int next_slot;
	unsigned long flags = irq_save();

	if (READ_ONCE(lguest_data.hcall_status[next_slot]) != LHCALL_SLOT_FREE) {
		hcall(call, arg1, arg2, arg3);
	} else {
		struct hcall_args *slot = &lguest_data.hcalls[next_slot];

		slot->arg0 = call;
		slot->arg1 = arg1;
		slot->arg2 = arg2;
		slot->arg3 = arg3;
		barrier();	/* the arguments must be in memory before the slot says "ready" */
		WRITE_ONCE(lguest_data.hcall_status[next_slot], LHCALL_SLOT_READY);
		next_slot = (next_slot + 1) % LHCALL_RING_SIZE;
	}
	irq_restore(flags);
}

static bool lazy_mode;

void lazy_mode_enter(void)
{
	lazy_mode = true;
}

void lazy_mode_leave(void)
{
	lazy_mode = false;
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0);
}

void lazy_hcall(unsigned long call, unsigned long arg1, unsigned long arg2, unsigned long arg3)
{
	if (lazy_mode)
		async_hcall(call, arg1, arg2, arg3);
	else
		hcall(call, arg1, arg2, arg3);
}

/*
 * The early console back end (ABI §12.1).  The Launcher treats a NOTIFY whose address is not a
 * virtqueue as "print the NUL-terminated string here", so: copy at most 16 bytes into a
 * terminated buffer on our stack, hand the Host its physical address, and report how many
 * bytes we took (the console writer resends the rest).
 */
#define EARLY_CHUNK	16

int early_put_chars(u32 vtermno, const char *buf, int count)
{
	char scratch[EARLY_CHUNK + 1];
	unsigned int len = count < 0 ? 0 : (unsigned int)count;

	(void)vtermno;
	if (len > EARLY_CHUNK)
		len = EARLY_CHUNK;
	memcpy(scratch, buf, len);
	scratch[len] = '\0';
	hcall(LHCALL_NOTIFY, __pa(scratch), 0, 0);
	return len;
}

/*
 * Stopping (ABI §9.2).  There is no power-off hypercall: 2.6.24 "crashes" with the message
 * "Power down", and the Launcher exits.  The Host reads 128 bytes at the address, so the
 * message must live in guest memory, which any kernel object does.  If a Host ever returned
 * from CRASH, ud2 with no IDT gets us killed anyway.
 */
static const char power_down_msg[] = "Power down";

void lguest_crash(const char *msg)
{
	hcall(LHCALL_CRASH, __pa(msg), 0, 0);
	for (;;)
		__asm__ __volatile__("ud2");
}

void lguest_power_off(void)
{
	lguest_crash(power_down_msg);
}

/*
 * lguest_entry jumps here, on the boot stack, with PAGE_OFFSET mapping the first 128 MiB.
 * 2.6.24 installs its paravirt operations here; we have no generic kernel to plug them into,
 * so all that is left is what must happen before the first printk: terminate the command
 * line copy and make the early console the console.
 */
void lguest_init(void)
{
	boot_command_line[COMMAND_LINE_SIZE - 1] = '\0';
	console_register(early_put_chars);
	start_kernel();
}
