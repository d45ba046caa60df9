"""Unit tier: `lgemu.host.paging.Paging` on its own (no guest runs; see tests/hostunit.py).

What is checked is what the guest would see: its page-table entries (Accessed, Dirty), the
bytes the Host reads and writes through them, which faults the Host absorbs, and the kill
reasons of lguest's page-table checks."""

from __future__ import annotations

import pytest
from hostunit import PGDIR, RAM, host, killed

from lgemu.abi import (
    PAGE_SIZE,
    PTE_ACCESSED,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_PSE,
    PTE_PWT,
    PTE_RW,
)

PF_WRITE = 2


def test_translate_walks_the_guest_tables_and_marks_them_as_the_cpu_would() -> None:
    h = host()
    h.map(0x400000, 0x123000)
    assert h.paging.translate(0x400ABC, mark=False) == 0x123ABC
    assert not h.pte(0x400000) & (PTE_ACCESSED | PTE_DIRTY)  # a peek leaves no trace
    assert h.paging.translate(0x400ABC) == 0x123ABC
    assert h.pte(0x400000) & (PTE_ACCESSED | PTE_DIRTY) == PTE_ACCESSED
    assert h.paging.translate(0x400ABC, write=True) == 0x123ABC
    assert h.pte(0x400000) & (PTE_ACCESSED | PTE_DIRTY) == PTE_ACCESSED | PTE_DIRTY


def test_translate_refuses_what_a_ring_1_access_could_not_reach() -> None:
    h = host()
    h.map(0x400000, 0x123000, writable=False)
    assert h.paging.translate(0x401000) is None  # no PTE
    assert h.paging.translate(0x800000) is None  # no PDE
    assert h.paging.translate(0x400000, write=True) is None  # read-only (CR0.WP)
    h.map(0x402000, RAM + 0x100000)  # beyond guest memory
    assert h.paging.translate(0x402000) is None
    assert h.paging.translate(0xFFC01000) is None  # the switcher's PDE is never the guest's


def test_virtual_reads_and_writes_cross_pages_and_kill_on_a_hole() -> None:
    h = host()
    h.map(0x400000, 0x130000)
    h.map(0x401000, 0x150000)  # physically apart
    h.paging.write_virtual(0x400FFE, b"ABCD")
    assert bytes(h.memory.ram[0x130FFE:0x131000]) + bytes(h.memory.ram[0x150000:0x150002]) \
        == b"ABCD"
    assert h.paging.read_virtual(0x400FFE, 4) == b"ABCD"
    with killed("Bad address 0x402000"):
        h.paging.write_virtual(0x401FFE, b"WXYZ")
    with killed("Bad address 0x402000"):
        h.paging.read_virtual(0x401FFF, 2)


def test_demand_fault_fills_a_missing_shadow_entry_once() -> None:
    h = host()
    h.map(0x400000, 0x123000)
    assert h.paging.demand_fault(0x400000, 0) is True  # only the shadow was missing: retry
    assert h.paging.demand_fault(0x400000, 0) is False  # now the fault is the guest's own
    assert h.paging.demand_fault(0x800000, 0) is False  # guest PDE absent: reflect


@pytest.mark.parametrize("pde", ["4 MiB page", "table beyond memory"])
def test_demand_fault_checks_the_guest_directory_entry(pde: str) -> None:
    h = host()
    value = 0x20000 | PTE_PRESENT | PTE_PSE if pde == "4 MiB page" else h.memory.limit | 1
    h.memory.set_u32(PGDIR + 4 * 1, value)
    with killed("bad page directory entry"):
        h.paging.demand_fault(0x400000, 0)


def test_demand_fault_checks_the_entry_it_is_about_to_use() -> None:
    h = host()
    h.map(0x400000, 0x123000)
    h.memory.set_u32(h.memory.u32(PGDIR + 4) & ~0xFFF, 0x123000 | PTE_PRESENT | PTE_PWT)
    with killed("bad page table entry"):
        h.paging.demand_fault(0x400000, 0)


def test_the_switcher_pages_cannot_be_reached_through_a_guest_directory() -> None:
    h = host()
    h.memory.set_u32(PGDIR + 4 * 1023, 0x20000 | PTE_PRESENT | PTE_RW)
    with killed("attempt to access switcher pages"):
        h.paging.demand_fault(0xFFC00000, 0)


def test_set_pte_checks_a_hint_only_where_lguest_would_install_it() -> None:
    h = host()
    h.map(0x400000, 0x123000)
    bad = 0x123000 | PTE_PRESENT | PTE_ACCESSED | PTE_PWT
    h.paging.set_pte(PGDIR, 0x400000, bad)  # no shadow entry covers it yet: accepted
    h.paging.set_pte(PGDIR, 0x400000, 0)  # "forget" is never checked
    h.paging.demand_fault(0x400000, 0)
    with killed("bad page table entry"):
        h.paging.set_pte(PGDIR, 0x400000, bad)
    h.paging.set_pte(PGDIR, 0x400000, 0x124000 | PTE_PRESENT | PTE_ACCESSED)  # a fine one


def test_user_flush_and_set_pmd_forget_shadow_entries() -> None:
    h = host()
    h.set_kernel_pde(0x300)  # LGUEST_INIT: the kernel lives from 0xC0000000
    h.map(0x400000, 0x123000)
    h.map(0xC0400000, 0x124000)
    assert h.paging.demand_fault(0x400000, 0) and h.paging.demand_fault(0xC0400000, 0)
    h.paging.flush(everything=False)  # the user part only
    assert h.paging.demand_fault(0x400000, 0) is True
    assert h.paging.demand_fault(0xC0400000, 0) is False
    h.paging.set_pmd(PGDIR, 0xC0400000 >> 22)
    assert h.paging.demand_fault(0xC0400000, 0) is True
    h.paging.flush(everything=True)
    assert h.paging.demand_fault(0xC0400000, 0) is True


def test_four_directories_are_cached_and_the_oldest_goes_first() -> None:
    h = host()  # PGDIR is cached from the start
    others = [PGDIR + n * PAGE_SIZE for n in range(1, 4)]
    assert [h.paging.new_pgtable(d) for d in others] == [True, True, True]
    assert h.paging.new_pgtable(PGDIR) is False  # still shadowed: nothing to rebuild
    assert h.paging.new_pgtable(PGDIR + 4 * PAGE_SIZE) is True  # evicts PGDIR's shadow
    assert h.paging.new_pgtable(others[0]) is False
    assert h.paging.new_pgtable(PGDIR) is True


def test_opcode_at_skips_prefixes_without_marking_the_page() -> None:
    h = host()
    h.map(0x400000, 0x123000)
    h.memory.write(0x123000, bytes([0xF3, 0x66, 0x6D]))  # rep insw
    assert h.paging.opcode_at(0x400000) == (frozenset({0xF3, 0x66}), 0x6D, 2)
    assert not h.pte(0x400000) & PTE_ACCESSED
    h.memory.write(0x123FF0, bytes([0x66] * 16))  # more prefixes than an instruction holds
    assert h.paging.opcode_at(0x400FF0) is None


def test_pin_stack_needs_every_stack_page_writable() -> None:
    h = host()
    h.map(0x7000, 0x7000)
    h.map(0x6000, 0x6000, writable=False)
    with killed("bad stack page 0x6fff"):
        h.paging.pin_stack(0x8000, 2)
    h.map(0x6000, 0x6000)
    h.paging.pin_stack(0x8000, 2)
    assert h.paging.demand_fault(0x6000, PF_WRITE) is False  # pinned: already shadowed
