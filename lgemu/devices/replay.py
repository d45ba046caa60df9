"""Recording and replaying what arrives from the host: network frames and console input.

A run with a udp or tap wire, or console input typed or piped in, gets that input on the
host's schedule.  Recorded (`--net udp:…,record=FILE`, `--console-record FILE`), each piece of
input is kept with the guest instruction count and guest wall-clock time at which the device
took it, which is always between two slices.  Replayed (`--net replay:FILE`,
`--console-replay FILE`), the same pieces are handed over at the same count and time, with no
wire or terminal at all, so the guest executes the same instructions: console, trace and the
frames it sends come out the same.  What it sends is checked against the recording; the first
frame that differs ends the run (`ReplayDiverged`).

The file: the line ``lgemu-replay 1``, then records of a kind byte (``R`` a frame received,
``S`` a frame sent, ``M`` the card's MAC address, first, ``C`` console input, whose empty
record is its end, ``Q`` the Ctrl-] that ended a session on a terminal), the instruction
count, the wall-clock time in ns, the length, and the bytes.  A recording can be replayed by
the same lgemu and guest with the same options otherwise (memory, command line); the card
takes the recorded MAC (an older recording without one needs the same ``mac=``).

Ctrl-] typed on the console terminal ends the live run before the guest sees the piece of
input holding it; the recording says so with ``Q`` rather than ``C``, and the replay ends the
same way at the same count (a replay has no terminal, so the byte itself would be input).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ExitStatus, LgemuExit, UserError
from .netback import Link

MAGIC = b"lgemu-replay 1\n"
RECORD = struct.Struct("<cQQI")  # kind, instruction count, guest wall-clock ns, length
RECEIVED, SENT, CONSOLE, MAC, QUIT = b"R", b"S", b"C", b"M", b"Q"
# Where the guest stands when input is taken: (instruction count, guest wall-clock ns).
Position = Callable[[], tuple[int, int]]


class ReplayDiverged(LgemuExit):
    """The replayed guest did something the recorded one did not."""

    status = ExitStatus.REPLAY_DIVERGED
    prefix = "lgemu: replay diverged: "


class Recorder:
    """A recording file being written (a full disk ends the recording, not the run)."""

    def __init__(self, path: Path) -> None:
        if path.is_dir():
            raise UserError(f"{path}: is a directory")
        try:
            self.file: BinaryIO | None = path.open("wb")
            self.file.write(MAGIC)
            self.file.flush()
        except OSError as e:
            raise UserError(f"{path}: cannot write a recording: {e.strerror}") from None

    def record(self, kind: bytes, at: tuple[int, int], data: bytes) -> None:
        """Append one record."""
        if self.file is None:
            return
        try:
            self.file.write(RECORD.pack(kind, at[0], max(at[1], 0), len(data)) + data)
            self.file.flush()
        except OSError:
            self.close()

    def close(self) -> None:
        """Finish the file."""
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None


def read_records(path: Path, kinds: bytes) -> list[tuple[bytes, int, int, bytes]]:
    """A recording's records of the given kinds (UserError if it is not one)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the recording: {e.strerror}") from None
    if not data.startswith(MAGIC):
        raise UserError(f"{path}: not an lgemu recording")
    records, offset = [], len(MAGIC)
    while offset < len(data):
        if offset + RECORD.size > len(data):
            raise UserError(f"{path}: recording cut short")
        kind, icount, wall_ns, length = RECORD.unpack_from(data, offset)
        offset += RECORD.size
        if kind not in (RECEIVED, SENT, CONSOLE, MAC, QUIT) or offset + length > len(data):
            raise UserError(f"{path}: damaged recording at byte {offset - RECORD.size}")
        if kind in kinds:
            records.append((kind, icount, wall_ns, data[offset:offset + length]))
        offset += length
    return records


class RecordingLink(Link):
    """A real wire whose arriving and departing frames are also recorded."""

    def __init__(self, inner: Link, path: Path, position: Position,
                 mac: bytes | None = None) -> None:
        self.inner = inner
        self.recorder = Recorder(path)
        if mac is not None:  # a card's (a lab's uplink has none)
            self.recorder.record(MAC, (0, 0), mac)  # the replay's card is this card
        self.position = position
        self.description = f"{inner.description}, recorded to {path}"

    def send(self, frame: bytes) -> bool:
        self.recorder.record(SENT, self.position(), frame)
        return self.inner.send(frame)

    def receive(self) -> list[bytes]:
        frames = self.inner.receive()
        if frames:
            at = self.position()
            for frame in frames:
                self.recorder.record(RECEIVED, at, frame)
        return frames

    def fileno(self) -> int:
        return self.inner.fileno()

    def close(self) -> None:
        self.inner.close()
        self.recorder.close()


