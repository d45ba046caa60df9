"""The virtio console (type 3, ABI §12.1): queue 0 is input, queue 1 is output.

Output buffers are written to the host's stdout byte for byte and returned at once: the
2.6.24 driver spins until its buffer comes back, so the kick is served before the guest runs
on.  Early-console strings (NOTIFY on a plain address) go to the same sink.

Input comes from one `ConsoleInput`: the file named by `--console-input`, or else stdin.  It
is moved into the buffers the guest posts on the input queue at slice boundaries only, never
inside a kick, so the guest needs no kicks there (the queue carries NO_NOTIFY).  A regular
file — `--console-input FILE`, or stdin redirected from one — is read only when a buffer is
waiting, so a scripted session reaches the guest at the same instructions on every run.  A
terminal or a pipe is read whenever it has bytes, up to a bound; its timing is the host's.

A terminal is switched to raw mode while the guest runs, as `cfmakeraw` does and QEMU's
`-nographic` stdio: no echo, no line editing, no signal keys (Ctrl-C, Ctrl-Z and Ctrl-\\ are
bytes for the guest), no flow control (Ctrl-S, Ctrl-Q too), no CR/NL translation either way
(the guest's own tty layer ends its lines with "\\r\\n": the host adding another "\\r" drew
"\\r\\r\\n").  It is restored when the run ends and again when the console is closed, on every
way out of lgemu.  Ctrl-] (the telnet escape) typed there ends the run (`KeyboardQuit`).
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
import sys
import termios
from pathlib import Path
from typing import Any, BinaryIO

from ..abi import DeviceType
from ..errors import ExitStatus, LgemuExit, UserError
from ..launcher.loader import file_errors
from ..signals import SIGNALS
from .base import Device
from .vring import Chain, Vring, total_length

INPUT_QUEUE, OUTPUT_QUEUE = 0, 1
QUIT_KEY = 0x1D  # Ctrl-]
BACKLOG = 64 * 1024  # input read ahead of the guest from a terminal or pipe
TTY_PIECE = 256  # a terminal reports room for output with at least this much free


class KeyboardQuit(LgemuExit):
    """The user typed the quit key on the console terminal."""

    status = ExitStatus.INTERRUPTED


class ConsoleOutput:
    """Where guest console bytes go: a binary stream, flushed per write."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream: BinaryIO | None = stream
        self.bytes_written = 0
        # A pipe, socket or terminal can be full: it is written in pieces it takes at once
        # when it has room (a pipe a page, a terminal 256 bytes), after waiting for that room.
        self._fd: int | None = None
        self._piece = 0
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (AttributeError, ValueError, OSError):  # in memory: never blocks
            return
        if os.isatty(fd):
            self._fd, self._piece = fd, TTY_PIECE
        elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            self._fd, self._piece = fd, select.PIPE_BUF

    def save_state(self) -> int:
        """Persist: bytes written (where they went is not guest state)."""
        return self.bytes_written

    def restore_state(self, state: int) -> None:
        """Persist: back to `state`."""
        self.bytes_written = state

    def write(self, data: bytes) -> None:
        """Write guest bytes exactly (no newline translation).  If the reader has gone
        (`lgemu boot | head`, a closed terminal), the rest is discarded and the guest runs
        on.  A reader that stops reading (a full pipe) holds the guest up, but not a signal:
        the wait for room includes it, and the output is dropped once one has come (this
        runs inside a Unicorn callback, so it returns rather than raise; the run then ends
        at the next boundary)."""
        if not data or self.stream is None:
            return
        try:
            if self._fd is None:
                self.stream.write(data)
                self.stream.flush()
            else:
                for at in range(0, len(data), self._piece):
                    if not SIGNALS.writable(self._fd):
                        return
                    self.stream.write(data[at:at + self._piece])
                    self.stream.flush()
        except OSError:  # EPIPE; EIO from a terminal that hung up
            self._discard()
            return
        self.bytes_written += len(data)

    def _discard(self) -> None:
        # Point the descriptor at /dev/null so the interpreter's own flush at exit is quiet.
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):
            pass
        self.stream = None


