"""The console on a real pseudo-terminal, as a person at a keyboard has it.

lgemu runs with a pty's slave as its controlling terminal and as stdin, stdout and stderr, as
it is in an interactive shell; the test types on the master and reads everything the
terminal would show.  The terminal must be raw while the guest runs (every byte typed reaches
the guest: Ctrl-C, Ctrl-S, Ctrl-Q, CR; the guest's bytes reach the screen untranslated), the
status line must never draw over the guest's output, and the terminal's settings must come
back however the run ends.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
from conftest import REPO_ROOT, SUBPROCESS_TIMEOUT

ECHO = ["--append", "lgemu.test=console_echo console.idle=100000"]
KERNELS = REPO_ROOT.parent / "shared" / "kernels"


class PtySession:
    """`lgemu ARGS` on a fresh pseudo-terminal that is its controlling terminal."""

    def __init__(self, args: list[str]) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.before = termios.tcgetattr(self.slave)
        self.screen = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lgemu", *args], cwd=REPO_ROOT,
            stdin=self.slave, stdout=self.slave, stderr=self.slave, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))

    def read_until(self, text: bytes, timeout: float = SUBPROCESS_TIMEOUT) -> None:
        """Read the screen until `text` has appeared on it."""
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            left = deadline - time.monotonic()
            assert left > 0, (text, self.screen)
            self._read(left)

    def _read(self, timeout: float) -> bool:
        if not select.select([self.master], [], [], timeout)[0]:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every slave descriptor is closed
            return False
        self.screen += chunk
        return bool(chunk)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def attrs(self) -> list:
        return termios.tcgetattr(self.slave)

    def finish(self) -> int:
        """Wait for lgemu to end, reading the screen meanwhile; its exit status."""
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, self.screen
            self._read(0.05)
        while self._read(0.05):
            pass
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def session():
    sessions: list[PtySession] = []

    def start(args: list[str]) -> PtySession:
        sessions.append(PtySession(args))
        return sessions[-1]
    yield start
    for s in sessions:
        s.close()


def test_every_byte_typed_reaches_the_guest_and_its_bytes_reach_the_screen(session):
    term = session(["boot", *ECHO])
    term.read_until(b"console_echo: ready")
    time.sleep(0.7)  # longer than the status line's delay: it must still not appear
    during = term.attrs()
    # Ctrl-C, Ctrl-S, Ctrl-Q, Ctrl-Z, Ctrl-\ are bytes for the guest; so is CR ("\r\n" is one
    # line end for the echo program, "\n\n" would be two).
    term.type(b"a\x03b\x13c\x11d\x1ae\x1cf\r\n")
    term.read_until(b"echo: a\\x03b\\x13c\\x11d\\x1ae\\x1cf\r\n")
    term.type(b"quit\r")
    assert term.finish() == 0
    screen = term.screen
    assert screen.endswith(b"echo: a\\x03b\\x13c\\x11d\\x1ae\\x1cf\r\n"
                           b"console_echo: quit after 1 lines\r\n"
                           b"lgemu guest: power down\r\n")
    assert b"\r\r\n" not in screen
    assert b"lgemu:" not in screen and b"\x1b" not in screen  # no status line, no title
    iflag, oflag, _, lflag = during[:4]
    assert not iflag & (termios.ICRNL | termios.IXON | termios.INLCR | termios.ISTRIP)
    assert not oflag & termios.OPOST
    assert not lflag & (termios.ISIG | termios.ICANON | termios.ECHO | termios.IEXTEN)
    assert term.attrs() == term.before


def test_status_on_an_interactive_console_goes_to_the_title(session):
    term = session(["boot", *ECHO, "--status"])
    term.read_until(b"console_echo: ready")
    term.read_until(b"\x1b]2;lgemu: ")
    term.type(b"hello\r")
    term.read_until(b"echo: hello\r\n")
    term.type(b"quit\r")
    assert term.finish() == 0
    screen = term.screen
    assert screen.startswith(b"\x1b[22;2t") and screen.endswith(b"\x1b[23;2t")
    titles = [t for t in screen.split(b"\x1b]2;")[1:]]
    assert all(t.startswith(b"lgemu: ") and b"\x07" in t for t in titles)
    text = b"".join(t.split(b"\x07", 1)[1] for t in titles)  # the screen without titles
    assert b"\r\x1b[K" not in screen and b"echo: hello\r\n" in text


def test_lgemus_own_lines_on_the_raw_terminal_still_start_at_the_margin(session):
    """The event log on stderr, which is the console's raw terminal: lines end in CR LF."""
    term = session(["boot", *ECHO, "--events"])
    term.read_until(b"irq 0")  # (guest text is cut into pieces by the event lines)
    term.type(b"quit\r")
    assert term.finish() == 0
    assert b"hcall LGUEST_INIT" in term.screen and b"irq 0" in term.screen
    assert b"\r\r\n" not in term.screen
    assert all(line.endswith(b"\r") for line in term.screen.split(b"\n")[:-1])


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_restores_the_terminal_and_prints_one_line(session, sig, status):
    term = session(["boot", *ECHO])
    term.read_until(b"console_echo: ready")
    term.type(b"some typing")
    time.sleep(0.1)
    term.proc.send_signal(sig)
    assert term.finish() == status
    line = b"lgemu: interrupted" if sig == signal.SIGINT else b"lgemu: terminated by SIGTERM"
    assert term.screen.endswith(b"\r\n" + line + b"\r\n")  # a whole line, on a line of its own
    assert term.screen.count(b"lgemu:") == 1
    assert term.attrs() == term.before


