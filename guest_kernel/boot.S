/*
 * boot.S - the first instructions the Guest runs, before there is a stack or a C runtime.
 *
 * The Launcher (ABI §1, §2) has loaded us at physical 0x100000, although we are linked at
 * 0xC0100000, and started us in ring 1 (CS 0x61, DS/ES/SS 0x69) on its own page tables. They
 * identity-map guest RAM and nothing else, so until lguest_entry has aliased the kernel
 * window we may only touch memory through *physical* addresses: every symbol below is used
 * as PA(symbol).  ESI holds the physical address of the zero page and ESP is 0, so we must
 * not push anything yet.
 */
#include "lguest_abi.h"
#include "bootparam.h"

/* Physical address of a kernel symbol (no outer parentheses: gas must still see
 * "sym - off(,%reg,4)" as a displacement, not as a base register). */
#define PA(sym)		sym - PAGE_OFFSET

#define BOOT_STACK_SIZE	8192	/* 2.6.24's THREAD_SIZE */

	.section .text.head, "ax"
	.code32

/*
 * startup_32 - the ELF entry point (e_entry is its physical address, phys_startup_32).
 *
 * Mirrors the order of arch/x86/kernel/head_32.S in 2.6.24: decide whether we may keep the
 * Launcher's segments, clear BSS, save the zero page and the command line into the kernel
 * image (the Launcher's copies are in memory we will later treat as free), then branch on
 * hardware_subarch.
 */
	.globl startup_32
	.type startup_32, @function
startup_32:
	cld

	/* KEEP_SEGMENTS only means something from boot protocol 2.07 on.  Without it a kernel
	 * reloads GDT and segments with its own boot selectors; at ring 1 that lgdt raises #GP
	 * before any IDT exists and the Host kills us ("unhandled trap 13"), as it would kill
	 * an unmodified 2.6.24 kernel booted by a Launcher that forgot the flag. */
	cmpw	$BOOT_PROTOCOL_MIN, BP_VERSION(%esi)
	jb	reload_segments
	testb	$KEEP_SEGMENTS, BP_LOADFLAGS(%esi)
	jz	reload_segments

	/* BSS holds boot_params, the command line copy, page tables and the boot stack; the
	 * Launcher zeroed RAM, but the image must not depend on that. */
	xorl	%eax, %eax
	movl	$PA(__bss_start), %edi
	movl	$PA(__bss_stop), %ecx
	subl	%edi, %ecx
	shrl	$2, %ecx
	rep stosl

	/* The zero page, 4096 bytes from [ESI]. */
	movl	$PA(boot_params), %edi
	movl	$(BOOT_PARAMS_SIZE / 4), %ecx
	rep movsl

	/* 2048 bytes of command line from cmd_line_ptr (none if it is 0).  The copy is not
	 * NUL-terminated if the line is that long; lguest_init terminates it. */
	movl	PA(boot_params) + BP_CMD_LINE_PTR, %esi
	testl	%esi, %esi
	jz	1f
	movl	$PA(boot_command_line), %edi
	movl	$(COMMAND_LINE_SIZE / 4), %ecx
	rep movsl
1:
	/* Paravirtualised boot: the table holds virtual addresses, we still run physically. */
	movl	PA(boot_params) + BP_HARDWARE_SUBARCH, %eax
	cmpl	$NR_SUBARCH, %eax
	jae	bad_subarch
	movl	PA(subarch_entries)(,%eax,4), %eax
	subl	$PAGE_OFFSET, %eax
	jmp	*%eax
	.size startup_32, . - startup_32

/* What a kernel without KEEP_SEGMENTS does.  lgdt is privileged: in ring 1 it faults and
 * nothing after it runs; the ud2 only guards against a Host that wrongly lets it pass. */
	.type reload_segments, @function
reload_segments:
	lgdt	PA(boot_gdt_descr)
	ud2
	.size reload_segments, . - reload_segments

/* hardware_subarch 0 (PC) would build its own page tables and load CR3, which ring 1 cannot
 * do; 2 (Xen) is not us; anything >= 3 is unknown.  Linux gives up with ud2, so do we: with
 * no IDT loaded the Host kills the Guest ("unhandled trap 6"). */
	.type pc_entry, @function
pc_entry:
	.type xen_entry, @function
xen_entry:
	.type bad_subarch, @function
bad_subarch:
	ud2
	.size bad_subarch, . - bad_subarch

	.text
