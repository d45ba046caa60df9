"""Is this kernel an lguest guest?  Asked of the file, before anything runs.

A kernel built without ``CONFIG_LGUEST_GUEST`` still loads (it is an i386 ELF like any other)
but dies at its first privileged instruction in ring 1, and the user sees a kill reason about
a trap instead of the real problem: the wrong kernel.  So the Launcher looks first, where it
can tell for sure, and says what is missing in one line.

What a 2.6.24 guest kernel has, and what can be seen in the file:

* ``lguest_init`` — arch/x86/lguest/boot.c, built only with ``CONFIG_LGUEST_GUEST``; and
  ``lguest_data``, the page it registers, from the same file.
* ``lguest_entry`` — arch/x86/lguest/i386_head.S.  Every ``CONFIG_PARAVIRT`` kernel has a
  symbol of that name, but without lguest it is head_32.S's *weak* placeholder, which is
  ``ud2a``: only a strong definition counts.
* Whether it is a PAE kernel (PMDs not folded into the page directory): it has
  mm/memory.c's ``__pmd_alloc``, a 2-level one never does (`is_pae`).  That is not judged
  here but by the era (``lgemu.launcher.era.check_pae``): lguest accepted PAE guests from
  2.6.31, and 2.6.24's ``LGUEST_GUEST`` depends on ``!X86_PAE``.
* A bzImage cannot be asked for symbols, but its setup header says which boot protocol it
  speaks: 2.07 (Linux 2.6.24) introduced ``hardware_subarch``, the paravirt entry lguest's
  zero page relies on (ABI §1.2); 2.6.23, the first lguest, speaks 2.06 and was entered
  after a marker in its unpacked kernel instead.  Older protocols cannot be lguest guests.

An ELF that is not a kernel at all — a user program such as klibc's ``sh`` — would load as
well and die on its first trap.  It is refused when it carries no sign of being an lguest
guest: a program header only user programs have (``PT_INTERP``, ``PT_DYNAMIC``; and, in an
image without symbols, ``PT_TLS`` or the ``PT_GNU_*`` headers a default link adds, which a
kernel's own linker script never asks for), or a symbol table without any of
``lguest_init``, ``lguest_entry`` and ``lguest_data`` (every guest defines ``lguest_data``,
the tiny test guests of tests/guestasm.py included).

When the answer is not certain the check says nothing: a stripped vmlinux (no symbol table,
no user-program header) passes, and so does an image built by hand, such as those of
tests/elfimage.py.

Section headers are read by `lgemu.elf`, never trusted: a table that does not make sense means
"cannot tell", not an error.  `judge` is the verdict itself, also what `lgemu info` says.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from ..abi import SETUP_HEADER_MAGIC, SETUP_HEADER_MAGIC_OFFSET
from ..elf import (
    ELF_MAGIC,
    PT_DYNAMIC,
    PT_GNU_EH_FRAME,
    PT_GNU_RELRO,
    PT_GNU_STACK,
    PT_INTERP,
    PT_TLS,
    SHN_UNDEF,
    STB_WEAK,
    program_headers,
    read_range,
    symbol_table,
    symbols_named,
)
from ..errors import UserError
from ..record import Record

BZ_VERSION_OFFSET = 0x206
BOOT_PROTOCOL_PARAVIRT = 0x0207  # hardware_subarch appeared with boot protocol 2.07
BOOT_PROTOCOL_2_6_23 = 0x0206  # 2.6.22 and 2.6.23 speak 2.06
REMEDY = "build the kernel with CONFIG_LGUEST_GUEST=y"
# Every lguest guest has these (arch/x86/lguest/boot.c and i386_head.S).
LGUEST_SYMBOLS = ("lguest_init", "lguest_entry", "lguest_data")
PAE_MARKER = "__pmd_alloc"
LINUX_MARKERS = ("start_kernel", "linux_banner")
# Program headers only a user program has: the first two in any image, the rest where no
# symbol table speaks for the image (a default link adds them; kernels' scripts never do).
USER_PROGRAM_HEADERS = {PT_INTERP: "PT_INTERP: it names a dynamic loader",
                        PT_DYNAMIC: "PT_DYNAMIC: it is dynamically linked"}
LINKED_AS_A_PROGRAM = {PT_TLS: "PT_TLS", PT_GNU_EH_FRAME: "PT_GNU_EH_FRAME",
                       PT_GNU_STACK: "PT_GNU_STACK", PT_GNU_RELRO: "PT_GNU_RELRO"}
NAMES = (*LGUEST_SYMBOLS, PAE_MARKER, *LINUX_MARKERS)


class Verdict(Record, frozen=True):
    """Is a kernel an lguest guest, judged from which symbols it defines: the one judgment
    the Launcher's refusal and `lgemu info` share."""

    linux: bool  # a Linux kernel at all (else there is nothing to judge)
    missing: tuple[str, ...]  # of LGUEST_SYMBOLS, in that order
    weak_entry: bool  # lguest_entry is only head_32.S's weak placeholder
    pae: bool

    @property
    def is_guest(self) -> bool:
        return not self.missing and not self.weak_entry

    def problem(self) -> str | None:
        """Why it cannot be an lguest guest, the most telling reason first; None if it can."""
        for name in ("lguest_init", "lguest_entry"):
            if name in self.missing:
                return f"no {name} symbol ({REMEDY})"
        if self.weak_entry:
            return f"lguest_entry is only head_32.S's weak placeholder ({REMEDY})"
        if self.missing:
            return f"no {self.missing[0]} symbol ({REMEDY})"
        return None


