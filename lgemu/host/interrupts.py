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
from .lguest_data import LguestData
from .traps import Traps


class Interrupts:
    """Pending IRQ lines and the noirq window of one guest."""

    def __init__(self, traps: Traps) -> None:
        self.traps = traps
        self.pending = 0
        self.noirq = (0, 0)
        self.halted = False
        self.delivered = [0] * LGUEST_IRQS

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
        if self.noirq[0] <= eip < self.noirq[1]:
            return None
        if self.halted:
            data.irq_enabled = X86_EFLAGS_IF
            self.halted = False
        elif not data.irq_enabled & X86_EFLAGS_IF:
            return None
        line = (candidates & -candidates).bit_length() - 1
        delivered = None
        if self.traps.idt[FIRST_EXTERNAL_VECTOR + line] is not None:
            self.pending &= ~(1 << line)
            self.delivered[line] += 1
            self.traps.deliver(FIRST_EXTERNAL_VECTOR + line, eip)
            delivered = line
        # else it stays pending until the guest installs a gate
        data.set_time(wall_ns())
        return delivered
