"""The guest's side of vrings, written from Python into a `GuestMemory`, for host unit tests.

`HandRings(n)` lays out memory like a guest with `n` queues (ABI §1.4: RAM, the device page, then
2-page rings) and gives, for each queue, a `HandRing` that writes descriptors and offers heads
the way a driver does, and reads back what the host put in the used ring.
"""

from __future__ import annotations

import struct

from lgemu.abi import PAGE_SIZE, U16, VRING_DESC, VRING_PAGES, vring_offsets
from lgemu.devices.vring import Vring, WrittenPages
from lgemu.machine.memory import GuestMemory

RAM = 8 << 20
NUM = 128
_, AVAIL, USED = vring_offsets(NUM)


class HandRing:
    """One queue: `vring` is the host's view, the methods are the guest's."""

    def __init__(self, memory: GuestMemory, name: str, pfn: int, irq: int,
                 written: WrittenPages | None = None) -> None:
        self.memory = memory
        self.base = pfn * PAGE_SIZE
        self.vring = Vring(memory, name, pfn, NUM, irq, written)

    def desc(self, index: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        """Write descriptor `index`."""
        VRING_DESC.pack_into(self.memory.ram, self.base + 16 * index, addr, length, flags, nxt)

    def chain(self, first: int, buffers: list[tuple[int, int, bool]]) -> None:
        """Descriptors first, first+1, … for (addr, length, device-writable), linked, offered."""
        for n, (addr, length, writable) in enumerate(buffers):
            last = n == len(buffers) - 1
            self.desc(first + n, addr, length, (0 if last else 1) | (2 if writable else 0),
                      0 if last else first + n + 1)
        self.offer(first)

    def offer(self, *heads: int) -> None:
        """Add heads to avail.ring and move avail.idx past them, as a driver does."""
        idx = self.avail_idx
        for n, head in enumerate(heads):
            U16.pack_into(self.memory.ram, self.base + AVAIL + 4 + 2 * ((idx + n) % NUM), head)
        self.avail_idx = idx + len(heads)

    @property
    def avail_idx(self) -> int:
        return U16.unpack_from(self.memory.ram, self.base + AVAIL + 2)[0]

    @avail_idx.setter
    def avail_idx(self, value: int) -> None:
        U16.pack_into(self.memory.ram, self.base + AVAIL + 2, value & 0xFFFF)

    @property
    def avail_flags(self) -> int:
        return U16.unpack_from(self.memory.ram, self.base + AVAIL)[0]

    @avail_flags.setter
    def avail_flags(self, value: int) -> None:
        U16.pack_into(self.memory.ram, self.base + AVAIL, value)

    @property
    def used_flags(self) -> int:
        return U16.unpack_from(self.memory.ram, self.base + USED)[0]

    def used(self) -> list[tuple[int, int]]:
        """The (id, len) elements the host has returned so far, in order."""
        idx = U16.unpack_from(self.memory.ram, self.base + USED + 2)[0]
        return [struct.unpack_from("<II", self.memory.ram, self.base + USED + 4 + 8 * (i % NUM))
                for i in range(min(idx, NUM))]


class HandRings:
    """Memory for a guest with `queues` rings; `limit` is the end of the last one."""

    def __init__(self, queues: int, names: list[str] | None = None) -> None:
        self.memory = GuestMemory(RAM)
        first = RAM // PAGE_SIZE + 1
        self.limit = (first + VRING_PAGES * queues) * PAGE_SIZE
        self.memory.limit = self.limit
        self.written = WrittenPages()
        names = names or [f"test.{i}" for i in range(queues)]
        self.rings = [HandRing(self.memory, names[i], first + VRING_PAGES * i, i + 1,
                               self.written) for i in range(queues)]

    @property
    def vrings(self) -> list[Vring]:
        return [r.vring for r in self.rings]
