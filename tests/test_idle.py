"""A guest whose console input has ended and that idles on its own timers.

With the virtual clock such a guest used to skip from timer to timer at full speed for ever
(one core busy, guest time racing ahead of real time).  Now its halts wait in real time
until the host's clock catches up with the guest's: it costs next to no CPU, and it sees
exactly what it saw before (only the pacing changed), so runs stay byte-reproducible.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SUBPROCESS_TIMEOUT

from lgemu.host.guest import PACE_LEAD_S

IDLE_FOREVER = ["--append", "lgemu.test=console_echo console.idle=100000"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_an_idle_guest_after_its_pipe_closed_uses_little_cpu():
    proc = subprocess.Popen([sys.executable, "-m", "lgemu", "boot", *IDLE_FOREVER],
                            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"last line\n")
        proc.stdin.close()  # the pipe ends; the guest polls its console on every tick
        proc.stdin = None
        seen = b""
        while b"echo: last line\r\n" not in seen:
            assert select.select([proc.stdout], [], [], SUBPROCESS_TIMEOUT)[0], seen
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, (seen, proc.stderr.read())
            seen += chunk
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(3.0)  # measured: ~2 % of a core paced, 75 % unpaced on an idle machine
        cpu, wall = cpu_seconds(proc.pid) - cpu0, time.monotonic() - wall0
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err) == (143, b"lgemu: terminated by SIGTERM\n")
    assert cpu < 0.1 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s"


def test_a_paced_idle_is_reproducible(run_lgemu, tmp_path):
    """Input from a file ends; the guest idles 100 ticks (1 s, paced once its clock leads
    the host's by PACE_LEAD_S) and gives up: the same bytes and instruction counts every
    time."""
    script = tmp_path / "input.txt"
    script.write_bytes(b"one\ntwo")
    runs = []
    for _ in range(2):
        started = time.monotonic()
        proc = run_lgemu(["boot", "--append", "lgemu.test=console_echo console.idle=100",
                          "--console-input", script, "-v"])
        runs.append((proc.returncode, proc.stdout,
                     [line for line in proc.stderr.splitlines() if line.startswith("executed")]))
        assert time.monotonic() - started >= 1.0 - PACE_LEAD_S  # paced: real time passed
    assert runs[0] == runs[1]
    assert runs[0][0] == 0
    assert runs[0][1].endswith(b"echo: one\r\necho: two\r\n"
                               b"FAIL console_echo: no input for 100 ticks after 2 lines\r\n"
                               b"lgemu guest: power down\r\n")