/*
 * lguest_entry - hardware_subarch 1.  Still physical addresses, still no stack.
 *
 * 1. LHCALL_LGUEST_INIT tells the Host where lguest_data is (it must be the first
 *    hypercall).  The Host fills in pgdir, reserve_mem, tsc_khz and time.
 * 2. The Launcher's directory maps RAM at virtual 0 only.  Copying its PDEs 0..31 to
 *    768..799 also maps the first 128 MiB at PAGE_OFFSET, which is where we are linked.
 * 3. Take the boot stack (virtual address) and jump, not call, into C at lguest_init's
 *    0xC0... address: a relative jump would land 3 GiB too low.  lguest_init never returns.
 */
	.globl lguest_entry
	.type lguest_entry, @function
lguest_entry:
	movl	$LHCALL_LGUEST_INIT, %eax
	movl	$PA(lguest_data), %edx
	int	$LGUEST_TRAP_ENTRY

	movl	PA(lguest_data) + LGUEST_DATA_pgdir, %esi
	leal	((PAGE_OFFSET >> 22) * 4)(%esi), %edi
	movl	$EARLY_PDES, %ecx
	rep movsl

	movl	$boot_stack_top, %esp
	xorl	%ebp, %ebp		/* end of the frame-pointer chain for debuggers */
	pushl	$0			/* fake return address: lguest_init does not return */
	movl	$lguest_init, %eax
	jmp	*%eax
	.size lguest_entry, . - lguest_entry

/*
 * lguest_iret - return from an interrupt or trap handler (unused until we load an IDT).
 *
 * A real iret in ring 1 may not change IF, and our "interrupts on" lives in
 * lguest_data.irq_enabled anyway, so the EFLAGS being returned to must be stored there first.
 * Between that store and the iret an injected interrupt would push a frame on top of the one
 * we are about to pop; the Host therefore never injects while EIP is in
 * [lguest_noirq_start, lguest_noirq_end) - two addresses it reads once, at LGUEST_INIT.
 * The store uses %ss because DS may hold a user selector here.
 *
 *   stack on entry: EIP CS EFLAGS [ESP SS];  after pushl %eax, EFLAGS is at 12(%esp).
 */
	.globl lguest_iret
	.type lguest_iret, @function
lguest_iret:
	pushl	%eax
	movl	12(%esp), %eax
	.globl lguest_noirq_start
lguest_noirq_start:
	movl	%eax, %ss:lguest_data + LGUEST_DATA_irq_enabled
	popl	%eax
	iret
	.size lguest_iret, . - lguest_iret

/*
 * noirq_spin(n) - for the conformance suite (tests/timer.c): a loop of n iterations that
 * lies inside the noirq window too, so a test can sit in the window for as long as it likes
 * and check that the Host holds a due interrupt back until EIP leaves it.  The Host reads the
 * window once, at LGUEST_INIT, so the loop has to live here.  Nothing else calls it.
 */
	.globl noirq_spin
	.type noirq_spin, @function
noirq_spin:
	movl	4(%esp), %ecx
1:	decl	%ecx
	jnz	1b
	ret
	.size noirq_spin, . - noirq_spin
	.globl lguest_noirq_end
lguest_noirq_end:

	.section .rodata
	.balign 4
/* Indexed by boot_params.hardware_subarch; kernel virtual addresses, like Linux's table. */
subarch_entries:
	.long	pc_entry		/* 0: PC */
	.long	lguest_entry		/* 1: lguest */
	.long	xen_entry		/* 2: Xen */
NR_SUBARCH = (. - subarch_entries) / 4

/* The GDT a bare-metal boot would load (only ever reached through reload_segments). */
	.balign 8
boot_gdt:
	.quad	0, 0
	.quad	0x00CF9A000000FFFF	/* 0x10: flat 4 GiB code, ring 0 */
	.quad	0x00CF92000000FFFF	/* 0x18: flat 4 GiB data, ring 0 */
boot_gdt_end:
	.balign 4
	.word	0			/* pad so the 6-byte pseudo-descriptor's base is aligned */
boot_gdt_descr:
	.word	boot_gdt_end - boot_gdt - 1
	.long	PA(boot_gdt)

	.section .bss..page_aligned, "aw", @nobits
	.balign BOOT_STACK_SIZE
/* The stack lguest_init and everything after it run on (2.6.24: init_thread_union). */
	.globl boot_stack
boot_stack:
	.skip	BOOT_STACK_SIZE
	.globl boot_stack_top
boot_stack_top:

	.section .note.GNU-stack, "", @progbits