class ConsoleInput:
    """One source of console input: a file descriptor and what kind of thing it is.

    `kind` is "file" (a regular file: read on demand, reproducible), "tty" (a terminal, in
    raw mode while open) or "pipe" (anything else: pipes, sockets, character devices)."""

    def __init__(self, fd: int, kind: str, owned: bool) -> None:
        self.fd = fd
        self.kind = kind
        self.owned = owned
        self.open = True
        self._saved_tty: list[Any] | None = None

    @property
    def live(self) -> bool:
        """True when bytes arrive on the host's schedule (terminal, pipe), not on demand."""
        return self.kind != "file"

    @property
    def interactive(self) -> bool:
        """A person types at a terminal (which shares the screen with lgemu's stderr)."""
        return self.kind == "tty" and self.open

    def raw_mode(self) -> None:
        """A terminal goes raw (the guest is about to run); anything else is left alone."""
        if self.kind != "tty" or not self.open or self._saved_tty is not None:
            return
        try:
            self._saved_tty = termios.tcgetattr(self.fd)
        except termios.error:
            self.kind = "pipe"
            return
        raw = [*self._saved_tty[:6], list(self._saved_tty[6])]
        raw[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                    | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
        raw[1] &= ~termios.OPOST
        raw[2] = raw[2] & ~(termios.CSIZE | termios.PARENB) | termios.CS8
        raw[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG
                    | termios.IEXTEN)
        raw[6][termios.VMIN] = 1
        raw[6][termios.VTIME] = 0
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(self.fd, termios.TCSANOW, raw)
        _own_line_ends(self.fd, raw=True)

    def restore(self) -> None:
        """Give the terminal back its own settings (idempotent).  TCSANOW, not TCSADRAIN:
        output already written was translated (or not) when written, and a terminal that is
        not being read (or has hung up) must not keep lgemu from ending."""
        if self._saved_tty is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSANOW, self._saved_tty)
            self._saved_tty = None
            _own_line_ends(self.fd, raw=False)

    def ready(self) -> bool:
        """Can `read` return without blocking?"""
        if not self.open:
            return False
        if self.kind == "file":
            return True
        try:
            return bool(select.select([self.fd], [], [], 0)[0])
        except (OSError, ValueError):
            return True  # let read() report it

    def read(self, limit: int) -> bytes:
        """Up to `limit` bytes (call when `ready`); b"" at end of input, which closes it."""
        try:
            data = os.read(self.fd, limit)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            self.close()
        return data

    def close(self) -> None:
        """Stop reading; restore the terminal."""
        self.restore()
        if self.open and self.owned:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.open = False


def _own_line_ends(fd: int, raw: bool) -> None:
    """lgemu's own lines on stderr while the terminal `fd` is raw (the gdb stub's notices,
    an event log): with the terminal no longer turning "\\n" into "\\r\\n", Python's stderr
    does, so they still start at the left margin.  Only when stderr is that terminal."""
    stream = sys.stderr
    try:
        if not os.path.samestat(os.fstat(stream.fileno()), os.fstat(fd)):
            return
        stream.flush()
        stream.reconfigure(newline="\r\n" if raw else "\n")  # "\n": POSIX stdio's own
    except (AttributeError, OSError, ValueError):
        pass


def _kind(fd: int) -> str:
    mode = os.fstat(fd).st_mode
    if os.isatty(fd):
        return "tty"
    return "file" if stat.S_ISREG(mode) else "pipe"


def open_console_input(path: Path | None, stdin: object = None) -> ConsoleInput | None:
    """The console's input: `path` if given (`--console-input`), else `stdin` (default
    `sys.stdin`) unless it has no usable file descriptor (as under pytest)."""
    if path is not None:
        with file_errors(path):
            if path.is_dir():
                raise UserError(f"{path}: is a directory")
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        kind = _kind(fd)
        return ConsoleInput(fd, "pipe" if kind == "tty" else kind, owned=True)
    stream = sys.stdin if stdin is None else stdin
    try:
        fd = stream.fileno()  # type: ignore[union-attr]
        kind = _kind(fd)
    except (AttributeError, ValueError, OSError):
        return None
    if kind == "tty" and _background(fd):
        return None  # `lgemu boot &`: a background job leaves the terminal alone
    return ConsoleInput(fd, kind, owned=False)


