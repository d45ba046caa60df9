"""The Launcher: everything lguest's user-space half did before the guest's first instruction.

In Linux 2.6.24 the Launcher (Documentation/lguest/lguest.c) mapped the guest's memory, copied
the kernel in, faked a bootloader's zero page, built an identity page table, described the
devices, and only then told the Host module where to start.  `launch` does the same, in the
same order, into a `GuestMemory`:

1. the initrd at the very top of RAM (``mem - I``, I its size rounded up to a page) — or,
   where lgemu departs from lguest, at the top of the guest's low memory when the top of RAM
   is beyond it (`lowmem`: a 2.6.24 guest with about 892 MiB or more would drop the initrd);
2. the page directory and its PTE pages just below the initrd (`pagetables`);
3. the kernel's segments at their physical addresses (`loader`);
4. the zero page at 0 and the command line at 0x1000 (`bootparams`);
5. the device page at ``mem`` and the vrings above it (`devicepage`), which fixes
   ``pfn_limit``, the end of everything the guest may touch.

Guest-physical layout afterwards (ABI §1)::

    0x0000 zero page | 0x1000 command line | 0x100000 kernel ... free RAM ...
    | PTE pages | page directory | initrd | mem: device page | vrings | pfn_limit

A kernel segment may live anywhere in ``[0x2000, page tables)``; a segment or initrd that would
collide with the zero page, the command line, the page tables or each other is refused with a
`UserError` before anything is copied (the guest never runs after a `UserError`, so the
device checks that come last need no such care).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

from ..abi import (
    CMDLINE_ADDR,
    COMMAND_LINE_SIZE,
    KERNEL_LOAD_ADDR,
    MIB,
    PAGE_OFFSET,
    PAGE_SIZE,
    ZERO_PAGE_ADDR,
)
from ..abi_eras import ERA_2_6_24, Era, PageTables
from ..errors import UserError
from ..machine.memory import MAX_RAM, GuestMemory
from ..record import Record
from .bootparams import build_zero_page, command_line_bytes
from .devicepage import (
    DeviceLayout,
    DevicePage,
    DeviceSpec,
    QueueLayout,
    block_spec,
    config_field,
    console_spec,
    descriptor_format,
    lay_out_devices,
    net_spec,
)
from .loader import KernelImage, Segment, file_errors, load_kernel, open_regular_file
from .lowmem import low_memory
from .pagetables import (
    Ram,
    build_initial_pae_page_tables,
    build_initial_page_tables,
    page_tables_base,
)

__all__ = [
    "LOW_MEMORY_END",
    "MIN_RAM",
    "BootInfo",
    "DeviceLayout",
    "DevicePage",
    "DeviceSpec",
    "KernelImage",
    "QueueLayout",
    "Segment",
    "block_spec",
    "build_initial_page_tables",
    "build_zero_page",
    "check_memory_size",
    "command_line_bytes",
    "config_field",
    "console_spec",
    "descriptor_format",
    "genuine_lguest_entry",
    "launch",
    "lay_out_devices",
    "load_kernel",
    "net_spec",
]

MIN_RAM = 8 * MIB
# The zero page and the COMMAND_LINE_SIZE bytes the guest copies from CMDLINE_ADDR, rounded up
# to a page: kernel segments must start at or above this.
LOW_MEMORY_END = CMDLINE_ADDR + -(-COMMAND_LINE_SIZE // PAGE_SIZE) * PAGE_SIZE
_ZERO_CHUNK = bytes(MIB)


class BootInfo(Record):
    """What the Host needs to start the guest (lguest's LHREQ_INITIALIZE), and where things went."""

    entry: int  # initial EIP, a physical address
    pgdir: int  # initial CR3
    pfn_limit: int
    initrd_addr: int  # 0 without an initrd
    initrd_size: int  # page-rounded, as the zero page says
    device_page: DevicePage
    kernel: KernelImage
    initrd_where: str = ""  # why the initrd is where it is, for -v
    era: Era = ERA_2_6_24  # the guest ABI the Launcher laid out for; the Host and devices follow it
    ram_where: str = ""  # why the guest got less RAM than asked for (lowmem.py), for -v
    pae: bool = False  # a PAE kernel: three-level page tables (ABI §7.6)
    page_offset: int = PAGE_OFFSET  # LHREQ_INITIALIZE's page_offset: 2.6.23's kernel_address


def check_memory_size(mib: int) -> int:
    """Bytes of guest RAM for a size given in MiB, or a `UserError` if lgemu can't run it."""
    if mib <= 0:
        raise UserError(f"memory size must be a positive number of MiB, not {mib}")
    if mib * MIB < MIN_RAM:
        raise UserError(f"too little memory: {mib} MiB (lgemu needs at least "
                        f"{MIN_RAM // MIB} MiB)")
    if mib * MIB > MAX_RAM:
        raise UserError(f"too much memory: lgemu supports up to {MAX_RAM // MIB} MiB")
    return mib * MIB


def _size_text(size: int) -> str:
    return f"{size // MIB} MiB" if size % MIB == 0 else f"{size:#x} bytes"


def _check_kernel_fits(kernel: KernelImage, mem: int) -> None:
    """Every segment must lie in [LOW_MEMORY_END, page tables) even without an initrd, and
    no two may overlap (placing one would zero the other's bytes)."""
    ceiling = page_tables_base(mem, mem, kernel.pae)
    placed = sorted(kernel.segments, key=lambda seg: seg.paddr)
    for first, second in itertools.pairwise(placed):
        if second.paddr < first.end:
            raise UserError(f"{kernel.path}: segments [{first.paddr:#x}, {first.end:#x}) and "
                            f"[{second.paddr:#x}, {second.end:#x}) overlap")
    for segment in kernel.segments:
        where = f"segment [{segment.paddr:#x}, {segment.end:#x})"
        if segment.paddr < LOW_MEMORY_END:
            raise UserError(f"{kernel.path}: {where} overlaps the zero page and command line "
                            f"below {LOW_MEMORY_END:#x}")
        if segment.end > ceiling:
            raise UserError(f"{kernel.path}: {where} does not fit in {_size_text(mem)} of RAM")


def _initrd_size(path: Path, size: int, mem: int, top: int, kernel: KernelImage) -> int:
    """The page-rounded size I, after checking that the initrd, ending at `top`, leaves room
    for the kernel and the page tables."""
    if size == 0:
        raise UserError(f"{path}: initrd is empty")
    rounded = -(-size // PAGE_SIZE) * PAGE_SIZE
    if rounded >= top or page_tables_base(mem, top - rounded, kernel.pae) < kernel.end:
        below = (f"{_size_text(mem)} of RAM" if top == mem else
                 f"the guest's low memory ({top:#x} bytes of {_size_text(mem)} of RAM)")
        raise UserError(f"{path}: initrd of {size} bytes does not fit in {below} together "
                        f"with the kernel (which ends at {kernel.end:#x}) and the initial "
                        "page tables")
    return rounded


def _initrd_top(mem: int, kernel: KernelImage, command_line: bytes) -> tuple[int, str]:
    """Where the initrd ends: the top of RAM if the guest can reach it, else the top of its
    low memory; and a sentence saying which, for -v."""
    low = low_memory(kernel, command_line)
    if mem <= low.limit:
        return mem, "at the top of RAM"
    return low.limit, (f"at the top of low memory {low.limit:#x} ({low.how}): the guest "
                       f"cannot reach an initrd at the top of {_size_text(mem)} of RAM")


def _load_initrd(memory: GuestMemory, path: Path, kernel: KernelImage,
                 command_line: bytes) -> tuple[int, int, str]:
    """Copy the initrd below the top `_initrd_top` picks; returns its address, its
    page-rounded size and where it went."""
    mem = memory.ram_size
    with open_regular_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        top, where = _initrd_top(mem, kernel, command_line)
        rounded = _initrd_size(path, size, mem, top, kernel)
        start = top - rounded
        with memoryview(memory.ram) as ram, ram[start:start + size] as target:
            with file_errors(path):
                got = f.readinto(target)
        if got != size:
            raise UserError(f"{path}: file changed while reading (got {got} of {size} bytes)")
    _zero(memory.ram, start + size, top)  # the rounding slack
    return start, rounded, where


def _zero(ram: Ram, start: int, end: int) -> None:
    """Zero guest memory [start, end) without building one huge bytes object."""
    for chunk in range(start, end, len(_ZERO_CHUNK)):
        stop = min(end, chunk + len(_ZERO_CHUNK))
        ram[chunk:stop] = _ZERO_CHUNK[:stop - chunk]


def _place_segment(ram: Ram, segment: Segment) -> None:
    """File bytes at p_paddr, then zeros to p_memsz (fresh memory is zero, but say so)."""
    data_end = segment.paddr + len(segment.data)
    ram[segment.paddr:data_end] = segment.data
    _zero(ram, data_end, segment.end)


GENUINE_LGUEST = b"GenuineLguest"


def genuine_lguest_entry(kernel: KernelImage) -> int:
    """Where a 2.6.23 guest starts: its image has no hardware_subarch, so the Launcher searched
    it for the "GenuineLguest" marker (lguest_asm.S) and entered at the byte after it, at its
    ``PAGE_OFFSET`` address (that code sets its stack and jumps relative to its own address,
    so it must run where it was linked).  Its %esi, 0, is the boot header's physical address.
    Raises `UserError` when the image has no marker."""
    for segment in sorted(kernel.segments, key=lambda seg: seg.paddr):
        at = segment.data.find(GENUINE_LGUEST)
        if at >= 0:
            return PAGE_OFFSET + segment.paddr + at + len(GENUINE_LGUEST)
    raise UserError(f"{kernel.path}: a 2.6.23 guest needs the \"GenuineLguest\" marker "
                    "before its entry point, and this image has none")


def unpacked_2_6_23(kernel: KernelImage) -> KernelImage:
    """A 2.6.23 bzImage as its Launcher loaded it: no boot code of its own runs (it has no
    paravirt entry), so the compressed kernel is unpacked here and placed at 1 MiB, where it
    was linked.  Its BSS is not in the image; the guest clears it itself.  Raises
    `UserError` when nothing in the payload unpacks."""
    from .era import unpack_payload  # era reads images; it never lays one out
    data = unpack_payload(kernel.segments[0].data) if kernel.segments else None
    if not data:
        raise UserError(f"{kernel.path}: no compressed kernel in this 2.6.23 bzImage unpacks")
    return KernelImage(kernel.path, kernel.kind, (Segment(KERNEL_LOAD_ADDR, data, len(data)),),
                       kernel.entry)


def launch(memory: GuestMemory, kernel: KernelImage, cmdline: str | Sequence[str],
           initrd: Path | None, devices: list[DeviceSpec], era: Era = ERA_2_6_24) -> BootInfo:
    """Lay out a fresh guest in `memory` the way lguest's Launcher does; see the module doc.

    `cmdline` is the kernel arguments (see `command_line_bytes`); `devices` are in creation
    order, the console last; `era` (chosen once, by `lgemu.launcher.era.boot_era`) decides
    the device descriptors' shape.  Sets ``memory.limit`` to the end of the last vring.  Raises
    `UserError` for anything that doesn't fit.
    """
    mem = memory.ram_size
    command_line = command_line_bytes(cmdline, era.cmdline_trailing_space)
    if era.page_tables is PageTables.LAUNCHER_LINEAR and kernel.kind == "bzImage":
        kernel = unpacked_2_6_23(kernel)
    _check_kernel_fits(kernel, mem)
    initrd_addr = initrd_size = 0
    initrd_where = ""
    if initrd is not None:
        initrd_addr, initrd_size, initrd_where = _load_initrd(memory, Path(initrd), kernel,
                                                              command_line)
    build = build_initial_pae_page_tables if kernel.pae else build_initial_page_tables
    pgdir = build(memory.ram, mem, initrd_addr or mem)
    for segment in kernel.segments:
        _place_segment(memory.ram, segment)
    memory.ram[ZERO_PAGE_ADDR:ZERO_PAGE_ADDR + PAGE_SIZE] = build_zero_page(
        mem, initrd_addr, initrd_size)
    memory.ram[CMDLINE_ADDR:CMDLINE_ADDR + len(command_line)] = command_line
    device_page = lay_out_devices(memory.ram, mem, devices, descriptor_format(era))
    memory.limit = device_page.pfn_limit * PAGE_SIZE
    entry = kernel.entry
    if era.page_tables is PageTables.LAUNCHER_LINEAR:
        entry = genuine_lguest_entry(kernel)
    return BootInfo(entry, pgdir, device_page.pfn_limit, initrd_addr, initrd_size,
                    device_page, kernel, initrd_where, era, pae=kernel.pae)
