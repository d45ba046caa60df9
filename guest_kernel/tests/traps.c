/*
 * traps.c - "lgemu.test=traps": exceptions and software interrupts at ring 1 (ABI §5).
 *
 * With 2.6.24's IDT loaded, provoke each kind of trap and check the frame the handler gets:
 * [err] EIP CS EFLAGS on the current stack, CS 0x61, EIP of the faulting instruction for a
 * fault and of the next instruction for `int n`; the error code where the vector has one;
 * lguest_data.cr2 for a page fault; the IF bit and irq_enabled as ABI §5.2/§5.6 say for
 * host-delivered and direct traps.
 */
#include "ktest.h"
#include "tests.h"

#define TEST_VA		0x00800000UL	/* PDE 2: nothing maps it in swapper_pg_dir */
#define TEST_VALUE	0x5A5A5A5AUL

static u32 *test_frame;		/* the page the #PF handler maps at TEST_VA */
static u32 pf_count;

/* A 2.6.24-style do_page_fault for one address: map the page and retry the instruction. */
static void map_on_fault(struct trap_frame *f)
{
	u32 cr2 = READ_ONCE(lguest_data.cr2);
	u32 *pde = &swapper_pg_dir[cr2 >> 22];
	u32 *pt;

	(void)f;
	pf_count++;
	if ((cr2 & PAGE_MASK) != TEST_VA)
		panic("traps: page fault at %#x (eip %#x, error %#x)", cr2, f->eip, f->error_code);
	if (!(*pde & _PAGE_PRESENT))
		*pde = __pa(early_alloc_page()) | _PAGE_TABLE;
	pt = __va(*pde & PAGE_MASK);
	pt[(cr2 >> PAGE_SHIFT) & 1023] = __pa(test_frame) | _PAGE_PRESENT | _PAGE_RW;
	hcall(LHCALL_SET_PTE, __pa(swapper_pg_dir), cr2 & PAGE_MASK,
	      pt[(cr2 >> PAGE_SHIFT) & 1023]);
}

static void unmap_test_page(void)
{
	u32 *pde = &swapper_pg_dir[TEST_VA >> 22];

	if (*pde & _PAGE_PRESENT) {
		u32 *pt = __va(*pde & PAGE_MASK);

		pt[(TEST_VA >> PAGE_SHIFT) & 1023] = 0;
		hcall(LHCALL_SET_PTE, __pa(swapper_pg_dir), TEST_VA, 0);
	}
}