class ReplayLink(Link):
    """No wire: the recorded frames arrive at their recorded instruction counts."""

    def __init__(self, path: Path, position: Position) -> None:
        records = read_records(path, RECEIVED + SENT + MAC)
        macs = [r[3] for r in records if r[0] == MAC]
        self.mac: bytes | None = macs[0] if macs and len(macs[0]) == 6 else None
        self.arriving = [r for r in records if r[0] == RECEIVED]
        self.expected = [r for r in records if r[0] == SENT]
        self.position = position
        self.next_arriving = 0  # indices into the lists: saved and restored for time travel
        self.sent = 0  # frames sent so far, the next expected one's index
        self.description = f"replay of {path}"

    def send(self, frame: bytes) -> bool:
        icount, _ = self.position()
        self.sent += 1
        if self.sent > len(self.expected):
            raise ReplayDiverged(f"frame {self.sent} sent at instruction {icount} was never "
                                 "sent in the recording")
        _, recorded_at, _, recorded = self.expected[self.sent - 1]
        if frame != recorded:
            raise ReplayDiverged(
                f"frame {self.sent} sent at instruction {icount} differs from the recording "
                f"({len(frame)} bytes; recorded {len(recorded)} bytes at instruction "
                f"{recorded_at})")
        return True

    def receive(self) -> list[bytes]:
        now = self.position()
        frames = []
        while self.next_arriving < len(self.arriving) and \
                self.arriving[self.next_arriving][1:3] <= now:
            frames.append(self.arriving[self.next_arriving][3])
            self.next_arriving += 1
        return frames

    def fileno(self) -> int:
        return -1  # nothing to wait for: frames come when the guest reaches their count

    def save_state(self) -> tuple[int, int]:
        """Persist: how far the replay has got (time travel goes back over it)."""
        return self.next_arriving, self.sent

    def restore_state(self, state: tuple[int, int]) -> None:
        """Persist: back to `state`."""
        self.next_arriving, self.sent = state


class RecordingInput:
    """Console input from a terminal or pipe, every piece read also recorded."""

    def __init__(self, inner: Any, path: Path) -> None:
        self.inner = inner
        self.recorder = Recorder(path)
        self.position: Position = lambda: (0, 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read(self, limit: int) -> bytes:
        """Read as the source does, and record what was read (b"": its end)."""
        from .console import QUIT_KEY

        data = self.inner.read(limit)
        # On a terminal Ctrl-] ends the run (`Console._take`): the replay must end there too.
        quits = self.inner.kind == "tty" and QUIT_KEY in data
        self.recorder.record(QUIT if quits else CONSOLE, self.position(), data)
        return data

    def close(self) -> None:
        """Close the source and the recording."""
        self.inner.close()
        self.recorder.close()


class ReplayInput:
    """Console input replayed from a recording, as a live source that never blocks."""

    kind = "replay"
    live = True
    interactive = False
    fd = -1  # nothing to wait on (see `Console.wait_fds`)
    # Unlike a terminal, read again from the same point it gives the same pieces at the same
    # counts: reverse execution may go back over it (`lgemu.debug.snapshot`).
    deterministic = True

    def __init__(self, path: Path) -> None:
        self.pieces = read_records(path, CONSOLE + QUIT)
        self.next = 0  # index of the next piece
        self.position: Position = lambda: (0, 0)
        self.open = True

    def save_state(self) -> tuple[int, bool]:
        """Persist: how far the replay has got."""
        return self.next, self.open

    def restore_state(self, state: tuple[int, bool]) -> None:
        """Persist: back to `state`."""
        self.next, self.open = state

    def raw_mode(self) -> None:
        """No terminal."""

    def restore(self) -> None:
        """No terminal."""

    def ready(self) -> bool:
        """Is the next recorded piece due?"""
        return self.open and self.next < len(self.pieces) and \
            self.pieces[self.next][1:3] <= self.position()

    def read(self, limit: int) -> bytes:
        """The next recorded piece (b"" and closed at the recorded end)."""
        if not self.ready():
            return b""
        kind, _, _, data = self.pieces[self.next]
        self.next += 1
        if kind == QUIT:
            from .console import KeyboardQuit

            self.open = False
            raise KeyboardQuit("quit from the keyboard (Ctrl-])")
        if not data:
            self.open = False
        return data[:limit]

    def close(self) -> None:
        """Stop replaying."""
        self.open = False
