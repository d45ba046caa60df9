"""`--stop-at ICOUNT`: end the run at exactly that many executed instructions.

A run-loop controller (see `lgemu.host.guest`): it caps every run so the CPU stops at the
count, then ends the run with one line naming the count and EIP, exit status 5 (as for
`--max-insns`).  With `--gdb`, the stub takes this over and hands control to gdb there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ExitStatus, LimitReached
from ..machine.cpu import Reg

if TYPE_CHECKING:
    from ..host.guest import Guest


def stopped_line(guest: Guest) -> str:
    """Where the guest stands, for the line on stderr."""
    return f"stopped at instruction {guest.icount}, eip {guest.cpu.reg(Reg.EIP):#x}"


class StopAt:
    """Stop the run when `icount` instructions have executed."""

    def __init__(self, icount: int) -> None:
        self.icount = icount

    def boundary(self, guest: Guest) -> int | None:
        left = self.icount - guest.icount
        if left <= 0:
            raise LimitReached(stopped_line(guest), ExitStatus.INSN_LIMIT)
        return left