def judge(defined: Mapping[str, bool]) -> Verdict:
    """The verdict on a kernel that defines the symbols of `defined` (name → True if strong,
    False if only weak; at least those of NAMES it has)."""
    return Verdict(any(marker in defined for marker in LINUX_MARKERS),
                   tuple(name for name in LGUEST_SYMBOLS if name not in defined),
                   defined.get("lguest_entry") is False, PAE_MARKER in defined)


def _defined(symtab: bytes, strtab: bytes) -> dict[str, bool]:
    """Which of NAMES are defined: name → True if strong, False if only weak."""
    found: dict[str, bool] = {}
    for name, (_st_name, _value, _size, info, _other, shndx) in symbols_named(symtab, strtab,
                                                                               NAMES):
        if shndx != SHN_UNDEF:
            found[name] = found.get(name, False) or info >> 4 != STB_WEAK
    return found


def _elf_problem(f: BinaryIO, size: int) -> str | None:
    headers = program_headers(f, size)
    types = {header.type for header in headers[1]} if headers is not None else set()
    for pt_type, why in USER_PROGRAM_HEADERS.items():
        if pt_type in types:
            return f"a user-space program ({why}), not a kernel"
    tables = symbol_table(f, size)
    if tables is None:  # stripped: only a program's link says anything
        linked = [name for pt_type, name in LINKED_AS_A_PROGRAM.items() if pt_type in types]
        if linked:
            return (f"no symbols, and linked as a user-space program ({', '.join(linked)}, "
                    "which a kernel's linker script never asks for)")
        return None
    verdict = judge(_defined(*tables))
    if not verdict.linux:
        if len(verdict.missing) == len(LGUEST_SYMBOLS):
            return f"it has none of the lguest symbols {', '.join(LGUEST_SYMBOLS)}"
        return None  # not Linux, but it speaks lguest: a hand-made guest
    return verdict.problem()


def _bzimage_problem(f: BinaryIO, size: int) -> str | None:
    header = read_range(f, size, 0, BZ_VERSION_OFFSET + 2)
    if header is None:
        return None
    magic = header[SETUP_HEADER_MAGIC_OFFSET:SETUP_HEADER_MAGIC_OFFSET + len(SETUP_HEADER_MAGIC)]
    if magic != SETUP_HEADER_MAGIC:
        return None
    version, = struct.unpack_from("<H", header, BZ_VERSION_OFFSET)
    # 2.06 may be 2.6.23, the first lguest, which its Launcher entered after a marker in the
    # unpacked kernel instead (era detection and `genuine_lguest_entry` decide).
    if version < BOOT_PROTOCOL_2_6_23:
        return (f"bzImage speaks boot protocol {version >> 8}.{version & 0xFF:02d}; lguest "
                "guests need 2.06 (Linux 2.6.23) or later")
    return None


def guest_problem(f: BinaryIO) -> str | None:
    """Why the kernel in `f` (a vmlinux or bzImage) cannot be an lguest guest, or None when
    it can be or we cannot tell.  Never raises for the file's contents."""
    size = os.fstat(f.fileno()).st_size
    head = read_range(f, size, 0, 4)
    try:
        if head == ELF_MAGIC:
            return _elf_problem(f, size)
        return _bzimage_problem(f, size)
    except (struct.error, IndexError, ValueError):
        return None  # a table that makes no sense: we cannot tell


def is_pae(f: BinaryIO) -> bool:
    """True when the ELF kernel in `f` is certainly a PAE one (it defines ``__pmd_alloc``);
    False when it is not or cannot be told (stripped).  Never raises for the contents."""
    try:
        size = os.fstat(f.fileno()).st_size
        tables = symbol_table(f, size)
        return tables is not None and any(shndx != SHN_UNDEF for _name, (*_, shndx)
                                          in symbols_named(*tables, [PAE_MARKER]))
    except (OSError, struct.error, IndexError, ValueError):
        return False


def check_lguest_guest(path: Path, f: BinaryIO) -> None:
    """Raise a one-line `UserError` if the kernel at `path` (open as `f`) is certainly not an
    lguest guest (see the module docstring for what is looked at)."""
    try:
        problem = guest_problem(f)
    except OSError:
        return  # the loader already read the file; a read error now is not our question
    if problem is not None:
        raise UserError(f"{path}: not an lguest guest: {problem}")
