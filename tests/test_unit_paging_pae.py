"""Unit tier: `lgemu.host.paging_pae.PaePaging` on its own (ABI §7.6; see tests/hostunit.py).

The same questions as tests/test_unit_paging.py asks of two-level paging, for PAE's three
levels of 64-bit entries: what the guest sees in its own entries, which faults the Host
absorbs, and the kill reasons of lguest's checks at each level."""

from __future__ import annotations

import struct

import pytest
from hostunit import PGDIR, RAM, host, killed

from lgemu.abi import PAE_NX, PTE_ACCESSED, PTE_DIRTY, PTE_PRESENT, PTE_PSE, PTE_PWT, PTE_RW

U64 = struct.Struct("<Q")


def set_u64(h, pa: int, value: int) -> None:
    U64.pack_into(h.memory.ram, pa, value)


def middle_entry_addr(h, vaddr: int) -> int:
    """Where the guest's middle-directory entry for `vaddr` is (`h.map` made it)."""
    top = U64.unpack_from(h.memory.ram, PGDIR + 8 * (vaddr >> 30))[0]
    return (top & ~0xFFF) + 8 * ((vaddr >> 21) & 511)


def test_translate_walks_three_levels_and_marks_the_64_bit_entry() -> None:
    h = host(pae=True)
    h.map(0x40000000, 0x123000)  # top-level entry 1
    assert h.paging.translate(0x40000ABC, mark=False) == 0x123ABC
    assert not h.pte(0x40000000) & (PTE_ACCESSED | PTE_DIRTY)
    assert h.paging.translate(0x40000ABC, write=True) == 0x123ABC
    assert h.pte(0x40000000) == 0x123000 | PTE_PRESENT | PTE_RW | PTE_ACCESSED | PTE_DIRTY


def test_translate_refuses_what_a_ring_1_access_could_not_reach() -> None:
    h = host(pae=True)
    h.map(0x400000, 0x123000, writable=False)
    assert h.paging.translate(0x401000) is None  # no PTE
    assert h.paging.translate(0x40000000) is None  # no top-level entry
    assert h.paging.translate(0x400000, write=True) is None  # read-only (CR0.WP)
    h.map(0x402000, RAM + 0x100000)  # beyond guest memory
    assert h.paging.translate(0x402000) is None
    h.map(0x403000, 1 << 32 | 0x1000)  # a frame above 4 GiB is no guest memory either
    assert h.paging.translate(0x403000) is None
    h.map(0xFFC01000, 0x124000)  # the switcher's 4 MiB are never the guest's
    assert h.paging.translate(0xFFC01000) is None


def test_demand_fault_fills_a_missing_middle_entry_once() -> None:
    h = host(pae=True)
    h.map(0xC0400000, 0x123000)
    assert h.paging.demand_fault(0xC0400000, 0) is True
    assert h.paging.demand_fault(0xC0400000, 0) is False  # now the fault is the guest's
    assert h.paging.demand_fault(0xC0600000, 0) is False  # no middle entry: reflect
    assert h.paging.demand_fault(0x40000000, 0) is False  # no top-level entry: reflect


@pytest.mark.parametrize("flag", [PTE_RW, PTE_ACCESSED, PTE_PWT, PAE_NX])
def test_a_top_level_entry_has_no_flag_but_present(flag: int) -> None:
    h = host(pae=True)
    set_u64(h, PGDIR + 8, 0x30000 | PTE_PRESENT | flag)
    with killed("bad page directory entry"):
        h.paging.demand_fault(0x40000000, 0)


def test_a_top_level_entry_beyond_memory_is_killed() -> None:
    h = host(pae=True)
    set_u64(h, PGDIR + 8, h.memory.limit | PTE_PRESENT)
    with killed("bad page directory entry"):
        h.paging.demand_fault(0x40000000, 0)


