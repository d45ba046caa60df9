/*
 * ktest.h - the conformance programs' little framework (think kvm-unit-tests for lguest).
 *
 * A program checks one area of the Host's behaviour in named cases and reports each one on
 * the console as a machine-checkable line:
 *
 *	PASS <case>
 *	FAIL <case>: <detail>
 *	XFAIL <case>: <detail>	(a known limitation of lgemu, see check_known)
 *
 * then returns, and the guest powers down as usual.  An unexpected trap panics instead
 * (LHCALL_CRASH), which the Launcher reports as "CRASH: ...".
 *
 * Traps: trap_init() installs the gates 2.6.24's trap_init/lguest_init_IRQ install (ABI §5.1),
 * every one pointing at a per-vector stub in trapentry.S.  The stub saves a struct trap_frame
 * and calls trap_dispatch(), which records the trap in last_trap and then
 *   - calls the program's handler for that vector, if it set one, or
 *   - resumes at probe_resume if a PROBE() is armed (the "exception table" of a test), or
 *   - panics.
 * Handlers return through lguest_iret, as 2.6.24's INTERRUPT_RETURN does.
 */
#ifndef KTEST_H
#define KTEST_H

#include "kernel.h"
#include "hcall.h"

/* ABI §0 selectors. */
#define __KERNEL_CS	0x60
#define __KERNEL_DS	0x68
#define __USER_CS	0x73
#define __USER_DS	0x7B
#define GUEST_CS	(__KERNEL_CS | 1)
#define GUEST_DS	(__KERNEL_DS | 1)

/* ABI §5.1 gate types. */
#define GATE_INTERRUPT	0xE
#define GATE_TRAP	0xF

/* What trapentry.S leaves on the stack, lowest address first.  Everything from eip on is
 * the frame the Host (or, for a direct trap, the CPU) pushed; esp/ss only from ring 3. */
struct trap_frame {
	u32 gs, fs, es, ds;
	u32 edi, esi, ebp, esp_k, ebx, edx, ecx, eax;	/* pushal */
	u32 vector;
	u32 error_code;		/* 0 pushed by the stub for vectors without one */
	u32 eip, cs, eflags;
	u32 esp, ss;		/* only when (cs & 3) == 3 */
};

typedef void (*trap_fn)(struct trap_frame *f);

/* What the last trap looked like, copied before any handler runs. */
struct trap_record {
	u32 count;		/* traps taken since boot */
	u32 vector, error_code, eip, cs, eflags, esp, ss;
	u32 frame;		/* address of the frame's EIP slot */
	u32 handler_esp;	/* ESP inside trap_dispatch */
	u32 cr2;		/* lguest_data.cr2 at entry */
	u32 irq_enabled;	/* lguest_data.irq_enabled at entry */
};

extern volatile struct trap_record last_trap;
extern trap_fn trap_handlers[256];
extern u32 probe_start, probe_end, probe_resume, probe_esp;

/* trapentry.S */
extern const char trap_stubs[];		/* vector n's stub is at trap_stubs + 16 * n */
void trap_return(void);
u32 enter_user(u32 eip, u32 esp);	/* ring 3 until a handler calls leave_user(code) */
void leave_user(u32 code) __noreturn;
/* boot.S: a loop placed inside [noirq_start, noirq_end) */
void noirq_spin(u32 iterations);

/* ktest.c */
void ktest_begin(const char *program);
void ktest_end(void);
void pass(const char *name);
void fail(const char *name, const char *fmt, ...) __printf(2, 3);
bool check(bool ok, const char *name, const char *fmt, ...) __printf(3, 4);
bool check_known(bool ok, const char *name, const char *fmt, ...) __printf(3, 4);
void set_gate(unsigned int vector, unsigned int type, unsigned int dpl);
void clear_gate(unsigned int vector);
void trap_init(void);
void load_linux_gdt(void);
bool expect_trap(const char *name, u32 count_before, u32 vector, s32 error_code, u32 eip);
void nm_handler(struct trap_frame *f);	/* a vector 7 handler: counts in nm_count, clears TS */
extern u32 nm_count;
u64 guest_time_ns(void);
u64 rdtsc(void);
void spin(u32 iterations);

/*
 * PROBE_ASM(insns): inline-assembly text that runs insns with the trap handler armed to
 * resume right after them (use it as the template of an asm statement, so operands are
 * written %%reg).  probe_start is the address of the first instruction (the EIP a fault
 * must report), probe_end the address after the last (the EIP an `int n` must report),
 * probe_esp the stack pointer before it.  After the probe, probe_resume is 0 if a trap was
 * taken and still set otherwise.
 */
#define PROBE_ASM(insns) \
	"movl %%esp, probe_esp\n\t" \
	"movl $88f, probe_start\n\t" \
	"movl $89f, probe_end\n\t" \
	"movl $89f, probe_resume\n" \
	"88:\n\t" insns "\n" \
	"89:\n\t"

static inline bool probe_trapped(void)
{
	bool trapped = READ_ONCE(probe_resume) == 0;

	WRITE_ONCE(probe_resume, 0);
	return trapped;
}

static inline u32 read_eflags(void)
{
	u32 f;

	__asm__ __volatile__("pushfl; popl %0" : "=r"(f));
	return f;
}

static inline void set_irq_enabled(u32 v)
{
	barrier();
	WRITE_ONCE(lguest_data.irq_enabled, v);
	barrier();
}

static inline void set_blocked(u32 v)
{
	barrier();
	WRITE_ONCE(lguest_data.blocked_interrupts, v);
	barrier();
}

#endif /* KTEST_H */
