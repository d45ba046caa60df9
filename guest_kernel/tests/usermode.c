/*
 * usermode.c - "lgemu.test=usermode": a ring-3 process and its kernel (ABI §5.2, §5.5, §5.6, §7).
 *
 * Like 2.6.24 starting init: a page directory of its own for the process (user pages with
 * the US bit, the kernel mapped supervisor-only as in every address space), LOAD_GDT with the
 * user segments, SET_STACK(0x69, esp0, 2), NEW_PGTABLE, then lguest_iret to CS 0x73/SS 0x7B.
 * The user program (usermode_user.S) makes system calls through the DPL-3 trap gate at 0x80
 * and provokes faults; every trap from ring 3 must arrive on esp0 with the frame
 * [err] EIP CS EFLAGS ESP SS, and the faults must carry the error codes real hardware and
 * lguest give.
 */
#include "ktest.h"
#include "tests.h"

#define USER_BASE	0x00400000UL
#define USER_STACK_TOP	(USER_BASE + 2 * PAGE_SIZE)
#define SUPERVISOR_PAGE	(USER_BASE + 2 * PAGE_SIZE)
#define UNMAPPED	0x00800000UL
#define EXIT_STATUS	0x5EE

#define SYS_WRITE	1
#define SYS_EXIT	2
#define SYS_PROBE	3
#define SYS_REPORT	4
#define SYS_ARM_TIMER	5

enum { REPORT_CS, REPORT_WRITE, REPORT_ESI, REPORT_EDI, REPORT_EBP, REPORT_SS, REPORT_DS,
       NR_REPORTS };

extern const char user_text[], user_text_end[];	/* usermode_user.S */
static const char user_message[] = "hello from ring 3";

/* The kernel stack traps from ring 3 arrive on (2.6.24: the thread's esp0, 2 pages). */
static u8 kstack[2 * PAGE_SIZE] __attribute__((aligned(2 * PAGE_SIZE)));
#define ESP0	((u32)kstack + sizeof(kstack))

struct user_probe {
	const char *name;
	u32 vector;
	u32 error_code;
	u32 cr2;		/* 0: not a page fault */
	/* filled in */
	u32 fault_eip, resume_eip, user_esp;
	u32 taken, got_vector, got_error, got_eip, got_cs, got_ss, got_esp, got_cr2, frame;
	u32 handler_esp;
};

#define U(off)	(USER_BASE + (off))

#define PROBE_WANT(n, v, e, c) { .name = n, .vector = v, .error_code = e, .cr2 = c }

static struct user_probe probes[] = {
	PROBE_WANT("usermode.pf_read_supervisor_page", 14, 5, SUPERVISOR_PAGE),
	PROBE_WANT("usermode.pf_write_supervisor_page", 14, 7, SUPERVISOR_PAGE + 4),
	PROBE_WANT("usermode.pf_write_readonly_page", 14, 7, 0 /* set at run time */),
	PROBE_WANT("usermode.pf_read_kernel", 14, 5, 0 /* &lguest_data */),
	PROBE_WANT("usermode.pf_not_present", 14, 4, UNMAPPED),
	PROBE_WANT("usermode.gp_hypercall_from_ring3", 13, 0x1F * 8 + 2, 0),
	PROBE_WANT("usermode.gp_inb_imm", 13, 0, 0),
	PROBE_WANT("usermode.gp_outb_imm", 13, 0, 0),
	PROBE_WANT("usermode.gp_inl_dx", 13, 0, 0),
	PROBE_WANT("usermode.gp_cli", 13, 0, 0),
	PROBE_WANT("usermode.gp_hlt", 13, 0, 0),
	PROBE_WANT("usermode.gp_int3_interrupt_gate", 13, 3 * 8 + 2, 0),
	PROBE_WANT("usermode.gp_int_dpl0_gate", 13, 0x20 * 8 + 2, 0),
	PROBE_WANT("usermode.gp_sysenter", 13, 0, 0),
	PROBE_WANT("usermode.de_from_ring3", 0, 0, 0),
	PROBE_WANT("usermode.ud_from_ring3", 6, 0, 0),
	PROBE_WANT("usermode.br_from_ring3", 5, 0, 0),
};

static int armed = -1;
static u32 reports[NR_REPORTS];
static bool reported[NR_REPORTS];
static u32 syscalls, bad_frames;
static char bad_frame[160];
static char written[64];
static u32 written_len;

static u32 current_ss(void)
{
	u32 ss;

	__asm__ __volatile__("movl %%ss, %0" : "=r"(ss));
	return ss & 0xFFFF;
}

/* Every trap from ring 3: user CS/SS in the frame, frame at the top of esp0, handler on
 * the kernel stack in SS 0x69. */
