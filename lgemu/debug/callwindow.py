"""`--trace-filter call:NAME`: trace NAME and everything it calls, until it returns.

A window that opens and closes with the guest's own calls.  A code hook on NAME's first
instruction (at its link address and any physical alias) sees each call: the return
address is on the stack then, and the stack pointer after the return will be four bytes
above.  The first call opens the window (the run is cut before that instruction, so the
tracer installs its instruction hooks at the boundary); a nested or recursive call only
pushes its return; the instruction at a return address, reached with the stack pointer the
call left, pops it, and the outermost one closes the window before that instruction runs.
Whatever the CPU executes meanwhile is traced — interrupt handlers, and other tasks if NAME
sleeps — as it runs inside NAME's call.

Costs: the entry hook, one code hook for the whole run (Unicorn checks every instruction
against it, about 1.3× slower), and while the window is open, a set lookup per traced
instruction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..machine.cpu import Reg
from .kernelmem import KernelMemory

if TYPE_CHECKING:
    from ..host.guest import Guest


class CallWindow:
    """Which instructions are inside a call of one of the watched functions."""

    def __init__(self, guest: Guest, ranges: list[tuple[int, int]]) -> None:
        self.guest = guest
        self.entries = sorted({begin for begin, _ in ranges})
        self.frames: list[tuple[int, int]] = []  # (return address, ESP after it), innermost last
        self.returns: set[int] = set()
        self.hooks: list[int] = []
        self._handled = -1  # the instruction count of the entry last handled
        self.kmem = KernelMemory(guest)

    @property
    def inside(self) -> bool:
        """Is the guest inside a watched call now?"""
        return bool(self.frames)

    def attach(self) -> None:
        """Hook the entry points (before the run)."""
        for address in self.entries:
            self.hooks.append(self.guest.cpu.on_code(self._entered, address, address))

    def detach(self) -> None:
        for handle in self.hooks:
            self.guest.cpu.remove_hook(handle)
        self.hooks.clear()

    def _entered(self, address: int) -> None:
        guest = self.guest
        icount = guest.icount
        if icount == self._handled:
            return  # the same instruction again, after the run was cut before it
        self._handled = icount
        esp = guest.cpu.reg(Reg.ESP)
        ret = self.kmem.u32(esp)
        if ret is None:
            return
        opening = not self.frames
        self.frames.append((ret, (esp + 4) & 0xFFFFFFFF))
        self.returns.add(ret)
        if opening:
            guest.pause()  # the tracer hooks instructions at the boundary, then this one runs

    def returning(self, address: int) -> bool:
        """Called for a traced instruction at a return address: True when it ends the
        outermost call (the caller then cuts the run before it and stops tracing)."""
        esp = self.guest.cpu.reg(Reg.ESP)
        for i in range(len(self.frames) - 1, -1, -1):
            ret, after = self.frames[i]
            if ret == address and after == esp:
                del self.frames[i:]
                self.returns = {r for r, _ in self.frames}
                if not self.frames:
                    self.guest.pause()
                    return True
                return False
        return False
