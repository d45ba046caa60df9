"""Kernel images: reading a vmlinux or bzImage into the segments the Launcher will copy.

lguest's Launcher accepts two kinds of kernel file (ABI §1.1):

* an ELF ``vmlinux``: each ``PT_LOAD`` segment's file bytes go to its *physical* address
  (``p_paddr``, not ``p_vaddr``: the guest starts with paging mapping virtual = physical), the
  rest of ``p_memsz`` is zero, and the entry point ``e_entry`` is the physical address of
  ``startup_32``;
* a ``bzImage``: everything after the real-mode setup sectors is copied to 0x100000 and entered
  at the setup header's ``code32_start``.  The image's own setup header is not used for the
  zero page; the Launcher builds that itself (`bootparams`).

Reading is kept apart from placing.  `load_kernel` only reads and checks the file and returns
its segments as bytes; `lgemu.launcher.launch` decides whether they fit in the guest's RAM.
Everything a user can get wrong here — a missing file, a directory, a text file, a kernel for
another machine, a file cut short — becomes one `UserError` sentence that names the file.
pyelftools parses the headers, but every bound it would trust (header table size, segment file
ranges) is checked here first, and anything it still raises is turned into a `UserError` too,
so a hostile image can never escape as a traceback.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..abi import KERNEL_LOAD_ADDR, SETUP_HEADER_MAGIC, SETUP_HEADER_MAGIC_OFFSET, U32
from ..elf import (
    ELF32_EHDR_SIZE,
    ELF32_PHDR_SIZE,
    ELF64_EHDR_SIZE,
    ELF_MAGIC,
    ELFCLASS32,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFDATA2MSB,
    PT_LOAD,
    program_headers,
)
from ..errors import UserError
from ..machine.memory import MAX_RAM
from ..record import Record
from .guestcheck import check_lguest_guest, is_pae

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

MAX_PHNUM = 64  # a vmlinux has a handful; anything near this is not a kernel
ET_EXEC, EM_386 = 2, 3  # e_type and e_machine of an i386 executable (the ELF specification)

# bzImage setup header (Documentation/i386/boot.txt), as file offsets.
BZ_SETUP_SECTS = 0x1F1
BZ_CODE32_START = 0x214
BZ_HEADER_END = BZ_CODE32_START + 4
BZ_DEFAULT_SETUP_SECTS = 4  # "if setup_sects is 0, the real value is 4"
SECTOR_SIZE = 512

# What we read before deciding which kind of image this is: enough for either header.
_HEAD_SIZE = max(ELF64_EHDR_SIZE, BZ_HEADER_END)
_MAGIC_END = SETUP_HEADER_MAGIC_OFFSET + len(SETUP_HEADER_MAGIC)

# Readable names for the machines people are most likely to feed us by mistake; pyelftools
# names the rest.
_MACHINE_NAMES = {"EM_386": "i386", "EM_X86_64": "x86-64"}


class Segment(Record, frozen=True):
    """`data` goes to guest-physical `paddr`; the rest of `memsz` bytes is zero (BSS)."""

    paddr: int
    data: bytes
    memsz: int

    @property
    def end(self) -> int:
        """First guest-physical address after the segment's memory image."""
        return self.paddr + self.memsz


class KernelImage(Record, frozen=True):
    """A checked kernel file: what to copy where, and where to start."""

    path: Path
    kind: str  # "elf" | "bzImage"
    segments: tuple[Segment, ...]
    entry: int
    pae: bool = False  # a PAE kernel, seen in its symbols (`guestcheck.is_pae`)

    @property
    def end(self) -> int:
        """First guest-physical address above every segment."""
        return max(segment.end for segment in self.segments)


def _fail(path: Path, message: str) -> UserError:
    return UserError(f"{path}: {message}")


_OS_ERROR_TEXT = {errno.ENOENT: "no such file", errno.EACCES: "permission denied",
                  errno.EISDIR: "is a directory"}


@contextmanager
def file_errors(path: Path) -> Iterator[None]:
    """Report any `OSError` while touching the user's file `path` as a one-line `UserError`."""
    try:
        yield
    except OSError as exc:
        raise _fail(path, _OS_ERROR_TEXT.get(exc.errno or 0, exc.strerror or str(exc))) from None


