"""Reading a running (or dead) guest kernel's memory by its symbols, for Linux-aware views.

`--dmesg`, `monitor ps` and the profiler's unwinder read kernel data structures.  They use
the kernel's own linear map to turn a kernel virtual address into a physical one — lowmem
at `PAGE_OFFSET` maps physical 0 one to one in every 2.6.24 address space — and fall back on
a walk of the guest's current page tables (without setting Accessed) for anything else.  The
linear rule keeps working when the guest's page tables are gone or garbage, which is when a
post-mortem log matters most.

Everything read here came from the guest: a read that leaves guest RAM answers None, never
raises, and callers bound every walk.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..abi import PAGE_OFFSET, PAGE_SIZE

if TYPE_CHECKING:
    from ..host.guest import Guest
    from .symbols import Symbols

U32 = struct.Struct("<I")


class KernelMemory:
    """Guest-virtual reads for the Host's debugging views."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self.memory = guest.memory

    def physical(self, va: int) -> int | None:
        """The guest-physical address of kernel virtual `va`, or None."""
        base = self.guest.lg.kernel_address or PAGE_OFFSET
        if va >= base and va - base < self.memory.ram_size:
            return va - base
        if self.guest.paging.guest_pgdir:
            pa = self.guest.paging.translate(va & 0xFFFFFFFF, mark=False)
            if pa is not None and pa < self.memory.ram_size:
                return pa
        return None

    def read(self, va: int, length: int) -> bytes | None:
        """`length` bytes at `va`, or None if any of them is not guest RAM."""
        out = bytearray()
        ram = self.memory.ram
        while len(out) < length:
            at = va + len(out)
            pa = self.physical(at)
            if pa is None:
                return None
            chunk = min(length - len(out), PAGE_SIZE - (at & (PAGE_SIZE - 1)),
                        self.memory.ram_size - pa)
            out += ram[pa:pa + chunk]
        return bytes(out)

    def u32(self, va: int) -> int | None:
        """The 32-bit little-endian word at `va`, or None."""
        raw = self.read(va, 4)
        return None if raw is None else U32.unpack(raw)[0]

    def symbol_address(self, symbols: Symbols, name: str) -> int | None:
        """The link address of data symbol `name` (the first, if statics share it)."""
        found = symbols.named(name)
        return found[0].address if found else None
