/*
 * usermode_user.S - the ring-3 program of "lgemu.test=usermode" (tests/usermode.c).
 *
 * One page of position-dependent code: the kernel maps the physical page holding user_text
 * at USER_BASE with the US bit and runs it at ring 3 (CS 0x73, SS 0x7B).  Addresses inside
 * the page are written U(label).  System calls are `int $0x80` with EAX = number, arguments
 * in EBX, ECX, ESI, and the caller's ESP in EDX (the kernel compares it with the ESP in
 * the trap frame).  Before each instruction that must fault, SYS_PROBE tells the kernel
 * where it is and where to resume, so the kernel can check the fault and skip it.
 */
#define USER_BASE	0x00400000
#define U(sym)		(USER_BASE + (sym) - user_text)

#define SYS_WRITE	1	/* ebx = string, ecx = length; returns ecx */
#define SYS_EXIT	2	/* ebx = status; does not return */
#define SYS_PROBE	3	/* ebx = probe number, ecx = fault EIP, esi = resume EIP */
#define SYS_REPORT	4	/* ebx = report number, ecx = value */
#define SYS_ARM_TIMER	5	/* a timer tick in 5 us */

#define REPORT_CS	0
#define REPORT_WRITE	1
#define REPORT_ESI	2
#define REPORT_EDI	3
#define REPORT_EBP	4
#define REPORT_SS	5
#define REPORT_DS	6

#define SUPERVISOR_PAGE	(USER_BASE + 0x2000)
#define UNMAPPED	0x00800000

.macro syscall nr
	movl	$\nr, %eax
	movl	%esp, %edx
	int	$0x80
.endm

.macro report what, value
	movl	$\what, %ebx
	movl	\value, %ecx
	syscall	SYS_REPORT
.endm

/* Probe n: the instructions must fault on their first one; the kernel resumes after them. */
.macro probe n, insns:vararg
	movl	$\n, %ebx
	movl	$U(101f), %ecx
	movl	$U(102f), %esi
	syscall	SYS_PROBE
101:	\insns
102:
.endm

	.section .text.user, "ax"
	.balign 4096
	.globl user_text
user_text:
	movl	%cs, %eax
	report	REPORT_CS, %eax
	movl	%ss, %eax
	report	REPORT_SS, %eax

	movl	$U(message), %ebx
	movl	$(message_end - message), %ecx
	syscall	SYS_WRITE
	report	REPORT_WRITE, %eax

	/* Callee registers survive a system call. */
	movl	$0x11111111, %esi
	movl	$0x22222222, %edi
	movl	$0x33333333, %ebp
	report	REPORT_ESI, %esi
	report	REPORT_EDI, %edi
	report	REPORT_EBP, %ebp

	/* Page faults (ABI §7.1): supervisor pages, a read-only page, no page at all. */
	probe	0, movl SUPERVISOR_PAGE, %eax
	probe	1, movl %eax, SUPERVISOR_PAGE + 4
	probe	2, movl %eax, U(message)
	probe	3, movl lguest_data, %eax
	probe	4, movl UNMAPPED, %eax
	/* General protection: the hypercall gate is DPL 1 (ABI §3.1), I/O needs IOPL (ABI §5.7),
	 * cli/hlt are privileged, int3 through an interrupt gate and int $0x20 through a
	 * DPL-0 gate are not direct traps (ABI §5.6). */
	probe	5, int $0x1f
	probe	6, inb $0x60, %al
	probe	7, outb %al, $0x80
	probe	8, inl (%dx), %eax
	probe	9, cli
	probe	10, hlt
	probe	11, int3
	probe	12, int $0x20
	probe	13, sysenter
	/* Exceptions are not `int n`: the gate's DPL 0 does not matter (trap gates). */
	xorl	%edi, %edi
	probe	14, divl %edi
	probe	15, ud2
	probe	16, boundl %eax, U(bounds)

	/* A timer interrupt while ring 3 runs: spin 40k instructions (400 us) past it. */
	syscall	SYS_ARM_TIMER
	movl	$20000, %ecx
1:	decl	%ecx
	jnz	1b

	/* All those traps returned with the user's data segment. */
	movl	%ds, %eax
	report	REPORT_DS, %eax

	movl	$0x5EE, %ebx
	syscall	SYS_EXIT
	ud2

	.balign 4
bounds:
	.long	5, 10		/* SYS_PROBE returns 0 in EAX: below the lower bound */
message:
	.ascii	"hello from ring 3"
message_end:
	.globl user_text_end
user_text_end:
	.balign 4096

	.section .note.GNU-stack, "", @progbits
