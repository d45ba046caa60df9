"""Signals from the host (SIGINT, SIGTERM, SIGHUP): noted at once, acted on at a safe point.

Python runs a signal handler between two bytecodes of whatever the main thread is doing, and
in lgemu that is often a Unicorn callback: a hypercall, an interrupt, a trace line.  An
exception raised there never gets out: ctypes prints it and drops it, and the hook it cut
short leaves the guest half-handled (a HALT without its timer, say).  So the handler raises
nothing.  It records the first signal, asks the running guest to end its CPU run after the
current instruction (`on_signal`, the guest's `interrupt`), and writes a byte into a pipe
that every real-time wait (a halted guest, a realtime clock, gdb) includes in its `select`,
so no wait sleeps through it.  The run loop turns the signal into the run's ending at the
next boundary between CPU runs, with the guest between two instructions.

The first signal decides the ending; later ones change nothing.  `SIGNALS` is the one watch
of the process (signals are process-wide); it only acts while `install`ed, which the command
line does for the whole of `lgemu boot` and `lgemu info`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import HungUp, Interrupted, LgemuExit, Terminated

# What each signal ends a run with (the exit statuses are in lgemu.errors and the README).
ENDINGS: dict[int, tuple[type[LgemuExit], str]] = {
    signal.SIGINT: (Interrupted, "interrupted"),
    signal.SIGTERM: (Terminated, "terminated by SIGTERM"),
    signal.SIGHUP: (HungUp, "hangup (SIGHUP)"),
}


class SignalWatch:
    """The process's watch on `ENDINGS`' signals: the first one received, and a pipe that
    becomes readable when it arrives."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.wake_fd: int | None = None  # readable once a signal has arrived (never drained)
        self._write_fd: int | None = None
        self._previous: dict[int, object] = {}
        # Called from the handler: must not raise, may run inside any Unicorn callback.
        self.on_signal: Callable[[], None] | None = None

    def install(self) -> bool:
        """Catch the signals (main thread only; elsewhere Python cannot); True if done."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return False
        self.received = None
        self.wake_fd, self._write_fd = os.pipe()
        for fd in (self.wake_fd, self._write_fd):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        for signum in ENDINGS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def uninstall(self) -> None:
        """Give the signals back.  After a signal was received, further ones are ignored
        instead: lgemu is already on its way out, and a second one must not change how."""
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_IGN if self.received is not None else previous)
        self._previous = {}
        for fd in (self.wake_fd, self._write_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.wake_fd = self._write_fd = None
        self.on_signal = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum
        if self._write_fd is not None:
            with contextlib.suppress(OSError):  # a full pipe is readable already
                os.write(self._write_fd, b"!")
        if self.on_signal is not None:
            self.on_signal()

    def pending(self) -> LgemuExit | None:
        """The ending the received signal asks for, or None."""
        if self.received is None:
            return None
        kind, message = ENDINGS[self.received]
        return kind(message)

    def check(self) -> None:
        """Raise the ending of a received signal (call only where raising is safe)."""
        ending = self.pending()
        if ending is not None:
            raise ending

    def wait(self, fds: list[Any], timeout: float | None) -> list[Any]:
        """`select` for reading on `fds` for up to `timeout` seconds (None: for ever), woken
        by a signal too, whose ending it then raises; returns the ready descriptors."""
        self.check()
        watch = fds if self.wake_fd is None else [*fds, self.wake_fd]
        ready = select.select(watch, [], [], None if timeout is None else max(0.0, timeout))[0]
        self.check()
        return [fd for fd in ready if fd != self.wake_fd]

    def writable(self, fd: int) -> bool:
        """Wait until `fd` has room for output: True, or False once a signal has come.  It
        never raises, so code inside a Unicorn callback may wait here."""
        watch = [] if self.wake_fd is None else [self.wake_fd]
        while self.received is None:
            try:
                if select.select(watch, [fd], [], None)[1]:
                    return True
            except (OSError, ValueError):
                return True  # not selectable: let the write itself say what is wrong
        return False

    def sleep(self, seconds: float) -> None:
        """Sleep, woken by a signal (whose ending it raises)."""
        if self.wake_fd is None:
            time.sleep(seconds)
        else:
            self.wait([], seconds)


SIGNALS = SignalWatch()
