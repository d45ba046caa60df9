"""Unit tier: `lgemu.host.traps.Traps` and `lgemu.host.interrupts.Interrupts` on their own
(no guest runs; see tests/hostunit.py).  What is checked is what the guest would see: the
frame on its stack, the registers its handler starts with, `irq_enabled` and the time in
`lguest_data`, and the kill reasons."""

from __future__ import annotations

import struct

import pytest
from hostunit import host, killed

from lgemu.abi import GUEST_CS, GUEST_DS, LD_BLOCKED, LD_TIME, USER_CS, USER_DS, X86_EFLAGS_IF
from lgemu.host.traps import GATE_INTERRUPT, GATE_TRAP
from lgemu.machine.cpu import Reg

HANDLER = 0x5000
STACK_TOP = 0x9000  # ring-1 stack: the page below is mapped
USER_STACK = 0x30000
EFLAGS = 0x202 | 0x100  # IF and TF
USER_CODE = 0x00CFFA000000FFFF  # flat, DPL 3
USER_DATA = 0x00CFF2000000FFFF


def gate(handler: int, kind: int = GATE_TRAP, dpl: int = 0, present: bool = True) -> tuple:
    """(lo, hi) of an IDT entry, as LOAD_IDT_ENTRY receives it."""
    lo = GUEST_CS << 16 | (handler & 0xFFFF)
    hi = (handler & 0xFFFF0000) | (0x8000 if present else 0) | dpl << 13 | kind << 8
    return lo, hi


def ready(ring: int = 1):
    """Host components with a mapped ring-1 stack (and user stack), the CPU at 0x1234."""
    h = host()
    h.map(STACK_TOP - 0x1000, STACK_TOP - 0x1000)
    h.map(USER_STACK - 0x1000, USER_STACK - 0x1000, user=True)
    h.data.irq_enabled = X86_EFLAGS_IF
    entries = list(h.gdt.entries)
    entries[USER_CS >> 3], entries[USER_DS >> 3] = USER_CODE, USER_DATA
    h.gdt.load(entries)  # as the guest's LOAD_GDT would
    if ring == 1:
        h.cpu.enter(1, GUEST_CS, GUEST_DS, 0x1234, STACK_TOP)
    else:
        h.cpu.enter(3, USER_CS, USER_DS, 0x1234, USER_STACK)
    h.cpu.set_reg(Reg.EFLAGS, EFLAGS)
    return h


def stack_words(h, esp: int, n: int) -> list[int]:
    return list(struct.unpack(f"<{n}I", h.paging.read_virtual(esp, 4 * n)))


@pytest.mark.parametrize(("vector", "kept"), [(0, True), (3, True), (0x80, True), (0x20, True),
                                               (2, False), (8, False), (15, False),
                                               (31, False), (0x40, False), (0xFF, False)])
def test_only_the_vectors_lguest_kept_are_stored(vector: int, kept: bool) -> None:
    h = host()
    h.traps.load_idt_entry(vector, *gate(HANDLER))
    assert (h.traps.idt[vector] is not None) == kept


def test_a_gate_of_another_type_kills_and_a_not_present_one_removes() -> None:
    h = host()
    h.traps.load_idt_entry(6, *gate(HANDLER))
    h.traps.load_idt_entry(6, *gate(HANDLER, present=False))
    assert h.traps.idt[6] is None
    with killed("bad IDT type 5"):  # a task gate
        h.traps.load_idt_entry(6, *gate(HANDLER, kind=5))


def test_direct_traps_are_trap_gates_outside_the_host_handled_vectors() -> None:
    h = host()
    for vector in (3, 7, 13, 14, 0x80):
        h.traps.load_idt_entry(vector, *gate(HANDLER))
    h.traps.load_idt_entry(0, *gate(HANDLER, kind=GATE_INTERRUPT))
    assert [v for v in (0, 3, 7, 13, 14, 0x80) if h.traps.is_direct(v)] == [3, 0x80]


def test_software_interrupts_check_the_gate_dpl() -> None:
    h = host()
    h.traps.load_idt_entry(0x80, *gate(HANDLER, dpl=3))
    h.traps.load_idt_entry(3, *gate(HANDLER, dpl=0))
    assert h.traps.software_interrupt_allowed(0x80, 3)
    assert h.traps.software_interrupt_allowed(3, 0) and not h.traps.software_interrupt_allowed(3, 3)
    assert h.traps.software_interrupt_allowed(0x1F, 1)  # the hypercall gate: DPL 1
    assert not h.traps.software_interrupt_allowed(0x1F, 3)
    assert not h.traps.software_interrupt_allowed(0x21, 1)  # no gate


def test_a_fault_from_ring_1_is_pushed_on_the_current_stack() -> None:
    h = ready()
    h.traps.load_idt_entry(13, *gate(HANDLER, kind=GATE_INTERRUPT))
    h.data.irq_enabled = 0  # the guest had interrupts off: the pushed EFLAGS says so
    h.traps.reflect(13, 0x1234, 0x58)
    assert h.cpu.reg(Reg.EIP) == HANDLER
    assert h.cpu.reg(Reg.ESP) == STACK_TOP - 16
    assert stack_words(h, STACK_TOP - 16, 4) == [0x58, 0x1234, GUEST_CS, EFLAGS & ~X86_EFLAGS_IF]
    assert h.data.irq_enabled == 0


