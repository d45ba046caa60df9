"""Signals at random moments: one `lgemu boot` per delivery, and what it ended with.

Each *scenario* starts the bundled guest doing something in particular, waits until it is
doing it, then sends one signal after a random delay.  The run must end with that signal's
exit status and exactly its one line on stderr (after the lines the scenario itself expects,
such as the gdb stub's address): no traceback, no "Exception ignored", no other ending.  Used
by tests/test_signals.py (a bounded number) and tools/signal_soak (hundreds).

The guest is `lgemu.test=console_echo` (the bundled firmware: no compiler needed): it polls
console input on every timer tick, halting in between, and echoes each line, so a run is full
of hypercalls (HALT, SET_CLOCKEVENT), timer interrupts, console vring traffic and real-time
waits for input.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rspclient import RspClient

REPO_ROOT = Path(__file__).resolve().parent.parent

ENDINGS = {
    signal.SIGINT: (130, "lgemu: interrupted"),
    signal.SIGTERM: (143, "lgemu: terminated by SIGTERM"),
    signal.SIGHUP: (129, "lgemu: hangup (SIGHUP)"),
}
ECHO = ["--append", "lgemu.test=console_echo console.idle=1000000"]
READY = b"console_echo: ready"
# Hot functions of the echo loop: a trace of them puts Python in every one of their steps.
TRACED = "sym:virtcons_get_chars,sym:vsnprintf,sym:timer_tick,sym:irq_entry"
LISTENING = re.compile(rb"lgemu: gdb stub listening on 127\.0\.0\.1:(\d+)\n")
WAIT_S = 30.0

# name → (lgemu options, what the run is doing when the signal comes)
SCENARIOS: dict[str, tuple[list[str], str]] = {
    "echo": (ECHO, "echoing typed lines: device I/O, interrupts, hypercalls, input waits"),
    "events": ([*ECHO, "--events", "--trace", os.devnull],
               "the same with the event log written at every hypercall, trap and vring"),
    "trace": ([*ECHO, "--trace", os.devnull, "--trace-regs", "--trace-filter", TRACED],
              "the same with instruction tracing inside the hot functions"),
    "ended": (ECHO, "input ended: the idle guest paced to real time"),
    "realtime": ([*ECHO, "--clock", "realtime"], "input ended, halts sleeping on the host clock"),
    "stalled": (ECHO, "echoing into a full stdout pipe nobody reads: the guest waits in a "
                      "console write"),
    "gdb-wait": ([*ECHO, "--gdb", "tcp::0", "-S"], "waiting for gdb to connect"),
    "gdb-stopped": ([*ECHO, "--gdb", "tcp::0", "-S"], "stopped in gdb, waiting for a packet"),
    "gdb-running": ([*ECHO, "--gdb", "tcp::0", "-S"], "running under gdb (continue)"),
}


@dataclass
class Delivery:
    """One run: which scenario, which signal, how long after the scenario was under way."""

    scenario: str
    sig: int
    delay: float

    def __str__(self) -> str:
        return f"{self.scenario} {signal.Signals(self.sig).name} after {self.delay * 1e3:.0f} ms"


def random_delivery(rng: random.Random, scenarios: list[str] | None = None) -> Delivery:
    """A delivery at a random moment in the first 0.3 s of a random scenario."""
    return Delivery(rng.choice(scenarios or list(SCENARIOS)), rng.choice(list(ENDINGS)),
                    rng.uniform(0.0, 0.3))


def _read_until(fd: int, pattern: re.Pattern[bytes] | bytes, seen: bytearray) -> bytes | None:
    """Read `fd` into `seen` until `pattern` shows up; what matched, or None (EOF, timeout)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = pattern.search(seen) if isinstance(pattern, re.Pattern) else \
            (pattern if pattern in seen else None)
        if found is not None:
            return found.group(1) if isinstance(found, re.Match) else found
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        seen += chunk


def _write(pipe: IO[bytes], data: bytes) -> None:
    """Type `data` (in a thread: the pipe may fill while lgemu waits on its output)."""
    with contextlib.suppress(OSError, ValueError):
        pipe.write(data)
        pipe.flush()


def deliver(delivery: Delivery) -> str | None:
    """Run one delivery; None if it ended as it must, else what went wrong."""
    options, _ = SCENARIOS[delivery.scenario]
    proc = subprocess.Popen([sys.executable, "-m", "lgemu", "boot", *options], cwd=REPO_ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = bytearray(), bytearray()
    client = None
    expected_lines: list[str] = []
    try:
        if delivery.scenario.startswith("gdb"):
            port = _read_until(proc.stderr.fileno(), LISTENING, err)
            if port is None:
                return f"no gdb stub: {bytes(err)!r}"
            expected_lines.append(f"lgemu: gdb stub listening on 127.0.0.1:{int(port)}")
            if delivery.scenario != "gdb-wait":
                client = RspClient.connect(int(port))
                if client.command("?") is None:
                    return "gdb stub closed the connection"
                if delivery.scenario == "gdb-running":
                    client.send("c")
                    if _read_until(proc.stdout.fileno(), READY, out) is None:
                        return f"never ready under gdb: {bytes(out)!r}"
        elif _read_until(proc.stdout.fileno(), READY, out) is None:
            return f"never ready: {bytes(out)!r} {bytes(err)!r}"
        if delivery.scenario in ("ended", "realtime"):
            proc.stdin.close()
            proc.stdin = None  # communicate() must not flush it
        elif delivery.scenario != "gdb-stopped":
            # "stalled": ~120 KB of echoes, more than the stdout pipe holds unread
            lines = 4000 if delivery.scenario == "stalled" else 400
            typed = b"".join(b"line %d of typed input\n" % n for n in range(lines))
            threading.Thread(target=_write, args=(proc.stdin, typed), daemon=True).start()
        if delivery.scenario == "stalled":
            time.sleep(0.3)  # let the pipe fill
        time.sleep(delivery.delay)
        proc.send_signal(delivery.sig)
        try:
            _, more_err = proc.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            return "still running long after the signal"
        err += more_err
    finally:
        if client is not None:
            client.sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    status, line = ENDINGS[delivery.sig]
    lines = err.decode("utf-8", "replace").splitlines()
    if proc.returncode != status or lines != [*expected_lines, line]:
        return f"exit {proc.returncode}, stderr {lines!r}"
    return None


def soak(count: int, seed: int, scenarios: list[str] | None = None,
         progress: bool = False) -> tuple[dict[tuple[str, str], list[int]], list[str]]:
    """`count` random deliveries: (scenario, signal) → [good, bad], and the failures."""
    rng = random.Random(seed)
    counts: dict[tuple[str, str], list[int]] = {}
    failures = []
    for n in range(count):
        delivery = random_delivery(rng, scenarios)
        problem = deliver(delivery)
        tally = counts.setdefault((delivery.scenario, signal.Signals(delivery.sig).name), [0, 0])
        tally[problem is not None] += 1
        if problem is not None:
            failures.append(f"{delivery}: {problem}")
        if progress:
            print(f"\r{n + 1}/{count} deliveries, {len(failures)} failed", end="",
                  file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return counts, failures

