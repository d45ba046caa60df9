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
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..signals import SIGNALS

DEFAULT_NS_PER_INSN = 10
# Guest wall clock at boot in virtual mode: 2.6.24's release day, 2008-01-24 00:00:00 UTC.
DEFAULT_EPOCH_NS = 1_201_132_800 * 1_000_000_000


@dataclass(frozen=True)
class ClockState:
    """What a snapshot keeps of the clock (virtual time only: realtime cannot go back)."""

    executed: int
    slice_ns: int
    deadline_ns: int | None


class Clock:
    """Guest time, the timer deadline, and the executed-instruction count."""

    def __init__(self, ns_per_insn: int = DEFAULT_NS_PER_INSN, realtime: bool = False,
                 epoch_ns: int | None = None) -> None:
        self.ns_per_insn = ns_per_insn
        self.realtime = realtime
        self.epoch_ns = (time.time_ns() if realtime else DEFAULT_EPOCH_NS) \
            if epoch_ns is None else epoch_ns
        self._t0 = time.monotonic_ns()
        self.executed = 0  # instructions executed before the current slice
        self._slice_ns = 0  # guest time when the current slice began
        self.deadline_ns: int | None = None  # one-shot timer, guest time
        # Host monotonic time (seconds) no realtime idle wait may pass: the run's --timeout.
        self.wake_by: float | None = None

    def now_ns(self, position: int = 0) -> int:
        """Guest time since boot; `position` = instructions into the current slice."""
        if self.realtime:
            return time.monotonic_ns() - self._t0
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

    def slice_budget(self, limit: int) -> int:
        """How many instructions the next slice may run before the timer is due."""
        if self.deadline_ns is None:
            return limit
        left = -(-(self.deadline_ns - self.now_ns()) // self.ns_per_insn)
        return max(1, min(limit, left))

    def end_slice(self, ran: int) -> None:
        """Account a slice of `ran` instructions."""
        self.executed += ran
        self._slice_ns += ran * self.ns_per_insn

    def save_state(self) -> ClockState:
        """Persist: the instruction count, guest time and the timer."""
        return ClockState(self.executed, self._slice_ns, self.deadline_ns)

    def restore_state(self, state: ClockState) -> None:
        """Persist: back to `state`."""
        self.executed, self._slice_ns, self.deadline_ns = \
            state.executed, state.slice_ns, state.deadline_ns

    def idle_until_timer(self) -> None:
        """A halted guest waits for its timer: skip ahead, or sleep in realtime mode (never
        past `wake_by`; the caller then finds the timer not yet expired and looks around)."""
        assert self.deadline_ns is not None
        if self.realtime:
            wait = (self.deadline_ns - self.now_ns()) / 1e9
            if self.wake_by is not None:
                wait = min(wait, self.wake_by - time.monotonic())
            if wait > 0:
                SIGNALS.sleep(wait)  # a signal to lgemu wakes it (and ends the run)
        else:
            self._slice_ns = max(self._slice_ns, self.deadline_ns)

    def idle_until(self, bound_ns: int) -> None:
        """A halted guest in a lab (virtual time only) skips to its timer or to `bound_ns`,
        whichever comes first: frames may arrive from other guests at `bound_ns`."""
        target = bound_ns if self.deadline_ns is None else min(bound_ns, self.deadline_ns)
        self._slice_ns = max(self._slice_ns, target)
