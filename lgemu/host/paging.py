"""Guest paging (ABI §7): the guest's own page tables, under a host-owned page directory.

lguest kept shadow page tables.  lgemu keeps only a *shadow page directory*: the CPU's CR3
points at a host page whose entries are validated copies of the guest's PDEs, filled on
demand when the guest faults (lguest's `demand_page`), while the PTE pages Unicorn walks are
the guest's own, so Accessed and Dirty land in guest memory as on hardware.  What this buys:

* PDE 1023 of every address space is the Host's: the switcher page table maps the GDT, the
  TSS and emu_start's `until` page at 0xFFC00000, and the guest cannot remap them.
* ABI §7.1's directory checks happen exactly when lguest made them (first use of a PDE).
* The paging hypercalls are what lguest made them: SET_PMD drops a shadow PDE, FLUSH_TLB
  drops the user part or everything, NEW_PGTABLE switches (caching four directories).

The guest's page-table memory is never written by the Host except for Accessed/Dirty bits
of the walks it performs itself (trap frames, pinning).
"""

from __future__ import annotations

from typing import NamedTuple

from ..abi import (
    PAGE_OFFSET,
    PAGE_SIZE,
    PDE_ALLOWED_FLAGS,
    PTE_ACCESSED,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_PSE,
    PTE_PWT,
    PTE_RW,
    SWITCHER_PDE,
    U32,
)
from ..errors import GuestKilled
from ..kills import (
    BadPageDirectoryEntry,
    BadPageTableEntry,
    BadStackPage,
    BadVirtualAddress,
    SwitcherAccess,
)
from ..machine.cpu import Cpu
from ..machine.memory import (
    HOST_GDT,
    HOST_SHADOW_PGDIRS,
    HOST_SWITCHER_PT,
    HOST_TSS,
    HOST_UNTIL,
    SHADOW_SLOTS,
    GuestMemory,
    host_page_phys,
)
from ..record import Record
from .state import LguestState

PF_WRITE = 2  # #PF error code: the access was a write
# x86 legacy prefixes (lock, rep, segment overrides, operand and address size).
LEGACY_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67})
MAX_INSTRUCTION_LENGTH = 15
# Switcher PTEs are present, read-only, supervisor, with A and D preset: Unicorn never needs
# to write the read-only host pages.
SWITCHER_PTE = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY
SWITCHER_PDE_VALUE = host_page_phys(HOST_SWITCHER_PT) | PTE_PRESENT | PTE_RW | PTE_ACCESSED


class Opcode(NamedTuple):
    """The start of an instruction: its legacy prefixes, its first opcode byte, and how many
    prefix bytes came before that byte (a prefix may repeat)."""

    prefixes: frozenset[int]
    opcode: int
    prefix_bytes: int


class PagingState(Record, frozen=True):
    """Persist: which guest directory each shadow slot holds, and which one runs.  (The
    shadows themselves are host pages, saved with them.)"""

    slots: tuple[int | None, ...]
    next_victim: int
    slot: int
    guest_pgdir: int


