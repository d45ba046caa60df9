"""Is this kernel an lguest guest?  Asked of the file, before anything runs.

A kernel built without ``CONFIG_LGUEST_GUEST`` still loads (it is an i386 ELF like any other)
but dies at its first privileged instruction in ring 1, and the user sees a kill reason about
a trap instead of the real problem: the wrong kernel.  So the Launcher looks first, where it
can tell for sure, and says what is missing in one line.

What a 2.6.24 guest kernel has, and what can be seen in the file:

* ``lguest_init`` — arch/x86/lguest/boot.c, built only with ``CONFIG_LGUEST_GUEST``.
* ``lguest_entry`` — arch/x86/lguest/i386_head.S.  Every ``CONFIG_PARAVIRT`` kernel has a
  symbol of that name, but without lguest it is head_32.S's *weak* placeholder, which is
  ``ud2a``: only a strong definition counts.
* No PAE: 2.6.24's ``LGUEST_GUEST`` depends on ``!X86_PAE``.  A PAE kernel (PMDs not folded
  into the page directory) has mm/memory.c's ``__pmd_alloc``; a 2-level one never does.
* A bzImage cannot be asked for symbols, but its setup header says which boot protocol it
  speaks: 2.07 (Linux 2.6.24) introduced ``hardware_subarch``, the paravirt entry lguest's
  zero page relies on (§1.2).  Older kernels cannot be lguest guests.

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

Section and program headers are only read here, never trusted: every offset and size is
checked against the file, and a table that does not make sense means "cannot tell", not an
error.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..abi import SETUP_HEADER_MAGIC, SETUP_HEADER_MAGIC_OFFSET
from ..errors import UserError

ELF32_SHDR = struct.Struct("<IIIIIIIIII")  # name type flags addr offset size link info align
ELF32_SYM = struct.Struct("<IIIBBH")  # name value size info other shndx
ELF32_PHDR = struct.Struct("<IIIIIIII")  # type offset vaddr paddr filesz memsz flags align
MAX_PHNUM = 64  # as the loader: a vmlinux has a handful
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_TLS = 1, 2, 3, 7
PT_GNU_EH_FRAME, PT_GNU_STACK, PT_GNU_RELRO = 0x6474E550, 0x6474E551, 0x6474E552
# Program headers only a user program has: the first two in any image, the rest where no
# symbol table speaks for the image (a default link adds them; kernels' scripts never do).
USER_PROGRAM_HEADERS = {PT_INTERP: "PT_INTERP: it names a dynamic loader",
                        PT_DYNAMIC: "PT_DYNAMIC: it is dynamically linked"}
LINKED_AS_A_PROGRAM = {PT_TLS: "PT_TLS", PT_GNU_EH_FRAME: "PT_GNU_EH_FRAME",
                       PT_GNU_STACK: "PT_GNU_STACK", PT_GNU_RELRO: "PT_GNU_RELRO"}
SHT_SYMTAB = 2
SHN_UNDEF = 0
STB_WEAK = 2
BZ_VERSION_OFFSET = 0x206
BOOT_PROTOCOL_PARAVIRT = 0x0207  # hardware_subarch appeared with boot protocol 2.07
# Anything larger is not a vmlinux symbol table (2.6.24's are a few MiB at most).
MAX_TABLE_BYTES = 256 << 20
REMEDY = "build the kernel with CONFIG_LGUEST_GUEST=y"
LINUX_MARKERS = ("start_kernel", "linux_banner")
LGUEST_NAMES = ("lguest_init", "lguest_entry", "lguest_data")
NAMES = (*LGUEST_NAMES, "__pmd_alloc", *LINUX_MARKERS)


def _read(f: BinaryIO, size: int, offset: int, length: int) -> bytes | None:
    """`length` bytes at `offset`, or None if that is not inside the file."""
    if offset < 0 or length < 0 or offset + length > size or length > MAX_TABLE_BYTES:
        return None
    f.seek(offset)
    data = f.read(length)
    return data if len(data) == length else None


@dataclass(frozen=True)
class ProgramHeader:
    """One ELF32 program header, as read (not trusted: offsets are checked where used)."""

    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


def program_headers(f: BinaryIO) -> list[ProgramHeader]:
    """The program headers of a 32-bit little-endian ELF; [] if there are none we can read."""
    size = os.fstat(f.fileno()).st_size
    header = _read(f, size, 0, 52)
    if header is None or header[:4] != b"\x7fELF" or header[4] != 1 or header[5] != 1:
        return []
    phoff, = struct.unpack_from("<I", header, 28)
    phentsize, phnum = struct.unpack_from("<HH", header, 42)
    if phentsize != ELF32_PHDR.size or not 0 < phnum <= MAX_PHNUM:
        return []
    table = _read(f, size, phoff, phnum * ELF32_PHDR.size)
    if table is None:
        return []
    return [ProgramHeader(*fields[:6]) for fields in ELF32_PHDR.iter_unpack(table)]


def symbol_value(f: BinaryIO, name: str) -> int | None:
    """The value of the defined symbol `name` in the ELF `f`, or None (no symbol table, no
    such symbol, or tables that make no sense)."""
    size = os.fstat(f.fileno()).st_size
    try:
        tables = _symbol_table(f, size)
        if tables is None:
            return None
        symtab, strtab = tables
        offsets = _name_offsets(strtab, name)
        for st_name, value, _size, _info, _other, shndx in ELF32_SYM.iter_unpack(symtab):
            if st_name in offsets and shndx != SHN_UNDEF:
                return value
    except (struct.error, IndexError, ValueError, OSError):
        pass
    return None


def _name_offsets(strtab: bytes, name: str) -> set[int]:
    """Where `name` starts in a string table (the linker may share a string's tail with a
    longer name, so there can be several)."""
    needle = name.encode() + b"\0"
    found = set()
    at = strtab.find(needle)
    while at >= 0:
        found.add(at)
        at = strtab.find(needle, at + 1)
    return found


def _symbol_table(f: BinaryIO, size: int) -> tuple[bytes, bytes] | None:
    """(symtab, strtab) of a 32-bit little-endian ELF, or None if it has none we can read."""
    header = _read(f, size, 0, 52)
    if header is None or header[:4] != b"\x7fELF" or header[4] != 1 or header[5] != 1:
        return None
    shoff, = struct.unpack_from("<I", header, 32)
    shentsize, shnum = struct.unpack_from("<HH", header, 46)
    if shoff == 0 or shnum == 0 or shentsize != ELF32_SHDR.size:
        return None
    table = _read(f, size, shoff, shnum * ELF32_SHDR.size)
    if table is None:
        return None
    sections = [ELF32_SHDR.unpack_from(table, i * ELF32_SHDR.size) for i in range(shnum)]
    for _name, sh_type, _flags, _addr, offset, length, link, _info, _align, _es in sections:
        if sh_type != SHT_SYMTAB or not 0 < link < shnum:
            continue
        symtab = _read(f, size, offset, length - length % ELF32_SYM.size)
        strtab = _read(f, size, sections[link][4], sections[link][5])
        if symtab is not None and strtab is not None:
            return symtab, strtab
    return None


def _defined(symtab: bytes, strtab: bytes) -> dict[str, bool]:
    """Which of NAMES are defined: name → True if strong, False if only weak."""
    wanted = {at: name for name in NAMES for at in _name_offsets(strtab, name)}
    found: dict[str, bool] = {}
    if not wanted:
        return found
    for st_name, _value, _size, info, _other, shndx in ELF32_SYM.iter_unpack(symtab):
        name = wanted.get(st_name)
        if name is not None and shndx != SHN_UNDEF:
            found[name] = found.get(name, False) or info >> 4 != STB_WEAK
    return found


def _elf_problem(f: BinaryIO, size: int) -> str | None:
    types = {header.type for header in program_headers(f)}
    for pt_type, why in USER_PROGRAM_HEADERS.items():
        if pt_type in types:
            return f"a user-space program ({why}), not a kernel"
    tables = _symbol_table(f, size)
    if tables is None:  # stripped: only a program's link says anything
        linked = [name for pt_type, name in LINKED_AS_A_PROGRAM.items() if pt_type in types]
        if linked:
            return (f"no symbols, and linked as a user-space program ({', '.join(linked)}, "
                    "which a kernel's linker script never asks for)")
        return None
    defined = _defined(*tables)
    if not any(marker in defined for marker in LINUX_MARKERS):
        if not any(name in defined for name in LGUEST_NAMES):
            return f"it has none of the lguest symbols {', '.join(LGUEST_NAMES)}"
        return None  # not Linux, but it speaks lguest: a hand-made guest
    if "__pmd_alloc" in defined:
        return ("a PAE kernel (it has __pmd_alloc); 2.6.24's CONFIG_LGUEST_GUEST needs "
                "CONFIG_X86_PAE off (choose CONFIG_HIGHMEM4G or CONFIG_NOHIGHMEM)")
    if "lguest_init" not in defined:
        return f"no lguest_init symbol ({REMEDY})"
    if "lguest_entry" not in defined:
        return f"no lguest_entry symbol ({REMEDY})"
    if not defined["lguest_entry"]:
        return f"lguest_entry is only head_32.S's weak placeholder ({REMEDY})"
    return None


def _bzimage_problem(f: BinaryIO, size: int) -> str | None:
    header = _read(f, size, 0, BZ_VERSION_OFFSET + 2)
    if header is None:
        return None
    magic = header[SETUP_HEADER_MAGIC_OFFSET:SETUP_HEADER_MAGIC_OFFSET + len(SETUP_HEADER_MAGIC)]
    if magic != SETUP_HEADER_MAGIC:
        return None
    version, = struct.unpack_from("<H", header, BZ_VERSION_OFFSET)
    if version < BOOT_PROTOCOL_PARAVIRT:
        return (f"bzImage speaks boot protocol {version >> 8}.{version & 0xFF:02d}; lguest "
                "guests need 2.07 (Linux 2.6.24) or later, which added the paravirt entry")
    return None


def guest_problem(f: BinaryIO) -> str | None:
    """Why the kernel in `f` (a vmlinux or bzImage) cannot be an lguest guest, or None when
    it can be or we cannot tell.  Never raises for the file's contents."""
    size = os.fstat(f.fileno()).st_size
    head = _read(f, size, 0, 4)
    try:
        if head == b"\x7fELF":
            return _elf_problem(f, size)
        return _bzimage_problem(f, size)
    except (struct.error, IndexError, ValueError):
        return None  # a table that makes no sense: we cannot tell


def check_lguest_guest(path: Path, f: BinaryIO) -> None:
    """Raise a one-line `UserError` if the kernel at `path` (open as `f`) is certainly not an
    lguest guest (see the module docstring for what is looked at)."""
    try:
        problem = guest_problem(f)
    except OSError:
        return  # the loader already read the file; a read error now is not our question
    if problem is not None:
        raise UserError(f"{path}: not an lguest guest: {problem}")
