"""The one vring engine (§11) every device uses, with every check a hostile guest needs.

A queue lives in two guest pages at `pfn << 12`: descriptors, then the available ring (guest →
host), then, page-aligned, the used ring (host → guest).  The Host pops a chain from `avail`,
hands the device its buffers, and pushes `(head, len)` onto `used`.  Everything the guest
wrote is untrusted: indices, lengths, addresses and chain links are checked here, once, and a
violation kills the guest with a sentence naming the check, the queue and the index.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..abi import (
    PAGE_SIZE,
    U16,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_ELEM,
    VRING_USED_F_NO_NOTIFY,
    vring_offsets,
)
from ..errors import GuestKilled
from ..machine.memory import GuestMemory


@dataclass(frozen=True)
class Buffer:
    """One descriptor of a chain: guest-physical range, and whether the device writes it."""

    addr: int
    length: int
    writable: bool


@dataclass(frozen=True)
class Chain:
    """A request popped from the available ring."""

    head: int
    buffers: tuple[Buffer, ...]

    @property
    def readable(self) -> tuple[Buffer, ...]:
        return tuple(b for b in self.buffers if not b.writable)

    @property
    def writable(self) -> tuple[Buffer, ...]:
        return tuple(b for b in self.buffers if b.writable)


class Vring:
    """One virtqueue as the Host sees it."""

    def __init__(self, memory: GuestMemory, name: str, pfn: int, num: int, irq: int) -> None:
        self.memory = memory
        self.name = name
        self.pfn = pfn
        self.num = num
        self.irq = irq
        base = pfn * PAGE_SIZE
        desc, avail, used = vring_offsets(num)
        self.desc = base + desc
        self.avail = base + avail
        self.used = base + used
        self.last_avail = 0  # the host's free-running cursor into avail.ring
        memory.check(base, used + 4 + 8 * num)  # the whole ring is guest memory

    def _kill(self, what: str) -> GuestKilled:
        return GuestKilled(f"vring {self.name}: {what}")

    def _u16(self, addr: int) -> int:
        return U16.unpack_from(self.memory.ram, addr)[0]

    def pending(self) -> int:
        """How many chains the guest has made available and the host not yet taken."""
        avail_idx = self._u16(self.avail + 2)
        ahead = (avail_idx - self.last_avail) & 0xFFFF
        if ahead > self.num:
            raise self._kill(f"avail index moved from {self.last_avail} to {avail_idx}, "
                             f"more than the ring size {self.num}")
        return ahead

    def pop(self) -> Chain | None:
        """Take the next available chain, checking every descriptor; None if none is left."""
        if not self.pending():
            return None
        slot = self.last_avail % self.num
        head = self._u16(self.avail + 4 + 2 * slot)
        if head >= self.num:
            raise self._kill(f"head index {head} at avail slot {slot} is not below {self.num}")
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        buffers: list[Buffer] = []
        index = head
        seen_writable = False
        while True:
            addr, length, flags, nxt = VRING_DESC.unpack_from(self.memory.ram,
                                                              self.desc + 16 * index)
            if not self.memory.valid(addr, length):
                raise self._kill(f"descriptor {index} buffer {addr:#x}+{length} is outside "
                                 "guest memory")
            writable = bool(flags & VRING_DESC_F_WRITE)
            if seen_writable and not writable:
                raise self._kill(f"descriptor {index} is device-readable after a writable one")
            seen_writable |= writable
            buffers.append(Buffer(addr, length, writable))
            if not flags & VRING_DESC_F_NEXT:
                return Chain(head, tuple(buffers))
            if nxt >= self.num:
                raise self._kill(f"descriptor {index} links to {nxt}, not below {self.num}")
            if len(buffers) >= self.num:
                raise self._kill(f"chain from head {head} is longer than {self.num} (a loop)")
            index = nxt

    def push(self, head: int, written: int) -> None:
        """Return a chain to the guest with `written` bytes stored in its writable buffers."""
        used_idx = self._u16(self.used + 2)
        VRING_USED_ELEM.pack_into(self.memory.ram, self.used + 4 + 8 * (used_idx % self.num),
                                  head, written)
        U16.pack_into(self.memory.ram, self.used + 2, (used_idx + 1) & 0xFFFF)

    def wants_interrupt(self) -> bool:
        """False while the guest has set VRING_AVAIL_F_NO_INTERRUPT."""
        return not self._u16(self.avail) & VRING_AVAIL_F_NO_INTERRUPT

    def set_no_notify(self, on: bool) -> None:
        """Tell the guest not to kick this queue (or to kick it again)."""
        flags = self._u16(self.used)
        flags = flags | VRING_USED_F_NO_NOTIFY if on else flags & ~VRING_USED_F_NO_NOTIFY
        U16.pack_into(self.memory.ram, self.used, flags)

    def gather(self, buffers: tuple[Buffer, ...]) -> bytes:
        """The bytes of device-readable buffers, concatenated."""
        ram = self.memory.ram
        return b"".join(ram[b.addr:b.addr + b.length] for b in buffers)
