"""Property: PAE page tables a guest builds (ABI §7.6) never put anything but checked entries in
front of the CPU.

Each example fills a PAE guest's three levels with random 64-bit entries — frames inside RAM,
at and beyond `pfn_limit`, above 4 GiB, in the Host's private region; flags with PSE, PWT,
Global, NX and bits above the frame; tables that point at themselves — and runs random paging
operations on `PaePaging` (faults, SET_PTE with random high halves, SET_PGD, SET_PMD, flushes,
directory switches, the Host's own walks).  Each must either return or kill with one of the
page-table reasons, and after every step the shadows the CPU runs on must hold only what the
checks allow: top-level entries pointing at the slot's own middle directories, middle entries
with flags within 0x067 and frames below `pfn_limit`, the switcher's entry untouched.
"""

from __future__ import annotations

import struct

from fuzzguest import fuzz_settings
from hostunit import PGDIR, host
from hypothesis import given
from hypothesis import strategies as st

from lgemu.errors import GuestKilled
from lgemu.host.paging_pae import SWITCHER_PGD, SWITCHER_PMD, SWITCHER_PMD_VALUE, PaePaging
from lgemu.kills import (
    BadPageDirectoryEntry,
    BadPageMiddleDirectoryEntry,
    BadPageTableEntry,
    BadStackPage,
    SwitcherAccess,
)
from lgemu.machine.memory import HOST_PAE_PMDS, HOST_PHYS, SHADOW_SLOTS

U64 = struct.Struct("<Q")
RAM = 1 << 20
TABLES = [PGDIR + 0x1000 * k for k in range(1, 7)]  # guest tables the entries may name
ALLOWED = (BadPageDirectoryEntry, BadPageMiddleDirectoryEntry, BadPageTableEntry,
           SwitcherAccess, BadStackPage)

frames = st.one_of(
    st.sampled_from([0, 0x1000, PGDIR, *TABLES, RAM - 0x1000, RAM, RAM + 0x8000, 0x7FFFF000,
                     HOST_PHYS, 0xFFC00000, 1 << 32, 1 << 35, 0xFFFFFFFFF000]),
    st.integers(0, (1 << 44) - 1).map(lambda f: f & ~0xFFF),
)
flags = st.one_of(st.sampled_from([0x001, 0x007, 0x067, 0x0E7, 0x00F, 0x167, 0x027, 0x063]),
                  st.integers(0, 0xFFF))
high = st.sampled_from([0, 0, 0, 1 << 63, 1 << 52, 0x7FF << 52])
entries = st.one_of(st.builds(lambda f, fl, h: f | fl | h, frames, flags, high),
                    st.integers(0, 2**64 - 1))
tables = st.sampled_from([PGDIR, *TABLES])
vaddrs = st.one_of(
    st.builds(lambda top, mid, low: top << 30 | mid << 21 | low, st.integers(0, 3),
              st.sampled_from([0, 1, 2, 509, 510, 511]), st.integers(0, 0x1FFFFF)),
    st.integers(0, 0xFFFFFFFF),
)
writes = st.tuples(tables, st.integers(0, 511), entries)
# A well-formed top-level entry, then a random middle entry and PTE under it, then a fault
# there: the walks that reach the checks of the lower levels.
middle_entries = st.one_of(st.builds(lambda t, fl, h: t | fl | h, st.sampled_from(TABLES[2:]),
                                     flags, high), entries)
chains = st.tuples(st.just("chain"), st.integers(0, 3), st.sampled_from([0, 1, 509, 510, 511]),
                   st.integers(0, 511), middle_entries, entries)
ops = st.one_of(
    chains,
    st.tuples(st.just("fault"), vaddrs, st.integers(0, 7)),
    st.tuples(st.just("set_pte"), vaddrs, entries),
    st.tuples(st.just("set_pgd"), st.sampled_from([PGDIR, PGDIR + 32]), st.integers(0, 5)),
    st.tuples(st.just("flush"), st.booleans()),
    st.tuples(st.just("new_pgtable"), st.sampled_from([PGDIR, PGDIR + 32, TABLES[0]])),
    st.tuples(st.just("translate"), vaddrs, st.booleans()),
    st.tuples(st.just("pin"), vaddrs),
    st.tuples(st.just("write"), writes),
)


def check_shadows(paging: PaePaging, limit: int) -> None:
    """What the CPU could walk: only checked, in-memory, host-owned structures."""
    host = paging.memory.host
    for slot in range(SHADOW_SLOTS):
        for top in range(4):
            spgd = U64.unpack_from(host, paging._pdpt_offset(slot) + 8 * top)[0]
            if not spgd & 1:
                continue
            page = HOST_PAE_PMDS + 4 * slot + top
            assert spgd == HOST_PHYS + page * 0x1000 | 1
            for middle in range(512):
                spmd = U64.unpack_from(host, page * 0x1000 + 8 * middle)[0]
                if top == SWITCHER_PGD and middle == SWITCHER_PMD:
                    assert spmd == SWITCHER_PMD_VALUE
                elif spmd & 1:
                    assert not (top == SWITCHER_PGD and middle > SWITCHER_PMD)
                    assert spmd & ~((1 << 44) - 1 & ~0xFFF) & ~0x67 == 0
                    assert spmd & ~0xFFF < limit


@given(st.lists(writes, max_size=24), st.lists(ops, min_size=1, max_size=30))
@fuzz_settings(150)
def test_random_pae_tables_and_paging_calls(initial, steps):
    h = host(RAM, pae=True)
    h.set_kernel_pde(0x300)
    h.lg.set_stack(0x69, 0xC0010000, 1)
    limit = h.memory.limit
    for table, index, value in initial:
        U64.pack_into(h.memory.ram, table + 8 * index, value)
    for step in steps:
        try:
            match step:
                case ("fault", vaddr, code):
                    h.paging.demand_fault(vaddr, code)
                case ("set_pte", vaddr, value):
                    h.paging.set_pte(PGDIR, vaddr, value)
                case ("set_pgd", pgdir, index):
                    h.paging.set_pmd(pgdir, index)
                case ("flush", everything):
                    h.paging.flush(everything)
                case ("new_pgtable", pgdir):
                    h.paging.new_pgtable(pgdir)
                case ("translate", vaddr, write):
                    pa = h.paging.translate(vaddr, write)
                    assert pa is None or 0 <= pa < limit
                case ("pin", vaddr):
                    h.paging.pin_stack(vaddr, 1)
                case ("write", (table, index, value)):
                    U64.pack_into(h.memory.ram, table + 8 * index, value)
                case ("chain", top, middle, index, pmd, pte):
                    U64.pack_into(h.memory.ram, PGDIR + 8 * top, TABLES[top % 2] | 1)
                    U64.pack_into(h.memory.ram, TABLES[top % 2] + 8 * middle, pmd)
                    if pmd & ~0xFFF in TABLES:
                        U64.pack_into(h.memory.ram, (pmd & ~0xFFF) + 8 * index, pte)
                    h.paging.demand_fault(top << 30 | middle << 21 | index << 12, 0)
        except GuestKilled as killed:
            assert isinstance(killed.kill, ALLOWED), killed.message
            break
        finally:
            check_shadows(h.paging, limit)
