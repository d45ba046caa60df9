"""The initial page tables: an identity map of guest RAM, built just below the initrd.

An lguest guest starts with paging already on (ABI §2), so before the first instruction the
Launcher must supply a page directory.  2.6.24's is as simple as possible (ABI §1.3): two-level,
4 KiB pages, virtual = physical for every byte of RAM and nothing else — not the device page,
not ``PAGE_OFFSET``.  The guest's ``lguest_entry`` then copies PDEs 0–31 to 768–799 itself,
which is how it runs at 0xC0000000 until it switches to ``swapper_pg_dir``.

The tables sit at the top of RAM, under the initrd: the directory in the page just below
`top`, and its ``P = ceil(mem / 4 MiB)`` PTE pages directly below that, in order.  Every entry
carries flags 0x007 (present, writable, user).  The guest never reserves these pages; once it
has its own page tables they are ordinary free memory.
"""

from __future__ import annotations

import mmap
import sys
from array import array
from collections.abc import Iterable
from typing import TypeAlias

from ..abi import LAUNCHER_PT_FLAGS, PAE_PGD_SHIFT, PAE_PTRS, PAGE_OFFSET, PAGE_SIZE, PTE_PRESENT

Ram: TypeAlias = "bytearray | mmap.mmap"  # guest memory indexed by guest-physical address

PTES_PER_PAGE = PAGE_SIZE // 4
PDE_SPAN = PTES_PER_PAGE * PAGE_SIZE  # 4 MiB mapped by one page-directory entry


def page_table_pages(mem: int) -> int:
    """How many PTE pages map `mem` bytes of RAM: ``ceil(mem / 4 MiB)``."""
    return -(-mem // PDE_SPAN)


def pae_page_table_pages(mem: int) -> int:
    """How many 512-entry PTE pages map `mem` bytes of RAM (ABI §7.6): ``ceil(mem / 2 MiB)``."""
    return -(-mem // (PAE_PTRS * PAGE_SIZE))


def page_tables_base(mem: int, top: int, pae: bool = False) -> int:
    """Lowest address the page tables for `mem` bytes of RAM occupy when they end at `top`
    (`pae`: a PAE guest's, with its middle directory)."""
    if pae:
        return top - (pae_page_table_pages(mem) + 2) * PAGE_SIZE
    return top - (page_table_pages(mem) + 1) * PAGE_SIZE


def _page_of_entries(entries: Iterable[int], pages: int) -> bytes:
    """`pages` pages of little-endian 32-bit entries, zero after the last given one."""
    words = array("I", entries)
    if sys.byteorder != "little":
        words.byteswap()
    raw = words.tobytes()
    return raw + bytes(pages * PAGE_SIZE - len(raw))


def build_initial_page_tables(ram: Ram, mem: int, top: int) -> int:
    """Write the Launcher's identity map of `mem` bytes of RAM below `top` into `ram`.

    `ram` is any writable buffer indexed by guest-physical address (`GuestMemory.ram`).
    `top` is ``mem`` minus the page-rounded initrd size.  Returns the physical address of the
    page directory (what the Host loads into CR3 and later reports in ``lguest_data.pgdir``).
    Raises `ValueError` for arguments no caller should produce (unaligned or out of range);
    user-caused overlaps are `launch`'s to report.
    """
    if mem <= 0 or mem % PAGE_SIZE or top % PAGE_SIZE or not 0 < top <= mem:
        raise ValueError(f"page tables for mem={mem:#x} below top={top:#x}")
    pages = page_table_pages(mem)
    pgdir = top - PAGE_SIZE
    base = page_tables_base(mem, top)
    if base < 0 or top > len(ram):
        raise ValueError(f"page tables for mem={mem:#x} do not fit below top={top:#x}")

    ptes = range(LAUNCHER_PT_FLAGS, mem, PAGE_SIZE)  # PTE i -> page i, for i < mem/4096
    pdes = range(base | LAUNCHER_PT_FLAGS, pgdir, PAGE_SIZE)  # PDE k -> PTE page k, k < P
    assert len(pdes) == pages
    ram[base:pgdir] = _page_of_entries(ptes, pages)
    ram[pgdir:top] = _page_of_entries(pdes, 1)
    return pgdir


def build_initial_pae_page_tables(ram: Ram, mem: int, top: int) -> int:
    """A PAE guest's first page tables (ABI §7.6), as lguest's Host built them: the top-level
    table in the page just below `top`, the PTE pages mapping every page of RAM (flags 0x007)
    below it, and one middle directory below those whose entries (0x007) point at the first
    512 of them, so at most the first 1 GiB is mapped; top-level entries 0 and 3
    (``PAGE_OFFSET``) both point at it, with Present as their only flag.  Returns the address
    of the top-level table.  `ValueError` as `build_initial_page_tables`."""
    if mem <= 0 or mem % PAGE_SIZE or top % PAGE_SIZE or not 0 < top <= mem:
        raise ValueError(f"PAE page tables for mem={mem:#x} below top={top:#x}")
    pages = pae_page_table_pages(mem)
    pgdir = top - PAGE_SIZE
    linear = pgdir - pages * PAGE_SIZE
    pmds = linear - PAGE_SIZE
    if pmds < 0 or top > len(ram):
        raise ValueError(f"PAE page tables for mem={mem:#x} do not fit below top={top:#x}")
    ptes = array("Q", range(LAUNCHER_PT_FLAGS, mem, PAGE_SIZE))
    middles = array("Q", range(linear | LAUNCHER_PT_FLAGS, pgdir, PAGE_SIZE)[:PAE_PTRS])
    top_level = array("Q", [0] * 4)
    top_level[0] = top_level[PAGE_OFFSET >> PAE_PGD_SHIFT] = pmds | PTE_PRESENT
    for table in (ptes, middles, top_level):
        if sys.byteorder != "little":
            table.byteswap()
    ram[linear:pgdir] = ptes.tobytes() + bytes(pages * PAGE_SIZE - 8 * len(ptes))
    ram[pmds:linear] = middles.tobytes() + bytes(PAGE_SIZE - 8 * len(middles))
    ram[pgdir:top] = top_level.tobytes() + bytes(PAGE_SIZE - 32)
    return pgdir