def open_regular_file(path: Path) -> BinaryIO:
    """Open a user-named file for reading, or raise a `UserError` saying why it can't be.

    Only regular files are accepted: a directory, a FIFO or a device such as /dev/zero is
    always a mistake for a kernel or initrd (and reading some of them would never end).
    """
    with file_errors(path):
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise _fail(path, "is a directory")
        if not stat.S_ISREG(mode):
            raise _fail(path, "not a regular file")
        return path.open("rb")


def _read_exactly(path: Path, f: BinaryIO, offset: int, length: int) -> bytes:
    """`length` bytes at `offset`; the file was measured before, so a short read means it
    shrank underneath us."""
    with file_errors(path):
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise _fail(path, f"file changed while reading (short read at {offset:#x})")
    return data


def _check_in_ram(path: Path, paddr: int, memsz: int) -> None:
    """Refuse a segment no RAM size lgemu accepts could hold (this also rules out wrapping)."""
    if paddr + memsz > MAX_RAM:
        raise _fail(
            path,
            f"segment [{paddr:#x}, {paddr + memsz:#x}) does not fit in {MAX_RAM >> 20} MiB "
            "of RAM (the most lgemu supports)",
        )


def load_kernel(path: str | Path, check_guest: bool = True) -> KernelImage:
    """Read and check a vmlinux (ELF) or bzImage; raise `UserError` for anything else,
    including (unless `check_guest` is False, for tools that only describe the file) a Linux
    kernel that is certainly not an lguest guest (`guestcheck`)."""
    path = Path(path)
    with open_regular_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = _read_exactly(path, f, 0, min(size, _HEAD_SIZE))
        # Like lguest's Launcher: ELF magic wins; otherwise it has to be a bzImage.
        kernel = None
        if head.startswith(ELF_MAGIC):
            kernel = _load_elf(path, f, size, head)
        elif head[SETUP_HEADER_MAGIC_OFFSET:_MAGIC_END] == SETUP_HEADER_MAGIC:
            kernel = _load_bzimage(path, f, size, head)
        if kernel is not None:
            if check_guest:
                check_lguest_guest(path, f)
            if head.startswith(ELF_MAGIC) and is_pae(f):
                kernel = kernel.replace(pae=True)
            return kernel
    raise _fail(path, "not an ELF kernel or bzImage")


# -- ELF ------------------------------------------------------------------------------------
@contextmanager
def _parsing(path: Path, what: str) -> Iterator[None]:
    """Turn whatever pyelftools raises about `what` into one `UserError` line."""
    from elftools.common.exceptions import ELFError

    try:
        yield
    except (ELFError, struct.error, ValueError, OSError) as exc:
        raise _fail(path, f"malformed ELF {what} ({exc})") from None


def _machine_name(elf: ELFFile) -> str:
    machine = elf["e_machine"]
    if machine in _MACHINE_NAMES:
        return _MACHINE_NAMES[machine]
    arch = elf.get_machine_arch()
    if arch != "<unknown>":
        return arch
    return machine if isinstance(machine, str) else f"machine {machine}"  # "EM_NONE", "machine 7"


def _check_elf_header(path: Path, elf: ELFFile, size: int) -> None:
    """The Launcher's "Malformed elf header" test, one sentence per way to fail it."""
    if elf.elfclass == 64:
        if elf["e_machine"] == "EM_X86_64":
            raise _fail(path, "64-bit ELF (x86-64): lgemu runs 32-bit lguest guests")
        raise _fail(path, f"64-bit ELF for {_machine_name(elf)}, not i386")
    if elf["e_machine"] != "EM_386":
        raise _fail(path, f"ELF for {_machine_name(elf)}, not i386")
    if not elf.little_endian:
        raise _fail(path, "big-endian ELF, not i386")
    e_type = elf["e_type"]
    if e_type != "ET_EXEC":
        label = e_type if isinstance(e_type, str) else f"e_type {e_type:#x}"
        raise _fail(path, f"not an executable ({label})")
    phentsize, phnum, phoff = elf["e_phentsize"], elf["e_phnum"], elf["e_phoff"]
    if phentsize != ELF32_PHDR_SIZE:
        raise _fail(path, f"bad program header size {phentsize} (expected {ELF32_PHDR_SIZE})")
    if phnum == 0:
        raise _fail(path, "no program headers")
    if phnum > MAX_PHNUM:
        raise _fail(path, f"{phnum} program headers (lgemu accepts at most {MAX_PHNUM})")
    table_end = phoff + phnum * ELF32_PHDR_SIZE
    if table_end > size:
        first_cut = max(0, size - phoff) // ELF32_PHDR_SIZE
        raise _fail(
            path,
            f"truncated ELF (program header {first_cut} of {phnum} ends past the end of the "
            f"{size:#x}-byte file)",
        )


