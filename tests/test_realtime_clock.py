"""`--clock realtime`: timers fall due on the host's clock, even when the CPU runs slower or
faster than the nominal instruction time (lgemu/host/clock.py).

The host's clock is faked and tied to the instruction count, as if Unicorn executed one guest
instruction every `HOST_NS_PER_INSN` nanoseconds, five times slower than the nominal 10 ns: the
tests are exact and wait for nothing.  What they check is what the guest sees: how much work it
got done between arming its timer and the tick.
"""

from __future__ import annotations

import re

import pytest
from guestasm import assert_powered_down

from lgemu.host import clock as clock_module
from lgemu.host.clock import RATE_MAX_STEP, Clock
from lgemu.host.guest import Guest

HOST_NS_PER_INSN = 50  # the fake host: 20 M guest instructions per second
TIMER_NS = 1_000_000  # the guests' timer: 1 ms = 20 000 instructions on that host


class InstructionPacedHost:
    """The host's monotonic clock, advancing HOST_NS_PER_INSN per executed instruction."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.guest: Guest | None = None
        built = Guest.__init__

        def init(guest: Guest, *args: object, **kwargs: object) -> None:
            built(guest, *args, **kwargs)
            self.guest = guest

        monkeypatch.setattr(Guest, "__init__", init)
        monkeypatch.setattr(clock_module, "_host_monotonic_ns", self.monotonic_ns)

    def monotonic_ns(self) -> int:
        executed = 0 if self.guest is None else self.guest.icount
        return 10**12 + executed * HOST_NS_PER_INSN


def hexword(value: int) -> bytes:
    """What PUTHEX prints."""
    return f"{value & 0xFFFFFFFF:08x}".encode()


SETUP = f"""
        INIT
        SET_GATE 0x20, tick, GATE_INT
        movl	$0, lguest_data+LD_BLOCKED
        movl	$0x200, lguest_data+LD_IRQ_ENABLED
        xorl	%esi, %esi
        HCALL	$LHCALL_SET_CLOCKEVENT, ${TIMER_NS}
"""


def test_a_realtime_timer_fires_at_the_first_exit_after_it_is_due(asm_guest, monkeypatch):
    """The first slice after arming is planned at the nominal rate (100 000 instructions for
    1 ms), which this host needs 5 ms for; the loop's hypercall exits look at the host's clock,
    so the tick comes within one loop iteration of 1 ms, not 4 ms late."""
    InstructionPacedHost(monkeypatch)
    run = asm_guest(SETUP + """
    loop:
        incl	%esi				/* 12 instructions an iteration */
        HCALL	$LHCALL_FLUSH_ASYNC		/* nothing queued: only an exit */
        cmpl	$0, fired
        je	loop
        PUTHEX	%esi
        POWER_DOWN
    tick:
        movl	$1, fired
        iret
    """, "fired: .long 0", extra=["--clock", "realtime"])
    assert run.status == 0, run.err
    iterations = int(run.out[:8], 16)
    due = TIMER_NS // HOST_NS_PER_INSN // 12  # iterations in 1 ms of this host's time
    assert due <= iterations <= due + 2, iterations
    assert_powered_down(run, hexword(iterations))


def test_realtime_slices_follow_the_rate_the_cpu_really_runs_at(asm_guest, monkeypatch):
    """A loop with no exits at all is ended only by its slice's length: once a few ticks
    have shown the host's real rate, each 1 ms tick lets the loop run 1 ms of this host's
    instructions (10 000 iterations of 2), not the 50 000 the nominal rate would plan."""
    InstructionPacedHost(monkeypatch)
    run = asm_guest(SETUP + """
    spin:
        incl	%esi
        jmp	spin
    tick:
        incl	ticks
        cmpl	$20, ticks
        je	1f
        movl	%esi, last			/* iterations up to this tick */
        pushal
        HCALL	$LHCALL_SET_CLOCKEVENT, $1000000
        popal
        movl	$0x200, lguest_data+LD_IRQ_ENABLED
        iret
    1:	subl	last, %esi
        PUTHEX	%esi				/* iterations between ticks 19 and 20 */
        POWER_DOWN
    """, "ticks: .long 0\nlast: .long 0", extra=["--clock", "realtime"])
    assert run.status == 0, run.err
    iterations = int(run.out[:8], 16)
    per_tick = TIMER_NS // HOST_NS_PER_INSN // 2
    assert abs(iterations - per_tick) <= per_tick // 20, iterations  # within 5 %
    assert_powered_down(run, hexword(iterations))


# -- the Clock on its own ---------------------------------------------------------------
class FakeHost:
    """A host clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 5 * 10**9

    def __call__(self) -> int:
        return self.now