def test_an_interrupt_gate_turns_virtual_interrupts_off_and_a_trap_gate_does_not() -> None:
    h = ready()
    h.traps.load_idt_entry(6, *gate(HANDLER, kind=GATE_INTERRUPT))
    h.traps.reflect(6, 0x1234, 0)
    assert h.data.irq_enabled == 0
    assert stack_words(h, h.cpu.reg(Reg.ESP), 3) == [0x1234, GUEST_CS, EFLAGS]  # no error code
    h = ready()
    h.traps.load_idt_entry(13, *gate(HANDLER, kind=GATE_TRAP))
    h.traps.reflect(13, 0x1234, 0)
    assert h.data.irq_enabled == X86_EFLAGS_IF


def test_a_direct_trap_clears_tf_as_the_cpu_does() -> None:
    h = ready()
    h.traps.load_idt_entry(3, *gate(HANDLER, kind=GATE_TRAP, dpl=3))
    h.traps.deliver(3, 0x1235, None, direct=True, software=True)
    assert h.cpu.reg(Reg.EIP) == HANDLER
    assert stack_words(h, h.cpu.reg(Reg.ESP), 3) == [0x1235, GUEST_CS, EFLAGS]
    assert h.cpu.reg(Reg.EFLAGS) & 0x100 == 0


def test_a_trap_from_ring_3_switches_to_the_set_stack() -> None:
    h = ready(ring=3)
    h.set_stack(GUEST_DS, STACK_TOP)
    h.traps.load_idt_entry(14, *gate(HANDLER, kind=GATE_INTERRUPT))
    h.traps.reflect(14, 0x1234, 6)
    assert (h.cpu.cpl(), h.cpu.reg(Reg.EIP), h.cpu.reg(Reg.SS)) == (1, HANDLER, GUEST_DS)
    assert h.cpu.reg(Reg.ESP) == STACK_TOP - 24
    assert stack_words(h, STACK_TOP - 24, 6) == [6, 0x1234, USER_CS, EFLAGS, USER_STACK,
                                                 USER_DS]


def test_a_stack_segment_that_is_not_ring_1_data_is_trap_256() -> None:
    h = ready(ring=3)
    h.set_stack(GUEST_CS, STACK_TOP)  # code, not data
    h.traps.load_idt_entry(14, *gate(HANDLER))
    with killed("unhandled trap 256 at 0x1234 (stack segment 0x61 from SET_STACK is not a "
                "usable ring-1 data segment)"):
        h.traps.reflect(14, 0x1234, 6)


def test_no_gate_kills_with_the_fault_and_a_stack_that_is_gone_too() -> None:
    h = ready()
    with killed("unhandled trap 6 at 0x1234 (0x0)"):
        h.traps.reflect(6, 0x1234, 0)
    h.cpu.set_reg(Reg.CR2, 0xDEAD000)
    with killed("unhandled trap 14 at 0x1234 (0xdead000)"):
        h.traps.reflect(14, 0x1234, 4)
    h.traps.load_idt_entry(6, *gate(HANDLER))
    h.cpu.set_reg(Reg.ESP, 0x40000)  # unmapped
    with killed("Bad address 0x3fff4"):
        h.traps.reflect(6, 0x1234, 0)


# -- interrupts ------------------------------------------------------------------------
def test_the_lowest_deliverable_line_goes_first_and_the_time_is_published() -> None:
    h = ready()
    for line in (0, 1, 2):
        h.traps.load_idt_entry(0x20 + line, *gate(HANDLER + line, kind=GATE_INTERRUPT))
    h.interrupts.raise_irq(2)
    h.interrupts.raise_irq(1)
    h.data.set_u32(LD_BLOCKED, 1 << 1)  # blocked_interrupts: line 1 masked
    assert h.interrupts.maybe_interrupt(h.data, 0x1234, lambda: 5_000_000_123) == 2
    assert h.cpu.reg(Reg.EIP) == HANDLER + 2
    assert h.interrupts.pending == 1 << 1 and h.interrupts.delivered[2] == 1
    assert (h.data.u32(LD_TIME), h.data.u32(LD_TIME + 4)) == (5, 123)
    assert h.data.irq_enabled == 0  # through an interrupt gate


def test_nothing_is_delivered_to_a_guest_that_cannot_take_it() -> None:
    h = ready()
    h.traps.load_idt_entry(0x20, *gate(HANDLER, kind=GATE_INTERRUPT))
    h.interrupts.raise_irq(0)
    h.data.irq_enabled = 0
    assert h.interrupts.maybe_interrupt(h.data, 0x1234, lambda: 0) is None
    h.data.irq_enabled = X86_EFLAGS_IF
    h.set_noirq(0x1200, 0x1300)  # lguest_noirq_start..end
    assert h.interrupts.maybe_interrupt(h.data, 0x1234, lambda: 0) is None
    assert h.interrupts.maybe_interrupt(h.data, 0x1300, lambda: 0) == 0


def test_a_line_without_a_gate_stays_pending() -> None:
    h = ready()
    h.interrupts.raise_irq(3)
    assert h.interrupts.maybe_interrupt(h.data, 0x1234, lambda: 0) is None
    assert h.interrupts.pending == 1 << 3
    h.traps.load_idt_entry(0x23, *gate(HANDLER, kind=GATE_INTERRUPT))
    assert h.interrupts.maybe_interrupt(h.data, 0x1234, lambda: 0) == 3


def test_a_halted_guest_is_woken_with_interrupts_on() -> None:
    h = ready()
    h.traps.load_idt_entry(0x20, *gate(HANDLER, kind=GATE_TRAP))
    h.data.irq_enabled = 0  # HALT is entered with interrupts off (safe_halt)
    h.set_halted(True)
    h.interrupts.raise_irq(0)
    assert h.interrupts.maybe_interrupt(h.data, 0x1234, lambda: 0) == 0
    assert not h.interrupts.halted
    assert stack_words(h, h.cpu.reg(Reg.ESP), 3)[2] & X86_EFLAGS_IF
