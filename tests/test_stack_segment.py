"""A guest that hands SET_STACK a segment ring 1 cannot use is killed when a trap needs it."""

from __future__ import annotations

import pytest
from guestasm import assert_killed

from lgemu.kills import UnusableStackSegment

USER_TRAP = r"""
	INIT
	HCALL	$LHCALL_LOAD_GDT, $gdt, $32
	SET_GATE 0x80, handler, GATE_TRAP | GATE_DPL3
	HCALL	$LHCALL_SET_STACK, $STACK_SEGMENT, $kstack_top, $1
	pushl	$0x7b			/* iret to ring 3: SS, ESP, EFLAGS, CS, EIP */
	pushl	$ustack_top
	pushl	$0x202
	pushl	$0x73
	pushl	$user
	iret
user:
	int	$0x80
	jmp	user
handler:
	POWER_DOWN
"""
GDT = r"""
	.balign	8
gdt:	.fill	12, 8, 0
	.quad	0x00CF9A000000FFFF	/* 12 kernel code (DPL 0: the Host makes it 1) */
	.quad	0x00CF92000000FFFF	/* 13 kernel data */
	.quad	0x00CFFA000000FFFF	/* 14 user code */
	.quad	0x00CFF2000000FFFF	/* 15 user data */
	.fill	16, 8, 0
	.balign	16
	.fill	1024, 1, 0
kstack_top:
	.fill	1024, 1, 0
ustack_top:
"""


@pytest.mark.parametrize("segment, killed", [(0x69, False), (0x09, True), (0x79, True),
                                             (0x61, True)])
def test_trap_from_ring_3_needs_a_usable_stack_segment(asm_guest, segment: int,
                                                       killed: bool) -> None:
    run = asm_guest(f"\t.set STACK_SEGMENT, {segment:#x}\n" + USER_TRAP, GDT)
    if not killed:
        assert (run.status, run.err) == (0, "")
        return
    assert_killed(run, lambda kill: isinstance(kill, UnusableStackSegment)
                  and kill.segment == segment)