static bool frame_ok(struct trap_frame *f, u32 want_esp, bool report)
{
	u32 want_frame = ESP0 - 20;
	bool ok = (f->cs & 0xFFFF) == __USER_CS && (f->ss & 0xFFFF) == __USER_DS &&
		  f->esp == want_esp && last_trap.frame == want_frame &&
		  last_trap.handler_esp > (u32)kstack && last_trap.handler_esp < ESP0 &&
		  current_ss() == GUEST_DS;

	if (!ok && report && !bad_frames++)
		snprintf(bad_frame, sizeof(bad_frame),
			 "vector %u: cs %#x ss %#x esp %#x (want %#x) frame %#x (want %#x) "
			 "handler esp %#x ss %#x", f->vector, f->cs & 0xFFFF, f->ss & 0xFFFF, f->esp,
			 want_esp, last_trap.frame, want_frame, last_trap.handler_esp, current_ss());
	return ok;
}

static void sys_handler(struct trap_frame *f)
{
	syscalls++;
	if ((f->cs & 3) != 3)
		panic("usermode: int $0x80 from ring %u", f->cs & 3);
	frame_ok(f, f->edx, true);
	switch (f->eax) {
	case SYS_WRITE:
		written_len = MIN(f->ecx, sizeof(written) - 1);
		memcpy(written, (const void *)f->ebx, written_len);
		written[written_len] = '\0';
		printk("usermode: user wrote \"%s\"\n", written);
		f->eax = f->ecx;
		break;
	case SYS_EXIT:
		leave_user(f->ebx);
	case SYS_PROBE:
		if (f->ebx >= ARRAY_SIZE(probes))
			panic("usermode: bad probe %u", f->ebx);
		armed = f->ebx;
		probes[armed].fault_eip = f->ecx;
		probes[armed].resume_eip = f->esi;
		probes[armed].user_esp = f->esp;
		f->eax = 0;
		break;
	case SYS_ARM_TIMER:
		set_blocked(0);
		hcall(LHCALL_SET_CLOCKEVENT, 5000, 0, 0);
		f->eax = 0;
		break;
	case SYS_REPORT:
		if (f->ebx < NR_REPORTS) {
			reports[f->ebx] = f->ecx;
			reported[f->ebx] = true;
		}
		f->eax = 0;
		break;
	default:
		panic("usermode: bad system call %u", f->eax);
	}
}

/* The timer tick, which must find ring 3 running. */
static struct {
	u32 count, eip, cs, ss, esp, eflags, frame, irq_enabled, user_esp_ok;
} tick;

static void tick_handler(struct trap_frame *f)
{
	tick.count++;
	tick.eip = f->eip;
	tick.cs = f->cs & 0xFFFF;
	tick.ss = (f->cs & 3) == 3 ? f->ss & 0xFFFF : 0;
	tick.esp = (f->cs & 3) == 3 ? f->esp : 0;
	tick.eflags = f->eflags;
	tick.frame = last_trap.frame;
	tick.irq_enabled = last_trap.irq_enabled;
	set_blocked(1);
}

static void user_fault(struct trap_frame *f)
{
	struct user_probe *p;

	if ((f->cs & 3) != 3 || armed < 0)
		panic("usermode: unexpected trap %u at %#x (cs %#x, error %#x, cr2 %#x)",
		      f->vector, f->eip, f->cs & 0xFFFF, f->error_code, last_trap.cr2);
	p = &probes[armed];
	armed = -1;
	p->taken++;
	p->got_vector = f->vector;
	p->got_error = f->error_code;
	p->got_eip = f->eip;
	p->got_cs = f->cs & 0xFFFF;
	p->got_ss = f->ss & 0xFFFF;
	p->got_esp = f->esp;
	p->got_cr2 = last_trap.cr2;
	p->frame = last_trap.frame;
	p->handler_esp = last_trap.handler_esp;
	f->eip = p->resume_eip;
}

static void check_probe(struct user_probe *p)
{
	if (p->taken != 1) {
		fail(p->name, "%u traps (want 1, vector %u)", p->taken, p->vector);
		return;
	}
	/* [err] EIP CS EFLAGS ESP SS on esp0: the EIP slot is at esp0 - 20 either way (the
	 * stub pushes a 0 for vectors without an error code). */
	check(p->got_vector == p->vector && p->got_error == p->error_code &&
	      p->got_eip == p->fault_eip && p->got_cs == __USER_CS && p->got_ss == __USER_DS &&
	      p->got_esp == p->user_esp && p->frame == ESP0 - 20 &&
	      (!p->cr2 || p->got_cr2 == p->cr2), p->name,
	      "vector %u error %#x eip %#x cs %#x ss %#x esp %#x frame %#x cr2 %#x; want "
	      "vector %u error %#x eip %#x esp %#x frame %#x cr2 %#x", p->got_vector,
	      p->got_error, p->got_eip, p->got_cs, p->got_ss, p->got_esp, p->frame, p->got_cr2,
	      p->vector, p->error_code, p->fault_eip, p->user_esp, ESP0 - 20, p->cr2);
}

/* The process's handlers: its system calls, the faults the probes expect, the tick; NULL
 * handlers take them out again. */
