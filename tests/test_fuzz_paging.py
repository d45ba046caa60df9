"""Property: page tables a guest builds cannot map anything but guest memory for it to write.

Each example builds a page directory in free RAM (a copy of the Launcher's, so the guest's own
code stays mapped unless the example says otherwise), fills page tables with random entries —
frames inside RAM, on the device page and vrings, at and beyond pfn_limit, in the Host's
private region at 0xF0000000, at the top of the address space; flags with PSE, PWT, PCD,
Global; directories that point at themselves; entry 1023, the Switcher's — switches to it
with NEW_PGTABLE (or edits the live directory) and touches random addresses, with the paging
hypercalls (FLUSH_TLB, SET_PTE, SET_PMD) in between.  Every run must end as it deserves;
ABI §7.1's checks say how (kill "bad page directory entry", "bad page table entry", "attempt
to access switcher pages", or a reflected page fault).
"""

from __future__ import annotations

from fuzzguest import (
    FUZZ,
    MEM,
    NVARIANTS,
    SCRATCH,
    Op,
    assert_deserved,
    fuzz_settings,
    run_program,
    strategies,
)
from hypothesis import given
from hypothesis import strategies as st

from lgemu import abi

LIMIT = MEM + 0x5000
LAUNCHER_PGDIR = MEM - abi.PAGE_SIZE  # no initrd: the directory is RAM's last page (ABI §1.3)
PGDIR = SCRATCH + 0x100000  # the example's directory
TABLES = [PGDIR + 0x1000 * (k + 1) for k in range(4)]  # and its page tables
HOST_REGION = 0xF0000000  # lgemu.machine.memory.HOST_PHYS: the Host's private pages
S = strategies(LIMIT)

frames = st.one_of(
    st.sampled_from([0, 0x100000, SCRATCH, MEM - 0x1000, MEM, MEM + 0x1000, LIMIT - 0x1000,
                     LIMIT, LIMIT + 0x1000, MEM + 0xFF000, MEM + 0x100000, 0x80000000,
                     HOST_REGION, HOST_REGION + 0x1000, HOST_REGION + 0x4000, 0xFFC00000,
                     0xFFFFF000, PGDIR, *TABLES]),
    st.integers(0, 0xFFFFF).map(lambda pfn: pfn << 12),
)
flags = st.one_of(
    st.sampled_from([0x007, 0x067, 0x027, 0x063, 0x005, 0x001, 0x000, 0x0E7, 0x08F, 0x017,
                     0x167, 0x06F, 0x0A7, 0xE07]),
    st.integers(0, 0xFFF),
)
entries = st.one_of(st.builds(lambda f, fl: f | fl, frames, flags), st.integers(0, 2**32 - 1))
pde_indices = st.one_of(st.sampled_from([0, 1, 4, 15, 16, 17, 768, 1000, 1022, 1023]),
                        st.integers(0, 1023))
touch_addresses = st.one_of(
    st.builds(lambda index, offset: index << 22 | offset, pde_indices,
              st.integers(0, 0x3FFFFF)),
    S.addresses,
)

build_steps = st.one_of(
    # a directory entry of the example's directory
    st.builds(lambda i, v: (Op.POKE32, PGDIR + 4 * i, v), pde_indices,
              st.one_of(entries, st.builds(lambda t, fl: t | fl, st.sampled_from(TABLES),
                                           flags))),
    # a run of page-table entries: frame, frame + step, ...
    st.builds(lambda table, start, count, first, step: (Op.FILL, table + 4 * start, first,
                                                        count, step),
              st.sampled_from(TABLES), st.integers(0, 1023), st.integers(1, 1024), entries,
              st.sampled_from([0x1000, 0, 0x2000, 0xFFFFF000, 0x400000])),
)
use_steps = st.one_of(
    st.builds(lambda a: (Op.PEEK, a), touch_addresses),
    st.builds(lambda a, v: (Op.POKE32, a, v), touch_addresses, S.words),
    st.builds(lambda a: (Op.TRAP, 32, 0, a), touch_addresses),  # jmp *a
    st.builds(lambda v, a: (Op.TRAP, v, 0, a, 0, a), st.integers(0, NVARIANTS - 1),
              touch_addresses),
    st.builds(lambda a: (Op.USER, 9, 0x1800000, a), touch_addresses),  # ring-3 load
    st.builds(lambda i, v: (Op.PDE, i, v), pde_indices, entries),  # the live directory
    st.tuples(st.just(Op.HCALL), st.just(int(abi.Hcall.FLUSH_TLB)), st.integers(0, 1)),
    st.tuples(st.just(Op.HCALL), st.just(int(abi.Hcall.SET_PTE)), st.just(PGDIR),
              touch_addresses, entries),
    st.tuples(st.just(Op.HCALL), st.just(int(abi.Hcall.SET_PMD)),
              st.sampled_from([PGDIR, LAUNCHER_PGDIR]), pde_indices),
    st.tuples(st.just(Op.HCALL), st.just(int(abi.Hcall.NEW_PGTABLE)),
              st.sampled_from([PGDIR, LAUNCHER_PGDIR, PGDIR + 4, TABLES[0]])),
    st.tuples(st.just(Op.HCALL), st.just(int(abi.Hcall.SET_STACK)), st.just(abi.GUEST_DS),
              touch_addresses, st.integers(0, 2)),
)
COPY_LAUNCHER_DIRECTORY = (Op.COPY, PGDIR, LAUNCHER_PGDIR, 1024)
SWITCH = (Op.HCALL, int(abi.Hcall.NEW_PGTABLE), PGDIR)


@FUZZ
@given(build=st.lists(build_steps, max_size=12), switch=st.booleans(),
       use=st.lists(use_steps, min_size=1, max_size=20))
def test_random_page_tables_end_cleanly(lgemu_main, build, switch, use) -> None:
    program = [COPY_LAUNCHER_DIRECTORY, *build, *([SWITCH] if switch else []), *use]
    assert_deserved(run_program(lgemu_main, program[:48]), program[:48])


@fuzz_settings(200)
@given(index=st.integers(1, 1023), pde_flags=flags, pte=entries,
       offset=st.integers(0, 0xFFF).map(lambda o: o & ~3), write=st.booleans())
def test_one_mapping_is_used_or_refused(lgemu_main, index, pde_flags, pte, offset,
                                        write) -> None:
    """One fresh directory entry and one page-table entry behind it, then one access:
    the guest sees its data, takes a page fault, or is killed — and an access that reached
    memory only ever reached guest memory below pfn_limit."""
    address = index << 22 | offset
    program = [COPY_LAUNCHER_DIRECTORY, (Op.FILL, TABLES[0], 0, 1024, 0),
               (Op.POKE32, TABLES[0] + 4 * ((address >> 12) & 0x3FF), pte),
               (Op.POKE32, PGDIR + 4 * index, TABLES[0] | pde_flags), SWITCH,
               (Op.POKE32, address, 0x5A5A5A5A) if write else (Op.PEEK, address)]
    outcome = run_program(lgemu_main, program)
    assert_deserved(outcome, program)
    status, out = outcome.status, outcome.out
    frame = pte & ~0xFFF
    if status == 0 and pte & abi.PTE_PRESENT and pde_flags & abi.PTE_PRESENT \
            and out.startswith(b"done t=00000000 "):
        # the access completed without a fault: it must have gone to guest memory (or, for
        # a read, to the Host's read-only pages: a documented limitation, SECURITY.md)
        assert frame < LIMIT or (not write and HOST_REGION <= frame < HOST_REGION + 0x8000)
