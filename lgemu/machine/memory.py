"""Guest-physical memory, and the host-only pages behind the switcher address.

Unicorn's physical address space is laid out exactly like the guest's (ABI §1): RAM from 0, then
the device page and vrings.  Both are one anonymous `mmap` handed to Unicorn with
`mem_map_ptr`, so the Host reads and writes guest memory at memory speed with `struct`, and
Unicorn sees every write at once.

A second, small mapping at `HOST_PHYS` holds what lguest kept in its switcher pages: the
GDT, the TSS, the page table behind PDE 1023 (so both are reachable at 0xFFC00000 in every
guest address space) and the shadow page directories the CPU really runs on.  Unicorn maps it
read-only: a guest that points a page-table entry at it can read it but never change it.
"""

from __future__ import annotations

import ctypes
import mmap

from ..abi import DEVICE_PAGES, PAGE_SIZE, SWITCHER_ADDR, U32
from ..errors import GuestKilled
from ..kills import BadGuestAddress

HOST_PHYS = 0xF0000000  # far above any RAM size lgemu accepts
HOST_SWITCHER_PT = 0  # page indices inside the host region
HOST_GDT = 1
HOST_UNTIL = 2  # emu_start's `until` must be mapped in every address space (Unicorn §9.1)
HOST_TSS = 3
HOST_SHADOW_PGDIRS = 4  # first of SHADOW_SLOTS shadow page directories
SHADOW_SLOTS = 4  # lguest cached four directories
# PAE guests (ABI §7.6) run on a shadow top level (four 32-byte tables in one page, one per
# slot) whose entries point at shadow middle directories (four per slot); the switcher page
# table for them holds 64-bit entries.
HOST_PAE_SWITCHER_PT = HOST_SHADOW_PGDIRS + SHADOW_SLOTS
HOST_PAE_PDPTS = HOST_PAE_SWITCHER_PT + 1
HOST_PAE_PMDS = HOST_PAE_PDPTS + 1  # slot s's middle directory i is page HOST_PAE_PMDS + 4s + i
HOST_PAGES = HOST_PAE_PMDS + SHADOW_SLOTS * 4
MAX_RAM = 2048 << 20  # leaves room below HOST_PHYS and below PAGE_OFFSET's lowmem


def host_page_phys(index: int) -> int:
    """Physical address of host page `index`."""
    return HOST_PHYS + index * PAGE_SIZE


def switcher_linear(index: int) -> int:
    """Where host page `index` appears in every guest address space (PDE 1023 maps them 1:1)."""
    return SWITCHER_ADDR + index * PAGE_SIZE


class GuestMemory:
    """Guest RAM plus device pages, with lguest's bounds rule for every guest-supplied range."""

    def __init__(self, ram_size: int) -> None:
        self.ram_size = ram_size
        self.size = ram_size + DEVICE_PAGES * PAGE_SIZE
        self.ram = mmap.mmap(-1, self.size)
        self.host = mmap.mmap(-1, HOST_PAGES * PAGE_SIZE)
        # Until the Launcher has laid out the devices, everything mapped is valid.
        self.limit = self.size
        self._pins = [ctypes.c_char.from_buffer(self.ram), ctypes.c_char.from_buffer(self.host)]

    @property
    def ram_address(self) -> int:
        """Host address of guest-physical 0 (for Unicorn's mem_map_ptr)."""
        return ctypes.addressof(self._pins[0])

    @property
    def host_address(self) -> int:
        """Host address of the host-only region."""
        return ctypes.addressof(self._pins[1])

    def close(self) -> None:
        """Release the mappings (Unicorn must be gone first)."""
        self._pins.clear()
        self.ram.close()
        self.host.close()

    # -- lguest's rule for guest-supplied ranges (ABI §1.4) ----------------------------------
    def valid(self, pa: int, length: int) -> bool:
        """True when [pa, pa+length) is guest memory: ends below pfn_limit and does not wrap."""
        return 0 <= pa and 0 <= length and pa + length < self.limit and pa + length <= 0xFFFFFFFF

    def check(self, pa: int, length: int, what: str = "read") -> None:
        """Kill the guest ("bad read address …") unless [pa, pa+length) is valid."""
        if not self.valid(pa, length):
            raise GuestKilled(BadGuestAddress(what, pa, length))

    def read(self, pa: int, length: int) -> bytes:
        """Bytes of guest memory at a guest-supplied address (checked)."""
        self.check(pa, length, "read")
        return self.ram[pa:pa + length]

    def write(self, pa: int, data: bytes) -> None:
        """Write guest memory at a guest-supplied address (checked)."""
        self.check(pa, len(data), "write")
        self.ram[pa:pa + len(data)] = data

    def u32(self, pa: int) -> int:
        """A 32-bit word at a guest-supplied address (checked)."""
        self.check(pa, 4, "read")
        return U32.unpack_from(self.ram, pa)[0]

    def set_u32(self, pa: int, value: int) -> None:
        """Store a 32-bit word at a guest-supplied address (checked)."""
        self.check(pa, 4, "write")
        U32.pack_into(self.ram, pa, value & 0xFFFFFFFF)

    def cstring(self, pa: int, maxlen: int) -> bytes:
        """The NUL-terminated string at `pa`, at most `maxlen` bytes, never past the limit."""
        if not 0 <= pa < self.limit:
            raise GuestKilled(BadGuestAddress("read", pa, 1))
        end = min(pa + maxlen, self.limit)
        nul = self.ram.find(b"\0", pa, end)
        return self.ram[pa:nul if nul >= 0 else end]
