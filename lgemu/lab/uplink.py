"""A host wire plugged into a lab switch (`uplink = "udp:…"` on a `[[switch]]`).

The uplink is one more port on the switch, with the host's wire (`lgemu.devices.netback`) at
its other end instead of a guest's card.  It is served between scheduling windows, at the
lab's time T (the end of the window just run): frames the switch has delivered to it by T go
out on the wire, and frames that came in from the wire enter the switch as if sent at T, so
they arrive at T + latency, never in a guest's past (the lookahead rule of
`lgemu.lab.scheduler` holds).  Frames from the host come on the host's schedule, so such a lab
is no longer reproducible, unless the uplink is recorded (``,record=FILE``) and then replayed
(``replay:FILE``): a frame is recorded with the lab's time it came in at, and replayed at
the first service at or after that time, which is the same service or, if it came in while
every guest was halted, one at the same lab time with nothing run in between (the same
effect).  A replayed uplink also checks what the lab
sends out against the recording (`lgemu.devices.replay.ReplayDiverged`).

While every guest is halted the lab paces its time to the host's clock, as `lgemu boot` does
with a host wire: it waits on the wire until the host's clock reaches the next timer or
arrival, and a frame that comes in meanwhile is served at once, the lab's time standing
still.  With no timer and no frame on its way, it waits for the wire alone (`--timeout` or a
signal still end the lab).
"""

from __future__ import annotations

from ..devices.netback import Link, NetOption, open_link, parse_net_option
from ..devices.replay import RecordingLink, ReplayLink
from ..errors import UserError
from .switch import Switch, SwitchPort

UPLINK_KINDS = ("udp", "tap", "replay")


def parse_uplink(where: str, text: str) -> NetOption:
    """A switch's ``uplink`` value (``udp:LOCALPORT:HOST:PORT``, ``tap:IFNAME`` or
    ``replay:FILE``, optionally ``,record=FILE``) → `NetOption` (UserError naming `where`)."""
    try:
        option = parse_net_option(text)
    except UserError as e:
        raise UserError(f"{where}: uplink: {str(e).removeprefix('--net ')}") from None
    if option.kind not in UPLINK_KINDS or option.mac is not None or option.pcap is not None:
        raise UserError(f"{where}: uplink {text!r}: want udp:LOCALPORT:HOST:PORT, tap:IFNAME "
                        "or replay:FILE, optionally ,record=FILE (use --pcap to capture)")
    return option


class Uplink:
    """A switch's port to a host wire, served by the lab between windows."""

    def __init__(self, switch: Switch, option: NetOption) -> None:
        self.switch = switch
        self.port: SwitchPort = switch.port("uplink")
        self.now_ns = 0
        self.port.now_ns = lambda: self.now_ns
        self.stats = {"out": 0, "in": 0}
        link: Link | None = open_link(option)
        if option.replay is not None:
            link = ReplayLink(option.replay, self._position)
        elif option.record is not None and link is not None:
            link = RecordingLink(link, option.record, self._position)
        assert link is not None
        self.link = link

    def _position(self) -> tuple[int, int]:
        return 0, self.now_ns  # no instruction count: the lab's time alone places a frame

    @property
    def replayed(self) -> bool:
        """Does this uplink replay a recording (no host wire at all)?"""
        return isinstance(self.link, ReplayLink)

    def serve(self, now_ns: int) -> None:
        """At lab time `now_ns`: frames that reached the uplink go out on the wire; frames
        from the wire enter the switch, sent now (raises `ReplayDiverged` in a replay)."""
        self.now_ns = now_ns
        for frame in self.port.receive():
            if self.link.send(frame):
                self.stats["out"] += 1
        for frame in self.link.receive():
            self.stats["in"] += 1
            self.switch.forward(self.port, frame, now_ns)

    def due_now(self) -> bool:
        """A replay: did the recording take a frame in while the lab's time stood still here
        (the guests all halted)?  Then the lab serves the uplink again without moving on."""
        link = self.link
        if not isinstance(link, ReplayLink) or link.next_arriving >= len(link.arriving):
            return False
        return link.arriving[link.next_arriving][2] <= self.now_ns

    def fileno(self) -> int:
        """The wire's descriptor to wait on (-1: a replay, nothing to wait for)."""
        return self.link.fileno()

    def close(self) -> None:
        """Close the wire (and its recording)."""
        self.link.close()

    def summary(self) -> str:
        """One line for -v."""
        return (f"uplink {self.switch.spec.name}: {self.link.description}: "
                f"{self.stats['out']} frames out, {self.stats['in']} in")
