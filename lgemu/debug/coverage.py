"""Code coverage as a drcov file (`--coverage FILE`), for Lighthouse, Dragon Dance or bncov.

drcov is DynamoRIO's coverage log, the format those tools load.  Version 2 is text up to the
block table, then binary::

    DRCOV VERSION: 2
    DRCOV FLAVOR: lgemu
    Module Table: version 2, count 2
    Columns: id, base, end, entry, path
     0, 0xc0100000, 0xc0118300, 0xc0100000, /path/to/vmlinux
     1, 0x00000000, 0xffffffff, 0x00000000, [outside the kernel image]
    BB Table: 812 bbs
    <812 × struct { uint32 start; uint16 size; uint16 module id }, little-endian>

``start`` is an offset from the module's base.  The kernel is module 0, at the addresses it
was linked for, so a disassembler that loaded the vmlinux lines up with it; code the CPU ran
at a physical alias (the boot path before paging, ABI §2) is counted at its link address.
Everything else the guest ran (user programs, code copied at run time) goes to module 1,
which spans the whole address space.  Blocks are Unicorn's translation blocks, recorded once
each by a block hook into a Python set (`Cpu.record_blocks`: a machine-code stub that calls no
Python for a block seen before, where the host allows, else a Python callback; the two give
the same set); the table is sorted, so two runs write the same bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from .symbols import Symbols

if TYPE_CHECKING:
    from contextlib import ExitStack

    from ..config import BootConfig
    from ..host.guest import Guest

BB_ENTRY = struct.Struct("<IHH")
OTHER_MODULE = "[outside the kernel image]"
MAX_BLOCK = 0xFFFF  # a size must fit the entry's uint16


def _one_line(path: Path) -> str:
    """A module path as drcov readers split it: one line, no ", " inside."""
    return str(path).replace("\n", "?").replace(", ", ",")


class Coverage:
    """Records the blocks one run executes and writes them as drcov."""

    def __init__(self, guest: Guest, path: Path) -> None:
        self.guest = guest
        self.path = path
        self.blocks: set[tuple[int, int]] = set()
        self._hook: int | None = None
        # Only the segments are needed (link addresses), not the names.
        self.symbols = Symbols.load(Path(guest.boot.kernel.path), names=False)
        segments = self.symbols.segments
        if segments:
            self.base = min(s.vaddr for s in segments)
            self.end = max(s.vaddr + s.memsz for s in segments)
        else:  # a bzImage: the image where the Launcher put it
            self.base = min(s.paddr for s in guest.boot.kernel.segments)
            self.end = guest.boot.kernel.end
        try:  # fail before the run, not after it
            self._file = open(path, "wb")
        except OSError as e:
            raise UserError(f"{path}: cannot write coverage ({e.strerror or e})") from None

    def attach(self) -> None:
        """Start recording (before the run)."""
        # Sizes beyond MAX_BLOCK are dropped in `entries`.
        self._hook = self.guest.cpu.record_blocks(self.blocks)

    def close(self) -> None:
        """Stop recording and write the file (after the run, whatever the outcome)."""
        if self._hook is not None:
            self.guest.cpu.remove_hook(self._hook)
            self._hook = None
        try:
            with self._file as f:
                f.write(self.render())
        except OSError as e:
            raise UserError(f"{self.path}: cannot write coverage ({e.strerror or e})") \
                from None

    def entries(self) -> list[tuple[int, int, int]]:
        """(offset, size, module id) for every block, sorted."""
        out = set()
        for address, size in self.blocks:
            if not 0 < size <= MAX_BLOCK:  # Unicorn's placeholder: the block never finished
                continue
            link = self.symbols.link_address(address) if self.symbols.segments else None
            if link is None and self.base <= address < self.end:
                link = address
            if link is not None and self.base <= link < self.end:
                out.add((link - self.base, size, 0))
            else:
                out.add((address, size, 1))
        return sorted(out, key=lambda e: (e[2], e[0], e[1]))

    def render(self) -> bytes:
        """The whole drcov file."""
        entries = self.entries()
        entry = self.symbols.link_address(self.guest.boot.entry) or self.guest.boot.entry
        head = ("DRCOV VERSION: 2\n"
                "DRCOV FLAVOR: lgemu\n"
                "Module Table: version 2, count 2\n"
                "Columns: id, base, end, entry, path\n"
                f" 0, {self.base:#010x}, {self.end:#010x}, {entry:#010x}, "
                f"{_one_line(Path(self.guest.boot.kernel.path).resolve())}\n"
                f" 1, {0:#010x}, {0xFFFFFFFF:#010x}, {0:#010x}, {OTHER_MODULE}\n"
                f"BB Table: {len(entries)} bbs\n")
        return head.encode() + b"".join(BB_ENTRY.pack(*e) for e in entries)


def attach_coverage(stack: ExitStack, guest: Guest, config: BootConfig) -> None:
    """`--coverage FILE`: record for the duration of `stack`, write the file at its end."""
    if config.coverage is None:
        return
    coverage = Coverage(guest, config.coverage)
    coverage.attach()
    stack.callback(coverage.close)
