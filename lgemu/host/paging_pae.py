"""Guest paging for PAE guests (ABI §7.6): three levels of 64-bit entries.

lguest accepted PAE guests from 2.6.31 (its Host and guest had to agree on CONFIG_X86_PAE).
lgemu keeps the two-level design of `lgemu.host.paging` one level down: the CPU runs on a
host-owned top level (a 32-byte table of four entries, all four slots' tables in one host
page) whose entries point at host-owned *middle directories*; those hold validated copies of
the guest's middle-directory entries, filled when the guest faults, and point at the guest's
own PTE pages, which Unicorn walks (Unicorn §2.3), so Accessed and Dirty land in guest memory.

* Middle-directory entries 510 and 511 of the top entry 3 (0xFFC00000 up) are the Host's:
  entry 510 maps the switcher's GDT, TSS and `until` page at the addresses a two-level guest
  sees them.  (lguest's PAE Host reserved only the top 2 MiB; lgemu's LGUEST_INIT reserves
  4 MiB in every mode, and the guest keeps out of whatever it is told.)
* The checks are lguest's, made when lguest made them: a top-level entry may have no flag but
  Present, a middle-directory entry none outside 0x067, both must point below `pfn_limit`
  (killed as "bad page directory entry" and "bad page middle directory entry"); a PTE is
  checked as a two-level one, and its 64 bits count, so NX (never offered) or any bit above
  the frame kills it as "bad page table entry".
* SET_PGD drops one top-level entry; SET_PMD (a middle entry changed) drops every shadow, as
  lguest did; SET_PTE carries the PTE's high half as its fourth argument.
"""

from __future__ import annotations

import struct

from ..abi import (
    PAE_ENTRY_SIZE,
    PAE_FRAME_MASK,
    PAE_PGD_ALLOWED_FLAGS,
    PAE_PGD_ENTRIES,
    PAE_PGD_SHIFT,
    PAE_PMD_ALLOWED_FLAGS,
    PAE_PMD_SHIFT,
    PAE_PTRS,
    PAGE_SIZE,
    PTE_ACCESSED,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_RW,
    SWITCHER_ADDR,
)
from ..errors import GuestKilled
from ..kills import BadPageDirectoryEntry, BadPageMiddleDirectoryEntry, SwitcherAccess
from ..machine.cpu import Cpu
from ..machine.memory import (
    HOST_GDT,
    HOST_PAE_PDPTS,
    HOST_PAE_PMDS,
    HOST_PAE_SWITCHER_PT,
    HOST_TSS,
    HOST_UNTIL,
    GuestMemory,
    host_page_phys,
)
from .paging import SWITCHER_PTE, Paging
from .state import LguestState

U64 = struct.Struct("<Q")
PDPT_SIZE = PAE_PGD_ENTRIES * PAE_ENTRY_SIZE  # 32 bytes, the alignment CR3 needs
SWITCHER_PGD = SWITCHER_ADDR >> PAE_PGD_SHIFT  # 3
SWITCHER_PMD = (SWITCHER_ADDR >> PAE_PMD_SHIFT) % PAE_PTRS  # 510: the Host's from here up
SWITCHER_PMD_VALUE = host_page_phys(HOST_PAE_SWITCHER_PT) | PTE_PRESENT | PTE_RW | PTE_ACCESSED


def pae_indices(vaddr: int) -> tuple[int, int, int]:
    """(top-level, middle, page-table) indices of `vaddr`."""
    return (vaddr >> PAE_PGD_SHIFT, (vaddr >> PAE_PMD_SHIFT) % PAE_PTRS,
            (vaddr >> 12) % PAE_PTRS)


def is_switcher(top: int, middle: int) -> bool:
    """True for the Host's part of the address space (0xFFC00000 up)."""
    return top == SWITCHER_PGD and middle >= SWITCHER_PMD


