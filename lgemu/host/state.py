"""What the guest told the Host about itself: one record per guest, lguest's `struct lguest`
and `struct lg_cpu` fields that hypercalls set (ABI §3.4, §5.5).

LGUEST_INIT registers `lguest_data` and, read from it, the kernel's address and the noirq
window; SET_STACK gives the kernel stack for traps from ring 3; the async ring has a cursor.
Each is stored here once: the hypercall handlers write it through the two methods below, and
the components that need it (`Paging`, `Traps`, `Interrupts`) read the same record.
"""

from __future__ import annotations

from ..abi import SWITCHER_PDE
from ..record import Record
from .lguest_data import LguestData


class LguestState(Record):
    """The per-guest lguest state the hypercalls set."""

    data: LguestData | None = None  # struct lguest_data, once LGUEST_INIT ran
    kernel_address: int = 0  # lguest's page_offset: 0 until LGUEST_INIT reads it
    noirq: tuple[int, int] = (0, 0)  # [start, end) of the code that must not be interrupted
    ss1: int = 0  # the kernel stack traps from ring 3 land on (SET_STACK)
    esp1: int = 0
    stack_pages: int = 0
    ring_cursor: int = 0  # the next async-hypercall slot to look at
    arg4: int = 0  # the running hypercall's fifth argument (esi; PAE guests' SET_PTE)

    @property
    def kernel_pde(self) -> int:
        """The first page-directory index of the kernel's half (the switcher's until INIT):
        FLUSH_TLB of the user part clears the entries below it."""
        return self.kernel_address >> 22 if self.data is not None else SWITCHER_PDE

    def register(self, data: LguestData, kernel_address: int, noirq: tuple[int, int]) -> None:
        """LGUEST_INIT succeeded: the guest's shared page and what it said in it."""
        self.data, self.kernel_address, self.noirq = data, kernel_address, noirq

    def set_stack(self, ss1: int, esp1: int, pages: int) -> None:
        """SET_STACK (already checked): where traps from ring 3 switch to."""
        self.ss1, self.esp1, self.stack_pages = ss1, esp1, pages

    # -- Persist (lgemu.debug.snapshot) ------------------------------------------------------
    def save_state(self) -> LguestState:
        """A copy (every field is immutable, `data` names a fixed guest page)."""
        return self.replace()

    def restore_state(self, state: LguestState) -> None:
        """Become `state` again."""
        self.data, self.kernel_address, self.noirq = state.data, state.kernel_address, state.noirq
        self.ss1, self.esp1, self.stack_pages = state.ss1, state.esp1, state.stack_pages
        self.ring_cursor = state.ring_cursor
