"""Low memory: how much of guest RAM a Linux guest maps, and so how high an initrd may sit.

A 32-bit Linux kernel maps physical memory at ``PAGE_OFFSET`` only up to its low-memory limit,
``MAXMEM``: the 4 GiB address space above ``PAGE_OFFSET``, less ``__VMALLOC_RESERVE`` (the
vmalloc area and the fixmaps above it).  2.6.24's setup code refuses an initrd that ends above
that limit even in a HIGHMEM kernel ("initrd extends beyond end of memory ... disabling
initrd"), and lguest's guest grows the reserve by the ``reserve_mem`` the Host keeps at the
top (``reserve_top_address``).  lguest's Launcher always put the initrd at the top of RAM, so
from about 892 MiB of RAM up a 2.6.24 guest lost its initrd.  lgemu puts it at the top of low
memory instead when the top of RAM is out of reach (see `lgemu.launcher.launch`).

The limit is read from the kernel file where it can be:

* ``PAGE_OFFSET`` is where the vmlinux is linked relative to where it is loaded: the first
  ``PT_LOAD``'s ``p_vaddr - p_paddr``.  An image linked where it loads (the hand-made test
  guests) has no low-memory limit.
* ``__VMALLOC_RESERVE`` is a variable in the kernel's data; its initial value is in the file.

A kernel built without HIGHMEM uses no RAM above that limit at all: it ends its memory map
there ("only 892MB will be used"), and so looks for lguest's device page (at ``max_pfn``) at
the limit, not at the top of the RAM the Launcher gave it.  `ram_the_kernel_uses` tells the
Launcher to give such a kernel only the RAM it will use, so the device page is where the guest
looks.  A kernel is taken to have HIGHMEM when its symbols define ``kmap_high``; without
symbols (a bzImage, a stripped vmlinux) lgemu cannot tell and gives all the RAM asked for.

A bzImage (compressed, no symbols) or a vmlinux without the symbol gets the defaults every
i386 kernel from 2.6.24 to 4.x is built with unless patched: ``PAGE_OFFSET`` 0xC0000000 (the
highest the kernel's configuration offers, so the lowest limit) and a 128 MiB reserve.  The
command line can move the limit down: ``mem=`` ends RAM early, ``vmalloc=`` sets the
reserve (2.6.24 takes it as is; later kernels add 8 MiB, which is assumed here to be safe).
"""

from __future__ import annotations

import os
import re
from typing import BinaryIO

from ..abi import MIB, PAGE_OFFSET, PAGE_SIZE, RESERVE_MEM
from ..elf import PT_LOAD, ProgramHeader, program_headers, symbol_table, symbol_value
from ..errors import UserError
from ..record import Record
from .loader import KernelImage, open_regular_file

