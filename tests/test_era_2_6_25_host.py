"""Where the 2.6.25 Host parted from 2.6.24's, on small guests assembled in each era's ABI
(`build_guest(..., era=...)`, run with ``--abi``): what the guest sees, or how its run ends.

Found by reading each release's drivers/lguest/ while booting the real 2.6.25 and 2.6.29
kernels (docs/eras.md); the real kernels themselves are exercised where shared/kernels has
them (tests/test_era_real_kernels.py).
"""

from __future__ import annotations

import pytest
from guestasm import assert_killed, assert_powered_down

from lgemu.abi_eras import era_named
from lgemu.kills import BadPageTableEntry

# A fresh directory entry (index 20, virtual 0x5000000) over a page table at 0x2000000 whose
# first entry maps `marker`'s page Present|RW|User|Accessed|Dirty and write-through (PWT),
# then a read of `marker` through it.
PWT_PTE = """
        INIT
        movl	lguest_data+LD_PGDIR, %esi
        movl	$0x2000067, 20*4(%esi)
        movl	$marker, %eax
        andl	$0xFFFFF000, %eax
        orl	$0x6F, %eax
        movl	%eax, 0x2000000
        movl	$marker, %ebx
        andl	$0xFFF, %ebx
        movl	0x5000000(%ebx), %eax
        PUTHEX	%eax
        POWER_DOWN
"""
MARKER = "marker: .long 0x600d5eed\n"


def test_a_write_through_pte_kills_a_2_6_24_guest(asm_guest):
    """2.6.24's check_gpte refused _PAGE_PWT along with _PAGE_PSE."""
    assert_killed(asm_guest(PWT_PTE, MARKER), BadPageTableEntry())


@pytest.mark.parametrize("name", ["2.6.25", "2.6.29", "2.6.32"])
def test_a_write_through_pte_is_accepted_from_2_6_25(asm_guest, name):
    """From 2.6.25 only _PAGE_PSE kills (ioremap_nocache had begun to set PWT): the guest
    reads its word through the entry."""
    run = asm_guest(PWT_PTE, MARKER, era=era_named(name))
    assert_powered_down(run, b"600d5eed")