def _plain_i386_executable(head: bytes, size: int) -> bool:
    """Does the file header pass every test of `_check_elf_header` (read directly)?"""
    if len(head) < ELF32_EHDR_SIZE or head[4] != ELFCLASS32 or head[5] != ELFDATA2LSB:
        return False
    e_type, e_machine = struct.unpack_from("<HH", head, 16)
    (phoff,) = struct.unpack_from("<I", head, 28)
    phentsize, phnum = struct.unpack_from("<HH", head, 42)
    return (e_type == ET_EXEC and e_machine == EM_386 and phentsize == ELF32_PHDR_SIZE
            and 0 < phnum <= MAX_PHNUM and phoff + phnum * ELF32_PHDR_SIZE <= size)


def _load_elf(path: Path, f: BinaryIO, size: int, head: bytes) -> KernelImage:
    elf_class, data_encoding = head[4:5], head[5:6]
    if elf_class not in (bytes([ELFCLASS32]), bytes([ELFCLASS64])):
        raise _fail(path, f"invalid ELF class {elf_class.hex() or 'missing'}")
    if data_encoding not in (bytes([ELFDATA2LSB]), bytes([ELFDATA2MSB])):
        raise _fail(path, f"invalid ELF data encoding {data_encoding.hex() or 'missing'}")
    header_size = ELF32_EHDR_SIZE if elf_class[0] == ELFCLASS32 else ELF64_EHDR_SIZE
    if size < header_size:
        raise _fail(path, f"truncated ELF (file header is {size} of {header_size} bytes)")

    if not _plain_i386_executable(head, size):
        # Something is wrong: pyelftools (imported only now, it costs a fifth of start-up)
        # names the machine and type for the message.
        from elftools.elf.elffile import ELFFile

        with _parsing(path, "header"):
            elf = ELFFile(f)
        _check_elf_header(path, elf, size)

    # The bare program headers (`lgemu.elf`), now that the table is known to be in the file:
    # pyelftools' Segment objects for PT_DYNAMIC or PT_NOTE would go on to read sections and
    # notes, which a kernel loader has no business trusting.
    headers = program_headers(f, size)
    if headers is None:
        raise _fail(path, "malformed ELF program headers")
    entry, phdrs = headers
    segments = []
    for index, phdr in enumerate(phdrs):
        if phdr.type != PT_LOAD:
            continue
        offset, filesz, memsz, paddr = phdr.offset, phdr.filesz, phdr.memsz, phdr.paddr
        if filesz > memsz:
            raise _fail(
                path, f"segment {index}: p_filesz {filesz:#x} is larger than p_memsz {memsz:#x}"
            )
        if offset + filesz > size:
            raise _fail(
                path,
                f"truncated ELF (segment {index} needs file bytes [{offset:#x}, "
                f"{offset + filesz:#x}) of a {size:#x}-byte file)",
            )
        if memsz == 0:
            continue  # occupies no memory; nothing to place
        _check_in_ram(path, paddr, memsz)
        segments.append(Segment(paddr, _read_exactly(path, f, offset, filesz), memsz))
    if not segments:
        raise _fail(path, "ELF has no loadable segments")
    return KernelImage(path, "elf", tuple(segments), entry)


# -- bzImage --------------------------------------------------------------------------------
def _load_bzimage(path: Path, f: BinaryIO, size: int, head: bytes) -> KernelImage:
    if size < BZ_HEADER_END:
        raise _fail(path, f"truncated bzImage (setup header is {size} of {BZ_HEADER_END} bytes)")
    setup_sects = head[BZ_SETUP_SECTS] or BZ_DEFAULT_SETUP_SECTS
    setup_size = (setup_sects + 1) * SECTOR_SIZE
    if size <= setup_size:
        raise _fail(
            path,
            f"truncated bzImage ({setup_sects} setup sectors need {setup_size} bytes before "
            f"the kernel, the file has {size})",
        )
    payload_size = size - setup_size
    _check_in_ram(path, KERNEL_LOAD_ADDR, payload_size)
    payload = _read_exactly(path, f, setup_size, payload_size)
    (code32_start,) = U32.unpack_from(head, BZ_CODE32_START)
    segment = Segment(KERNEL_LOAD_ADDR, payload, payload_size)
    return KernelImage(path, "bzImage", (segment,), code32_start)
