"""Traps: the guest's IDT as the Host keeps it, and reflection of traps into the guest (ABI §5).

Unicorn delivers nothing itself (Unicorn §0): every exception and every `int n` reaches
the Host, which decides what real lguest's hardware or Host would have done:

* *Direct* traps — vectors 0–31 except 7, 13, 14 and 31, and the syscall vector, when the
  guest's gate is a trap gate — were handled by the real CPU through a copied gate: the gate's
  DPL is checked for software `int n`, the pushed EFLAGS is the real one, `irq_enabled` is
  left alone (ABI §5.6).
* Everything else went through the Host's own gates (DPL 0, except the hypercall gate at
  DPL 1): a software `int n` from the guest to such a vector is a #GP with error code
  `n*8+2`; faults are reflected with the IF bit taken from `irq_enabled`, and an interrupt
  gate clears `irq_enabled` (ABI §5.2).  From 2.6.27 (`Era.host_gates_dpl0` False) the
  Host's gate for a vector that could have been direct has the guest gate's DPL, so an
  `int3` from ring 3 to the guest's DPL-3 interrupt gate reaches the Host and is delivered
  like a fault (`via_host_gate`).

The frame is `[err] EIP CS EFLAGS [ESP SS]`, lowest address first, on the current stack for
ring 1 or on `ss1:esp1` from ring 3.
"""

from __future__ import annotations

import struct

from ..abi import (
    ERROR_CODE_VECTORS,
    FIRST_EXTERNAL_VECTOR,
    FIRST_NON_EXCEPTION,
    GATE_INTERRUPT,
    GATE_PRESENT,
    GATE_TRAP,
    GUEST_CS,
    IDT_ENTRIES,
    IGNORED_IDT_VECTORS,
    LGUEST_IRQS,
    LGUEST_TRAP_ENTRY,
    SYSCALL_VECTOR,
    X86_EFLAGS_IF,
    Gate,
    Vector,
)
from ..errors import GuestKilled
from ..kills import BadIdtType, UnhandledTrap, UnusableStackSegment
from ..machine.cpu import Cpu, Reg
from .paging import Paging
from .segments import Gdt
from .state import LguestState

# Vectors the Host always handles itself, even with a guest trap gate (ABI §5.4, §5.6).
HOST_HANDLED = frozenset({Vector.NM, Vector.GP, Vector.PF, LGUEST_TRAP_ENTRY})
GP = Vector.GP
GUEST_IDT_VECTORS = FIRST_EXTERNAL_VECTOR + LGUEST_IRQS  # 64: the IDT lguest keeps
FRAME_REGS = (Reg.CS, Reg.SS, Reg.ESP, Reg.EFLAGS)
# TF, NT, RF, VM: what the CPU clears in EFLAGS when it enters a handler through a gate.
EFLAGS_CLEARED_BY_GATES = 0x100 | 0x4000 | 0x10000 | 0x20000