static void test_page_faults(void)
{
	u32 n, value = 0, irq_in_handler, eflags;

	test_frame = early_alloc_page();
	test_frame[0] = TEST_VALUE;
	trap_handlers[14] = map_on_fault;

	/* Read of an unmapped address, "interrupts on": the handler must see cr2, error 0,
	 * EIP at the load, IF set in the frame and irq_enabled 0 (vector 14 is an interrupt
	 * gate); the retried load reads the page the handler mapped. */
	n = last_trap.count;
	pf_count = 0;
	set_irq_enabled(X86_EFLAGS_IF);
	__asm__ __volatile__(PROBE_ASM("movl (%1), %0") : "=r"(value) : "r"(TEST_VA) : "memory");
	irq_in_handler = last_trap.irq_enabled;
	eflags = last_trap.eflags;
	probe_resume = 0;	/* retried, not resumed: the probe stays armed */
	if (pf_count != 1 || last_trap.count - n != 1 || last_trap.vector != 14)
		fail("traps.pf_read", "%u page faults, %u traps (last vector %u)", pf_count,
		     last_trap.count - n, last_trap.vector);
	else
		check(last_trap.cr2 == TEST_VA && last_trap.error_code == 0 &&
		      last_trap.eip == probe_start && last_trap.cs == GUEST_CS &&
		      last_trap.frame == probe_esp - 12,
		      "traps.pf_read", "cr2 %#x error %#x eip %#x (want %#lx 0 %#x) cs %#x frame %#x",
		      last_trap.cr2, last_trap.error_code, last_trap.eip, TEST_VA, probe_start,
		      last_trap.cs, last_trap.frame);
	check(value == TEST_VALUE, "traps.pf_retry", "retried load read %#x, want %#lx",
	      value, TEST_VALUE);
	check(irq_in_handler == 0 && (eflags & X86_EFLAGS_IF),
	      "traps.pf_interrupt_gate",
	      "irq_enabled in handler %#x (want 0), pushed EFLAGS %#x (want IF set)",
	      irq_in_handler, eflags);
	check(READ_ONCE(lguest_data.irq_enabled) & X86_EFLAGS_IF, "traps.pf_iret_restores_if",
	      "irq_enabled after lguest_iret %#x", READ_ONCE(lguest_data.irq_enabled));

	/* Write to an unmapped address with "interrupts off": error code 2 (write, not
	 * present), IF clear in the pushed EFLAGS (ABI §5.2 step 2). */
	unmap_test_page();
	set_irq_enabled(0);
	n = last_trap.count;
	pf_count = 0;
	__asm__ __volatile__(PROBE_ASM("movl %1, (%0)")
			     : : "r"(TEST_VA + 4), "r"(0x1234567UL) : "memory");
	probe_resume = 0;
	set_irq_enabled(0);
	if (pf_count != 1 || last_trap.count - n != 1)
		fail("traps.pf_write", "%u page faults, %u traps", pf_count, last_trap.count - n);
	else
		check(last_trap.cr2 == TEST_VA + 4 && last_trap.error_code == 2 &&
		      last_trap.eip == probe_start && !(last_trap.eflags & X86_EFLAGS_IF) &&
		      test_frame[1] == 0x1234567,
		      "traps.pf_write", "cr2 %#x error %#x eip %#x (want %#x) eflags %#x value %#x",
		      last_trap.cr2, last_trap.error_code, last_trap.eip, probe_start,
		      last_trap.eflags, test_frame[1]);
	unmap_test_page();
	trap_handlers[14] = NULL;
}

static void test_fpu(void)
{
	u32 n, one = 0, two = 0;

	trap_handlers[7] = nm_handler;
	nm_count = 0;
	hcall(LHCALL_TS, 8, 0, 0);
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("fninit") : : : "memory");
	probe_resume = 0;
	if (nm_count == 1 && last_trap.count - n == 1)
		check(last_trap.vector == 7 && last_trap.eip == probe_start &&
		      last_trap.cs == GUEST_CS && last_trap.frame == probe_esp - 12,
		      "traps.nm", "vector %u eip %#x (want %#x) frame %#x", last_trap.vector,
		      last_trap.eip, probe_start, last_trap.frame);
	else
		fail("traps.nm", "%u #NM, %u traps with TS set", nm_count, last_trap.count - n);

	/* TS is clear now: FPU work must run without any trap. */
	n = last_trap.count;
	__asm__ __volatile__("fld1\n\tfld1\n\tfaddp\n\tfistpl %0\n\tfld1\n\tfistpl %1"
			     : "=m"(two), "=m"(one) : : "memory");
	check(last_trap.count == n && one == 1 && two == 2, "traps.nm_clts",
	      "%u traps after clts, fld1/faddp gave %u and %u", last_trap.count - n, two, one);
	trap_handlers[7] = NULL;
}

static u32 db_count, db_eip, db_eflags, db_live_eflags;

/* do_debug, reduced: note where we are and stop single-stepping. */
static void db_handler(struct trap_frame *f)
{
	db_count++;
	db_eip = f->eip;
	db_eflags = f->eflags;
	db_live_eflags = read_eflags();
	f->eflags &= ~0x100;
}

