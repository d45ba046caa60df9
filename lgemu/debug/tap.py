"""A tap on the guest's console stream, for whatever shares the terminal with it.

The console writes guest bytes straight to stdout (`ConsoleOutput.stream`).  Two watchers
need to know just before it does: the status line, which must leave the terminal row it is
drawn on, and a trace written to stdout (``--trace -``), which wants guest text and trace
lines each on lines of their own.  `StreamTap` stands in for the stream and calls them
first; the bytes themselves pass through untouched.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO, TextIO


class StreamTap(io.BufferedIOBase):
    """A writable binary stream that calls `before(data)` ahead of every write."""

    def __init__(self, stream: BinaryIO, before: Callable[[bytes], None]) -> None:
        super().__init__()
        self.stream = stream
        self._before = before

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._before(data)
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def writable(self) -> bool:
        return True


def tap_console(console: object, before: Callable[[bytes], None]) -> StreamTap | None:
    """Put a tap on `console.stream` (a `ConsoleOutput`); None if it has no stream left."""
    stream = getattr(console, "stream", None)
    if stream is None:
        return None
    tap = StreamTap(stream, before)
    console.stream = tap  # type: ignore[attr-defined]
    return tap


def untap_console(console: object, tap: StreamTap | None) -> None:
    """Take `tap` off again (taps come off in the reverse order they went on)."""
    if tap is not None and getattr(console, "stream", None) is tap:
        console.stream = tap.stream  # type: ignore[attr-defined]


def is_terminal(stream: TextIO | None) -> bool:
    """Is `stream` a terminal (so a person is watching it)?"""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