@pytest.mark.parametrize("value", [
    0x30000 | PTE_PRESENT | PTE_PSE,  # a 2 MiB page
    0x30000 | PTE_PRESENT | 0x100,  # Global
    0x30000 | PTE_PRESENT | PTE_PWT,
    0x30000 | PTE_PRESENT | PAE_NX,  # NX is never offered
    0x7FFFF000 | PTE_PRESENT,  # a PTE page beyond memory
    1 << 40 | PTE_PRESENT,
])
def test_middle_entries_are_checked_when_first_shadowed(value: int) -> None:
    h = host(pae=True)
    h.map(0x400000, 0x123000)
    set_u64(h, middle_entry_addr(h, 0x400000), value)
    with killed("bad page middle directory entry"):
        h.paging.demand_fault(0x400000, 0)


@pytest.mark.parametrize("high", [PAE_NX, 1 << 32, 1 << 52])
def test_every_bit_of_a_pte_counts(high: int) -> None:
    h = host(pae=True)
    h.map(0x400000, 0x123000)
    set_u64(h, h.pte_addr_pae(0x400000), high | 0x123000 | PTE_PRESENT)
    with killed("bad page table entry"):
        h.paging.demand_fault(0x400000, 0)


def test_the_switcher_cannot_be_reached_through_guest_tables() -> None:
    h = host(pae=True)
    h.map(0xFFC00000, 0x123000)
    with killed("attempt to access switcher pages"):
        h.paging.demand_fault(0xFFC00000, 0)
    h.map(0xFFE00000, 0x123000)  # lguest's PAE switcher: the last 2 MiB
    with killed("attempt to access switcher pages"):
        h.paging.demand_fault(0xFFE00000, 0)


def test_set_pte_checks_all_64_bits_only_where_lguest_would_install_them() -> None:
    h = host(pae=True)
    h.map(0x400000, 0x123000)
    bad = PAE_NX | 0x123000 | PTE_PRESENT | PTE_ACCESSED
    h.paging.set_pte(PGDIR, 0x400000, bad)  # nothing shadowed covers it yet: accepted
    h.paging.demand_fault(0x400000, 0)
    h.paging.set_pte(PGDIR, 0x400000, 0)  # "forget" is never checked
    with killed("bad page table entry"):
        h.paging.set_pte(PGDIR, 0x400000, bad)
    h.paging.set_pte(PGDIR, 0x400000, 0x124000 | PTE_PRESENT | PTE_ACCESSED)


def test_set_pgd_user_flush_and_full_flush_forget_shadows() -> None:
    h = host(pae=True)
    h.set_kernel_pde(0x300)  # the kernel lives from 0xC0000000: top-level entry 3
    h.map(0x400000, 0x123000)
    h.map(0xC0400000, 0x124000)
    assert h.paging.demand_fault(0x400000, 0) and h.paging.demand_fault(0xC0400000, 0)
    h.paging.flush(everything=False)
    assert h.paging.demand_fault(0x400000, 0) is True
    assert h.paging.demand_fault(0xC0400000, 0) is False
    h.paging.set_pmd(PGDIR, 0)  # SET_PGD: top-level entry 0 changed
    assert h.paging.demand_fault(0x400000, 0) is True
    h.paging.set_pmd(PGDIR, 3)  # the kernel's entry: ignored, as lguest did
    h.paging.set_pmd(PGDIR, 0xFFFFFFFF)
    assert h.paging.demand_fault(0xC0400000, 0) is False
    h.paging.flush(everything=True)
    assert h.paging.demand_fault(0xC0400000, 0) is True


def test_pin_stack_maps_the_stack_through_three_levels() -> None:
    h = host(pae=True)
    h.map(0xC0010000, 0x123000)
    h.paging.pin_stack(0xC0011000, 1)
    assert h.pte(0xC0010000) & PTE_DIRTY
    with killed("bad stack page 0xc000ffff"):
        h.paging.pin_stack(0xC0010000, 1)