/*
 * EFLAGS.TF set by popf: #DB (vector 1) after the instruction that follows the popf, EIP at
 * the one after that.  Through a trap gate #DB is a direct trap (ABI §5.6): the CPU delivers it
 * and, as for any gate, clears TF, so the handler itself is not single-stepped.
 *
 * (2.6.24's own gate for vector 1 is an interrupt gate: the Host delivers it and does not
 * clear TF (ABI §5.2), so the handler would trap again after its first instruction, forever.
 * That is faithful to the ABI and not exercised here.)
 */
static void test_single_step(void)
{
	u32 after_first = 0;

	set_gate(1, GATE_TRAP, 0);
	trap_handlers[1] = db_handler;
	db_count = 0;
	__asm__ __volatile__("movl $1f, %0\n\t"
			     "pushfl\n\t"
			     "orl $0x100, (%%esp)\n\t"
			     "popfl\n\t"
			     "nop\n"
			     "1:\tnop\n\t"
			     "nop"
			     : "=m"(after_first) : : "memory", "cc");
	trap_handlers[1] = NULL;
	set_gate(1, GATE_INTERRUPT, 0);
	check(db_count == 1 && db_eip == after_first && (db_eflags & 0x100) &&
	      !(db_live_eflags & 0x100), "traps.single_step",
	      "%u #DB, eip %#x (want %#x), pushed EFLAGS %#x (want TF), EFLAGS in the handler "
	      "%#x (want no TF)", db_count, db_eip, after_first, db_eflags, db_live_eflags);
}

/* An unmasked x87 exception is reported as #MF (vector 16, CR0.NE) at the next waiting
 * floating-point instruction. */
static void test_x87_error(void)
{
	static const u16 cw_unmask_zero_divide = 0x037B;
	u32 n = last_trap.count;

	__asm__ __volatile__("fninit\n\t"
			     "fldcw %0\n\t"
			     "fld1\n\t"
			     "fldz\n\t"
			     "fdivrp\n\t"
			     PROBE_ASM("fwait")
			     "fnclex\n\t"
			     "fninit"
			     : : "m"(cw_unmask_zero_divide) : "memory");
	expect_trap("traps.x87_mf", n, 16, -1, probe_start);
}

