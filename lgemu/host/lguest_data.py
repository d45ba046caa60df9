"""`struct lguest_data` as the Host sees it: a guest-physical address and typed accessors.

LGUEST_INIT checks the whole 1136-byte range once (ABI §3.4) and memory never shrinks, so the
accessors below can use the mapping directly.

Later eras moved fields (`lgemu.abi_eras`): 2.6.31 inserted ``irq_pending`` and widened the
async ring's entries to five arguments, 3.x dropped ``pgdir``.  A `DataLayout` built once
from the guest's `Era` says where each field is; the 2.6.24 one is `abi`'s offsets.
"""

from __future__ import annotations

import struct

from ..abi import (
    HCALL_STATUS_EMPTY,
    LD_BLOCKED,
    LD_CR2,
    LD_IRQ_ENABLED,
    LD_TIME,
    TIMESPEC,
    U32,
    X86_EFLAGS_IF,
)
from ..abi_eras import ERA_2_6_24, Era
from ..machine.memory import GuestMemory
from ..record import Record

NS_PER_SEC = 1_000_000_000
RING_ARGS = ("arg0", "arg1", "arg2", "arg3")  # what a ring entry gives the Host, in order


class DataLayout(Record, frozen=True):
    """Where one era keeps the `struct lguest_data` fields the Host reads or writes (the
    first four, irq_enabled to time, never moved)."""

    size: int
    hcall_status: int
    hcalls: int
    entry: struct.Struct  # one async ring entry, all its u32 members
    order: tuple[int, ...]  # indices into an unpacked entry of arg0..arg3
    reserve_mem: int
    tsc_khz: int
    noirq_start: int  # 4.x: noirq_iret, the one address not to interrupt
    noirq_end: int | None  # None: 4.x, whose window is the single noirq_iret address
    kernel_address: int | None  # None: 2.6.23, whose Launcher told the Host PAGE_OFFSET
    syscall_vec: int | None  # None: 2.6.23, where the vector was always 0x80
    pgdir: int | None  # None: the era has no lguest_data.pgdir (3.x)
    irq_pending: int | None  # None: before 2.6.31

    @classmethod
    def of(cls, era: Era) -> DataLayout:
        """The layout of `era`'s lguest_data (an era lgemu boots has one)."""
        ld, ring = era.lguest_data, era.hcall_ring
        assert ld is not None and era.lguest_data_size is not None
        return cls(era.lguest_data_size, ld["hcall_status"], ld["hcalls"],
                   struct.Struct(f"<{len(ring)}I"), tuple(ring.index(a) for a in RING_ARGS),
                   ld["reserve_mem"], ld["tsc_khz"],
                   ld.get("noirq_start", ld.get("noirq_iret", 0)), ld.get("noirq_end"),
                   ld.get("kernel_address"), ld.get("syscall_vec"), ld.get("pgdir"),
                   ld.get("irq_pending"))


LAYOUT_2_6_24 = DataLayout.of(ERA_2_6_24)


class LguestData:
    """The guest's shared page, at guest-physical `addr` (already validated)."""

    def __init__(self, memory: GuestMemory, addr: int,
                 layout: DataLayout = LAYOUT_2_6_24) -> None:
        memory.check(addr, layout.size)
        self.ram = memory.ram
        self.addr = addr
        self.layout = layout
        self._status = addr + layout.hcall_status
        self._hcalls = addr + layout.hcalls
        self._entry = layout.entry
        self._order = layout.order
        self._irq_pending = None if layout.irq_pending is None else addr + layout.irq_pending

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
        return self.ram[self._status + slot]

    def ring_args(self, slot: int) -> tuple[int, int, int, int]:
        """(call, arg1, arg2, arg3) of a ring slot (a fifth argument, 2.6.31's, is only
        used by PAE guests)."""
        entry = self._entry
        values = entry.unpack_from(self.ram, self._hcalls + entry.size * slot)
        a, b, c, d = self._order
        return values[a], values[b], values[c], values[d]

    def ring_arg4(self, slot: int) -> int:
        """The fifth argument of a ring slot (2.6.31 on; 0 in earlier eras): a PAE guest's
        SET_PTE puts the high half of its 64-bit entry there."""
        entry = self._entry
        if entry.size <= 16:
            return 0
        return U32.unpack_from(self.ram, self._hcalls + entry.size * slot + 16)[0]

    def ring_done(self, slot: int) -> None:
        self.ram[self._status + slot] = HCALL_STATUS_EMPTY

    # -- irq_pending (2.6.31 on) -------------------------------------------------------------
    def set_irq_pending(self, pending: bool) -> None:
        """Tell a guest with interrupts off that one waits (its irq_enable then makes
        SEND_INTERRUPTS); nothing in eras without the field."""
        if self._irq_pending is not None:
            U32.pack_into(self.ram, self._irq_pending, X86_EFLAGS_IF if pending else 0)
