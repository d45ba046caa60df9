"""`struct lguest_data` as the Host sees it: a guest-physical address and typed accessors.

LGUEST_INIT checks the whole 1136-byte range once (ABI §3.4) and memory never shrinks, so the
accessors below can use the mapping directly.
"""

from __future__ import annotations

from ..abi import (
    HCALL_ARGS,
    HCALL_STATUS_EMPTY,
    LD_BLOCKED,
    LD_CR2,
    LD_HCALL_STATUS,
    LD_HCALLS,
    LD_IRQ_ENABLED,
    LD_TIME,
    LGUEST_DATA_SIZE,
    TIMESPEC,
    U32,
)
from ..machine.memory import GuestMemory

NS_PER_SEC = 1_000_000_000


class LguestData:
    """The guest's shared page, at guest-physical `addr` (already validated)."""

    def __init__(self, memory: GuestMemory, addr: int) -> None:
        memory.check(addr, LGUEST_DATA_SIZE)
        self.ram = memory.ram
        self.addr = addr

    def u32(self, offset: int) -> int:
        """The 32-bit field at `offset`."""
        return U32.unpack_from(self.ram, self.addr + offset)[0]

    def set_u32(self, offset: int, value: int) -> None:
        """Store the 32-bit field at `offset`."""
        U32.pack_into(self.ram, self.addr + offset, value & 0xFFFFFFFF)

    @property
    def irq_enabled(self) -> int:
        return self.u32(LD_IRQ_ENABLED)

    @irq_enabled.setter
    def irq_enabled(self, value: int) -> None:
        self.set_u32(LD_IRQ_ENABLED, value)

    @property
    def blocked_interrupts(self) -> int:
        return self.u32(LD_BLOCKED)

    def set_cr2(self, cr2: int) -> None:
        """Where the guest's read_cr2 looks (ABI §5.4)."""
        self.set_u32(LD_CR2, cr2)

    def set_time(self, ns: int) -> None:
        """Publish wall-clock time as a timespec (ABI §8)."""
        sec, nsec = divmod(ns, NS_PER_SEC)
        TIMESPEC.pack_into(self.ram, self.addr + LD_TIME, sec & 0x7FFFFFFF, nsec)

    # -- the async hypercall ring (ABI §3.5) -----------------------------------------------
    def ring_status(self, slot: int) -> int:
        return self.ram[self.addr + LD_HCALL_STATUS + slot]

    def ring_args(self, slot: int) -> tuple[int, int, int, int]:
        """(call, arg1, arg2, arg3) of a ring slot."""
        arg0, arg2, arg3, arg1 = HCALL_ARGS.unpack_from(self.ram, self.addr + LD_HCALLS + 16 * slot)
        return arg0, arg1, arg2, arg3

    def ring_done(self, slot: int) -> None:
        self.ram[self.addr + LD_HCALL_STATUS + slot] = HCALL_STATUS_EMPTY