void test_traps(void)
{
	u32 n, sel;

	ktest_begin("traps");
	trap_init();

	/* #DE: a trap gate, so a direct trap (ABI §5.6): EIP of the div, no error code. */
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("divl %%ecx") : : "a"(1), "d"(0), "c"(0) : "memory");
	expect_trap("traps.de", n, 0, -1, probe_start);

	/* #UD (ud2). */
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("ud2") : : : "memory");
	expect_trap("traps.ud", n, 6, -1, probe_start);

	/* #GP loading a selector beyond the GDT limit: error code = the selector. */
	n = last_trap.count;
	sel = 0x1230;
	__asm__ __volatile__(PROBE_ASM("movw %w0, %%fs") : : "r"(sel) : "memory");
	expect_trap("traps.gp_selector", n, 13, 0x1230, probe_start);

	/* #GP from a privileged instruction at ring 1 (cli): error code 0. */
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("cli") : : : "memory");
	expect_trap("traps.gp_cli", n, 13, 0, probe_start);

	test_page_faults();
	test_fpu();

	/* int3 through 2.6.24's DPL-3 *interrupt* gate: not a direct trap, so it meets the
	 * Host's DPL-0 gate and becomes #GP(3*8+2) at the int3 (ABI §5.6, §9.2). */
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("int3") : : : "memory");
	expect_trap("traps.int3_interrupt_gate_gp", n, 13, 3 * 8 + 2, probe_start);

	/* With a DPL-3 *trap* gate it is direct: a breakpoint, EIP after the int3. */
	set_gate(3, GATE_TRAP, 3);
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("int3") : : : "memory");
	expect_trap("traps.int3_trap_gate", n, 3, -1, probe_end);
	set_gate(3, GATE_INTERRUPT, 3);

	/* into with OF set: vector 4, DPL-3 trap gate, EIP after the into. */
	n = last_trap.count;
	__asm__ __volatile__("movl $0x7fffffff, %%eax\n\taddl $1, %%eax\n\t"
			     PROBE_ASM("into") : : : "eax", "memory");
	expect_trap("traps.into", n, 4, -1, probe_end);

	/* int $0x80 at ring 1 through the DPL-3 trap gate: direct, so EFLAGS is pushed as it
	 * really is (IF=1) whatever irq_enabled says, and irq_enabled is left alone. */
	set_irq_enabled(0);
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("int $0x80") : : : "memory");
	if (expect_trap("traps.int80", n, SYSCALL_VECTOR, -1, probe_end))
		check((last_trap.eflags & X86_EFLAGS_IF) && last_trap.irq_enabled == 0,
		      "traps.int80_direct_eflags",
		      "pushed EFLAGS %#x (want IF set), irq_enabled in handler %#x (want 0)",
		      last_trap.eflags, last_trap.irq_enabled);
	set_irq_enabled(0);

	/* The syscall vector through an *interrupt* gate is not direct: #GP(0x80*8+2). */
	set_gate(SYSCALL_VECTOR, GATE_INTERRUPT, 3);
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("int $0x80") : : : "memory");
	expect_trap("traps.int80_interrupt_gate_gp", n, 13, 0x80 * 8 + 2, probe_start);
	set_gate(SYSCALL_VECTOR, GATE_TRAP, 3);

	/* A vector with no gate at all: #GP(vector*8+2). */
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("int $0x41") : : : "memory");
	expect_trap("traps.int_no_gate_gp", n, 13, 0x41 * 8 + 2, probe_start);

	/* int n to a DPL-0 trap gate from ring 1 (gate DPL < CPL): #GP(n*8+2). */
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("int $0x05") : : : "memory");
	expect_trap("traps.int_dpl0_gate_gp", n, 13, 5 * 8 + 2, probe_start);

	/* #BR: bound with the index below the lower bound; a trap gate, EIP at the bound. */
	{
		static s32 bounds[2] = { 5, 10 };

		n = last_trap.count;
		__asm__ __volatile__(PROBE_ASM("boundl %0, %1")
				     : : "r"(0), "m"(bounds) : "memory");
		expect_trap("traps.bound", n, 5, -1, probe_start);
	}

	/* #PF on an instruction fetch: EIP and cr2 are the target, error code 0 (no NX). */
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("jmp *%0") : : "r"(TEST_VA) : "memory");
	if (expect_trap("traps.pf_fetch", n, 14, 0, TEST_VA))
		check(last_trap.cr2 == TEST_VA, "traps.pf_fetch_cr2", "cr2 %#x", last_trap.cr2);

	/* icebp (F1, "int1"): a #DB trap like a hardware one - no gate DPL check - so it
	 * reaches 2.6.24's vector-1 interrupt gate with EIP after the icebp. */
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM(".byte 0xf1") : : : "memory");
	expect_trap("traps.icebp", n, 1, -1, probe_end);

	test_single_step();
	test_x87_error();

	/* SYSENTER is disabled by the Host (ABI §5.6: SYSENTER_CS is 0 while the guest runs), so
	 * it raises #GP(0); SYSCALL does not exist in 32-bit mode on this (Intel) CPU: #UD. */
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("sysenter") : : : "memory");
	expect_trap("traps.sysenter_gp", n, 13, 0, probe_start);
	n = last_trap.count;
	__asm__ __volatile__(PROBE_ASM("syscall") : : : "memory");
	expect_trap("traps.syscall_ud", n, 6, -1, probe_start);

	/* The guest can never own vector 31 (ABI §5.1): a gate for it is ignored and int $0x1f
	 * stays a hypercall. */
	set_gate(LGUEST_TRAP_ENTRY, GATE_TRAP, 3);
	n = last_trap.count;
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0);
	check(last_trap.count == n, "traps.vector31_gate_ignored",
	      "a hypercall after LOAD_IDT_ENTRY(31) trapped (vector %u)", last_trap.vector);

	set_irq_enabled(0);
	ktest_end();
}
