"""Snapshots of a whole guest, and the timeline of them that reverse execution replays from.

Time travel here is replay: lgemu is deterministic (virtual time counts instructions, and the
run loop's slices do not depend on how a debugger cuts them), so the state at instruction N
is found again by restoring the last snapshot before N and running forward to N.

Why not Unicorn's own memory contexts: Unicorn 2.1's `UC_CTL_CONTEXT_MEMORY` makes later
guest stores copy-on-write into memory of Unicorn's, but lgemu's RAM is an mmap the Host shares
with Unicorn (`mem_map_ptr`).  Measured: with the mode on, the guest's stores never reached
the mmap the Host reads.  So a snapshot is lgemu's own:

* guest RAM, page by page; a page unchanged since the previous snapshot is shared with it, so a
  snapshot costs one compare of RAM (about 15 ms per 64 MiB) plus a copy of what changed;
* the host pages (shadow page directories, GDT, TSS);
* the CPU's registers (a Unicorn CPU context), translations flushed on restore;
* the Host's state, which every component saves and restores itself (`lgemu.persist`):
  `Guest.save_state` gathers the lguest state, clock, interrupts, paging, GDT, traps, vrings,
  devices and the run loop's position;
* the console: how much output this timeline has produced (a replay does not print it again)
  and where its input stood.

What cannot be replayed is refused, never faked: block and network devices have state outside
lgemu (disk images, peers), so time travel needs a guest whose only devices are the console
and cards replaying a recording (`--net replay:FILE`, no capture: `Net.replayable`), and the
virtual clock; and input typed or piped into the console cannot be read twice, so going
back past console input that came from a terminal or pipe is an error (input from a regular
file is re-read from the same offset; a `--console-replay` recording, like a replayed wire,
is deterministic: its position is part of the snapshot and it goes on feeding the guest
while a replay runs forward).  While a replay runs towards a point already lived
through, the console reads no new input (there was none to read there, or the replay would
have been refused); input that arrives once the guest runs on is a new future: the snapshots
of the old one are dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from ..abi import PAGE_SIZE, DeviceType

if TYPE_CHECKING:
    from ..devices.console import Console, ConsoleInput
    from ..host.guest import Guest, GuestState

MAX_SNAPSHOTS = 64  # beyond this, every other old snapshot is dropped (replays get longer)


class TimeTravelError(Exception):
    """This guest, or this request, cannot be replayed (message says why)."""


class ReplayedOutput:
    """The console's stream, made replay-aware: bytes a replay produces again are not
    written twice.  `position` is how far this timeline's output has got; `shown` how far the
    user has seen."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.position = 0
        self.shown = 0

    def write(self, data: bytes) -> int:
        start, self.position = self.position, self.position + len(data)
        if self.position > self.shown:
            self.stream.write(data[max(0, self.shown - start):])
            self.shown = self.position
        return len(data)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def diverge(self) -> None:
        """The timeline changed (a debugger wrote registers or memory): what it prints from
        here on is new."""
        self.shown = self.position

    def save_state(self) -> int:
        """Persist: how far this timeline's output has got (what was shown stays shown)."""
        return self.position

    def restore_state(self, state: int) -> None:
        """Persist: back to `state`."""
        self.position = state


@dataclass
class Snapshot:
    """The guest at one instruction count."""

    icount: int
    ram: tuple[bytes, ...]
    host: bytes
    cpu: object
    host_state: GuestState
    output_position: int
    input_taken: int  # console input bytes read from the host so far
    input_offset: int | None  # file position of a regular-file console input
    input_replay: object = None  # the position of a --console-replay recording


