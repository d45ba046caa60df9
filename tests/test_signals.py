"""SIGINT, SIGTERM and SIGHUP at random moments end every run the documented way.

A signal used to raise inside whatever Unicorn callback Python was running; ctypes printed and
dropped it, and the hook it cut short could leave the guest halted without its timer ("guest
stuck").  Now each delivery must end the run with the signal's status and exactly its line.
The scenarios (tests/signalsoak.py) put the signal into echo traffic (hypercalls, interrupts,
vrings), event logging, instruction tracing, a full stdout pipe, a paced idle guest, a realtime
halt, and gdb waits; `tools/signal_soak` runs hundreds of them.
"""

from __future__ import annotations

import os
import random
import signal

import pytest
from signalsoak import ENDINGS, SCENARIOS, Delivery, deliver, random_delivery

RANDOM_DELIVERIES = 12  # ~0.4 s each; tools/signal_soak runs hundreds


@pytest.mark.parametrize("sig", list(ENDINGS), ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_scenario_ends_with_the_signals_status_and_one_line(scenario, sig):
    delay = random.Random(f"{scenario}{sig}").uniform(0.0, 0.3)
    problem = deliver(Delivery(scenario, sig, delay))
    assert problem is None, problem


def test_signals_at_random_moments():
    rng = random.Random(2026)
    failures = []
    for _ in range(RANDOM_DELIVERIES):
        delivery = random_delivery(rng)
        problem = deliver(delivery)
        if problem is not None:
            failures.append(f"{delivery}: {problem}")
    assert not failures, failures


def test_a_signal_inside_a_hypercall_lets_it_finish_and_stops_right_after(
        lgemu_main, tmp_path, monkeypatch):
    """SIGTERM sent from inside the 20th hypercall's hook: the hypercall still completes (its
    event is logged), and the guest stops right after that instruction, with one line."""
    from lgemu.host import guest as guest_module

    real, calls = guest_module.hypercall, []

    def signalling_hypercall(g, *args):
        calls.append(g.icount)
        if len(calls) == 20:
            os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler right here
        real(g, *args)

    monkeypatch.setattr(guest_module, "hypercall", signalling_hypercall)
    log = tmp_path / "events.txt"
    status, _, err = lgemu_main(["boot", "--events", "--trace", str(log), "-v"])
    assert status == 143
    assert err.splitlines()[-1] == "lgemu: terminated by SIGTERM"
    assert err.count("terminated by SIGTERM") == 1
    hcalls = [line for line in log.read_text().splitlines() if " -- hcall " in line]
    assert len(hcalls) == len(calls) == 20  # the interrupted hypercall was handled in full
    assert int(hcalls[-1].split()[0]) == calls[-1]
    assert f"executed {calls[-1]} instructions" in err  # and nothing ran after it
