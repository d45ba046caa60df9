/*
 * ktest.c - reporting, the IDT and trap dispatch for the conformance programs (ktest.h).
 */
#include "ktest.h"

volatile struct trap_record last_trap;
trap_fn trap_handlers[256];
u32 probe_start, probe_end, probe_resume, probe_esp;

static const char *program_name;
static unsigned int passed, failed;

void ktest_begin(const char *program)
{
	program_name = program;
	passed = failed = 0;
}

void ktest_end(void)
{
	printk("%s: %u passed, %u failed\n", program_name, passed, failed);
}

void pass(const char *name)
{
	passed++;
	printk("PASS %s\n", name);
}

/*
 * One case's verdict: PASS if ok, else the detail formatted from fmt as FAIL (counted) or,
 * for a known difference, XFAIL.  Returns ok.
 */
static bool report(bool ok, bool known, const char *name, const char *fmt, va_list ap)
{
	char detail[160];

	if (ok) {
		pass(name);
		return true;
	}
	vsnprintf(detail, sizeof(detail), fmt, ap);
	if (!known)
		failed++;
	printk("%s %s: %s\n", known ? "XFAIL" : "FAIL", name, detail);
	return false;
}

void fail(const char *name, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	report(false, false, name, fmt, ap);
	va_end(ap);
}

bool check(bool ok, const char *name, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ok = report(ok, false, name, fmt, ap);
	va_end(ap);
	return ok;
}

/*
 * A case where lgemu knowingly differs from lguest on real hardware (a limitation of the
 * emulated CPU, documented where it arises): PASS if it behaves, XFAIL with the detail if it
 * shows the known difference.  The suite's driver accepts XFAIL only for cases it lists.
 */
bool check_known(bool ok, const char *name, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ok = report(ok, true, name, fmt, ap);
	va_end(ap);
	return ok;
}

/*
 * A gate as 2.6.24's pack_gate builds it: selector __KERNEL_CS (0x60; the Host forces 0x61),
 * the handler offset split over both words, present, DPL and type (ABI §5.1).
 */
void set_gate(unsigned int vector, unsigned int type, unsigned int dpl)
{
	u32 handler = (u32)trap_stubs + 16 * vector;
	u32 lo = (__KERNEL_CS << 16) | (handler & 0xFFFF);
	u32 hi = (handler & 0xFFFF0000) | 0x8000 | (dpl << 13) | (type << 8);

	hcall(LHCALL_LOAD_IDT_ENTRY, vector, lo, hi);
}

void clear_gate(unsigned int vector)
{
	hcall(LHCALL_LOAD_IDT_ENTRY, vector, 0, 0);
}

/* 2.6.24's trap_init + lguest_init_IRQ (ABI §5.1); the ignored vectors (2, 8, 15) are skipped. */
void trap_init(void)
{
	static const u8 trap_gates[] = { 0, 5, 6, 7, 9, 10, 11, 12, 13, 16, 17, 18, 19 };
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(trap_gates); i++)
		set_gate(trap_gates[i], GATE_TRAP, 0);
	set_gate(4, GATE_TRAP, 3);
	set_gate(SYSCALL_VECTOR, GATE_TRAP, 3);
	set_gate(1, GATE_INTERRUPT, 0);
	set_gate(14, GATE_INTERRUPT, 0);
	set_gate(3, GATE_INTERRUPT, 3);
	for (i = 0x20; i < 0x40; i++)
		set_gate(i, GATE_INTERRUPT, 0);
}

/*
 * 2.6.24's GDT (arch/x86/kernel/cpu/common.c), what lguest's load_gdt sends: kernel code and
 * data at DPL 0 (the Host makes them DPL 1), user code and data at DPL 3.
 */
static u64 linux_gdt[32] __attribute__((aligned(8)));

