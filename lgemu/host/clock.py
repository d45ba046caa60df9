"""Time (ABI §8): the guest's one-shot clock event and the time it reads from lguest_data.

Two clocks run separately (Unicorn §9.5): *executed instructions*, which only the CPU advances,
and *guest time* in nanoseconds.  By default guest time is virtual: each executed instruction
is `ns_per_insn` nanoseconds and a halted guest skips straight to its next timer, so two runs
with the same inputs see the same time at every instruction.  `realtime` ties guest time to
the host's monotonic clock instead (a halted guest then really sleeps).

Why 10 ns per instruction by default: with the TSC hidden, 2.6.24's calibrate_delay spins
until jiffies move, so its cost in instructions is proportional to the virtual CPU speed.  At
1 ns per instruction it was ~85 M of a ~95 M-instruction boot (Unicorn §9.11); at 10 ns it is a
tenth of that, and a 100 MHz virtual CPU is close to the 60-120 M instructions per second
Unicorn really executes here, so guest time and wall time stay in the same ballpark.

Realtime slices are sized from the measured rate, not the nominal one.  A slice can only end
at an instruction count, so a timer falls due on time only if the count matches the host time
left.  Unicorn's rate varies eightfold over a boot (a warm spin loop runs at ~130 M
instructions per second, code met for the first time at ~16 M), and slices sized at the
nominal 10 ns per instruction delivered the 2.6.24 boot's ticks 4.5 ms late on average and up
to 50 ms late (20 ms and 150 ms on a busy host).  `Clock` therefore keeps the host nanoseconds
per instruction of recent runs and plans each realtime slice with it, and the Host also ends a
slice at any hypercall or trap once the timer is `due` (`Guest._on_interrupt_realtime`): ticks
then come 0.5 ms late on average.  The instruction counts stay exact; only where slices end
moves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ..record import Record
from ..signals import SIGNALS

DEFAULT_NS_PER_INSN = 10
# Guest wall clock at boot in virtual mode: 2.6.24's release day, 2008-01-24 00:00:00 UTC.
DEFAULT_EPOCH_NS = 1_201_132_800 * 1_000_000_000
# Realtime rate estimate: a run of this many instructions moves it halfway to what the run
# measured, so one short run (a few instructions between two exits) barely moves it...
RATE_HALF_WEIGHT_INSNS = 100_000
# ...and no run moves it by more than this factor, so one run that waited on something else
# (a debugger holding the guest between runs) cannot shrink the following slices to a crawl.
RATE_MAX_STEP = 4.0
# A floor for the estimate: a host clock coarser than a run (runs measured at 0 ns, time
# after time) must not shrink it to nothing and divide by zero.
RATE_MIN_NS = 0.01


def _host_monotonic_ns() -> int:
    """The host's monotonic clock, looked up at every call (tests replace `time`'s)."""
    return time.monotonic_ns()


class ClockState(Record, frozen=True):
    """What a snapshot keeps of the clock (virtual time only: realtime cannot go back)."""

    executed: int
    slice_ns: int
    deadline_ns: int | None
    halted_ns: int


class Clock:
    """Guest time, the timer deadline, and the executed-instruction count."""

    def __init__(self, ns_per_insn: int = DEFAULT_NS_PER_INSN, realtime: bool = False,
                 epoch_ns: int | None = None, host_ns: Callable[[], int] | None = None) -> None:
        self.ns_per_insn = ns_per_insn
        self.realtime = realtime
        self.epoch_ns = (time.time_ns() if realtime else DEFAULT_EPOCH_NS) \
            if epoch_ns is None else epoch_ns
        self._host_ns = host_ns or _host_monotonic_ns  # the host's clock (tests: a fake one)
        self._t0 = self._host_ns()
        # Realtime: host nanoseconds per executed instruction lately, and the host time the
        # run being measured began (set when a slice is planned, so a halt is never counted).
        self.host_ns_per_insn = float(ns_per_insn)
        self._run_began: int | None = None
        self.executed = 0  # instructions executed before the current slice
        self._slice_ns = 0  # guest time when the current slice began
        self.deadline_ns: int | None = None  # one-shot timer, guest time
        # Guest time spent halted: skipped to a timer (virtual), or slept (realtime).  With
        # `executed` it splits a run's guest time into work and waiting (-v).
        self.halted_ns = 0
        # Host monotonic time (seconds) no realtime idle wait may pass: the run's --timeout.
        self.wake_by: float | None = None

    def now_ns(self, position: int = 0) -> int:
        """Guest time since boot; `position` = instructions into the current slice."""
        if self.realtime:
            return self._host_ns() - self._t0
        return self._slice_ns + position * self.ns_per_insn

    def wall_ns(self, position: int = 0) -> int:
        """What the guest's wall clock reads (lguest_data.time)."""
        return self.epoch_ns + self.now_ns(position)

    def set_timer(self, delta_ns: int, position: int) -> None:
        """LHCALL_SET_CLOCKEVENT: 0 cancels, anything else re-arms the one-shot timer."""
        self.deadline_ns = None if delta_ns == 0 else self.now_ns(position) + delta_ns

    def expired(self) -> bool:
        """True (once) when the timer has fired; call between slices."""
        if self.deadline_ns is not None and self.now_ns() >= self.deadline_ns:
            self.deadline_ns = None
            return True
        return False

    def due(self) -> bool:
        """True while the timer is set and its time has come (it stays set: `expired` takes
        it at the next slice start)."""
        return self.deadline_ns is not None and self.now_ns() >= self.deadline_ns

    def slice_budget(self, limit: int) -> int:
        """How many instructions the next slice may run before the timer is due (realtime:
        at the rate runs have lately gone at)."""
        if self.realtime:
            self._run_began = self._host_ns()
        if self.deadline_ns is None:
            return limit
        if self.realtime:
            left = math.ceil((self.deadline_ns - self.now_ns()) / self.host_ns_per_insn)
        else:
            left = -(-(self.deadline_ns - self.now_ns()) // self.ns_per_insn)
        return max(1, min(limit, left))

    def slice_end_ns(self, count: int) -> int:
        """Guest time a slice of `count` instructions starting now is expected to end at: a
        timer the guest sets inside the slice for before then ends the slice early."""
        if self.realtime:
            return self.now_ns() + math.ceil(count * self.host_ns_per_insn)
        return self.now_ns() + count * self.ns_per_insn

    def end_slice(self, ran: int) -> None:
        """Account a run of `ran` instructions (realtime: and the rate it went at)."""
        self.executed += ran
        self._slice_ns += ran * self.ns_per_insn
        if self._run_began is not None and ran:
            now = self._host_ns()
            measured = (now - self._run_began) / ran
            self._run_began = now  # a next run in the same slice is measured from here
            rate = self.host_ns_per_insn
            measured = min(max(measured, rate / RATE_MAX_STEP), rate * RATE_MAX_STEP)
            self.host_ns_per_insn = max(RATE_MIN_NS, rate + (measured - rate) * ran
                                        / (ran + RATE_HALF_WEIGHT_INSNS))

    def save_state(self) -> ClockState:
        """Persist: the instruction count, guest time and the timer."""
        return ClockState(self.executed, self._slice_ns, self.deadline_ns, self.halted_ns)

    def restore_state(self, state: ClockState) -> None:
        """Persist: back to `state`."""
        self.executed, self._slice_ns, self.deadline_ns, self.halted_ns = \
            state.executed, state.slice_ns, state.deadline_ns, state.halted_ns

    def idle_until_timer(self) -> None:
        """A halted guest waits for its timer: skip ahead, or sleep in realtime mode (never
        past `wake_by`; the caller then finds the timer not yet expired and looks around)."""
        assert self.deadline_ns is not None
        if self.realtime:
            began = self.now_ns()
            wait = (self.deadline_ns - began) / 1e9
            if self.wake_by is not None:
                wait = min(wait, self.wake_by - time.monotonic())
            if wait > 0:
                SIGNALS.sleep(wait)  # a signal to lgemu wakes it (and ends the run)
            self.waited(began)
        else:
            self._skip_to(self.deadline_ns)

    def waited(self, began_ns: int) -> None:
        """Count a halted guest's wait that began at guest time `began_ns` and ends now
        (virtual time does not move while the host waits, so only realtime waits count)."""
        self.halted_ns += self.now_ns() - began_ns

    def _skip_to(self, target_ns: int) -> None:
        """Virtual time: a halted guest's clock jumps ahead to `target_ns`."""
        if target_ns > self._slice_ns:
            self.halted_ns += target_ns - self._slice_ns
            self._slice_ns = target_ns

    def idle_until(self, bound_ns: int) -> None:
        """A halted guest in a lab (virtual time only) skips to its timer or to `bound_ns`,
        whichever comes first: frames may arrive from other guests at `bound_ns`."""
        self._skip_to(bound_ns if self.deadline_ns is None else min(bound_ns, self.deadline_ns))
