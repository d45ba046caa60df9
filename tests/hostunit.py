"""Host components on their own, for the unit tier (tests/test_unit_*.py).

Every Host component the unit tests exercise is built here and nowhere else, so a change to
how the Host's state is owned or wired is one edit in this module, not one per test.  No
guest is booted: there is guest RAM, a CPU that never runs, and the components between them,
set up as `lgemu.host.guest.Guest` sets them up before the first instruction.

* `host()` → `Host`: memory, cpu, paging, gdt, traps, interrupts, clock, `lg` (the one
  per-guest record, `lgemu.host.state.LguestState`) and `data` (the guest's `lguest_data`,
  registered at `LGUEST_DATA`, as after LGUEST_INIT).
* `Host.map(vaddr, paddr, writable)` writes a 4 KiB mapping into the guest's own page tables
  (page directory at `PGDIR`, page tables allocated from `PT_POOL`); with `host(pae=True)`
  the tables are PAE's three levels of 64-bit entries (ABI §7.6), top level at `PGDIR`.
* `Host.set_stack`, `set_kernel_pde`, `set_noirq`, `set_halted` put the per-guest state the
  hypercalls would have set; tests read results through the components' public methods.
* `killed(reason)` expects the Host to kill the guest with exactly that reason.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from lgemu.abi import (
    GUEST_CS,
    GUEST_DS,
    PAGE_SIZE,
    PTE_PRESENT,
    PTE_RW,
    SWITCHER_PDE,
    TSS_SELECTOR,
    U32,
)
from lgemu.errors import GuestKilled
from lgemu.host.clock import Clock
from lgemu.host.interrupts import Interrupts
from lgemu.host.lguest_data import LguestData
from lgemu.host.paging import Paging
from lgemu.host.paging_pae import PaePaging
from lgemu.host.segments import TSS_LIMIT, Gdt
from lgemu.host.state import LguestState
from lgemu.host.traps import Traps
from lgemu.machine.cpu import CR4_PAE, GUEST_CR0, GUEST_CR4, Cpu, Reg
from lgemu.machine.memory import HOST_GDT, HOST_TSS, GuestMemory, switcher_linear

RAM = 4 << 20
PGDIR = 0x10000  # the guest's page directory (guest-physical)
PT_POOL = 0x20000  # page tables are taken from here up
LGUEST_DATA = 0x8000  # struct lguest_data, as the guest would give it to LGUEST_INIT
PTE_USER = 4
U64 = struct.Struct("<Q")


@dataclass
class Host:
    """The Host's components for one guest that has not run an instruction."""

    memory: GuestMemory
    cpu: Cpu
    paging: Paging
    gdt: Gdt
    traps: Traps
    interrupts: Interrupts
    clock: Clock
    lg: LguestState
    data: LguestData
    _next_pt: int = PT_POOL
    pae: bool = False

    def _table(self, entry_addr: int, flags: int) -> int:
        """The present 64-bit entry at `entry_addr`, pointing at a fresh table if it was not."""
        entry = U64.unpack_from(self.memory.ram, entry_addr)[0]
        if not entry & PTE_PRESENT:
            table, self._next_pt = self._next_pt, self._next_pt + PAGE_SIZE
            entry = table | flags
            U64.pack_into(self.memory.ram, entry_addr, entry)
        return entry

    def pte_addr_pae(self, vaddr: int, pgdir: int = PGDIR) -> int:
        """Where the PAE guest's 64-bit PTE for `vaddr` is (its tables made as needed)."""
        top = self._table(pgdir + 8 * (vaddr >> 30), PTE_PRESENT)
        middle = self._table((top & ~0xFFF) + 8 * ((vaddr >> 21) & 511),
                             PTE_PRESENT | PTE_RW | PTE_USER)
        return (middle & ~0xFFF) + 8 * ((vaddr >> 12) & 511)

    def map(self, vaddr: int, paddr: int, writable: bool = True, user: bool = False,
            pgdir: int = PGDIR) -> None:
        """Map guest-virtual page `vaddr` to `paddr` in the guest's page directory `pgdir`."""
        flags = PTE_PRESENT | (PTE_RW if writable else 0) | (PTE_USER if user else 0)
        if self.pae:
            U64.pack_into(self.memory.ram, self.pte_addr_pae(vaddr, pgdir),
                          (paddr & ~0xFFF) | flags)
            return
        pde_addr = pgdir + 4 * (vaddr >> 22)
        pde = self.memory.u32(pde_addr)
        if not pde & PTE_PRESENT:
            table, self._next_pt = self._next_pt, self._next_pt + PAGE_SIZE
            pde = table | PTE_PRESENT | PTE_RW | PTE_USER
            self.memory.set_u32(pde_addr, pde)
        pte_addr = (pde & ~0xFFF) + 4 * ((vaddr >> 12) & 0x3FF)
        self.memory.set_u32(pte_addr, (paddr & ~0xFFF) | flags)

    # Per-guest lguest state the hypercalls set, in its one owner `lg`.
    def set_stack(self, ss1: int, esp1: int) -> None:
        """As SET_STACK leaves it: the ring-1 stack traps from ring 3 switch to."""
        self.lg.set_stack(ss1, esp1, self.lg.stack_pages)

    def set_kernel_pde(self, pde: int) -> None:
        """As LGUEST_INIT leaves it: the first directory entry of the kernel's half."""
        self.lg.register(self.data, pde << 22, self.lg.noirq)

    def set_noirq(self, start: int, end: int) -> None:
        """As LGUEST_INIT leaves it: no interrupt is delivered with EIP in [start, end)."""
        self.lg.register(self.data, self.lg.kernel_address, (start, end))

    def set_halted(self, halted: bool) -> None:
        """As HALT leaves it (True) or a wake-up (False)."""
        self.interrupts.halted = halted

    def pte(self, vaddr: int, pgdir: int = PGDIR) -> int:
        """The guest's page-table entry for `vaddr` (0 if its directory entry is absent)."""
        if self.pae:
            return U64.unpack_from(self.memory.ram, self.pte_addr_pae(vaddr, pgdir))[0]
        pde = self.memory.u32(pgdir + 4 * (vaddr >> 22))
        if not pde & PTE_PRESENT:
            return 0
        return U32.unpack_from(self.memory.ram, (pde & ~0xFFF) + 4 * ((vaddr >> 12) & 0x3FF))[0]