ADDRESS_SPACE = 1 << 32
DEFAULT_VMALLOC_RESERVE = 128 * MIB  # i386's __VMALLOC_RESERVE initialiser
VMALLOC_OFFSET = 8 * MIB  # the gap later kernels add to a vmalloc= size
# memparse(): a C integer (decimal, 0x hex, 0 octal) and an optional binary suffix.
_MEMPARSE = re.compile(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([KkMmGg]?)$")
_SHIFTS = {"": 0, "k": 10, "m": 20, "g": 30}


class LowMemory(Record, frozen=True):
    """The guest's low-memory limit (a guest-physical address), and how it was found."""

    limit: int
    how: str


def memparse(text: str) -> int | None:
    """A size as the kernel's ``memparse`` reads it ("512M", "0x2000000"), or None."""
    match = _MEMPARSE.match(text)
    if match is None:
        return None
    digits = match[1]
    base = 16 if digits[:2].lower() == "0x" else 8 if digits.startswith("0") else 10
    return int(digits, base) << _SHIFTS[match[2].lower()]


def _parameters(cmdline: bytes, name: str) -> list[int]:
    """The sizes given as ``name=SIZE`` on the kernel command line."""
    prefix = name + "="
    words = cmdline.decode("latin-1").split()
    sizes = [memparse(word[len(prefix):]) for word in words if word.startswith(prefix)]
    return [size for size in sizes if size is not None]


def _headers(f: BinaryIO) -> list[ProgramHeader]:
    """The program headers of the ELF `f`; none if they cannot be read."""
    headers = program_headers(f, os.fstat(f.fileno()).st_size)
    return headers[1] if headers is not None else []


def _page_offset(kernel: KernelImage) -> int | None:
    """``p_vaddr - p_paddr`` of the vmlinux's first loadable segment; None if it can't say."""
    if kernel.kind != "elf":
        return None
    with open_regular_file(kernel.path) as f:
        loads = [h for h in _headers(f) if h.type == PT_LOAD and h.memsz]
    if not loads or loads[0].vaddr < loads[0].paddr:
        return None
    return loads[0].vaddr - loads[0].paddr


def _vmalloc_reserve(kernel: KernelImage) -> int | None:
    """The initial value of the kernel's ``__VMALLOC_RESERVE``, read from its file bytes."""
    if kernel.kind != "elf":
        return None
    with open_regular_file(kernel.path) as f:
        address = symbol_value(f, os.fstat(f.fileno()).st_size, "__VMALLOC_RESERVE")
        if address is None:
            return None
        for header in _headers(f):
            if header.type == PT_LOAD and header.vaddr <= address <= \
                    header.vaddr + header.filesz - 4:
                f.seek(header.offset + address - header.vaddr)
                data = f.read(4)
                return int.from_bytes(data, "little") if len(data) == 4 else None
    return None


def low_memory(kernel: KernelImage, cmdline: bytes) -> LowMemory:
    """Where `kernel`, started with `cmdline`, stops mapping RAM; see the module doc.

    The limit is page-aligned and may lie above any RAM lgemu offers (no constraint).  A file
    that can no longer be read gives the defaults, as a bzImage does.
    """
    try:
        page_offset, reserve = _page_offset(kernel), _vmalloc_reserve(kernel)
    except (OSError, ValueError, UserError):  # gone or changed since it was loaded
        page_offset = reserve = None
    if page_offset == 0:
        return LowMemory(ADDRESS_SPACE, "linked where it loads: no low-memory limit")
    notes = []
    if page_offset is None:
        page_offset = PAGE_OFFSET
        notes.append(f"PAGE_OFFSET {page_offset:#x} assumed")
    else:
        notes.append(f"PAGE_OFFSET {page_offset:#x}")
    if reserve is None:
        reserve = DEFAULT_VMALLOC_RESERVE
        notes.append(f"vmalloc reserve {reserve // MIB} MiB assumed")
    else:
        notes.append(f"__VMALLOC_RESERVE {reserve:#x}")
    for size in _parameters(cmdline, "vmalloc"):
        reserve = max(reserve, size + VMALLOC_OFFSET)
        notes.append(f"vmalloc={size:#x}")
    notes.append(f"{RESERVE_MEM // MIB} MiB for the Host")
    limit = max(0, ADDRESS_SPACE - page_offset - reserve - RESERVE_MEM)
    for size in _parameters(cmdline, "mem"):
        limit = min(limit, size)
        notes.append(f"mem={size:#x}")
    return LowMemory(limit // PAGE_SIZE * PAGE_SIZE, ", ".join(notes))


def _has_highmem(kernel: KernelImage) -> bool | None:
    """Was `kernel` built with HIGHMEM (it defines ``kmap_high``)?  None: no symbols to say."""
    if kernel.kind != "elf":
        return None
    try:
        with open_regular_file(kernel.path) as f:
            size = os.fstat(f.fileno()).st_size
            if symbol_table(f, size) is None:
                return None
            return symbol_value(f, size, "kmap_high") is not None
    except (OSError, ValueError, UserError, IndexError):
        return None


def ram_the_kernel_uses(kernel: KernelImage, cmdline: bytes, mem: int) -> tuple[int, str]:
    """How much of `mem` bytes of RAM `kernel` will use, and a note for -v when that is less:
    all of it, unless the kernel has no HIGHMEM and RAM reaches past its low-memory limit."""
    low = low_memory(kernel, cmdline)
    if mem <= low.limit or _has_highmem(kernel) is not False:
        return mem, ""
    return low.limit, (f"{low.limit // MIB} MiB of the {mem // MIB} MiB asked for: the kernel "
                       f"has no HIGHMEM and maps RAM only up to {low.limit:#x} ({low.how}), "
                       "where it looks for the device page")
