"""The one vring engine (ABI §11) every device uses, with every check a hostile guest needs.

A queue lives in two guest pages at `pfn << 12`: descriptors, then the available ring (guest →
host), then, page-aligned, the used ring (host → guest).  The Host pops a chain from `avail`,
hands the device its buffers, and pushes `(head, len)` onto `used`.  Everything the guest
wrote is untrusted: indices, lengths, addresses and chain links are checked here, once, and a
violation kills the guest with a sentence naming the check, the queue and the index:

* avail.idx may run at most `num` ahead of the chains the host has taken;
* a head, or a `next` link, must be below `num`;
* a chain may not be longer than `num` descriptors (that is how a loop shows);
* device-writable ("in") descriptors come after all device-readable ("out") ones;
* every buffer lies inside guest memory: it ends below `pfn_limit` and does not wrap;
* no more than `num` chains are in flight (taken and not yet returned) at once.

Devices add the checks of their own request layouts with `Vring.reject`.

Host writes into guest buffers go through `write` (or `views` plus `wrote`), which remember
the pages in a `WrittenPages`: Unicorn keeps running code it translated from a page the host
overwrites (Unicorn §8.3), so the Host invalidates those pages before the guest runs on.
The used ring's own bookkeeping is not logged: a guest executing its used ring only ever sees
code it could have run anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from ..abi import (
    PAGE_SHIFT,
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
from ..kills import BadRequest, BrokenVring
from ..machine.memory import GuestMemory


class Buffer(NamedTuple):
    """One descriptor of a chain: guest-physical range, and whether the device writes it."""

    addr: int
    length: int
    writable: bool


class Chain(NamedTuple):
    """A request popped from the available ring."""

    head: int
    buffers: tuple[Buffer, ...]
    first_writable: int  # `pop` enforces out-before-in, so one index splits the chain

    @property
    def readable(self) -> tuple[Buffer, ...]:
        """The device-readable ("out") buffers, in order."""
        return self.buffers[:self.first_writable]

    @property
    def writable(self) -> tuple[Buffer, ...]:
        """The device-writable ("in") buffers, in order."""
        return self.buffers[self.first_writable:]


def total_length(buffers: tuple[Buffer, ...] | list[Buffer]) -> int:
    """Bytes in `buffers` together."""
    return sum(b.length for b in buffers)


class WrittenPages:
    """Guest-physical pages the host wrote since the last `take` (for code invalidation)."""

    def __init__(self) -> None:
        self.pages: set[int] = set()

    def add(self, addr: int, length: int) -> None:
        """Remember that [addr, addr+length) was written."""
        if length > 0:
            self.pages.update(range(addr >> PAGE_SHIFT, ((addr + length - 1) >> PAGE_SHIFT) + 1))

    def take(self) -> list[int]:
        """The pages written so far, in order; forgets them."""
        if not self.pages:
            return []
        pages = sorted(self.pages)
        self.pages.clear()
        return pages


class Vring:
    """One virtqueue as the Host sees it."""

    # Told of every chain returned to the guest, fn(ring, head, written): the Host's
    # event log and statistics (`Guest`); None when nobody asked.
    on_push: Callable[[Vring, int, int], None] | None = None

    def __init__(self, memory: GuestMemory, name: str, pfn: int, num: int, irq: int,
                 written: WrittenPages | None = None) -> None:
        self.memory = memory
        self.name = name
        self.pfn = pfn
        self.num = num
        self.irq = irq
        self.written = written if written is not None else WrittenPages()
        base = pfn * PAGE_SIZE
        desc, avail, used = vring_offsets(num)
        self.desc = base + desc
        self.avail = base + avail
        self.used = base + used
        self.last_avail = 0  # the host's free-running cursor into avail.ring
        self.in_flight = 0  # chains popped and not yet pushed back
        memory.check(base, used + 4 + 8 * num)  # the whole ring is guest memory

    @classmethod
    def placed(cls, memory: GuestMemory, name: str, desc: int, avail: int, used: int,
               num: int, irq: int, written: WrittenPages | None = None) -> Vring:
        """A virtio 1.0 queue whose three parts the driver placed apart (virtio-PCI's
        queue_desc, queue_avail and queue_used): each part is checked to lie inside guest
        memory, at the alignment virtio 1.0 requires (16, 2 and 4 bytes), and `num` must
        be a power of two; any failure kills the guest.  `pfn` is the descriptor table's
        page, for the event log only (no LHCALL_NOTIFY names these queues)."""
        ring = cls.__new__(cls)
        ring.memory, ring.name, ring.num, ring.irq = memory, name, num, irq
        ring.written = written if written is not None else WrittenPages()
        if not 0 < num <= 0x8000 or num & (num - 1):
            raise ring._kill(f"queue size {num} is not a power of two up to 32768")
        for part, addr, size, align in (("descriptor table", desc, 16 * num, 16),
                                        ("available ring", avail, 6 + 2 * num, 2),
                                        ("used ring", used, 6 + 8 * num, 4)):
            if addr % align or not memory.valid(addr, size):
                raise ring._kill(f"{part} at {addr:#x} ({size} bytes, {align}-byte aligned) "
                                 "is not in guest memory")
        ring.pfn = desc >> PAGE_SHIFT
        ring.desc, ring.avail, ring.used = desc, avail, used
        ring.last_avail = 0
        ring.in_flight = 0
        return ring

    def save_state(self) -> tuple[int, int]:
        """Persist: (last_avail, in_flight); the ring itself is guest memory."""
        return self.last_avail, self.in_flight

    def restore_state(self, state: tuple[int, int]) -> None:
        """Persist: back to `state`."""
        self.last_avail, self.in_flight = state

    def reset(self) -> None:
        """The driver reset its device (status 0, 2.6.26 on): zero the ring's memory and
        start over, as lguest's Launcher did, so a driver probing again finds fresh rings."""
        base = self.pfn * PAGE_SIZE
        size = self.used - base + 4 + 8 * self.num
        self.memory.ram[base:base + size] = bytes(size)
        self.written.add(base, size)
        self.last_avail = 0
        self.in_flight = 0

    def _kill(self, what: str) -> GuestKilled:
        return GuestKilled(BrokenVring(self.name, what))

    def reject(self, chain: Chain, what: str) -> GuestKilled:
        """The kill for a chain whose layout the device refuses (raise it)."""
        return GuestKilled(BadRequest(self.name, chain.head, what))

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
        if self.in_flight >= self.num:
            raise self._kill(f"more than {self.num} requests in flight at avail slot {slot}")
        head = self._u16(self.avail + 4 + 2 * slot)
        if head >= self.num:
            raise self._kill(f"head index {head} at avail slot {slot} is not below {self.num}")
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        buffers: list[Buffer] = []
        index = head
        first_writable = -1
        ram, valid = self.memory.ram, self.memory.valid
        while True:
            addr, length, flags, nxt = VRING_DESC.unpack_from(ram, self.desc + 16 * index)
            if not valid(addr, length):
                raise self._kill(f"descriptor {index} buffer {addr:#x}+{length} is outside "
                                 "guest memory")
            writable = bool(flags & VRING_DESC_F_WRITE)
            if writable and first_writable < 0:
                first_writable = len(buffers)
            elif first_writable >= 0 and not writable:
                raise self._kill(f"descriptor {index} is device-readable after a writable one")
            buffers.append(Buffer(addr, length, writable))
            if not flags & VRING_DESC_F_NEXT:
                self.in_flight += 1
                return Chain(head, tuple(buffers),
                             first_writable if first_writable >= 0 else len(buffers))
            if nxt >= self.num:
                raise self._kill(f"descriptor {index} links to {nxt}, not below {self.num}")
            if len(buffers) >= self.num:
                raise self._kill(f"chain from head {head} is longer than {self.num} (a loop)")
            index = nxt

    def push(self, head: int, written: int) -> None:
        """Return a chain to the guest with `written` bytes stored in its writable buffers."""
        self.in_flight = max(0, self.in_flight - 1)
        used_idx = self._u16(self.used + 2)
        VRING_USED_ELEM.pack_into(self.memory.ram, self.used + 4 + 8 * (used_idx % self.num),
                                  head, written)
        U16.pack_into(self.memory.ram, self.used + 2, (used_idx + 1) & 0xFFFF)
        if self.on_push is not None:
            self.on_push(self, head, written)

    def indices(self) -> tuple[int, int]:
        """(avail.idx, used.idx) as they stand in guest memory."""
        return self._u16(self.avail + 2), self._u16(self.used + 2)

    def wants_interrupt(self) -> bool:
        """False while the guest has set VRING_AVAIL_F_NO_INTERRUPT."""
        return not self._u16(self.avail) & VRING_AVAIL_F_NO_INTERRUPT

    def set_no_notify(self, on: bool) -> None:
        """Tell the guest not to kick this queue (or to kick it again)."""
        flags = self._u16(self.used)
        flags = flags | VRING_USED_F_NO_NOTIFY if on else flags & ~VRING_USED_F_NO_NOTIFY
        U16.pack_into(self.memory.ram, self.used, flags)

    # -- the buffers' bytes ------------------------------------------------------------------
    def gather(self, buffers: tuple[Buffer, ...]) -> bytes:
        """The bytes of device-readable buffers, concatenated (callers bound the total)."""
        ram = self.memory.ram
        return b"".join(ram[b.addr:b.addr + b.length] for b in buffers)

    def write(self, buffers: tuple[Buffer, ...], data: bytes) -> int:
        """Scatter `data` over writable buffers in order; returns the bytes stored (at most
        what fits).  The pages are logged for code invalidation."""
        ram, done = self.memory.ram, 0
        for b in buffers:
            if done >= len(data):
                break
            n = min(b.length, len(data) - done)
            ram[b.addr:b.addr + n] = data[done:done + n]
            self.written.add(b.addr, n)
            done += n
        return done

    @contextmanager
    def views(self, buffers: tuple[Buffer, ...]) -> Iterator[list[memoryview]]:
        """Memoryviews of the buffers (for `os.preadv`/`pwritev` straight into guest memory),
        released on exit.  Whoever writes through them calls `wrote` afterwards."""
        with memoryview(self.memory.ram) as ram:
            views = [ram[b.addr:b.addr + b.length] for b in buffers]
            try:
                yield views
            finally:
                for view in views:
                    view.release()

    def wrote(self, buffers: tuple[Buffer, ...], count: int) -> None:
        """Log that the first `count` bytes of `buffers` were written (through `views`)."""
        for b in buffers:
            if count <= 0:
                break
            self.written.add(b.addr, min(count, b.length))
            count -= b.length