class Traps:
    """The guest IDT, its kernel stack, and delivery of traps into ring 1."""

    def __init__(self, cpu: Cpu, paging: Paging, gdt: Gdt, lg: LguestState | None = None) -> None:
        self.cpu = cpu
        self.paging = paging
        self.gdt = gdt
        self.lg = lg if lg is not None else paging.lg  # lguest_data and the ring-1 stack
        self.idt: list[Gate | None] = [None] * IDT_ENTRIES
        self.host_gates_dpl0 = True  # the era's `Era.host_gates_dpl0`, set at launch

    def save_state(self) -> tuple[Gate | None, ...]:
        """Persist: the guest's IDT (gates are never changed in place)."""
        return tuple(self.idt)

    def restore_state(self, state: tuple[Gate | None, ...]) -> None:
        """Persist: back to `state`."""
        self.idt = list(state)

    def load_idt_entry(self, vector: int, lo: int, hi: int) -> None:
        """LHCALL_LOAD_IDT_ENTRY with lguest's checks (ABI §5.1).

        2.6.24 kept only the 32 trap vectors, the 32 IRQ vectors and the syscall vector, and
        silently ignored the rest (its load_guest_idt_entry); killing with "Setting idt entry"
        for vectors past the table came with 2.6.25's rework, so lgemu ignores them too."""
        if vector in IGNORED_IDT_VECTORS or (vector >= GUEST_IDT_VECTORS
                                             and vector != SYSCALL_VECTOR):
            return
        if not hi & GATE_PRESENT:
            self.idt[vector] = None
            return
        gate = Gate.decode(lo, hi & 0xFFFFEF00)  # what lguest kept of it (ABI §5.1 step 5)
        if gate.type not in (GATE_INTERRUPT, GATE_TRAP):
            raise GuestKilled(BadIdtType(gate.type))
        self.idt[vector] = gate

    def is_direct(self, vector: int) -> bool:
        """Would real lguest have let the CPU deliver this vector straight to the guest?"""
        gate = self.idt[vector]
        if gate is None or gate.type != GATE_TRAP:
            return False
        return vector == SYSCALL_VECTOR or (vector < FIRST_NON_EXCEPTION
                                            and vector not in HOST_HANDLED)

    def via_host_gate(self, vector: int, cpl: int) -> bool:
        """2.6.27 on: does `int n` from `cpl` pass the Host's own gate for `vector`?  It
        carries the guest gate's DPL where the vector could have gone direct but the guest's
        gate is not a trap gate (lguest's copy_traps); then the Host delivers it."""
        gate = self.idt[vector]
        if self.host_gates_dpl0 or gate is None or self.is_direct(vector):
            return False
        could_be_direct = vector == SYSCALL_VECTOR or (vector < FIRST_NON_EXCEPTION
                                                       and vector not in HOST_HANDLED)
        return could_be_direct and cpl <= gate.dpl

    def software_interrupt_allowed(self, vector: int, cpl: int) -> bool:
        """The gate-DPL check the CPU makes for `int n`, `int3` and `into` (ABI §5.6)."""
        if vector == LGUEST_TRAP_ENTRY:
            return cpl <= 1
        gate = self.idt[vector]
        return self.is_direct(vector) and gate is not None and cpl <= gate.dpl

    def deliver(self, vector: int, eip: int, error_code: int | None = None,
                direct: bool = False, software: bool = False,
                context: tuple[int, int, int, int] | None = None) -> None:
        """Push the trap frame and continue in the guest's handler at ring 1 (ABI §5.2).
        `context` is (CS, SS, ESP, EFLAGS) if the caller has already read them."""
        gate = self.idt[vector]
        if gate is None:
            detail = error_code if error_code is not None else 0
            if vector == Vector.PF:
                detail = self.cpu.reg(Reg.CR2)
            raise GuestKilled(UnhandledTrap(vector, eip, detail))
        cpu = self.cpu
        cs, ss, esp, eflags = context or cpu.regs(FRAME_REGS)
        if not direct and not self.lg.data.irq_enabled & X86_EFLAGS_IF:
            eflags &= ~X86_EFLAGS_IF
        frame = [eip, cs, eflags]
        frame_ss = ss
        if ss & 3 != 1:  # from user mode: switch to the kernel stack
            frame += [esp, ss]
            ss, esp = self.lg.ss1, self.lg.esp1
            if not self.gdt.stack_segment_ok(ss):
                # lguest's switcher faulted reloading the guest's segments: "trap 256"
                raise GuestKilled(UnusableStackSegment(eip, ss))
        if error_code is not None:
            frame.insert(0, error_code)
        esp = (esp - 4 * len(frame)) & 0xFFFFFFFF
        self.paging.write_virtual(esp, struct.pack(f"<{len(frame)}I", *frame))
        if software and frame[1] == GUEST_CS and ss == frame_ss:
            cpu.jump(esp, gate.handler)  # `int n` in ring 1: no ring change, nothing to ack
        else:
            cpu.enter(1, GUEST_CS, ss, gate.handler, esp)
        if direct:
            # The real CPU delivered these, and a gate always clears TF, NT, RF and VM (the
            # handler must not be single-stepped).  2.6.24's set_guest_interrupt did not
            # (ABI §5.2), so the Host's own deliveries leave EFLAGS alone.
            if eflags & EFLAGS_CLEARED_BY_GATES:
                cpu.set_reg(Reg.EFLAGS, eflags & ~EFLAGS_CLEARED_BY_GATES)
        elif gate.type == GATE_INTERRUPT:
            self.lg.data.irq_enabled = 0

    def reflect(self, vector: int, eip: int, error_code: int) -> None:
        """Reflect a CPU exception, pushing the error code where the vector has one."""
        self.deliver(vector, eip, error_code if vector in ERROR_CODE_VECTORS else None,
                     direct=self.is_direct(vector))
