"""Bounds a user sets on a runaway guest, and the signals that end a run cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT
from guestasm import build_guest

SPIN = """
	INIT
1:	inc	%eax
	jmp	1b
"""


def test_max_insns_ends_a_runaway_guest(asm_guest) -> None:
    run = asm_guest(SPIN, extra=["--max-insns", "50000"])
    assert run.status == 5
    assert run.err == "lgemu: instruction limit of 50000 reached\n"


def test_max_insns_does_not_cut_a_guest_that_finishes(asm_guest) -> None:
    run = asm_guest("\tINIT\n\tPOWER_DOWN\n", extra=["--max-insns", "50000"])
    assert run.status == 0 and run.err == ""


def test_timeout_ends_a_runaway_guest(run_lgemu, tmp_path: Path) -> None:
    proc = run_lgemu(["boot", build_guest(tmp_path, SPIN), "--timeout", "0.5"])
    assert proc.returncode == 6
    assert proc.stderr == "lgemu: timeout: 0.5 s of wall-clock time\n"


def test_sigterm_ends_the_run_with_one_line(tmp_path: Path) -> None:
    elf = build_guest(tmp_path, "\tINIT\n\tPUTS ready\n1:\tjmp 1b\n", 'ready: .asciz "ready"\n')
    proc = subprocess.Popen([sys.executable, "-m", "lgemu", "boot", str(elf)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(5) == b"ready"  # spinning from now on
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err.decode() == "lgemu: terminated by SIGTERM\n"


def test_bad_limits_are_user_errors(run_lgemu) -> None:
    for args in (["--max-insns", "0"], ["--max-insns", "x"], ["--timeout", "-1"],
                 ["--timeout", "inf"]):
        proc = run_lgemu(["boot", *args])
        assert proc.returncode == 2, args
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
