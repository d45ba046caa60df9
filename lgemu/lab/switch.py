"""A lab's virtual switch: the wire between guests' network cards, in guest time.

Each card on a switch gets a `SwitchPort`, a `netback.Link` whose clock is its guest's.  A
frame sent at guest time t leaves the port once the port's earlier frames have (at the
switch's bandwidth), and arrives at the other end `latency` later, on the receiver's clock:
the lab's scheduler keeps every guest within one lookahead (the smallest latency) of the
others, so no frame can arrive in a receiver's past.

The switch learns source addresses as a real one does: a frame to a known station goes to its
port only; broadcast, multicast and unknown destinations go to every other port.  Loss and
reordering are drawn from one random stream per sending port, seeded by the switch's seed and
the port's number, so they depend only on what that guest sent (never on the order the
scheduler ran guests in).  A reordered frame is held back an extra 1 to 2 latencies.

The capture (`--pcap`) records every frame as it enters the switch, stamped with the sender's
virtual wall clock; frames are written in time order at the end of each scheduling window.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..devices.netback import Link, NetOption, PcapWriter

# Frames on their way to one card, at most: a guest that floods the switch costs the others
# bounded memory (the rest is dropped, as a full switch queue would).
INBOX_FRAMES = 1024


@dataclass(frozen=True)
class SwitchSpec:
    """A `[[switch]]` of the lab file."""

    name: str
    latency_ns: int
    bandwidth_mbps: float | None = None
    loss: float = 0.0
    reorder: float = 0.0
    seed: int = 0
    uplink: NetOption | None = None  # a host wire on the switch (lgemu.lab.uplink)


class SwitchPort(Link):
    """One card's end of a switch.  `now_ns` reads the guest's time between instructions
    (set by the lab once the guest exists)."""

    def __init__(self, switch: Switch, number: int, owner: str) -> None:
        self.switch = switch
        self.number = number
        self.owner = owner
        self.description = f"switch {switch.spec.name} port {number}"
        self.now_ns: Callable[[], int] = lambda: 0
        self.busy_until = 0  # guest time the port's last frame has left (bandwidth)
        self.rng = random.Random(f"{switch.spec.seed}:{switch.spec.name}:{number}")
        self.inbox: list[tuple[int, int, int, bytes]] = []  # heap: (arrival, port, seq, frame)
        self.sent = 0
        self.attached = True  # False once the guest has ended: frames to it are dropped

    def send(self, frame: bytes) -> bool:
        self.switch.forward(self, frame, self.now_ns())
        return True

    def receive(self) -> list[bytes]:
        now = self.now_ns()
        frames = []
        while self.inbox and self.inbox[0][0] <= now:
            frames.append(heapq.heappop(self.inbox)[3])
        return frames

    def next_arrival(self) -> int | None:
        """Guest time of the earliest frame on its way here, if any."""
        return self.inbox[0][0] if self.inbox else None

    def fileno(self) -> int:
        return -1  # never waited on: in a lab, frames come from the scheduler

    def close(self) -> None:
        self.attached = False
        self.inbox.clear()


class Switch:
    """A learning switch with per-link latency, bandwidth, loss and reordering."""

    def __init__(self, spec: SwitchSpec, epoch_ns: int) -> None:
        self.spec = spec
        self.epoch_ns = epoch_ns
        self.ports: list[SwitchPort] = []
        self.stations: dict[bytes, SwitchPort] = {}
        self.pcap: PcapWriter | None = None
        self._captured: list[tuple[int, int, int, bytes]] = []
        self.stats = {"frames": 0, "lost": 0, "reordered": 0, "dropped": 0}
        # Told of every frame put on its way to a port (lgemu.lab.workers ships them).
        self.on_push: Callable[[SwitchPort, tuple[int, int, int, bytes]], None] | None = None

    def port(self, owner: str) -> SwitchPort:
        """A new port for a card of guest `owner`."""
        port = SwitchPort(self, len(self.ports), owner)
        self.ports.append(port)
        return port

    def capture_to(self, path: Path) -> None:
        """Record every frame entering the switch in `path` (classic pcap)."""
        self.pcap = PcapWriter(path)

    def forward(self, source: SwitchPort, frame: bytes, sent_ns: int) -> None:
        """A frame from `source` at guest time `sent_ns`: on its way to its destinations."""
        spec = self.spec
        self.stats["frames"] += 1
        source.sent += 1
        if self.pcap is not None:
            self._captured.append((sent_ns, source.number, source.sent, frame))
        if len(frame) >= 12 and not frame[6] & 1:
            self.stations[frame[6:12]] = source
        leave = max(sent_ns, source.busy_until)
        if spec.bandwidth_mbps:
            leave += int(len(frame) * 8 * 1000 / spec.bandwidth_mbps)
        source.busy_until = leave
        # Draw from the port's stream for every frame, lost or not, so one frame's fate
        # never shifts another's.
        lost = source.rng.random() < spec.loss
        late = source.rng.random() < spec.reorder
        extra = source.rng.randint(spec.latency_ns, 2 * spec.latency_ns)
        if lost:
            self.stats["lost"] += 1
            return
        arrival = leave + spec.latency_ns + (extra if late else 0)
        if late:
            self.stats["reordered"] += 1
        known = self.stations.get(frame[:6]) if len(frame) >= 6 and not frame[0] & 1 else None
        targets = [known] if known is not None and known is not source else \
            [p for p in self.ports if p is not source]
        for port in targets:
            if not port.attached:
                continue
            if len(port.inbox) >= INBOX_FRAMES:
                self.stats["dropped"] += 1
                continue
            entry = (arrival, source.number, source.sent, frame)
            heapq.heappush(port.inbox, entry)
            if self.on_push is not None:
                self.on_push(port, entry)

    def flush_capture(self, until_ns: int) -> None:
        """Write captured frames sent before `until_ns`, in time order (then port, then
        order of sending)."""
        if self.pcap is None or not self._captured:
            return
        self._captured.sort(key=lambda c: c[:3])
        ready = [c for c in self._captured if c[0] < until_ns]
        for sent_ns, _, _, frame in ready:
            self.pcap.record(frame, self.epoch_ns + sent_ns)
        del self._captured[:len(ready)]

    def close(self) -> None:
        """Write what is left of the capture and close it."""
        self.flush_capture(1 << 62)
        if self.pcap is not None:
            self.pcap.close()

    def summary(self) -> str:
        """One line for -v."""
        s = self.stats
        return (f"switch {self.spec.name}: {len(self.ports)} ports, {s['frames']} frames, "
                f"{s['lost']} lost, {s['reordered']} reordered, {s['dropped']} dropped "
                "(queue full)")
