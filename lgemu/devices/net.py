"""The virtio network device (type 1, ABI §12.3): queue 0 receives, queue 1 transmits.

Every frame crosses the ring behind a `virtio_net_hdr`, 8 bytes in 2.6.24 and 10 from 2.6.25
(`Era.net_hdr_size`).  lgemu offers no offloads (the Launcher offers only the MAC), so the
header is all zeros both ways.

Transmit is served inside the kick: each chain is one frame, sent on the host wire
(`netback`), recorded in the pcap file if any, and returned at once.  Receive is never served
inside a kick (the rx queue carries NO_NOTIFY): frames that arrived are moved into posted rx
buffers at slice boundaries.  2.6.24's `virtnet_open()` kicks its rx queue before
`napi_enable()`; an rx interrupt raised inside that kick would find NAPI off and stop receive
for good (ABI Appendix A).

Frames arrive on the host's schedule, so a run with a udp or tap wire is not reproducible
instruction for instruction unless recorded and replayed (`replay.py`); a pcap-only device has
no input and changes nothing.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..abi import DeviceType
from ..abi_eras import DeviceBus
from ..errors import UserError
from ..launcher.devicepage import DeviceSpec, net_spec
from .base import Device
from .netback import MAX_FRAME, Link, NetOption, PcapWriter, open_link
from .replay import RecordingLink, ReplayLink
from .vring import Chain, Vring, total_length

RX_QUEUE, TX_QUEUE = 0, 1
BACKLOG_FRAMES = 256  # frames held for a guest that has posted no rx buffers
MAC_PREFIX = bytes((0x02, 0x6C, 0x67, 0x00, 0x00))  # locally administered, "lg"


def default_mac(index: int) -> bytes:
    """eth`index`'s MAC when none is given: 02:6c:67:00:00:`index`."""
    return MAC_PREFIX + bytes((index & 0xFF,))


def format_mac(mac: bytes) -> str:
    """6 bytes → ``02:6c:67:00:00:00``."""
    return ":".join(f"{b:02x}" for b in mac)