def host(ram: int = RAM, clock: Clock | None = None, pae: bool = False) -> Host:
    """A fresh set of Host components over `ram` bytes of guest memory, the CPU in ring 1 on
    the boot segments with paging on `PGDIR` (empty; `pae`: PAE's three levels), and
    `lguest_data` at `LGUEST_DATA`."""
    memory = GuestMemory(ram)
    cpu = Cpu(memory)
    lg = LguestState()
    paging = (PaePaging if pae else Paging)(memory, cpu, lg)
    gdt = Gdt(memoryview(memory.host)[HOST_GDT * PAGE_SIZE:(HOST_GDT + 1) * PAGE_SIZE],
              switcher_linear(HOST_TSS))
    traps = Traps(cpu, paging, gdt, lg)
    interrupts = Interrupts(traps, lg)
    data = LguestData(memory, LGUEST_DATA)
    # Registered, with the kernel's half not yet said: only the Switcher's entry is its.
    lg.register(data, SWITCHER_PDE << 22, (0, 0))
    cpu.set_gdt(switcher_linear(HOST_GDT), 32 * 8 - 1)
    paging.new_pgtable(PGDIR)
    cpu.set_reg(Reg.CR4, GUEST_CR4 | (CR4_PAE if pae else 0))
    cpu.set_reg(Reg.CR0, GUEST_CR0)
    cpu.set_tr(TSS_SELECTOR, switcher_linear(HOST_TSS), TSS_LIMIT)
    cpu.enter(1, GUEST_CS, GUEST_DS, 0x1000, 0)
    return Host(memory, cpu, paging, gdt, traps, interrupts, clock or Clock(), lg, data,
                pae=pae)


@contextmanager
def killed(reason: str) -> Iterator[None]:
    """The block must kill the guest with exactly `reason` (the text after "guest killed: ")."""
    with pytest.raises(GuestKilled) as caught:
        yield
    assert caught.value.message == reason