class PaePaging(Paging):
    """Shadow top levels and middle directories for one PAE guest (ABI §7.6)."""

    def __init__(self, memory: GuestMemory, cpu: Cpu, lg: LguestState | None = None) -> None:
        super().__init__(memory, cpu, lg)
        base = host_page_phys(0)
        for index in (HOST_GDT, HOST_UNTIL, HOST_TSS):
            U64.pack_into(memory.host, host_page_phys(HOST_PAE_SWITCHER_PT) - base + 8 * index,
                          host_page_phys(index) | SWITCHER_PTE)

    # -- where the shadows live ----------------------------------------------------------
    def _pdpt_offset(self, slot: int) -> int:
        return HOST_PAE_PDPTS * PAGE_SIZE + PDPT_SIZE * slot

    def _pmd_page(self, slot: int, top: int) -> int:
        return HOST_PAE_PMDS + PAE_PGD_ENTRIES * slot + top

    def shadow_cr3(self, slot: int) -> int:
        """CR3 for shadow slot `slot`: its 32-byte top-level table."""
        return host_page_phys(HOST_PAE_PDPTS) + PDPT_SIZE * slot

    def _install_top(self, slot: int, top: int) -> None:
        """Point top-level entry `top` at a blank shadow middle directory."""
        page = self._pmd_page(slot, top)
        off = page * PAGE_SIZE
        self.memory.host[off:off + PAGE_SIZE] = bytes(PAGE_SIZE)
        if top == SWITCHER_PGD:
            U64.pack_into(self.memory.host, off + PAE_ENTRY_SIZE * SWITCHER_PMD,
                          SWITCHER_PMD_VALUE)
        U64.pack_into(self.memory.host, self._pdpt_offset(slot) + PAE_ENTRY_SIZE * top,
                      host_page_phys(page) | PTE_PRESENT)

    def _drop_top(self, slot: int, top: int) -> None:
        if top == SWITCHER_PGD:  # the switcher's entry stays: only the guest's part goes
            self._install_top(slot, top)
        else:
            U64.pack_into(self.memory.host, self._pdpt_offset(slot) + PAE_ENTRY_SIZE * top, 0)

    def _blank(self, slot: int) -> None:
        for top in range(PAE_PGD_ENTRIES):
            self._drop_top(slot, top)

    def _shadow_pmd(self, slot: int, top: int, middle: int) -> int:
        """The shadow middle-directory entry for (top, middle) of `slot`; 0 if none."""
        host = self.memory.host
        if not U64.unpack_from(host, self._pdpt_offset(slot) + PAE_ENTRY_SIZE * top)[0] \
                & PTE_PRESENT:
            return 0
        off = self._pmd_page(slot, top) * PAGE_SIZE + PAE_ENTRY_SIZE * middle
        return U64.unpack_from(host, off)[0]

    # -- the paging hypercalls -------------------------------------------------------------
    def flush(self, everything: bool) -> None:
        """LHCALL_FLUSH_TLB: all shadows, or this one's part below `kernel_address`."""
        if everything:
            for slot, pgdir in enumerate(self._slots):
                if pgdir is not None:
                    self._blank(slot)
        else:
            kernel_top, kernel_middle, _ = pae_indices(self.lg.kernel_address)
            for top in range(min(kernel_top, PAE_PGD_ENTRIES)):
                self._drop_top(self.slot, top)
            pdpt = self._pdpt_offset(self.slot) + PAE_ENTRY_SIZE * kernel_top
            if kernel_top < PAE_PGD_ENTRIES and kernel_middle and \
                    U64.unpack_from(self.memory.host, pdpt)[0] & PTE_PRESENT:
                off = self._pmd_page(self.slot, kernel_top) * PAGE_SIZE
                self.memory.host[off:off + PAE_ENTRY_SIZE * kernel_middle] = \
                    bytes(PAE_ENTRY_SIZE * kernel_middle)
        self.cpu.flush_tlb()

    def set_pmd(self, pgdir: int, index: int) -> None:
        """LHCALL_SET_PGD of a PAE guest: top-level entry `index` of `pgdir` (the address of
        its 32-byte table) changed.  Entry 3 and beyond are ignored, as lguest did (its
        switcher lived there)."""
        if index < SWITCHER_PGD and pgdir in self._slots:
            self._drop_top(self._slots.index(pgdir), index)
            self.cpu.flush_tlb()

    def set_pte(self, pgdir: int, vaddr: int, pte: int) -> None:
        """LHCALL_SET_PTE with the whole 64-bit entry: checked where lguest would install it
        (a shadow whose middle-directory entry covering `vaddr` is present)."""
        if pte & (PTE_ACCESSED | PTE_DIRTY):
            if vaddr >= self.lg.kernel_address:
                slots = [slot for slot, cached in enumerate(self._slots) if cached is not None]
            else:
                slots = [self._slots.index(pgdir)] if pgdir in self._slots else []
            top, middle, _ = pae_indices(vaddr)
            if not is_switcher(top, middle) and any(
                    self._shadow_pmd(slot, top, middle) & PTE_PRESENT for slot in slots):
                self._check_pte(pte)
        self.cpu.flush_tlb()

    # -- demand paging ---------------------------------------------------------------------
    def _guest_u64(self, pa: int) -> int:
        self.memory.check(pa, PAE_ENTRY_SIZE, "read")
        return U64.unpack_from(self.memory.ram, pa)[0]

    def _check_top(self, gpgd: int) -> None:
        if gpgd & ~PAE_FRAME_MASK & ~PAE_PGD_ALLOWED_FLAGS or \
                gpgd & PAE_FRAME_MASK >= self.memory.limit:
            raise GuestKilled(BadPageDirectoryEntry())

    def _check_middle(self, gpmd: int) -> None:
        if gpmd & ~PAE_FRAME_MASK & ~PAE_PMD_ALLOWED_FLAGS or \
                gpmd & PAE_FRAME_MASK >= self.memory.limit:
            raise GuestKilled(BadPageMiddleDirectoryEntry())

    def demand_fault(self, vaddr: int, error_code: int) -> bool:
        """A #PF at `vaddr`: copy the guest's middle-directory entry into the shadow if that
        is all that was missing (checking the top-level entry above it and the PTE below).
        True means retry the instruction; False means reflect the fault."""
        top, middle, index = pae_indices(vaddr)
        gpgd = self._guest_u64(self.guest_pgdir + PAE_ENTRY_SIZE * top)
        if not gpgd & PTE_PRESENT:
            return False
        self._check_top(gpgd)
        if is_switcher(top, middle):
            raise GuestKilled(SwitcherAccess())
        gpmd = self._guest_u64((gpgd & PAE_FRAME_MASK) + PAE_ENTRY_SIZE * middle)
        if not gpmd & PTE_PRESENT:
            return False
        if self._shadow_pmd(self.slot, top, middle) & PTE_PRESENT:
            return False  # the directories were fine: the fault is the guest's
        self._check_middle(gpmd)
        gpte = self._guest_u64((gpmd & PAE_FRAME_MASK) + PAE_ENTRY_SIZE * index)
        if gpte & PTE_PRESENT:
            self._check_pte(gpte)
        pdpt = self._pdpt_offset(self.slot) + PAE_ENTRY_SIZE * top
        if not U64.unpack_from(self.memory.host, pdpt)[0] & PTE_PRESENT:
            self._install_top(self.slot, top)
        U64.pack_into(self.memory.host,
                      self._pmd_page(self.slot, top) * PAGE_SIZE + PAE_ENTRY_SIZE * middle,
                      gpmd | PTE_ACCESSED)
        return True

    # -- walks the Host itself makes -------------------------------------------------------
    def _entry(self, table: int, index: int, write: bool) -> tuple[int, int] | None:
        """(address, value) of a present entry of the guest table at `table`, writable if
        `write`; None otherwise."""
        addr = table + PAE_ENTRY_SIZE * index
        if not self.memory.valid(addr, PAE_ENTRY_SIZE):
            return None
        value = U64.unpack_from(self.memory.ram, addr)[0]
        if not value & PTE_PRESENT or (write and not value & PTE_RW):
            return None
        return addr, value

    def translate(self, vaddr: int, write: bool = False, mark: bool = True) -> int | None:
        """Guest-physical address of `vaddr` through the guest's three levels, as a ring-1
        access would see it; see `Paging.translate`."""
        top, middle, index = pae_indices(vaddr)
        if is_switcher(top, middle):
            return None
        # The top level has no RW bit: only the lower levels decide writability.
        gpgd = self._entry(self.guest_pgdir, top, False)
        if gpgd is None:
            return None
        gpmd = self._entry(gpgd[1] & PAE_FRAME_MASK, middle, write)
        if gpmd is None:
            return None
        gpte = self._entry(gpmd[1] & PAE_FRAME_MASK, index, write)
        if gpte is None:
            return None
        pte_addr, value = gpte
        pa = (value & PAE_FRAME_MASK) | (vaddr & 0xFFF)
        if not self.memory.valid(pa & ~0xFFF, PAGE_SIZE - 1):
            return None
        new = value | PTE_ACCESSED | (PTE_DIRTY if write else 0)
        if mark and new != value:
            self.memory.ram[pte_addr] = new & 0xFF  # A and D are in the low byte
        return pa
