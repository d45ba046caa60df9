"""Tiny kernel images for tests: i386 ELF executables and bzImages, built in pure Python.

Tests need kernels that are exactly as good or as broken as they say.  `ElfImage` lays out an
ELF file from a list of `ElfSegment`s — file header, program header table right after it, then
each segment's bytes — and every header field can be overridden afterwards, so the same builder
makes a well-formed guest or a hostile one: another machine, another class (32/64-bit) or byte
order, a lying ``e_phentsize``/``e_phnum``/``e_phoff``, a segment whose ``p_filesz`` or
``p_offset`` points past the end, or a file cut short (`ElfImage.build` with `truncate`).

The *declared* header values never change where things are written: the program header table
always uses the natural entry size for the class, and segment data always follows it.  That
keeps offsets predictable (`phdr_offset`, `data_offset`) for tests that cut or patch the bytes.

`bzimage` builds the other accepted format: setup sectors with a "HdrS" header, then the
protected-mode payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
EV_CURRENT = 1

ET_NONE, ET_REL, ET_EXEC, ET_DYN, ET_CORE = 0, 1, 2, 3, 4
EM_386 = 3
EM_MIPS = 8
EM_PPC = 20
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183
PT_NULL, PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 0, 1, 2, 3, 4
PF_X, PF_W, PF_R = 1, 2, 4

# (file header, program header) layouts per class, without the byte-order prefix.
_EHDR = {32: "16sHHIIIIIHHHHHH", 64: "16sHHIQQQIHHHHHH"}
_PHDR = {32: "IIIIIIII", 64: "IIQQQQQQ"}
_SHDR_SIZE = {32: 40, 64: 64}


@dataclass
class ElfSegment:
    """One program header and the bytes it describes.

    `memsz`, `vaddr`, `filesz` and `offset` default to what `data` implies (memsz = filesz =
    len(data), vaddr = paddr, offset = where the builder puts the data); set them to lie.
    """

    paddr: int
    data: bytes = b""
    memsz: int | None = None
    vaddr: int | None = None
    type: int = PT_LOAD
    flags: int = PF_R | PF_W | PF_X
    align: int = 0x1000
    filesz: int | None = None
    offset: int | None = None


@dataclass
class ElfImage:
    """An ELF executable to build; defaults make a valid 32-bit i386 ET_EXEC kernel."""

    entry: int
    segments: list[ElfSegment] = field(default_factory=list)
    machine: int = EM_386
    type: int = ET_EXEC
    elfclass: int = 32  # 32 or 64: selects the layouts
    little_endian: bool = True
    ident_class: int | None = None  # e_ident[EI_CLASS] override (default from elfclass)
    ident_data: int | None = None  # e_ident[EI_DATA] override (default from little_endian)
    version: int = EV_CURRENT
    phentsize: int | None = None  # declared e_phentsize (default: the natural size)
    phnum: int | None = None  # declared e_phnum (default: len(segments))
    phoff: int | None = None  # declared e_phoff (default: right after the file header)
    data_align: int = 16  # where segment data starts, relative to the file

    @property
    def _order(self) -> str:
        return "<" if self.little_endian else ">"

    @property
    def ehdr_size(self) -> int:
        """Natural file-header size for the class (52 or 64)."""
        return struct.calcsize("<" + _EHDR[self.elfclass])

    @property
    def phdr_size(self) -> int:
        """Natural program-header size for the class (32 or 56)."""
        return struct.calcsize("<" + _PHDR[self.elfclass])

    def phdr_offset(self, index: int) -> int:
        """File offset where program header `index` is written."""
        return self.ehdr_size + index * self.phdr_size

    def data_offset(self, index: int) -> int:
        """File offset where segment `index`'s data is written."""
        offset = self.phdr_offset(len(self.segments))
        for i, segment in enumerate(self.segments):
            offset = -(-offset // self.data_align) * self.data_align
            if i == index:
                return offset
            offset += len(segment.data)
        raise IndexError(index)

    def _phdr(self, index: int, segment: ElfSegment) -> bytes:
        offset = segment.offset if segment.offset is not None else self.data_offset(index)
        filesz = segment.filesz if segment.filesz is not None else len(segment.data)
        memsz = segment.memsz if segment.memsz is not None else len(segment.data)
        vaddr = segment.vaddr if segment.vaddr is not None else segment.paddr
        fields = (segment.type, offset, vaddr, segment.paddr, filesz, memsz, segment.flags,
                  segment.align)
        if self.elfclass == 64:  # Elf64_Phdr moves p_flags up to second place
            fields = (segment.type, segment.flags, offset, vaddr, segment.paddr, filesz, memsz,
                      segment.align)
        return struct.pack(self._order + _PHDR[self.elfclass], *fields)

    def _ehdr(self) -> bytes:
        ident = bytes([
            0x7F, *b"ELF",
            self.ident_class if self.ident_class is not None else self.elfclass // 32,
            self.ident_data if self.ident_data is not None
            else (ELFDATA2LSB if self.little_endian else ELFDATA2MSB),
            EV_CURRENT,
        ]).ljust(16, b"\0")
        return struct.pack(
            self._order + _EHDR[self.elfclass], ident, self.type, self.machine, self.version,
            self.entry,
            self.phoff if self.phoff is not None else self.ehdr_size,
            0,  # e_shoff: no section headers
            0,  # e_flags
            self.ehdr_size,
            self.phentsize if self.phentsize is not None else self.phdr_size,
            self.phnum if self.phnum is not None else len(self.segments),
            _SHDR_SIZE[self.elfclass], 0, 0,  # e_shentsize, e_shnum, e_shstrndx
        )

    def build(self, truncate: int | None = None) -> bytes:
        """The file's bytes, optionally cut to the first `truncate` bytes."""
        out = bytearray(self._ehdr())
        for index, segment in enumerate(self.segments):
            out += self._phdr(index, segment)
        for index, segment in enumerate(self.segments):
            out += bytes(self.data_offset(index) - len(out)) + segment.data
        return bytes(out[:truncate])

    def write(self, path: Path, truncate: int | None = None) -> Path:
        """Build into `path` and return it."""
        path.write_bytes(self.build(truncate))
        return path

    def but(self, **changes: Any) -> ElfImage:
        """A copy with some fields changed: ``image.but(machine=EM_ARM)``."""
        return replace(self, **changes)


def elf_image(segments: list[tuple[int, bytes, int]], entry: int, **knobs: Any) -> bytes:
    """Shorthand: a valid (unless `knobs` say otherwise) ELF from (paddr, data, memsz) triples."""
    return ElfImage(entry, [ElfSegment(p, d, m) for p, d, m in segments], **knobs).build()


# -- bzImage --------------------------------------------------------------------------------
SECTOR = 512


def bzimage(payload: bytes, *, setup_sects: int = 4, code32_start: int = 0x100000,
            magic: bytes = b"HdrS", version: int = 0x0207) -> bytes:
    """A bzImage: (setup_sects + 1) sectors of setup (0 counts as 4) with the header fields a
    loader reads, then `payload`, the protected-mode kernel."""
    setup = bytearray((max(setup_sects, 0) or 4) * SECTOR + SECTOR)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xAA"
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = 0x01  # LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, code32_start)
    return bytes(setup) + payload