class Net(Device):
    """eth`index`: one virtio-net device on a host wire (or none)."""

    type = DeviceType.NET
    num_queues = 2

    def __init__(self, option: NetOption, index: int = 0) -> None:
        super().__init__()
        self.name = f"eth{index}"
        self.mac = option.mac or default_mac(index)
        self.pcap: PcapWriter | None = None
        self.link: Link | None = None
        try:
            self.pcap = PcapWriter(option.pcap) if option.pcap is not None else None
            self.link = open_link(option)
            position = self._position
            if option.record is not None and self.link is not None:
                self.link = RecordingLink(self.link, option.record, position, self.mac)
            if option.replay is not None:
                replay = self.link = ReplayLink(option.replay, position)
                if replay.mac is not None:  # the recorded card's address, unless contradicted
                    if option.mac is not None and option.mac != replay.mac:
                        raise UserError(f"--net replay:{option.replay}: mac="
                                        f"{format_mac(option.mac)} is not the recorded card's "
                                        f"{format_mac(replay.mac)}")
                    self.mac = replay.mac
        except BaseException:
            self.close()
            raise
        self.backlog: deque[bytes] = deque()
        self.stats = {"tx": 0, "rx": 0, "dropped": 0}

    @property
    def replayable(self) -> bool:
        """Can reverse execution go back over this card?  Only a replayed wire with no
        capture: its input is the recording's, read again from any point
        (`lgemu.debug.snapshot`); a live wire's peer and a pcap file are outside lgemu."""
        return isinstance(self.link, ReplayLink) and self.pcap is None

    def save_state(self) -> object:
        """Persist (a replayed wire only, see `replayable`): frames waiting for the guest,
        the counters and how far the replay has got."""
        if not isinstance(self.link, ReplayLink):
            return None
        return tuple(self.backlog), dict(self.stats), self.link.save_state()

    def restore_state(self, state: object) -> None:
        """Persist: back to `state`."""
        if state is None or not isinstance(self.link, ReplayLink):
            return
        backlog, stats, link = state  # type: ignore[misc]
        self.backlog = deque(backlog)
        self.stats = dict(stats)
        self.link.restore_state(link)

    def _position(self) -> tuple[int, int]:
        return self.icount(), self.wall_ns()

    def spec(self) -> DeviceSpec:
        return net_spec(self.mac)

    def attach(self, queues: list[Vring], raise_irq: Any) -> None:
        super().attach(queues, raise_irq)
        queues[RX_QUEUE].set_no_notify(True)  # rx buffers are looked at on the host's time

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None
        if self.pcap is not None:
            self.pcap.close()

    def summary(self) -> str:
        s = self.stats
        wire = self.link.description if self.link else "no wire"
        pcap = f", pcap {self.pcap.path}" if self.pcap else ""
        return (f"{format_mac(self.mac)}, {wire}{pcap}: sent {s['tx']} frames, received "
                f"{s['rx']}, dropped {s['dropped']}")

    # -- transmit: inside the kick -----------------------------------------------------------
    def kick(self, queue: Vring) -> None:
        if queue is self.queues[TX_QUEUE]:
            self.serve(queue, lambda chain: self._transmit(queue, chain))
        # rx buffers posted: filled at the next slice boundary

    def _transmit(self, queue: Vring, chain: Chain) -> int:
        """Send one frame; like the Launcher, report its length back (0 if dropped)."""
        if chain.writable:
            raise queue.reject(chain, "device-writable buffer in the transmit queue")
        if self.era.device_bus is DeviceBus.PCI:
            return self._transmit_any_layout(queue, chain)
        header, *data = chain.buffers
        if header.length != self.era.net_hdr_size:
            raise queue.reject(chain, f"first buffer is {header.length} bytes, not the "
                                      f"{self.era.net_hdr_size}-byte virtio_net_hdr")
        length = total_length(data)
        if length > MAX_FRAME:
            self.stats["dropped"] += 1
            return 0
        self._send(queue.gather(tuple(data)))
        return length

    def _transmit_any_layout(self, queue: Vring, chain: Chain) -> int:
        """Virtio 1.0 (4.x over PCI): the header need not be a buffer of its own (4.4's
        driver puts it in front of the frame when there is room), so the frame is whatever
        follows the header's bytes."""
        hdr = self.era.net_hdr_size
        total = total_length(chain.buffers)
        if total < hdr:
            raise queue.reject(chain, f"{total} bytes, shorter than the {hdr}-byte "
                                      "virtio_net_hdr")
        if total - hdr > MAX_FRAME:
            self.stats["dropped"] += 1
            return 0
        self._send(queue.gather(chain.buffers)[hdr:])
        return total - hdr

    def _send(self, frame: bytes) -> None:
        if self.pcap is not None:
            self.pcap.record(frame, self.wall_ns())
        if self.link is None:
            return  # pcap only: nowhere to send it
        if self.link.send(frame):
            self.stats["tx"] += 1
        else:
            self.stats["dropped"] += 1

    # -- receive: at slice boundaries ----------------------------------------------------------
    def poll(self) -> None:
        if self.link is not None:
            for frame in self.link.receive():
                if len(self.backlog) >= BACKLOG_FRAMES:
                    self.stats["dropped"] += 1
                else:
                    self.backlog.append(frame)
        if self.backlog and self.queues:  # (a PCI device has no queues until set up)
            rxq = self.queues[RX_QUEUE]
            self.serve(rxq, lambda chain: self._receive(rxq, chain), lambda: bool(self.backlog))

    def _receive(self, queue: Vring, chain: Chain) -> int:
        """Put the oldest waiting frame, after a zero header, into one rx chain."""
        if chain.readable:
            raise queue.reject(chain, "device-readable buffer in the receive queue")
        if chain.buffers[0].length != self.era.net_hdr_size:
            raise queue.reject(chain, f"first buffer is {chain.buffers[0].length} bytes, "
                                      f"not the {self.era.net_hdr_size}-byte virtio_net_hdr")
        frame = self.backlog.popleft()
        if self.pcap is not None:
            self.pcap.record(frame, self.wall_ns())
        self.stats["rx"] += 1
        # Like a TAP read into the guest's buffers: a frame too long for them is cut.
        return queue.write(chain.buffers, bytes(self.era.net_hdr_size) + frame)

    def wake_irqs(self) -> list[int]:
        if not self.queues:
            return []
        rxq = self.queues[RX_QUEUE]
        if self.link is None or not rxq.wants_interrupt() or not rxq.pending():
            return []
        return [rxq.irq]

    def wait_fds(self) -> list[int]:
        if self.link is None or len(self.backlog) >= BACKLOG_FRAMES or self.link.fileno() < 0:
            return []
        return [self.link.fileno()]