def test_ctrl_c_on_a_terminal_the_console_does_not_read_is_sigint(session, tmp_path):
    """With --console-input the terminal stays as it was: Ctrl-C is the kernel's SIGINT, and
    the status line (drawn in place here) is cleared before lgemu's one line."""
    script = tmp_path / "input.txt"
    script.write_bytes(b"from the file\n")
    term = session(["boot", *ECHO, "--console-input", str(script)])
    term.read_until(b"echo: from the file")  # (the terminal, not raw, adds its own "\r")
    term.read_until(b"\x1b[K")  # the status line, once the run has lasted half a second
    assert term.attrs() == term.before
    term.type(b"\x03")
    assert term.finish() == 130
    assert term.screen.endswith(b"\r\x1b[Klgemu: interrupted\r\n")
    assert term.screen.count(b"lgemu: interrupted") == 1
    assert term.attrs() == term.before


def test_no_status_keeps_the_terminal_free_of_it(session, tmp_path):
    script = tmp_path / "input.txt"
    script.write_bytes(b"hello\n")
    # The input ends; the guest idles 150 ticks, paced to at least 1 s, then gives up: long
    # enough for the status line to have shown (as it does without --no-status).
    args = ["boot", "--append", "lgemu.test=console_echo console.idle=150",
            "--console-input", str(script)]
    for extra, shown in (([], True), (["--no-status"], False)):
        term = session([*args, *extra])
        assert term.finish() == 0
        assert b"no input for 150 ticks" in term.screen
        assert (b"\rlgemu: " in term.screen) == shown


def test_a_terminal_that_hangs_up_ends_the_run_with_129(session):
    term = session(["boot", *ECHO])
    term.read_until(b"console_echo: ready")
    os.close(term.master)  # the terminal window closes: the kernel sends SIGHUP
    term.master = os.open(os.devnull, os.O_RDONLY)  # (closed again by the fixture)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while term.proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert term.proc.returncode == 129


@pytest.mark.skipif(not (KERNELS / "klibc-shell.cpio").exists(),
                    reason=f"no real kernels and shell in {KERNELS}")
def test_a_real_shell_session_on_the_terminal(session):
    """The real 2.6.24 kernel with the klibc shell: its own tty layer echoes and edits, Ctrl-C
    interrupts its foreground job, Ctrl-S/Ctrl-Q stop and restart its output."""
    term = session(["boot", str(KERNELS / "linux-2.6.24.bzImage"),
                    "--initrd", str(KERNELS / "klibc-shell.cpio"),
                    "--append", "console=hvc0 rdinit=/init"])
    term.read_until(b"lgemu-shell: ready", timeout=120)
    term.type(b"echo hi there\r")
    term.read_until(b"echo hi there\r\nhi there\r\n")
    term.type(b"cat\r")  # cat waits for input until Ctrl-C interrupts it
    term.read_until(b"cat\r\n")
    time.sleep(0.3)
    term.type(b"\x03")
    term.type(b"echo after ctrl-c\r")
    term.read_until(b"after ctrl-c\r\n")
    term.type(b"\x13")  # Ctrl-S: the guest's tty stops its output...
    time.sleep(0.3)
    term.type(b"echo held\r")
    time.sleep(1.0)
    assert b"held\r\n" not in term.screen.split(b"ctrl-c\r\n")[-1]
    term.type(b"\x11")  # ...and Ctrl-Q restarts it
    term.read_until(b"echo held\r\nheld\r\n")
    term.type(b"exit\r")
    assert term.finish() == 0
    assert term.screen.endswith(b"Power down.\r\n")
    assert b"\r\r\n" not in term.screen
    assert term.attrs() == term.before
