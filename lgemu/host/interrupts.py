"""Virtual interrupts (ABI §5.3): pending lines, the guest's masks, and injection.

The guest's `cli`/`sti` are plain stores to `lguest_data.irq_enabled` and its irq chip is the
`blocked_interrupts` bitmap, so nothing tells the Host when interrupts become deliverable:
the run loop calls `maybe_interrupt` before every guest entry and after every exit handled
inside a slice, and runs short slices while something is pending but masked.

Choice on the `irq_enabled` quirk (ABI §4): 2.6.24 injected on any nonzero value but built the
pushed EFLAGS from bit 0x200.  lgemu tests bit 0x200 in both places, which is what the guest
means (`lguest_iret` can store an EFLAGS word with IF clear).
"""

from __future__ import annotations

from collections.abc import Callable

from ..abi import FIRST_EXTERNAL_VECTOR, LGUEST_IRQS, X86_EFLAGS_IF
from ..record import Record
from .lguest_data import LguestData
from .state import LguestState
from .traps import Traps


class InterruptsState(Record, frozen=True):
    """Persist: pending lines, whether the guest halted, deliveries per line."""

    pending: int
    halted: bool
    delivered: tuple[int, ...]


class Interrupts:
    """Pending IRQ lines and the noirq window of one guest."""

    def __init__(self, traps: Traps, lg: LguestState | None = None) -> None:
        self.traps = traps
        self.lg = lg if lg is not None else traps.lg  # the noirq window, from LGUEST_INIT
        self.pending = 0
        self.halted = False
        self.delivered = [0] * LGUEST_IRQS

    def save_state(self) -> InterruptsState:
        """Persist: what is pending and delivered (the noirq window is `LguestState`'s)."""
        return InterruptsState(self.pending, self.halted, tuple(self.delivered))

    def restore_state(self, state: InterruptsState) -> None:
        """Persist: back to `state`."""
        self.pending, self.halted = state.pending, state.halted
        self.delivered = list(state.delivered)

    def raise_irq(self, line: int) -> None:
        """Mark IRQ `line` pending (the timer is 0, virtqueues 1 and up)."""
        self.pending |= 1 << line

    def candidates(self, data: LguestData) -> int:
        """Pending lines the guest has not blocked."""
        return self.pending & ~data.blocked_interrupts & 0xFFFFFFFF

    def maybe_interrupt(self, data: LguestData, eip: int,
                        wall_ns: Callable[[], int]) -> int | None:
        """Deliver the lowest deliverable IRQ if the guest can take one now; return it.
        Whenever delivery is attempted the guest's clock is refreshed (ABI §5.3 step 6)."""
        candidates = self.candidates(data)
        if not candidates:
            return None
        noirq_start, noirq_end = self.lg.noirq
        if noirq_start <= eip < noirq_end:
            return None
        if self.halted:
            data.irq_enabled = X86_EFLAGS_IF
            self.halted = False
        elif not data.irq_enabled & X86_EFLAGS_IF:
            data.set_irq_pending(True)  # 2.6.31 on: its irq_enable will ask for it
            return None
        line = (candidates & -candidates).bit_length() - 1
        delivered = None
        if self.traps.idt[FIRST_EXTERNAL_VECTOR + line] is not None:
            self.pending &= ~(1 << line)
            self.delivered[line] += 1
            self.traps.deliver(FIRST_EXTERNAL_VECTOR + line, eip)
            delivered = line
            if not self.candidates(data):
                data.set_irq_pending(False)
        # else it stays pending until the guest installs a gate
        data.set_time(wall_ns())
        return delivered