def test_realtime_budgets_come_from_the_measured_rate() -> None:
    host = FakeHost()
    clock = Clock(realtime=True, host_ns=host)
    clock.set_timer(10_000_000, position=0)
    assert clock.slice_budget(10**7) == 1_000_000  # nothing measured yet: the nominal 10 ns
    host.now += 30_000_000  # ...but a million instructions took 30 ms
    clock.end_slice(1_000_000)
    assert clock.executed == 1_000_000
    assert clock.due() and clock.due()  # due, and still set until `expired` takes it
    assert clock.expired() and not clock.due()
    clock.set_timer(10_000_000, position=0)
    budget = clock.slice_budget(10**7)
    # 10 ms at what was measured (weighed with the first guess): close to 10 ms at 30 ns.
    assert 10_000_000 // 30 <= budget <= 10_000_000 // 27
    assert clock.slice_end_ns(budget) - clock.now_ns() == pytest.approx(10_000_000, rel=1e-6)


def test_a_run_held_up_by_something_else_moves_the_rate_a_bounded_step() -> None:
    """A debugger holding the guest for a minute inside one run must not make the next
    slices a few instructions long."""
    host = FakeHost()
    clock = Clock(realtime=True, host_ns=host)
    clock.slice_budget(10**6)
    host.now += 60 * 10**9
    clock.end_slice(10**6)
    assert clock.host_ns_per_insn <= 10 * RATE_MAX_STEP
    clock.set_timer(10_000_000, position=0)
    assert clock.slice_budget(10**7) >= 10_000_000 // (10 * RATE_MAX_STEP)


def test_a_host_clock_coarser_than_every_run_never_divides_by_zero() -> None:
    """Runs measured at 0 ns, one after another (a clock that ticks in milliseconds)."""
    host = FakeHost()
    clock = Clock(realtime=True, host_ns=host)
    clock.set_timer(10_000_000, position=0)
    for _ in range(2000):
        budget = clock.slice_budget(10**6)
        assert budget >= 1
        clock.end_slice(10**6)
    assert clock.host_ns_per_insn > 0


def test_a_halt_is_not_counted_as_execution(monkeypatch) -> None:
    host = FakeHost()
    monkeypatch.setattr(clock_module.SIGNALS, "sleep", lambda seconds: None)
    clock = Clock(realtime=True, host_ns=host)
    clock.slice_budget(10**6)
    host.now += 1_000_000
    clock.end_slice(100_000)  # 10 ns per instruction, as guessed
    clock.set_timer(50_000_000, position=0)
    clock.idle_until_timer()
    host.now += 50_000_000  # the halt
    assert clock.expired()
    clock.slice_budget(10**6)  # the next slice starts the next measurement
    host.now += 1_000_000
    clock.end_slice(100_000)
    assert clock.host_ns_per_insn == pytest.approx(10.0)


def test_virtual_time_ignores_the_hosts_clock() -> None:
    host = FakeHost()
    clock = Clock(ns_per_insn=10, host_ns=host)
    clock.set_timer(1005, position=0)
    assert clock.slice_budget(10**6) == 101
    assert clock.slice_end_ns(101) == 1010
    host.now += 10**9
    clock.end_slice(101)
    assert clock.now_ns() == 1010 and clock.host_ns_per_insn == 10.0
    assert clock.due() and clock.expired()


# -- halted time (-v) -------------------------------------------------------------------
def test_v_splits_guest_time_into_work_and_halts(asm_guest):
    """Virtual time: a guest that halts three times until its 1 ms timer hears from -v
    that nearly 3 ms of its guest time were halts, and the rest is its instructions at
    10 ns each."""
    run = asm_guest(SETUP + """
    again:
        HCALL	$LHCALL_HALT
        cmpl	$3, ticks
        jne	again
        POWER_DOWN
    tick:
        incl	ticks
        pushal
        HCALL	$LHCALL_SET_CLOCKEVENT, $1000000
        popal
        movl	$0x200, lguest_data+LD_IRQ_ENABLED
        iret
    """, "ticks: .long 0", extra=["-v"])
    assert run.status == 0, run.err
    done = re.search(r"executed (\d+) instructions in \d+ slices; guest time ([0-9.]+) s\n"
                     r"halted for ([0-9.]+) s of that guest time", run.err)
    assert done, run.err
    executed, guest_ns, halted_ns = int(done[1]), round(float(done[2]) * 1e9), \
        round(float(done[3]) * 1e9)
    assert abs(guest_ns - (executed * 10 + halted_ns)) <= 1000  # both printed to the µs
    assert 3 * TIMER_NS - 1000 * 10 <= halted_ns <= 3 * TIMER_NS


def test_realtime_halts_count_the_host_time_slept(monkeypatch) -> None:
    host = FakeHost()
    monkeypatch.setattr(clock_module.SIGNALS, "sleep",
                        lambda seconds: setattr(host, "now", host.now + 7_000_000))
    clock = Clock(realtime=True, host_ns=host)
    clock.set_timer(10_000_000, position=0)
    clock.idle_until_timer()  # woken 3 ms early (by input, say)
    began = clock.now_ns()
    host.now += 2_000_000  # a wait for input of 2 ms
    clock.waited(began)
    assert clock.halted_ns == 9_000_000
