"""How a run ends, as exceptions with their exit statuses.

A guest never makes lgemu print a traceback: every way a run can end is one of these, caught
once in `lgemu.cli` and turned into one line on stderr and an exit status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .kills import Kill


class ExitStatus:
    """Process exit statuses (documented in the README)."""

    POWER_DOWN = 0  # LHCALL_CRASH "Power down"
    CRASHED = 1  # any other LHCALL_CRASH (panic)
    USAGE = 2  # bad option, file or image; Unicorn self-test failure
    KILLED = 3  # the Host killed the guest for a violation
    STUCK = 4  # halted with nothing that could ever wake it
    INSN_LIMIT = 5  # --max-insns reached
    TIMEOUT = 6  # --timeout reached
    RESTART = 7  # LHCALL_SHUTDOWN restart (2.6.25 on): lgemu ends where lguest restarted
    REPLAY_DIVERGED = 8  # a replayed guest sent what the recorded one did not
    INTERNAL = 70  # a bug in lgemu itself (EX_SOFTWARE)
    HANGUP = 129  # SIGHUP: the terminal (or whoever started lgemu) went away
    INTERRUPTED = 130  # Ctrl-C (SIGINT), Ctrl-] on the console terminal
    TERMINATED = 143  # SIGTERM


class LgemuExit(Exception):
    """Base: a run ends with `message` on stderr and `status`."""

    status = 1
    prefix = "lgemu: "  # each kind of ending names itself here
    suffix = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def line(self) -> str:
        """The one line printed on stderr."""
        return self.prefix + self.message + self.suffix


class UserError(LgemuExit):
    """Bad user input: options, files, images, sizes."""

    status = ExitStatus.USAGE


class GuestKilled(LgemuExit):
    """The Host killed the guest (lguest's kill_guest): `kill` is the rule broken and with
    what (`lgemu.kills`), `message` its wording."""

    status = ExitStatus.KILLED
    prefix = "lgemu: guest killed: "

    def __init__(self, kill: Kill) -> None:
        super().__init__(kill.text())
        self.kill = kill


class GuestCrashed(LgemuExit):
    """LHCALL_CRASH with a message other than "Power down"."""

    status = ExitStatus.CRASHED
    prefix = "lgemu: guest crashed: "


class GuestStuck(LgemuExit):
    """The guest halted with interrupts that can never arrive."""

    status = ExitStatus.STUCK
    prefix = "lgemu: guest stuck: "


class PowerDown(LgemuExit):
    """LHCALL_CRASH "Power down" (from 2.6.25 LHCALL_SHUTDOWN power-off with that reason):
    the guest switched itself off."""

    status = ExitStatus.POWER_DOWN


class GuestRestart(LgemuExit):
    """LHCALL_SHUTDOWN with LGUEST_SHUTDOWN_RESTART: the guest asked to be restarted, which
    lgemu leaves to whoever started it (status 7, the reason on the line)."""

    status = ExitStatus.RESTART
    prefix = "lgemu: guest asked to restart"

    def line(self) -> str:
        return self.prefix + (f": {self.message}" if self.message else "")


class InternalError(LgemuExit):
    """A bug in lgemu: one line instead of a traceback (LGEMU_DEBUG=1 shows the traceback)."""

    status = ExitStatus.INTERNAL
    prefix = "lgemu: internal error: "
    suffix = " (please report this)"


class LimitReached(LgemuExit):
    """A bound the user set (--max-insns, --timeout) ended the run."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Terminated(LgemuExit):
    """SIGTERM: end the run cleanly (devices flushed and closed)."""

    status = ExitStatus.TERMINATED


class Interrupted(LgemuExit):
    """SIGINT (Ctrl-C where the terminal is not the guest's console)."""

    status = ExitStatus.INTERRUPTED


class HungUp(LgemuExit):
    """SIGHUP: the controlling terminal closed, or a supervisor asked lgemu to end."""

    status = ExitStatus.HANGUP