void load_linux_gdt(void)
{
	linux_gdt[12] = 0x00cf9a000000ffffULL;	/* __KERNEL_CS */
	linux_gdt[13] = 0x00cf92000000ffffULL;	/* __KERNEL_DS */
	linux_gdt[14] = 0x00cffa000000ffffULL;	/* __USER_CS */
	linux_gdt[15] = 0x00cff2000000ffffULL;	/* __USER_DS */
	hcall(LHCALL_LOAD_GDT, __pa(linux_gdt), 32, 0);
}

/* Called by trapentry.S with the frame it built. */
void trap_dispatch(struct trap_frame *f);
void trap_dispatch(struct trap_frame *f)
{
	u32 esp;
	trap_fn fn;

	__asm__ __volatile__("movl %%esp, %0" : "=r"(esp));
	last_trap.irq_enabled = READ_ONCE(lguest_data.irq_enabled);
	last_trap.cr2 = READ_ONCE(lguest_data.cr2);
	last_trap.vector = f->vector;
	last_trap.error_code = f->error_code;
	last_trap.eip = f->eip;
	last_trap.cs = f->cs & 0xFFFF;
	last_trap.eflags = f->eflags;
	last_trap.esp = (f->cs & 3) == 3 ? f->esp : 0;
	last_trap.ss = (f->cs & 3) == 3 ? f->ss & 0xFFFF : 0;
	last_trap.frame = (u32)&f->eip;
	last_trap.handler_esp = esp;
	last_trap.count++;

	fn = trap_handlers[f->vector & 0xFF];
	if (fn) {
		fn(f);
		return;
	}
	if (probe_resume) {
		f->eip = probe_resume;
		probe_resume = 0;
		return;
	}
	panic("unexpected trap %u at %#x (error %#x, cs %#x, cr2 %#x)", f->vector, f->eip,
	      f->error_code, f->cs & 0xFFFF, last_trap.cr2);
}

/*
 * After a PROBE at ring 1: exactly one trap, with this vector, error code (< 0: don't care)
 * and EIP, CS 0x61, and its frame right below the probe's stack pointer (no stack switch).
 */
bool expect_trap(const char *name, u32 count_before, u32 vector, s32 error_code, u32 eip)
{
	u32 traps = last_trap.count - count_before;

	if (!probe_trapped()) {
		fail(name, "no trap (expected vector %u)", vector);
		return false;
	}
	if (traps != 1 || last_trap.vector != vector ||
	    (error_code >= 0 && last_trap.error_code != (u32)error_code) ||
	    last_trap.eip != eip || last_trap.cs != GUEST_CS ||
	    last_trap.frame != probe_esp - 12) {
		char want_error[16] = "any";

		if (error_code >= 0)
			snprintf(want_error, sizeof(want_error), "%#x", (u32)error_code);
		fail(name, "%u trap(s), last: vector %u error %#x eip %#x cs %#x frame %#x; "
		     "want vector %u error %s eip %#x cs %#x frame %#x", traps,
		     last_trap.vector, last_trap.error_code, last_trap.eip, last_trap.cs,
		     last_trap.frame, vector, want_error, eip, GUEST_CS, probe_esp - 12);
		return false;
	}
	pass(name);
	return true;
}

u32 nm_count;

/* 2.6.24's math_state_restore, minus the restore: clts (LHCALL_TS(0)) and retry. */
void nm_handler(struct trap_frame *f)
{
	(void)f;
	nm_count++;
	hcall(LHCALL_TS, 0, 0, 0);
}

u64 guest_time_ns(void)
{
	s32 sec, nsec;

	do {
		sec = READ_ONCE(lguest_data.time.tv_sec);
		nsec = READ_ONCE(lguest_data.time.tv_nsec);
	} while (sec != READ_ONCE(lguest_data.time.tv_sec));
	return (u64)sec * 1000000000ULL + (u32)nsec;
}

u64 rdtsc(void)
{
	u32 lo, hi;

	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

/* A busy loop of a known shape: two instructions per iteration. */
void spin(u32 iterations)
{
	__asm__ __volatile__("1: decl %0\n\tjnz 1b" : "+r"(iterations) : : "memory");
}