def _background(fd: int) -> bool:
    """Is `fd` our controlling terminal, with another process group in the foreground?"""
    try:
        return os.tcgetpgrp(fd) != os.getpgrp()
    except OSError:  # not our controlling terminal: no job control applies
        return False


class Console(Device):
    """hvc0: the guest's console."""

    type = DeviceType.CONSOLE
    name = "console"
    num_queues = 2

    def __init__(self, output: ConsoleOutput, source: ConsoleInput | None = None) -> None:
        super().__init__()
        self.output = output
        self.source = source
        self.backlog = b""  # input read from the host, not yet in a guest buffer
        self.bytes_in = 0

    def attach(self, queues: list[Vring], raise_irq: Any) -> None:
        super().attach(queues, raise_irq)
        queues[INPUT_QUEUE].set_no_notify(True)  # input is polled at slice boundaries

    def kick(self, queue: Vring) -> None:
        if queue is self.queues[OUTPUT_QUEUE]:
            self.serve(queue, lambda chain: self._print(queue, chain))
        # input buffers posted: filled at the next slice boundary

    def _print(self, queue: Vring, chain: Chain) -> int:
        """Write an output chain to stdout; like the Launcher, report its length back."""
        if chain.writable:
            raise queue.reject(chain, "device-writable buffer in the output queue")
        for buffer in chain.buffers:
            self.output.write(queue.gather((buffer,)))
        return total_length(chain.buffers)

    # -- input ---------------------------------------------------------------------------------
    def poll(self) -> None:
        if not self.queues:  # a PCI console has no queues until the driver sets them up
            return
        source = self.source
        inq = self.queues[INPUT_QUEUE]
        if source is not None and source.open:
            if source.live:
                if len(self.backlog) < BACKLOG and source.ready():
                    self._take(source.read(BACKLOG - len(self.backlog)))
            elif not self.backlog and inq.pending():
                self._take(source.read(BACKLOG))
        if self.backlog:
            self.serve(inq, lambda chain: self._feed(inq, chain), lambda: bool(self.backlog))

    def _feed(self, queue: Vring, chain: Chain) -> int:
        """Fill an input buffer from the backlog."""
        if chain.readable:
            raise queue.reject(chain, "device-readable buffer in the input queue")
        n = queue.write(chain.writable, self.backlog)
        self.backlog = self.backlog[n:]
        self.bytes_in += n
        return n

    def _take(self, data: bytes) -> None:
        if self.source is not None and self.source.kind == "tty" and QUIT_KEY in data:
            raise KeyboardQuit("quit from the keyboard (Ctrl-])")
        self.backlog += data

    def wake_irqs(self) -> list[int]:
        if not self.queues:
            return []
        inq = self.queues[INPUT_QUEUE]
        if self.source is None or not self.source.open or not inq.wants_interrupt():
            return []
        return [inq.irq] if inq.pending() else []

    def wait_fds(self) -> list[int]:
        source = self.source
        if source is None or not source.open or not source.live or source.fd < 0 \
                or len(self.backlog) >= BACKLOG:  # fd -1: a replay, due input is already in
            return []
        return [source.fd]

    def polled_fds(self) -> list[int]:
        if not self.queues:
            return []
        inq = self.queues[INPUT_QUEUE]
        return self.wait_fds() if not inq.wants_interrupt() and inq.pending() else []

    def run_starts(self) -> None:
        if self.source is not None:
            self.source.raw_mode()

    def run_ends(self) -> None:
        if self.source is not None:
            self.source.restore()

    @property
    def interactive(self) -> bool:
        """Is the console read from a terminal, as a person types?"""
        return self.source is not None and self.source.interactive

    def input_ended(self) -> bool:
        return self.source is not None and not self.source.open

    def summary(self) -> str:
        return f"output {self.output.bytes_written} bytes, input {self.bytes_in} bytes"

    def save_state(self) -> tuple[bytes, int]:
        """Persist: input read from the host and not yet given to the guest, and how much has
        been given.  Where input comes from is the run's (`Timeline.replaying` hides it)."""
        return self.backlog, self.bytes_in

    def restore_state(self, state: object) -> None:
        """Persist: back to `state`."""
        self.backlog, self.bytes_in = state  # type: ignore[misc]

    def close(self) -> None:
        if self.source is not None:
            self.source.close()

