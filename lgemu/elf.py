"""ELF32 as lgemu reads it: the structures, defined once, and the one reader of them.

Three parts of lgemu look into kernel files: the Launcher (`launcher.loader`, program headers),
its guest check (`launcher.guestcheck`, a few symbols) and the debugger's symbols
(`debug.symbols`, segments and every symbol).  They all read through here: plain `struct`
over bounded reads, because a vmlinux has tens of thousands of symbols and pyelftools takes a
second for them, and because nothing in a header is trusted — an offset or size outside the
file means "no table", never an error.  (pyelftools still names machines in the Launcher's
refusals and decodes DWARF for the debugger.)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
ELF32_EHDR_SIZE = 52
ELF64_EHDR_SIZE = 64
ELF32_PHDR = struct.Struct("<IIIIIIII")  # type offset vaddr paddr filesz memsz flags align
ELF32_PHDR_SIZE = ELF32_PHDR.size
ELF32_SHDR = struct.Struct("<IIIIIIIIII")  # name type flags addr offset size link info align
ELF32_SYM = struct.Struct("<IIIBBH")  # name value size info other shndx
E_ENTRY = 24  # offsets in the ELF32 file header
E_PHOFF = 28
E_SHOFF = 32
E_PHENTSIZE = 42
E_SHENTSIZE = 46
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_TLS = 1, 2, 3, 7
PT_GNU_EH_FRAME, PT_GNU_STACK, PT_GNU_RELRO = 0x6474E550, 0x6474E551, 0x6474E552
SHT_SYMTAB = 2
SHT_DYNSYM = 11
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00  # SHN_ABS, SHN_COMMON and friends start here
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 2
# Anything larger is not a vmlinux symbol table (2.6.24's are a few MiB at most).
MAX_TABLE_BYTES = 256 << 20


def read_range(f: BinaryIO, size: int, offset: int, length: int) -> bytes | None:
    """`length` bytes at `offset` of the `size`-byte file `f`, or None if that is not inside
    the file (or too large to be a table)."""
    if offset < 0 or length < 0 or offset + length > size or length > MAX_TABLE_BYTES:
        return None
    f.seek(offset)
    data = f.read(length)
    return data if len(data) == length else None


def _elf32_header(f: BinaryIO, size: int) -> bytes | None:
    """The file header, if `f` is a 32-bit little-endian ELF."""
    header = read_range(f, size, 0, ELF32_EHDR_SIZE)
    if header is None or header[:4] != ELF_MAGIC or header[4] != ELFCLASS32 \
            or header[5] != ELFDATA2LSB:
        return None
    return header


class ProgramHeader(NamedTuple):
    """One ELF32 program header."""

    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int
    align: int


def program_headers(f: BinaryIO, size: int) -> tuple[int, list[ProgramHeader]] | None:
    """(entry point, program headers) of a 32-bit little-endian ELF, or None if its header or
    its program header table is not inside the file."""
    header = _elf32_header(f, size)
    if header is None:
        return None
    entry, phoff = struct.unpack_from("<II", header, E_ENTRY)
    phentsize, phnum = struct.unpack_from("<HH", header, E_PHENTSIZE)
    if phentsize != ELF32_PHDR.size:
        return None
    table = read_range(f, size, phoff, phnum * ELF32_PHDR.size)
    if table is None:
        return None
    return entry, [ProgramHeader(*fields) for fields in ELF32_PHDR.iter_unpack(table)]


def symbol_table(f: BinaryIO, size: int) -> tuple[bytes, bytes] | None:
    """(symbols, their string table) of a 32-bit little-endian ELF: its `.symtab`, else its
    `.dynsym`; None if it has neither that can be read.  Raises only `struct.error` or
    `IndexError` for a header that makes no sense."""
    header = _elf32_header(f, size)
    if header is None:
        return None
    shoff, = struct.unpack_from("<I", header, E_SHOFF)
    shentsize, shnum = struct.unpack_from("<HH", header, E_SHENTSIZE)
    if shoff == 0 or shnum == 0 or shentsize != ELF32_SHDR.size:
        return None
    table = read_range(f, size, shoff, shnum * ELF32_SHDR.size)
    if table is None:
        return None
    sections = [ELF32_SHDR.unpack_from(table, i * ELF32_SHDR.size) for i in range(shnum)]
    for wanted in (SHT_SYMTAB, SHT_DYNSYM):
        for _name, sh_type, _flags, _addr, offset, length, link, _info, _align, _es in sections:
            if sh_type != wanted or not 0 < link < shnum:
                continue
            symtab = read_range(f, size, offset, length - length % ELF32_SYM.size)
            strtab = read_range(f, size, sections[link][4], sections[link][5])
            if symtab is not None and strtab is not None:
                return symtab, strtab
    return None


def iter_symbols(symtab: bytes) -> Iterator[tuple[int, int, int, int, int, int]]:
    """Every entry of a symbol table: (name offset, value, size, info, other, shndx)."""
    return ELF32_SYM.iter_unpack(symtab[:len(symtab) - len(symtab) % ELF32_SYM.size])


def name_at(strtab: bytes, offset: int) -> bytes:
    """The NUL-terminated name at `offset` of a string table (to its end if unterminated)."""
    end = strtab.find(b"\0", offset)
    return strtab[offset:end if end >= 0 else len(strtab)]


def name_offsets(strtab: bytes, name: str) -> set[int]:
    """Where `name` starts in a string table (the linker may share a string's tail with a
    longer name, so there can be several)."""
    needle = name.encode() + b"\0"
    found = set()
    at = strtab.find(needle)
    while at >= 0:
        found.add(at)
        at = strtab.find(needle, at + 1)
    return found


def symbols_named(symtab: bytes, strtab: bytes, names: Iterable[str]) -> Iterator[
        tuple[str, tuple[int, int, int, int, int, int]]]:
    """The entries of a symbol table named one of `names`, in table order, each with its name:
    (name, (name offset, value, size, info, other, shndx)).

    The same entries `iter_symbols` would give, found without unpacking the others: a boot
    asks after a few dozen names, several times, and a vmlinux has tens of thousands of
    symbols (issue 12: start-up).  Each entry's first field, its name's offset, is copied
    out into one column of 4-byte cells, and the column searched for each name's offsets."""
    size = ELF32_SYM.size
    entries = memoryview(symtab)[:len(symtab) - len(symtab) % size]
    column = entries.cast("I")[::size // 4].tobytes()  # the raw bytes: byte order is kept
    found: list[tuple[int, str]] = []
    for name in dict.fromkeys(names):
        for at in name_offsets(strtab, name):
            cell = at.to_bytes(4, "little")
            pos = column.find(cell)
            while pos >= 0:
                if pos % 4 == 0:  # a cell of its own, not the end of one and start of the next
                    found.append((pos // 4, name))
                pos = column.find(cell, pos + 1)
    for index, name in sorted(found):
        yield name, ELF32_SYM.unpack_from(symtab, index * size)


def symbol_value(f: BinaryIO, size: int, name: str) -> int | None:
    """The value of the defined symbol `name` in the ELF `f`, or None (no symbol table, no
    such symbol, or tables that make no sense)."""
    try:
        tables = symbol_table(f, size)
        if tables is None:
            return None
        for _name, (_st_name, value, _size, _info, _other, shndx) in symbols_named(*tables,
                                                                                  [name]):
            if shndx != SHN_UNDEF:
                return value
    except (struct.error, IndexError, ValueError):
        pass
    return None