class Paging:
    """Shadow page directories and guest page-table walks for one guest."""

    def __init__(self, memory: GuestMemory, cpu: Cpu, lg: LguestState | None = None) -> None:
        self.memory = memory
        self.cpu = cpu
        self.lg = lg if lg is not None else LguestState()  # kernel_address, from LGUEST_INIT
        host = memory.host
        for index in (HOST_GDT, HOST_UNTIL, HOST_TSS):
            U32.pack_into(host, host_page_phys(HOST_SWITCHER_PT) - host_page_phys(0) + 4 * index,
                          host_page_phys(index) | SWITCHER_PTE)
        self._slots: list[int | None] = [None] * SHADOW_SLOTS  # guest pgdir per slot
        self._next_victim = 0
        self.slot = 0
        self.iomem = (0, 0)  # [start, end) of device registers a PTE may map (4.x BARs)
        # PTE flags that kill the guest where lguest would install the entry: PSE always,
        # PWT too in the eras whose Host refused it (`Era.pte_pwt_killed`, chosen by `Guest`).
        self.bad_pte_flags = PTE_PWT | PTE_PSE
        self.guest_pgdir = 0

    def save_state(self) -> PagingState:
        """Persist: the shadow slots' owners and the current directory."""
        return PagingState(tuple(self._slots), self._next_victim, self.slot, self.guest_pgdir)

    def restore_state(self, state: PagingState) -> None:
        """Persist: back to `state` (CR3 is the CPU's, restored with it)."""
        self._slots = list(state.slots)
        self._next_victim, self.slot, self.guest_pgdir = \
            state.next_victim, state.slot, state.guest_pgdir

    # -- shadow directories --------------------------------------------------------------
    def _shadow_offset(self, slot: int) -> int:
        return (HOST_SHADOW_PGDIRS + slot) * PAGE_SIZE

    def _blank(self, slot: int) -> None:
        off = self._shadow_offset(slot)
        self.memory.host[off:off + PAGE_SIZE] = bytes(PAGE_SIZE)
        U32.pack_into(self.memory.host, off + 4 * SWITCHER_PDE, SWITCHER_PDE_VALUE)

    def new_pgtable(self, pgdir: int) -> bool:
        """LHCALL_NEW_PGTABLE: run on `pgdir` (not validated until used, ABI §3.3).  True when
        it had to start a blank shadow (the caller re-pins the stack, ABI §5.5)."""
        blank = pgdir not in self._slots
        if not blank:
            self.slot = self._slots.index(pgdir)
        else:
            # lguest replaced a random one; a round robin is as good and deterministic.
            self.slot = self._next_victim
            self._next_victim = (self._next_victim + 1) % SHADOW_SLOTS
            self._slots[self.slot] = pgdir
            self._blank(self.slot)
        self.guest_pgdir = pgdir
        self.cpu.set_cr3(self.shadow_cr3(self.slot))
        return blank

    def shadow_cr3(self, slot: int) -> int:
        """CR3 for shadow slot `slot`: its page directory."""
        return host_page_phys(HOST_SHADOW_PGDIRS + slot)

    def flush(self, everything: bool) -> None:
        """LHCALL_FLUSH_TLB: all directories and the kernel part, or this one's user part."""
        if everything:
            for slot, pgdir in enumerate(self._slots):
                if pgdir is not None:
                    self._blank(slot)
        else:
            off = self._shadow_offset(self.slot)
            kernel_pde = self.lg.kernel_pde
            self.memory.host[off:off + 4 * kernel_pde] = bytes(4 * kernel_pde)
        self.cpu.flush_tlb()

    def set_pmd(self, pgdir: int, index: int) -> None:
        """LHCALL_SET_PMD: forget one PDE of a directory we shadow (ABI §7.3)."""
        if index < SWITCHER_PDE and pgdir in self._slots:
            slot = self._slots.index(pgdir)
            U32.pack_into(self.memory.host, self._shadow_offset(slot) + 4 * index, 0)
            self.cpu.flush_tlb()

    def set_pte(self, pgdir: int, vaddr: int, pte: int) -> None:
        """LHCALL_SET_PTE: the guest changed a PTE (already in its memory); `pte` is a hint
        and 0 from flush_tlb_single means "forget", never "store 0" (ABI §7.2).  lguest checked
        the value only where it would install it: a shadow whose PDE covering `vaddr` is
        present (every cached directory for a kernel address, else `pgdir`'s, if cached)."""
        if pte & (PTE_ACCESSED | PTE_DIRTY):
            if vaddr >= self.lg.kernel_address:
                slots = [slot for slot, cached in enumerate(self._slots) if cached is not None]
            else:
                slots = [self._slots.index(pgdir)] if pgdir in self._slots else []
            host, pde = self.memory.host, 4 * (vaddr >> 22)
            if any(U32.unpack_from(host, self._shadow_offset(slot) + pde)[0] & PTE_PRESENT
                   for slot in slots):
                self._check_pte(pte)
        self.cpu.flush_tlb()

    def _check_pte(self, pte: int) -> None:
        frame = (pte >> 12) * PAGE_SIZE
        if self.iomem[0] <= frame < self.iomem[1] and not pte & PTE_PSE:
            return  # a PCI BAR page (4.x): its loads and stores reach the devices
        if pte & self.bad_pte_flags or frame >= self.memory.limit:
            raise GuestKilled(BadPageTableEntry())

    # -- demand paging (ABI §7.1) ----------------------------------------------------------
    def demand_fault(self, vaddr: int, error_code: int) -> bool:
        """A #PF at `vaddr`: copy the guest's PDE into the shadow if that is all that was
        missing.  True means retry the instruction; False means reflect the fault."""
        index = vaddr >> 22
        gpde = self.memory.u32(self.guest_pgdir + 4 * index)
        if not gpde & PTE_PRESENT:
            return False
        if index == SWITCHER_PDE:
            raise GuestKilled(SwitcherAccess())
        off = self._shadow_offset(self.slot) + 4 * index
        if U32.unpack_from(self.memory.host, off)[0] & PTE_PRESENT:
            return False  # the directory was fine: the fault is the guest's
        if gpde & ~PDE_ALLOWED_FLAGS & 0xFFF or (gpde >> 12) * PAGE_SIZE >= self.memory.limit:
            raise GuestKilled(BadPageDirectoryEntry())
        gpte = self.memory.u32((gpde & ~0xFFF) + 4 * ((vaddr >> 12) & 0x3FF))
        if gpte & PTE_PRESENT:
            self._check_pte(gpte)
        U32.pack_into(self.memory.host, off, gpde | PTE_ACCESSED)
        return True

    # -- walks the Host itself makes -------------------------------------------------------
    def translate(self, vaddr: int, write: bool = False, mark: bool = True) -> int | None:
        """Guest-physical address of `vaddr` in the current guest directory, as a ring-1
        access would see it (WP: writes need RW), setting Accessed/Dirty unless `mark` is
        False; None if unmapped."""
        index = vaddr >> 22
        if index == SWITCHER_PDE:
            return None
        mem = self.memory
        pde_addr = self.guest_pgdir + 4 * index
        if not mem.valid(pde_addr, 4):
            return None
        gpde = U32.unpack_from(mem.ram, pde_addr)[0]
        if not gpde & PTE_PRESENT or (write and not gpde & PTE_RW):
            return None
        pte_addr = (gpde & ~0xFFF) + 4 * ((vaddr >> 12) & 0x3FF)
        if not mem.valid(pte_addr, 4):
            return None
        gpte = U32.unpack_from(mem.ram, pte_addr)[0]
        if not gpte & PTE_PRESENT or (write and not gpte & PTE_RW):
            return None
        pa = (gpte & ~0xFFF) | (vaddr & 0xFFF)
        if not mem.valid(pa & ~0xFFF, PAGE_SIZE - 1):
            return None
        new = gpte | PTE_ACCESSED | (PTE_DIRTY if write else 0)
        if mark and new != gpte:
            U32.pack_into(mem.ram, pte_addr, new)
        return pa

    def opcode_at(self, vaddr: int) -> Opcode | None:
        """The legacy prefixes and the first opcode byte of the instruction at `vaddr`, read
        byte by byte (no further than that opcode) without setting Accessed; None if it is
        unmapped or longer than an instruction can be.  The one x86 decoder of the Host."""
        prefixes: set[int] = set()
        for i in range(MAX_INSTRUCTION_LENGTH):
            pa = self.translate((vaddr + i) & 0xFFFFFFFF, mark=False)
            if pa is None:
                return None
            byte = self.memory.ram[pa]
            if byte not in LEGACY_PREFIXES:
                return Opcode(frozenset(prefixes), byte, i)
            prefixes.add(byte)
        return None

    def write_virtual(self, vaddr: int, data: bytes) -> None:
        """Store `data` at guest-virtual `vaddr` (kill "Bad address" if it is not writable)."""
        done = 0
        while done < len(data):
            va = (vaddr + done) & 0xFFFFFFFF
            pa = self.translate(va, write=True)
            if pa is None:
                raise GuestKilled(BadVirtualAddress(va))
            chunk = min(len(data) - done, PAGE_SIZE - (va & 0xFFF))
            self.memory.ram[pa:pa + chunk] = data[done:done + chunk]
            done += chunk

    def read_virtual(self, vaddr: int, length: int) -> bytes:
        """Bytes at guest-virtual `vaddr` (kill "Bad address" if unmapped)."""
        out = bytearray()
        while len(out) < length:
            va = (vaddr + len(out)) & 0xFFFFFFFF
            pa = self.translate(va)
            if pa is None:
                raise GuestKilled(BadVirtualAddress(va))
            chunk = min(length - len(out), PAGE_SIZE - (va & 0xFFF))
            out += self.memory.ram[pa:pa + chunk]
        return bytes(out)

    def pin_stack(self, esp1: int, pages: int) -> None:
        """Make sure the kernel stack below `esp1` is mapped and writable (ABI §5.5)."""
        for n in range(pages):
            va = (esp1 - 1 - n * PAGE_SIZE) & 0xFFFFFFFF
            if self.translate(va, write=True) is None:
                raise GuestKilled(BadStackPage(va))
            self.demand_fault(va, PF_WRITE)


def map_kernel_half(ram: bytearray, pgdir: int, mem: int) -> None:
    """2.6.29 on, the Host built the guest's first page tables (`PageTables.HOST`): the
    Launcher's identity map of `mem` bytes at directory `pgdir`, and the same PTE pages again
    from ``PAGE_OFFSET`` (what a 2.6.24 guest's lguest_entry copied itself), stopping short
    of the switcher's entry."""
    first = PAGE_OFFSET >> 22
    count = min(-(-mem // (PAGE_SIZE * 1024)), SWITCHER_PDE - first)
    ram[pgdir + 4 * first:pgdir + 4 * (first + count)] = ram[pgdir:pgdir + 4 * count]
