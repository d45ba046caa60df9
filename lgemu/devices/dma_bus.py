"""2.6.23's lguest bus: devices described by 12-byte descriptors, data moved by DMA buffers.

Before virtio (2.6.24), an lguest guest found its devices in an array of ``LGUEST_MAX_DEVICES``
descriptors ``{u16 type, features, status, num_pages; u32 pfn}`` on the page just above its
RAM, and talked to them with two hypercalls (docs/eras.md, "2.6.23"):

* ``BIND_DMA(key, addr, num << 8 | irq)`` offers `num` receive buffers, an array of
  ``struct lguest_dma`` at guest-physical `addr`, to whoever sends to `key`, and names the
  interrupt to raise when one is filled (``num`` 0 unbinds);
* ``SEND_DMA(key, addr)`` hands the Launcher the ``struct lguest_dma`` at `addr` for `key`.

A ``struct lguest_dma`` is ``u32 used_len; u32 addr[16]; u16 len[16]`` (100 bytes): up to
16 guest-physical sections, the first zero length ending the list; ``used_len`` is 0 while
the buffer is free and the bytes written once it is filled.

Keys: the console's is 0 (output sent there, one input buffer bound there); a block
device's is the physical address of its shared page ``struct lguest_block_page
{int type; u32 sector, bytes; int result; u32 num_sectors}``: a write request SENDs the data,
a read request SENDs an empty buffer and gets the data in the buffer it bound; either way the
device sets ``result`` (1 done, 2 failed) and raises the interrupt.  A network card's page
is a table of peers' MAC addresses (6 bytes each); the guest is peer 1 (the descriptor's
``features`` says so) and receives into the buffers it bound at key ``page + 4``; a frame it
sends to peer 0, key ``page``, goes out on the card's wire (peer 0 is marked promiscuous,
as the Launcher's tap device was, so the guest sends it every frame).  The guest makes its
own MAC from ``lguest_data.guestid`` (0 here): 02:00:00:00:00:00, whatever ``mac=`` says.

Every address, length, count and interrupt the guest hands over is checked; a guest that
breaks a rule is killed (`lgemu.kills.BadDma`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..abi import LGUEST_IRQS, PAGE_SIZE
from ..errors import GuestKilled, UserError
from ..kills import BadDma
from ..machine.memory import GuestMemory
from .base import Device
from .block import SECTOR_SIZE, Block
from .console import Console
from .net import BACKLOG_FRAMES, Net
from .netback import MAX_FRAME
from .vring import WrittenPages

MAX_DEVICES = 16  # LGUEST_MAX_DEVICES
MAX_BINDINGS = 32  # LGUEST_MAX_DMA: buffers bound at once, over all keys
SECTIONS = 16  # LGUEST_MAX_DMA_SECTIONS
DMA = struct.Struct(f"<I{SECTIONS}I{SECTIONS}H")  # struct lguest_dma
DESC = struct.Struct("<HHHHI")  # struct lguest_device_desc
BLOCK_PAGE = struct.Struct("<iIIiI")  # struct lguest_block_page
T_CONSOLE, T_NET, T_BLOCK = 1, 2, 3
CONSOLE_KEY = 0
BLK_READ, BLK_WRITE = 0, 1
NET_PEER = 1  # the guest's slot in its net page; slot 0 is the host's wire
NET_F_NOCSUM = 0x4000
PROMISC = 0x01  # bit 0 of a peer's mac[0]: send it every frame
RESULT_DONE, RESULT_FAILED = 1, 2


@dataclass
class Binding:
    """Buffers a guest bound to one key."""

    addr: int  # the first struct lguest_dma
    num: int
    irq: int


class DmaBus(Device):
    """The Launcher's side of 2.6.23's bus: the descriptor page, and every DMA key.  It is
    itself a `Device` to the Host's loop: it polls console input into the bound buffer and
    says what a sleeping guest may be woken by."""

    name = "dma-bus"

    def __init__(self, memory: GuestMemory, devices: list[Device], base: int) -> None:
        """Describe `devices` on the page at `base` (the top of RAM), their own pages after
        it, and raise ``memory.limit`` past them: before the CPU maps guest memory."""
        super().__init__()
        self.memory = memory
        self.written = WrittenPages()
        self.listed, self.base = list(devices), base
        self.bindings: dict[int, Binding] = {}
        self.console: Console | None = None
        self.blocks: dict[int, Block] = {}  # key (its page's address) -> device
        self.nets: dict[int, Net] = {}  # key (its page's address: peer 0) -> device
        self.irqs: dict[int, int] = {}  # key -> the device's line (index + 1)
        if len(devices) > MAX_DEVICES:
            raise UserError(f"too many devices for a 2.6.23 guest: {len(devices)}, its bus "
                            f"holds {MAX_DEVICES}")
        page = base + PAGE_SIZE  # each device's own pages follow the descriptor page
        descs = bytearray(PAGE_SIZE)
        for index, device in enumerate(devices):
            if isinstance(device, Console):
                self.console = device
                DESC.pack_into(descs, index * DESC.size, T_CONSOLE, 0, 0, 0, 0)
                self.irqs[CONSOLE_KEY] = index + 1
            elif isinstance(device, Block):
                self.blocks[page] = device
                self.irqs[page] = index + 1
                DESC.pack_into(descs, index * DESC.size, T_BLOCK, 0, 0, 1, page // PAGE_SIZE)
                memory.ram[page:page + PAGE_SIZE] = bytes(PAGE_SIZE)
                BLOCK_PAGE.pack_into(memory.ram, page, 0, 0, 0, 0, device.capacity)
                page += PAGE_SIZE
            elif isinstance(device, Net):
                # The page is the peers' MAC table; the wire is peer 0, promiscuous (like
                # the Launcher's tap), the guest peer 1.  It receives at key page + 4.
                self.nets[page] = device
                self.irqs[page] = self.irqs[page + 4 * NET_PEER] = index + 1
                DESC.pack_into(descs, index * DESC.size, T_NET, NET_PEER | NET_F_NOCSUM, 0,
                               1, page // PAGE_SIZE)
                memory.ram[page:page + PAGE_SIZE] = bytes(PAGE_SIZE)
                memory.ram[page:page + 6] = bytes([device.mac[0] | PROMISC, *device.mac[1:]])
                page += PAGE_SIZE
            else:
                raise UserError(f"a 2.6.23 guest's {device.name} device is not supported "
                                "by lgemu (its DMA bus has console, block and net devices)")
        memory.ram[base:base + PAGE_SIZE] = descs
        memory.limit = page

    def at_exit(self) -> list[tuple[int, Device, int]]:
        """(index, device, the status its driver left in its descriptor), for `-v`."""
        return [(index, device, DESC.unpack_from(self.memory.ram, self.base + index * DESC.size)[2])
                for index, device in enumerate(self.listed)]

    def connect(self, raise_irq: Callable[[int], None], written: WrittenPages) -> None:
        """The Host's interrupt lines, and its record of pages the devices wrote."""
        self.raise_irq, self.written = raise_irq, written

    # -- the guest's two calls ----------------------------------------------------------------
    def _dma(self, call: str, addr: int) -> tuple[int, list[tuple[int, int]]]:
        """(used_len, [(addr, len), …]) of the struct lguest_dma at `addr`, every section
        checked to be guest memory."""
        if not self.memory.valid(addr, DMA.size):
            raise GuestKilled(BadDma(call, f"struct lguest_dma at {addr:#x} is not in guest "
                                           "memory"))
        fields = DMA.unpack_from(self.memory.ram, addr)
        sections = []
        for at, length in zip(fields[1:1 + SECTIONS], fields[1 + SECTIONS:], strict=True):
            if length == 0:
                break
            if not self.memory.valid(at, length):
                raise GuestKilled(BadDma(call, f"buffer {at:#x} len {length} is not in "
                                               "guest memory"))
            sections.append((at, length))
        return fields[0], sections

    def bind(self, key: int, addr: int, packed: int) -> int:
        """BIND_DMA: 1 if the buffers are bound, 0 if the bus is full (as lguest's Host)."""
        num, irq = packed >> 8, packed & 0xFF
        if num == 0:
            self.bindings.pop(key, None)
            return 1
        if irq >= LGUEST_IRQS:
            raise GuestKilled(BadDma("BIND_DMA", f"interrupt {irq} is not one of lguest's "
                                                 f"{LGUEST_IRQS}"))
        if num > MAX_BINDINGS or not self.memory.valid(addr, num * DMA.size):
            raise GuestKilled(BadDma("BIND_DMA", f"{num} buffers at {addr:#x} are not in "
                                                 "guest memory"))
        for n in range(num):
            self._dma("BIND_DMA", addr + n * DMA.size)
        bound = sum(b.num for k, b in self.bindings.items() if k != key)
        if bound + num > MAX_BINDINGS:
            return 0
        self.bindings[key] = Binding(addr, num, irq)
        return 1

    def send(self, key: int, addr: int) -> None:
        """SEND_DMA: hand the buffer to the device behind `key` (nobody: it is dropped, as
        the Launcher dropped DMA to a key it did not watch)."""
        _, sections = self._dma("SEND_DMA", addr)
        if key == CONSOLE_KEY and self.console is not None:
            self._set_used(addr, self._print(sections))
        elif key in self.blocks:
            self._block(key, sections)
        elif key in self.nets:
            net = self.nets[key]
            if sum(n for _, n in sections) > MAX_FRAME:  # dropped, never gathered (net.py)
                net.stats["dropped"] += 1
                self._set_used(addr, 0)
                return
            frame = b"".join(bytes(self.memory.ram[a:a + n]) for a, n in sections)
            net._send(frame)
            self._set_used(addr, len(frame))

    # -- helpers -------------------------------------------------------------------------------
    def _set_used(self, addr: int, used: int) -> None:
        struct.pack_into("<I", self.memory.ram, addr, used)

    def _print(self, sections: list[tuple[int, int]]) -> int:
        assert self.console is not None
        for at, length in sections:
            self.console.output.write(bytes(self.memory.ram[at:at + length]))
        return sum(length for _, length in sections)

    def _free_buffer(self, key: int) -> tuple[int, list[tuple[int, int]]] | None:
        """The first bound buffer for `key` whose used_len is 0: (its address, sections)."""
        binding = self.bindings.get(key)
        if binding is None:
            return None
        for n in range(binding.num):
            addr = binding.addr + n * DMA.size
            used, sections = self._dma("BIND_DMA", addr)
            if used == 0:
                return addr, sections
        return None

    def _fill(self, addr: int, sections: list[tuple[int, int]], data: bytes) -> int:
        """Copy `data` into the sections of the buffer at `addr`; returns the bytes placed."""
        done = 0
        for at, length in sections:
            chunk = data[done:done + length]
            self.memory.ram[at:at + len(chunk)] = chunk
            self.written.add(at, len(chunk))
            done += len(chunk)
            if done == len(data):
                break
        self._set_used(addr, done)
        return done

    def _block(self, key: int, sections: list[tuple[int, int]]) -> None:
        device = self.blocks[key]
        kind, sector, length, _, _ = BLOCK_PAGE.unpack_from(self.memory.ram, key)
        ok = sector <= device.capacity and length <= (device.capacity - sector) * SECTOR_SIZE
        device.stats["requests"] += 1
        if ok and kind == BLK_WRITE and not device.read_only:
            data = b"".join(bytes(self.memory.ram[a:a + n]) for a, n in sections)[:length]
            ok = os.pwrite(device.fd, data, sector * SECTOR_SIZE) == len(data)
            device.stats["written"] += len(data)
        elif ok and kind == BLK_READ:
            target = self._free_buffer(key)
            # Never read more than the bound buffer holds (`length` is the guest's word).
            room = sum(n for _, n in target[1]) if target is not None else 0
            data = os.pread(device.fd, min(length, room), sector * SECTOR_SIZE)
            ok = target is not None and len(data) == length
            if target is not None:
                self._fill(target[0], target[1], data)
            device.stats["read"] += len(data)
        else:
            ok = False
        if not ok:
            device.stats["errors"] += 1
        struct.pack_into("<i", self.memory.ram, key + 12, RESULT_DONE if ok else RESULT_FAILED)
        self.raise_irq(self.irqs[key])

    def wake_irqs(self) -> list[int]:
        irqs = []
        console, binding = self.console, self.bindings.get(CONSOLE_KEY)
        if console is not None and binding is not None and console.source is not None \
                and console.source.open:
            irqs.append(binding.irq)
        for key, net in self.nets.items():
            binding = self.bindings.get(key + 4 * NET_PEER)
            if net.link is not None and binding is not None:
                irqs.append(binding.irq)
        return irqs

    def wait_fds(self) -> list[int]:
        fds = []
        console = self.console
        source = console.source if console is not None else None
        if source is not None and source.open and source.live and source.fd >= 0:
            fds.append(source.fd)
        for net in self.nets.values():
            if net.link is not None and len(net.backlog) < BACKLOG_FRAMES \
                    and net.link.fileno() >= 0:
                fds.append(net.link.fileno())
        return fds

    def _poll_net(self, key: int, net: Net) -> None:
        """Received frames into the buffers the guest bound at its peer key, one each."""
        if net.link is not None:
            for frame in net.link.receive():
                if len(net.backlog) >= BACKLOG_FRAMES:
                    net.stats["dropped"] += 1
                else:
                    net.backlog.append(frame)
        rx = key + 4 * NET_PEER
        filled = False
        while net.backlog and (target := self._free_buffer(rx)) is not None:
            frame = net.backlog.popleft()
            if net.pcap is not None:
                net.pcap.record(frame, net.wall_ns())
            net.stats["rx"] += 1
            self._fill(target[0], target[1], frame)  # a frame too long is cut, as by readv
            filled = True
        if filled:
            self.raise_irq(self.bindings[rx].irq)

    def poll(self) -> None:
        """Slice boundary: console input and received frames into bound buffers."""
        for key, net in self.nets.items():
            self._poll_net(key, net)
        console = self.console
        if console is None:
            return
        source = console.source
        if source is not None and source.open and len(console.backlog) < 4096:
            if not source.live or source.ready():
                target = self._free_buffer(CONSOLE_KEY)
                if target is not None or source.live:
                    console._take(source.read(4096 - len(console.backlog)))
        if console.backlog:
            target = self._free_buffer(CONSOLE_KEY)
            if target is not None:
                n = self._fill(target[0], target[1], console.backlog)
                console.backlog = console.backlog[n:]
                console.bytes_in += n
                self.raise_irq(self.bindings[CONSOLE_KEY].irq)