class Timeline:
    """Snapshots of one guest by instruction count, and going back to them."""

    def __init__(self, guest: Guest, every: int) -> None:
        self.guest = guest
        self.every = every
        self.snapshots: list[Snapshot] = []  # by increasing icount
        self.console: Console | None = next(
            (d for d in guest.devices if d.type == DeviceType.CONSOLE), None)  # type: ignore[misc]
        self.output: ReplayedOutput | None = None
        self._hidden_source: ConsoleInput | None = None  # the console's input while replaying
        self._input_seen = 0
        self.unavailable = self._why_unavailable()
        if self.unavailable is None:
            out = guest.console
            if out.stream is not None:
                self.output = ReplayedOutput(out.stream)
                out.stream = self.output

    def _why_unavailable(self) -> str | None:
        guest = self.guest
        if guest.clock.realtime:
            return "the clock is realtime"
        if guest.pci is not None:  # the functions' registers and queue set-up are not saved
            return "the devices are on PCI (a 4.x guest)"
        others = [d.name for d in guest.devices
                  if d.type != DeviceType.CONSOLE and not getattr(d, "replayable", False)]
        if others:
            return f"devices other than the console are attached ({', '.join(others)})"
        return None

    @property
    def available(self) -> bool:
        return self.unavailable is None

    # -- taking ----------------------------------------------------------------------------
    def due(self, icount: int) -> bool:
        """Should a snapshot be taken at `icount` (none there yet, and on the grid or first)?"""
        if not self.snapshots:
            return True
        if icount % self.every:
            return False
        return self.at_or_before(icount).icount != icount

    def next_due(self, icount: int) -> int:
        """The next instruction count after `icount` where a snapshot is due."""
        return (icount // self.every + 1) * self.every

    def take(self) -> None:
        """Snapshot the guest as it is now (between two instructions)."""
        guest = self.guest
        icount = guest.icount
        previous = self.at_or_before(icount)
        snap = Snapshot(icount, self._ram_pages(previous.ram if previous else None),
                        bytes(guest.memory.host), guest.cpu.save_state(), guest.save_state(),
                        self.output.save_state() if self.output is not None else 0,
                        *self._input_position(), self._replayed_input_state())
        index = sum(1 for s in self.snapshots if s.icount < icount)
        self.snapshots.insert(index, snap)
        if len(self.snapshots) > MAX_SNAPSHOTS:
            # Keep the first (the start of history) and the latest; thin out the rest.
            keep = self.snapshots[1:-1:2]
            self.snapshots = [self.snapshots[0], *keep, self.snapshots[-1]]

    def _ram_pages(self, previous: tuple[bytes, ...] | None) -> tuple[bytes, ...]:
        ram = self.guest.memory.ram
        size = self.guest.memory.size
        if previous is None:
            return tuple(ram[off:off + PAGE_SIZE] for off in range(0, size, PAGE_SIZE))
        # An mmap slice compare is a memcmp (a memoryview compare is five times slower).
        return tuple(old if (page := ram[off:off + PAGE_SIZE]) == old else page
                     for off, old in zip(range(0, size, PAGE_SIZE), previous, strict=True))

    def replaying(self, on: bool) -> None:
        """A replay towards a point already executed starts (True) or ends (False): the
        console reads nothing from a terminal or pipe meanwhile (a file is read again)."""
        console = self.console
        if console is None:
            return
        if on and console.source is not None and console.source.live and \
                not getattr(console.source, "deterministic", False):
            self._hidden_source, console.source = console.source, None
        elif not on and self._hidden_source is not None:
            console.source, self._hidden_source = self._hidden_source, None

    def new_input(self, icount: int) -> bool:
        """Call between runs while running forward: True (and the recorded future dropped)
        if console input arrived from a terminal or pipe since the last call."""
        taken, _ = self._input_position()
        seen, self._input_seen = self._input_seen, taken
        source = self.console.source if self.console is not None else None
        if taken == seen or source is None or not source.live or \
                getattr(source, "deterministic", False):  # the recorded input: no new future
            return False
        self.diverge(icount)
        return True

    def _replayed_input_state(self) -> object:
        source = self.console.source if self.console is not None else None
        if source is not None and getattr(source, "deterministic", False):
            return source.save_state()  # type: ignore[attr-defined]
        return None

    def _input_position(self) -> tuple[int, int | None]:
        console = self.console
        if console is None:
            return 0, None
        source = console.source
        backlog, bytes_in = console.save_state()
        taken = bytes_in + len(backlog)
        offset = None
        if source is not None and source.open and not source.live:
            try:
                offset = os.lseek(source.fd, 0, os.SEEK_CUR)
            except OSError:
                offset = None
        return taken, offset

    # -- going back ------------------------------------------------------------------------
    def at_or_before(self, icount: int) -> Snapshot | None:
        """The latest snapshot taken at or before `icount`."""
        best = None
        for snap in self.snapshots:
            if snap.icount > icount:
                break
            best = snap
        return best

    def restore(self, snap: Snapshot) -> None:
        """Put the guest back exactly as it was at `snap` (raises TimeTravelError if console
        input read since then cannot be read again)."""
        guest = self.guest
        self._rewind_input(snap)
        ram = guest.memory.ram
        for index, page in enumerate(snap.ram):
            off = index * PAGE_SIZE
            if ram[off:off + PAGE_SIZE] != page:
                ram[off:off + PAGE_SIZE] = page
        guest.memory.host[:] = snap.host
        guest.restore_state(snap.host_state)
        if self.output is not None:
            self.output.restore_state(snap.output_position)
        guest.cpu.restore_state(snap.cpu)
        self._input_seen = snap.input_taken

    def _rewind_input(self, snap: Snapshot) -> None:
        taken, _ = self._input_position()
        source = self._hidden_source or (self.console.source if self.console else None)
        if snap.input_replay is not None and source is not None:
            source.restore_state(snap.input_replay)  # type: ignore[attr-defined]
            return
        if taken == snap.input_taken:
            return
        if snap.input_offset is None or source is None or not source.open:
            raise TimeTravelError("console input was read from a terminal or pipe since then "
                                  "and cannot be read again")
        try:
            os.lseek(source.fd, snap.input_offset, os.SEEK_SET)
        except OSError:
            raise TimeTravelError("console input cannot be read again") from None

    def diverge(self, icount: int) -> None:
        """A debugger changed the guest at `icount`: the recorded future is no longer this
        guest's.  Snapshots after it (and at it, taken before the change) are dropped."""
        self.snapshots = [s for s in self.snapshots if s.icount < icount]
        if self.output is not None:
            self.output.diverge()

    def clear(self) -> None:
        """Forget every snapshot (the debugger left)."""
        self.snapshots.clear()