static void set_user_handlers(trap_fn sys, trap_fn fault, trap_fn timer)
{
	static const u8 fault_vectors[] = { 0, 5, 6, 13, 14 };
	unsigned int i;

	trap_handlers[SYSCALL_VECTOR] = sys;
	for (i = 0; i < ARRAY_SIZE(fault_vectors); i++)
		trap_handlers[fault_vectors[i]] = fault;
	trap_handlers[0x20] = timer;
}

/* A page directory for the process: the kernel's PDEs (shared PTE pages, supervisor PTEs)
 * and PDE 1 with code (read-only), stack, and one supervisor-only page. */
static u32 *build_user_pgdir(void)
{
	u32 *pgd = early_alloc_page();
	u32 *pt = early_alloc_page();
	u32 i;

	for (i = PAGE_OFFSET >> 22; i < 1024; i++)
		pgd[i] = swapper_pg_dir[i];
	pgd[USER_BASE >> 22] = __pa(pt) | _PAGE_TABLE;
	pt[0] = __pa(user_text) | _PAGE_PRESENT | _PAGE_USER;
	pt[1] = __pa(early_alloc_page()) | _PAGE_PRESENT | _PAGE_RW | _PAGE_USER;
	pt[2] = __pa(early_alloc_page()) | _PAGE_PRESENT | _PAGE_RW;
	return pgd;
}

void test_usermode(void)
{
	u32 *pgd, status;
	unsigned int i;

	ktest_begin("usermode");
	if (user_text_end - user_text > (int)PAGE_SIZE || ((u32)user_text & ~PAGE_MASK))
		panic("usermode: the user program is not one page");
	probes[2].cr2 = U((u32)(user_text_end - user_text) - (u32)sizeof(user_message) + 1);
	probes[3].cr2 = (u32)&lguest_data;

	load_linux_gdt();
	trap_init();
	set_user_handlers(sys_handler, user_fault, tick_handler);

	pgd = build_user_pgdir();
	hcall(LHCALL_SET_STACK, GUEST_DS, ESP0, 2);
	hcall(LHCALL_NEW_PGTABLE, __pa(pgd), 0, 0);
	status = enter_user(USER_BASE, USER_STACK_TOP);
	hcall(LHCALL_NEW_PGTABLE, __pa(swapper_pg_dir), 0, 0);
	set_irq_enabled(0);
	set_user_handlers(NULL, NULL, NULL);
	hcall(LHCALL_SET_CLOCKEVENT, 0, 0, 0);
	set_blocked(1);

	check(status == EXIT_STATUS, "usermode.exit", "exit status %#x (want %#x)", status,
	      EXIT_STATUS);
	check(reported[REPORT_CS] && reports[REPORT_CS] == __USER_CS &&
	      reported[REPORT_SS] && reports[REPORT_SS] == __USER_DS, "usermode.ring3_segments",
	      "user CS %#x SS %#x (want 0x73 0x7b)", reports[REPORT_CS], reports[REPORT_SS]);
	check(reports[REPORT_WRITE] == sizeof(user_message) - 1 &&
	      !strcmp(written, user_message), "usermode.syscall_write",
	      "write returned %u, kernel got \"%s\"", reports[REPORT_WRITE], written);
	check(reports[REPORT_ESI] == 0x11111111 && reports[REPORT_EDI] == 0x22222222 &&
	      reports[REPORT_EBP] == 0x33333333, "usermode.syscall_preserves_registers",
	      "esi %#x edi %#x ebp %#x", reports[REPORT_ESI], reports[REPORT_EDI],
	      reports[REPORT_EBP]);
	check(syscalls > 10 && bad_frames == 0, "usermode.syscall_stack_switch",
	      "%u of %u system calls had a bad frame; first: %s", bad_frames, syscalls,
	      bad_frame);
	for (i = 0; i < ARRAY_SIZE(probes); i++)
		check_probe(&probes[i]);
	/* An IRQ in ring 3 (ABI §5.2, §5.3): on esp0, [EIP CS EFLAGS ESP SS] with the user's
	 * values, IF set, irq_enabled cleared by the interrupt gate. */
	check(tick.count == 1 && tick.cs == __USER_CS && tick.ss == __USER_DS &&
	      tick.eip >= USER_BASE && tick.eip < USER_BASE + PAGE_SIZE &&
	      tick.esp == USER_STACK_TOP && tick.frame == ESP0 - 20 &&
	      (tick.eflags & X86_EFLAGS_IF) && tick.irq_enabled == 0, "usermode.irq_in_ring3",
	      "%u ticks; eip %#x cs %#x ss %#x esp %#x eflags %#x frame %#x irq_enabled %#x",
	      tick.count, tick.eip, tick.cs, tick.ss, tick.esp, tick.eflags, tick.frame,
	      tick.irq_enabled);
	check(reported[REPORT_DS] && reports[REPORT_DS] == __USER_DS, "usermode.ds_preserved",
	      "user DS %#x after the traps (want 0x7b)", reports[REPORT_DS]);
	ktest_end();
}
