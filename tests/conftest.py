"""Shared fixtures: run lgemu as a user would (a subprocess) or in-process (faster).

* `run_lgemu(args, input=None)` runs ``python -m lgemu ARGS`` from the repository root and
  returns the `CompletedProcess` with ``stdout`` as bytes (the guest's console, exactly) and
  ``stderr`` as text.  A 60 s timeout turns a hang into a failure.
* `boot_guest(kernel, cmdline="", mem=64, extra=())` runs ``lgemu boot`` through
  `lgemu.cli.main` in this process with stdout and stderr captured, and returns
  ``(exit_status, stdout_bytes, stderr_text)``.  A watchdog turns a guest that never ends
  into a test failure instead of a hung test run.
* `lgemu_main(argv)` is the same for any command line.
* `asm_guest(body, data="", mem=64, cmdline="", extra=())` builds a guest with
  `guestasm.build_guest` and boots it in-process; it returns a `GuestRun`.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from guestasm import GuestRun, build_guest

if TYPE_CHECKING:
    from lgemu.abi_eras import Era

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT = 60
IN_PROCESS_TIMEOUT = 30

if str(REPO_ROOT) not in sys.path:  # `pytest` as well as `python -m pytest` from the root
    sys.path.insert(0, str(REPO_ROOT))

Result = tuple[int, bytes, str]


class GuestRunTooLong(AssertionError):
    """An in-process run did not end within IN_PROCESS_TIMEOUT seconds."""


@contextmanager
def _watchdog(seconds: int) -> Iterator[None]:
    """Raise GuestRunTooLong in this thread if the block runs longer than `seconds`.

    lgemu returns to Python between instruction slices, so the signal handler gets to run
    even while a guest spins."""
    def expire(signum: int, frame: object) -> None:
        raise GuestRunTooLong(f"lgemu did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# How the last in-process run ended, as `lgemu.cli.boot` returned it (None if it raised or
# was not a boot): tests read the kind of a kill from it (`GuestRun.kill`).
last_outcome: list[object] = [None]


def lgemu_main_in_process(argv: Sequence[str]) -> Result:
    """`lgemu.cli.main(argv)` with stdout/stderr captured: (status, stdout bytes, stderr)."""
    from lgemu import cli

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.StringIO()
    saved = sys.stdout, sys.stderr
    boot = cli.boot

    def recording_boot(*args: object, **kwargs: object) -> object:
        last_outcome[0] = outcome = boot(*args, **kwargs)
        return outcome

    last_outcome[0] = None
    sys.stdout, sys.stderr = out, err
    cli.boot = recording_boot
    try:
        with _watchdog(IN_PROCESS_TIMEOUT):
            status = cli.main(list(argv))
    finally:
        cli.boot = boot
        sys.stdout, sys.stderr = saved
    out.flush()
    return status, out.buffer.getvalue(), err.getvalue()


def boot_args(kernel: Path | str | None, cmdline: str = "", mem: int = 64,
              extra: Sequence[str] = ()) -> list[str]:
    """The `lgemu boot` command line for a kernel, command line and RAM size."""
    args = ["boot"]
    if kernel is not None:
        args.append(str(kernel))
    return [*args, "-m", str(mem), f"--append={cmdline}", *extra]


@pytest.fixture
def lgemu_main() -> Callable[[Sequence[str]], Result]:
    return lgemu_main_in_process


@pytest.fixture
def boot_guest() -> Callable[..., Result]:
    def boot(kernel: Path | str | None, cmdline: str = "", mem: int = 64,
             extra: Sequence[str] = ()) -> Result:
        return lgemu_main_in_process(boot_args(kernel, cmdline, mem, extra))
    return boot


@pytest.fixture
def run_lgemu() -> Callable[..., subprocess.CompletedProcess]:
    def run(args: Sequence[str], input: bytes | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "lgemu", *map(str, args)], cwd=REPO_ROOT,
                              input=input if input is not None else b"", capture_output=True,
                              timeout=SUBPROCESS_TIMEOUT, check=False)
        proc.stderr = proc.stderr.decode("utf-8", errors="replace")
        return proc
    return run


@pytest.fixture
def asm_guest(tmp_path: Path) -> Callable[..., GuestRun]:
    def run(body: str, data: str = "", mem: int = 64, cmdline: str = "",
            extra: Sequence[str] = (), era: Era | None = None) -> GuestRun:
        """`era`: assemble in that era's ABI and run with ``--abi`` naming it."""
        elf = build_guest(tmp_path, body, data, era)
        if era is not None:
            extra = ["--abi", era.name, *extra]
        status, out, err = lgemu_main_in_process(boot_args(elf, cmdline, mem, extra))
        return GuestRun(status, out, err, elf, last_outcome[0])
    return run
