/*
 * trapentry.S - trap entry stubs and the ring-3 round trip for the conformance programs.
 *
 * Every vector has a 16-byte stub at trap_stubs + 16 * vector.  It pushes a 0 in place of an
 * error code for vectors without one (so the frame always has the same shape), then the
 * vector number, and joins trap_common, which saves the rest (struct trap_frame in ktest.h),
 * loads the kernel data segment and calls trap_dispatch.  The way back restores everything,
 * drops vector and error code and leaves through lguest_iret, as 2.6.24's entry.S does.
 */
#include "lguest_abi.h"

#define GUEST_DS	0x69
#define USER_CS		0x73
#define USER_DS		0x7B
#define USER_EFLAGS	0x202	/* IF and the reserved bit 1 */

	.text
	.balign 16
	.globl trap_stubs
trap_stubs:
	.set vec, 0
	.rept 256
	.balign 16
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17)
	.else
	pushl	$0
	.endif
	pushl	$vec
	jmp	trap_common
	.set vec, vec + 1
	.endr

	.type trap_common, @function
trap_common:
	pushal
	pushl	%ds
	pushl	%es
	pushl	%fs
	pushl	%gs
	movl	$GUEST_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	cld
	pushl	%esp			/* struct trap_frame * */
	call	trap_dispatch
	addl	$4, %esp
	.globl trap_return
trap_return:
	popl	%gs
	popl	%fs
	popl	%es
	popl	%ds
	popal
	addl	$8, %esp		/* vector, error code */
	jmp	lguest_iret
	.size trap_common, . - trap_common

/*
 * u32 enter_user(u32 eip, u32 esp): run ring-3 code at eip on esp until a trap handler
 * calls leave_user(code); returns code.  Entering is what 2.6.24 does on the way back to
 * user space: DS/ES = __USER_DS, an iret frame [EIP CS EFLAGS ESP SS], lguest_iret.
 */
	.globl enter_user
	.type enter_user, @function
enter_user:
	pushl	%ebp
	pushl	%ebx
	pushl	%esi
	pushl	%edi
	movl	%esp, user_return_esp
	movl	20(%esp), %eax		/* eip */
	movl	24(%esp), %ecx		/* esp */
	pushl	$USER_DS
	pushl	%ecx
	pushl	$USER_EFLAGS
	pushl	$USER_CS
	pushl	%eax
	movl	$USER_DS, %edx
	movl	%edx, %ds
	movl	%edx, %es
	jmp	lguest_iret
	.size enter_user, . - enter_user

/* void leave_user(u32 code): from a handler on the ring-0 stack, back into enter_user. */
	.globl leave_user
	.type leave_user, @function
leave_user:
	movl	4(%esp), %eax
	movl	user_return_esp, %esp
	popl	%edi
	popl	%esi
	popl	%ebx
	popl	%ebp
	ret
	.size leave_user, . - leave_user

	.bss
	.balign 4
user_return_esp:
	.skip	4

	.section .note.GNU-stack, "", @progbits
