"""PAE guests (ABI §7.6) on small hand-written kernels: three-level paging and its hostile cases.

Each guest is assembled in the 2.6.32 era's ABI (`build_guest(..., era=...)`) and defines
``__pmd_alloc``, the symbol that marks a PAE kernel, so lgemu runs it on PAE page tables: the
Launcher's top-level table (in ``lguest_data.pgdir``) has entries 0 and 3 pointing at one
middle directory, whose entries map the first 1 GiB.  What is judged is what a user sees: the
console and how the run ends.  A real PAE kernel is in tests/test_era_real_kernels.py.
"""

from __future__ import annotations

from guestasm import assert_killed, assert_one_line, assert_powered_down

from lgemu.abi_eras import era_named
from lgemu.kills import (
    BadPageDirectoryEntry,
    BadPageMiddleDirectoryEntry,
    BadPageTableEntry,
    SwitcherAccess,
)

PAE_ERA = era_named("2.6.32")


def hexwords(*values: int) -> bytes:
    """What a run of PUTHEX prints."""
    return b"".join(f"{v & 0xFFFFFFFF:08x}".encode() for v in values)

# The PAE marker, and page-aligned tables of the guest's own: a middle directory and a page
# table, and a page of data to map through them.
DATA = """
        .globl	__pmd_alloc
__pmd_alloc:
        .long	0
ok:     .asciz	"ok "
        .balign	4096
my_pmd: .fill	4096, 1, 0
my_pt:  .fill	4096, 1, 0
target: .long	0x5a5a1234
        .balign	4096
"""

# ebx = the Launcher's top-level table, from lguest_data.pgdir after INIT.
PROLOGUE = """
        INIT
        movl	lguest_data + LD_PGDIR, %edi
"""


def test_a_pae_guest_maps_a_page_through_its_own_three_levels(asm_guest):
    run = asm_guest(PROLOGUE + """
        movl	$my_pt + 7, my_pmd           # middle entry 0 -> my page table
        movl	$target + 3, my_pt + 8 * 5   # PTE 5 -> target (0x40005000)
        movl	$my_pmd + 1, 8(%edi)         # top-level entry 1 (0x40000000) -> my_pmd
        HCALL	$LHCALL_SET_PGD, %edi, $1
        movl	0x40005000, %eax             # demand-faulted through all three levels
        PUTHEX	%eax
        movl	$0x11223344, 0x40005004      # a write sets Dirty in the 64-bit PTE
        PUTHEX	my_pt+40
        PUTHEX	my_pt+44
        POWER_DOWN
    """, DATA, era=PAE_ERA)
    assert run.status == 0, run.err
    target = run.symbol("target")
    assert run.out == hexwords(0x5A5A1234, target | 0x63, 0)


def test_set_pte_with_a_high_half_and_set_pmd_are_taken(asm_guest):
    run = asm_guest(PROLOGUE + """
        movl	$0, %esi                     # the PTE's high half
        HCALL	$LHCALL_SET_PTE, %edi, $0x100000, $0x100063
        HCALL	$LHCALL_SET_PMD, $my_pmd, $0 # a middle entry: every shadow is dropped
        PUTS	ok
        POWER_DOWN
    """, DATA, era=PAE_ERA)
    assert_powered_down(run, b"ok ")


def test_a_top_level_entry_with_a_flag_besides_present_is_killed(asm_guest):
    run = asm_guest(PROLOGUE + """
        movl	$my_pmd + 3, 8(%edi)         # Present | RW: RW does not exist up there
        movl	0x40000000, %eax
    """, DATA, era=PAE_ERA)
    assert_killed(run, BadPageDirectoryEntry())


def test_a_2_mib_page_in_the_middle_directory_is_killed(asm_guest):
    run = asm_guest(PROLOGUE + """
        movl	$0x00200000 + 0xE7, my_pmd   # PSE: lguest shadows no large pages
        movl	$my_pmd + 1, 8(%edi)
        movl	0x40000000, %eax
    """, DATA, era=PAE_ERA)
    assert_killed(run, BadPageMiddleDirectoryEntry())


def test_an_nx_pte_is_killed_when_reported(asm_guest):
    run = asm_guest(PROLOGUE + """
        movl	$0x80000000, %esi            # NX, never offered to the guest
        HCALL	$LHCALL_SET_PTE, %edi, $0x100000, $0x100063
        PUTS	ok
    """, DATA, era=PAE_ERA)
    assert_killed(run, BadPageTableEntry())
    assert run.out == b""


def test_an_nx_pte_from_the_async_ring_is_killed(asm_guest):
    run = asm_guest(PROLOGUE + """
        ASYNC	0, $LHCALL_SET_PTE, %edi, $0x100000, $0x100063
        movl	$0x80000000, lguest_data + LD_HCALLS + 16   # arg4: the high half
        PUTS	ok                           # the ring is run first
    """, DATA, era=PAE_ERA)
    assert_killed(run, BadPageTableEntry())
    assert run.out == b""


def test_a_frame_above_4_gib_is_killed(asm_guest):
    run = asm_guest(PROLOGUE + """
        movl	$my_pt + 7, my_pmd
        movl	$0x1000 + 3, my_pt
        movl	$1, my_pt + 4                # frame 0x100001000: no guest memory
        movl	$my_pmd + 1, 8(%edi)
        movl	0x40000000, %eax
    """, DATA, era=PAE_ERA)
    assert_killed(run, BadPageTableEntry())


def test_the_switchers_addresses_are_never_the_guests(asm_guest):
    run = asm_guest(PROLOGUE + """
        movl	$my_pt + 7, my_pmd
        movl	(%edi), %eax                 # the middle directory behind entries 0 and 3
        andl	$0xFFFFF000, %eax
        movl	$my_pt + 7, 8 * 510(%eax)    # 0xFFC00000 in top-level entry 3
        movl	$target + 3, my_pt
        movl	0xFFC00000, %eax
    """, DATA, era=PAE_ERA)
    assert_killed(run, SwitcherAccess())


def test_a_pae_kernel_is_refused_in_an_era_before_2_6_31(asm_guest):
    run = asm_guest("POWER_DOWN", DATA)  # 2.6.24's ABI
    assert run.status == 2 and run.out == b""
    assert assert_one_line(run.err).endswith(
        "a PAE kernel (it has __pmd_alloc) in the 2.6.24 era, whose CONFIG_LGUEST_GUEST needs "
        "CONFIG_X86_PAE off (lguest took PAE guests from 2.6.31-2.6.33; choose "
        "CONFIG_HIGHMEM4G or CONFIG_NOHIGHMEM)")
