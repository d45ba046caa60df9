"""Which lguest ABI era a kernel image was built for, read from the image alone.

lgemu speaks 2.6.24's lguest ABI; a guest of a later era dies mid-boot under it, with a kill
reason about a trap or a page table that hides the real problem.  So before anything runs
the Launcher asks the file, and `lgemu info` shows the answer with the evidence.  The eras
and what tells them apart are data in `lgemu.abi_eras`; this module only gathers *facts*
from the image and intersects the eras each fact allows:

* **DWARF** (a vmlinux built with debug info): the members and offsets of
  ``struct lguest_data`` and ``struct hcall_args`` in the compilation unit of
  ``lguest_init`` (arch/x86/lguest/boot.c), and ``struct lguest_device_desc`` in the unit of
  ``lguest_devices_init`` (drivers/lguest/lguest_device.c).  .debug_aranges says which unit
  holds an address, so only those units are decoded.
* **Symbols**: 2.6.23's DMA calls, ``lg_config``/``lg_get_features`` (5-byte device
  descriptors), ``lguest_restart`` (SHUTDOWN), ``lg_irq_enable`` (irq_pending),
  ``lguest_noirq_iret`` versus ``lguest_noirq_start``, and the size of ``lguest_data``.
* **Code**, which survives ``strip``: ``lguest_entry`` begins with LGUEST_INIT — ``mov $1,
  %eax``, ``mov $__pa(lguest_data), %edx`` (or ``%ebx``), then ``int $0x1f`` (``cd 1f``) or
  ``vmcall`` (``0f 01 c1``) — which gives the hypercall instruction and register order; what
  follows says who built the page tables (a copy of the Launcher's pgdir starts with
  ``mov pgdir, %esi``; 3.x loads its own with ``mov $4, %eax``, NEW_PGTABLE).  In a bzImage
  the code is compressed: the payload (gzip, bzip2, xz or lzma) is unpacked, at most
  `MAX_UNPACKED` bytes, and scanned the same way.
* **The release**, a *claim* rather than a fact: ``linux_banner`` ("Linux version 3.13.10
  …") in the loaded bytes, or a bzImage's setup header (``kernel_version`` at 0x20E points to
  the string at 0x200 plus its value).  It picks one era among those the facts allow; when
  it disagrees with them, the facts win and the evidence says so.

With no fact and no release — the tests' tiny guests — or when the facts allow 2.6.24 and no
release names another era, the answer is 2.6.24 (`Detection.certain` False when nothing at
all was seen).  Facts that no era satisfies give no era: lgemu cannot tell what the kernel
speaks.

Everything here reads a file a user handed us, which may be hostile: every failure to parse
means "no fact from that source", never an exception.
"""

from __future__ import annotations

import bz2
import lzma
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable
from typing import BinaryIO

from ..abi import SETUP_HEADER_MAGIC, SETUP_HEADER_MAGIC_OFFSET
from ..abi_eras import (
    ERA_2_6_24,
    ERAS,
    Era,
    HcallInsn,
    PageTables,
    era_for_version,
    era_named,
    parse_version,
)
from ..elf import SHN_UNDEF, read_range, symbol_table, symbols_named
from ..errors import UserError
from ..record import Record, factory
from .guestcheck import LGUEST_SYMBOLS, PAE_MARKER
from .loader import KernelImage

# bzImage setup header fields (Documentation/i386/boot.txt), as file offsets.
BZ_VERSION = 0x206
BZ_KERNEL_VERSION = 0x20E  # pointer to the release string, relative to 0x200
BZ_PAYLOAD = 0x248  # payload_offset, payload_length: boot protocol 2.08 and later
BOOT_PROTOCOL_PAYLOAD = 0x0208
MAX_UNPACKED = 64 << 20  # lguest-era kernels unpack to a few MiB (4.4's: under 3)
MAX_RELEASE = 64

LGUEST_INIT_CODE = re.compile(
    rb"\xb8\x01\x00\x00\x00"  # mov $LHCALL_LGUEST_INIT, %eax
    rb"(?P<reg>[\xba\xbb])(?P<addr>.{4})"  # mov $__pa(lguest_data), %edx | %ebx
    rb"(?P<insn>\xcd\x1f|\x0f\x01\xc1)"  # int $0x1f | vmcall
    rb"(?P<next>.{5})", re.DOTALL)
REGISTER = {0xBA: "edx", 0xBB: "ebx"}
INSN = {b"\xcd\x1f": HcallInsn.INT_1F, b"\x0f\x01\xc1": HcallInsn.VMCALL}
NEXT_COPIES_PGDIR = b"\x8b\x35"  # mov lguest_data.pgdir, %esi
NEXT_NEW_PGTABLE = b"\xb8\x04\x00\x00\x00"  # mov $LHCALL_NEW_PGTABLE, %eax
BANNER = re.compile(rb"Linux version (\d+\.\d+[!-~]{0,%d})" % MAX_RELEASE)

DMA_SYMBOLS = ("lguest_send_dma", "lguest_bind_dma", "lguest_unbind_dma")
_ALL = frozenset(ERAS)


def _eras(test: Callable[[Era], bool]) -> frozenset[Era]:
    return frozenset(era for era in ERAS if test(era))


# symbol → (what its presence shows, the eras that have it)
SYMBOL_FACTS: dict[str, tuple[str, frozenset[Era]]] = {
    "lg_find": ("2.6.24's TLV config lookup", _eras(lambda e: e.name == "2.6.24")),
    "lg_config": ("5-byte device descriptors",
                  _eras(lambda e: "num_vq" in e.device_desc)),
    "lg_get_features": ("5-byte device descriptors",
                        _eras(lambda e: "num_vq" in e.device_desc)),
    "lguest_restart": ("the SHUTDOWN hypercall", _eras(lambda e: "SHUTDOWN" in e.hypercalls)),
    "lg_irq_enable": ("irq_pending and SEND_INTERRUPTS",
                      _eras(lambda e: "SEND_INTERRUPTS" in e.hypercalls)),
    "lguest_noirq_iret": ("one noirq_iret address",
                          _eras(lambda e: e.lguest_data is not None
                                and "noirq_iret" in e.lguest_data)),
    "lguest_noirq_start": ("a noirq_start..noirq_end range",
                           _eras(lambda e: e.lguest_data is None
                                 or "noirq_start" in e.lguest_data)),
}
NAMES = (*LGUEST_SYMBOLS, *DMA_SYMBOLS, *SYMBOL_FACTS, "lguest_devices_init")


class Detection(Record, frozen=True):
    """What the image says about its lguest ABI."""

    era: Era | None  # None: the facts fit no era lgemu knows
    certain: bool  # False: nothing in the image spoke; 2.6.24 is assumed
    is_guest: bool | None  # None: cannot tell (no symbols, no lguest_entry code seen)
    release: str | None  # the kernel release the image names, e.g. "3.13.10"
    evidence: tuple[str, ...]
    unknown_because: str = "the image fits no lguest ABI lgemu knows"  # when era is None

    def describe(self) -> str:
        """The era in a few words: ``2.6.31-2.6.33 (…)`` or why there is none."""
        if self.era is None:
            return f"unknown ({self.unknown_because})"
        assumed = "" if self.certain else ", assumed: nothing in the image names an era"
        return f"{self.era.name} ({self.era.summary}{assumed})"


class _Facts(Record):
    """Facts gathered so far: each narrows the eras; `lines` is the evidence."""

    allowed: frozenset[Era] = _ALL
    lines: list[str] = factory(list)
    spoke: bool = False  # some fact was found
    contradiction: bool = False  # ...and together they fit no era

    def add(self, line: str, eras: Iterable[Era]) -> None:
        """A fact, described by `line`, that holds only in `eras`."""
        eras = frozenset(eras)
        narrowed = self.allowed & eras
        if not narrowed:
            self.contradiction = True
            left = ", ".join(era.name for era in sorted(self.allowed, key=_order))
            line += (" — no lguest era has that" if self.allowed == _ALL
                     else f" — but the facts before allow only {left}")
        self.allowed = narrowed
        self.spoke = True
        self.lines.append(line)

    def note(self, line: str) -> None:
        """Evidence that narrows nothing."""
        self.lines.append(line)


def _order(era: Era) -> int:
    return ERAS.index(era)


# -- symbols ------------------------------------------------------------------------------------
def _symbols(f: BinaryIO, size: int) -> dict[str, tuple[int, int]] | None:
    """name → (value, size) for the defined NAMES, or None when there is no symbol table."""
    tables = symbol_table(f, size)
    if tables is None:
        return None
    symtab, strtab = tables
    found: dict[str, tuple[int, int]] = {}
    for name, (_st_name, value, st_size, _info, _other, shndx) in symbols_named(symtab, strtab,
                                                                                 NAMES):
        if shndx != SHN_UNDEF and (name not in found or st_size):
            found[name] = (value, st_size)
    return found


def _symbol_facts(facts: _Facts, symbols: dict[str, tuple[int, int]]) -> None:
    dma = [name for name in DMA_SYMBOLS if name in symbols]
    if dma:
        facts.add(f"symbols: {', '.join(dma)} (the DMA lguest bus)",
                  _eras(lambda e: e.name == "2.6.23"))
    for name, (shows, eras) in SYMBOL_FACTS.items():
        if name in symbols:
            facts.add(f"symbol {name}: {shows}", eras)
    data_size = symbols.get("lguest_data", (0, 0))[1]
    if data_size:
        facts.add(f"symbol lguest_data is {data_size} bytes",
                  _eras(lambda e: e.lguest_data_size == data_size))


# -- DWARF --------------------------------------------------------------------------------------
def _struct_members(cu: object, wanted: set[str]) -> dict[str, tuple[int, dict[str, int]]]:
    """name → (byte size, member → offset) for the structures named in `wanted` that `cu`
    defines (the first complete definition of each)."""
    found: dict[str, tuple[int, dict[str, int]]] = {}
    for die in cu.iter_DIEs():  # type: ignore[attr-defined]
        if die.tag != "DW_TAG_structure_type" or "DW_AT_byte_size" not in die.attributes:
            continue
        name_attr = die.attributes.get("DW_AT_name")
        name = name_attr.value.decode(errors="replace") if name_attr else None
        if name not in wanted or name in found:
            continue
        members = {}
        for child in die.iter_children():
            location = child.attributes.get("DW_AT_data_member_location")
            member = child.attributes.get("DW_AT_name")
            if child.tag == "DW_TAG_member" and member and location:
                if isinstance(location.value, int):
                    members[member.value.decode(errors="replace")] = location.value
        found[name] = (die.attributes["DW_AT_byte_size"].value, members)
        if len(found) == len(wanted):
            break
    return found


def dwarf_structs(f: BinaryIO, symbols: dict[str, tuple[int, int]]) -> dict[
        str, tuple[int, dict[str, int]]]:
    """The lguest structures the image's DWARF describes: ``lguest_data`` and
    ``hcall_args`` from lguest_init's unit, ``lguest_device_desc`` from lguest_devices_init's
    (name → (size, member → offset)).  Empty when there is no usable DWARF."""
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(f)
        if elf.get_section_by_name(".debug_info") is None:
            return {}
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
        aranges = dwarf.get_aranges()
        if aranges is None:
            return {}
        found: dict[str, tuple[int, dict[str, int]]] = {}
        for function, wanted in (("lguest_init", {"lguest_data", "hcall_args"}),
                                 ("lguest_devices_init", {"lguest_device_desc"})):
            if function not in symbols:
                continue
            offset = aranges.cu_offset_at_addr(symbols[function][0])
            if offset is not None:
                found.update(_struct_members(dwarf.get_CU_at(offset), wanted))
        return found
    except Exception:  # pyelftools raises many kinds on malformed DWARF: no fact, then
        return {}


def _dwarf_facts(facts: _Facts, structs: dict[str, tuple[int, dict[str, int]]]) -> None:
    if "lguest_data" in structs:
        size, members = structs["lguest_data"]
        extra = ("irq_pending", "pgdir", "noirq_iret")
        shown = ", ".join(f"{m} at {members[m]}" for m in extra if m in members)
        facts.add(f"DWARF: struct lguest_data is {size} bytes" + (f", {shown}" if shown else ""),
                  _eras(lambda e: e.lguest_data_size == size and dict(e.lguest_data or {})
                        == members))
    if "hcall_args" in structs:
        size, members = structs["hcall_args"]
        order = tuple(sorted(members, key=members.__getitem__))
        facts.add(f"DWARF: struct hcall_args is {size} bytes ({', '.join(order)})",
                  _eras(lambda e: e.hcall_ring == order and e.hcall_args_size == size))
    if "lguest_device_desc" in structs:
        size, members = structs["lguest_device_desc"]
        header = tuple(m for m in sorted(members, key=members.__getitem__) if m != "config")
        facts.add(f"DWARF: struct lguest_device_desc has a {size}-byte header "
                  f"({', '.join(header)})", _eras(lambda e: e.device_desc == header))


# -- code and release strings --------------------------------------------------------------------
def _code_facts(facts: _Facts, blobs: Iterable[bytes]) -> bool:
    """Facts from lguest_entry's first instructions; True if they were found."""
    for blob in blobs:
        match = LGUEST_INIT_CODE.search(blob)
        if match is None:
            continue
        reg, insn = REGISTER[match["reg"][0]], INSN[match["insn"]]
        address, = struct.unpack("<I", match["addr"])
        facts.add(f"code: LGUEST_INIT(lguest_data at {address:#x}) by {insn.value} with the "
                  f"argument in {reg}",
                  _eras(lambda e, i=insn, r=reg: e.hcall_insn == i and e.hcall_regs[0] == r))
        after = match["next"]
        if after.startswith(NEXT_COPIES_PGDIR):
            facts.add("code: lguest_entry then copies the Launcher's page directory entries",
                      _eras(lambda e: e.page_tables == PageTables.LAUNCHER))
        elif after == NEXT_NEW_PGTABLE:
            facts.add("code: lguest_entry then loads its own page tables (NEW_PGTABLE)",
                      _eras(lambda e: e.page_tables == PageTables.GUEST))
        else:
            facts.add("code: lguest_entry then makes no NEW_PGTABLE call",
                      _eras(lambda e: e.page_tables != PageTables.GUEST))
        return True
    return False


def _banner(blobs: Iterable[bytes]) -> str | None:
    for blob in blobs:
        match = BANNER.search(blob)
        if match is not None:
            return match[1].decode("ascii")
    return None


def _bzimage_release(f: BinaryIO, size: int) -> str | None:
    header = read_range(f, size, 0, BZ_KERNEL_VERSION + 2)
    if header is None:
        return None
    pointer, = struct.unpack_from("<H", header, BZ_KERNEL_VERSION)
    if pointer == 0:
        return None
    raw = read_range(f, size, 0x200 + pointer, min(MAX_RELEASE, size - 0x200 - pointer))
    if not raw:
        return None
    text = raw.split(b"\0")[0].split(b" ")[0]
    try:
        release = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    return release if parse_version(release) is not None else None


def _gunzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, MAX_UNPACKED)


def _unxz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data, MAX_UNPACKED)


def _unlzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data, MAX_UNPACKED)


def _bunzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data, MAX_UNPACKED)


# The compressors a bzImage payload may use in lguest's years, by their magic bytes.
_UNPACKERS: tuple[tuple[bytes, Callable[[bytes], bytes]], ...] = (
    (b"\x1f\x8b\x08", _gunzip), (b"\xfd7zXZ\x00", _unxz), (b"BZh", _bunzip2),
    (b"\x5d\x00\x00", _unlzma),
)


def _unpack(data: bytes) -> bytes | None:
    """A bzImage's kernel: the first compressed stream in `data` that unpacks, at most
    MAX_UNPACKED bytes of it."""
    for magic, unpack in _UNPACKERS:
        at = data.find(magic)
        if at < 0:
            continue
        try:
            out = unpack(data[at:])
        except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError):
            continue
        if out:
            return out
    return None


unpack_payload = _unpack  # the 2.6.23 Launcher's unpacking of a bzImage (lgemu.launcher)


def _bzimage_payload(f: BinaryIO, size: int, image: KernelImage) -> bytes | None:
    header = read_range(f, size, 0, BZ_PAYLOAD + 8)
    data = image.segments[0].data if image.segments else b""
    if header is not None and struct.unpack_from("<H", header, BZ_VERSION)[0] >= \
            BOOT_PROTOCOL_PAYLOAD:
        offset, length = struct.unpack_from("<II", header, BZ_PAYLOAD)
        if 0 < offset < len(data):
            data = data[offset:offset + length] if length else data[offset:]
    return _unpack(data)


# -- putting it together ---------------------------------------------------------------------------
def _choose(facts: _Facts, release: str | None, is_guest: bool | None) -> Detection:
    lines = list(facts.lines)
    claimed = era_for_version(parse_version(release)) if release else None
    if release:
        named = f"release {release}"
        if claimed is None:
            lines.append(f"{named}: outside lguest's life (2.6.23 to 4.13)")
        else:
            unsure = "" if claimed.bounds_checked else f"; {claimed.note}"
            lines.append(f"{named}: the {claimed.name} era{unsure}")
    if facts.contradiction or not facts.allowed:
        return Detection(None, True, is_guest, release, tuple(lines))
    if release and claimed is None and not facts.spoke:
        return Detection(None, True, False, release, tuple(lines),
                         f"Linux {release} has no lguest guest support")
    allowed = sorted(facts.allowed, key=_order)
    if claimed is not None and claimed in facts.allowed:
        return Detection(claimed, True, is_guest, release, tuple(lines))
    if claimed is not None and facts.spoke:
        lines.append(f"the release names {claimed.name}, but the facts above rule it out")
    elif claimed is not None:
        return Detection(claimed, True, is_guest, release, tuple(lines))
    if ERA_2_6_24 in facts.allowed:
        return Detection(ERA_2_6_24, facts.spoke, is_guest, release, tuple(lines))
    if len(allowed) > 1:
        lines.append(f"could be any of {', '.join(e.name for e in allowed)}")
    return Detection(allowed[0], True, is_guest, release, tuple(lines))


def detect_era(image: KernelImage, quick: bool = False) -> Detection:
    """The lguest era of `image` (already accepted by `load_kernel`), with the evidence.
    Never raises for the file's contents; an unreadable file gives no facts.  `quick` reads
    DWARF (most of the time a 23 MB vmlinux takes to start) only when the symbols leave more
    than one era, so a DWARF fact that would contradict them goes unseen: for booting, not
    for `lgemu info`."""
    facts = _Facts()
    release: str | None = None
    is_guest: bool | None = None
    try:
        with open(image.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if image.kind == "elf":
                symbols = _symbols(f, size)
                if symbols is not None:
                    missing = [name for name in LGUEST_SYMBOLS if name not in symbols]
                    is_guest = not missing
                    if missing:
                        facts.note(f"no {' or '.join(missing)} symbol")
                    if quick:
                        _symbol_facts(facts, symbols)
                        if len(facts.allowed) > 1:
                            _dwarf_facts(facts, dwarf_structs(f, symbols))
                    else:
                        _dwarf_facts(facts, dwarf_structs(f, symbols))
                        _symbol_facts(facts, symbols)
                blobs: list[bytes] = [segment.data for segment in image.segments]
            else:
                magic = read_range(f, size, SETUP_HEADER_MAGIC_OFFSET, len(SETUP_HEADER_MAGIC))
                release = _bzimage_release(f, size) if magic == SETUP_HEADER_MAGIC else None
                unpacked = _bzimage_payload(f, size, image)
                blobs = [unpacked] if unpacked else []
                if unpacked is None:
                    facts.note("bzImage: no compressed kernel found to look into")
    except OSError:
        blobs = []
    if _code_facts(facts, blobs) and is_guest is None:
        is_guest = True
    release = release or _banner(blobs)
    return _choose(facts, release, is_guest)


def boot_era(image: KernelImage, abi: str | None) -> Era:
    """The era lgemu will run `image` with: `abi` (an `--abi` value) if given, else the
    detected one.  Raises a one-line `UserError` when that era does not boot yet, or does
    not take a PAE kernel."""
    if abi is not None:
        era = era_named(abi)
        if era is None:
            raise UserError(f"--abi {abi}: not an lguest ABI era ({era_choices()})")
        if not era.boots:
            raise UserError(f"--abi {abi}: booting the {era.name} era is not yet supported "
                            f"(lgemu boots {supported_names()} guests)")
        check_pae(image, era)
        return era
    detection = detect_era(image, quick=True)
    if detection.era is None or not detection.era.boots:
        detection = detect_era(image)  # the whole evidence for the message
    force = f"--abi {ERA_2_6_24.key} forces the 2.6.24 ABI"
    if detection.era is None:
        raise UserError(f"{image.path}: lguest ABI era unknown: {detection.unknown_because} "
                        f"(see 'lgemu info'; {force})")
    if not detection.era.boots:
        linux = f" (Linux {detection.release})" if detection.release else ""
        raise UserError(f"{image.path}: a {detection.era.name} lguest guest{linux}: booting "
                        f"that era is not yet supported; lgemu boots {supported_names()} "
                        f"guests ({force})")
    check_pae(image, detection.era)
    return detection.era


def check_pae(image: KernelImage, era: Era) -> None:
    """Refuse, in one line, a PAE kernel run with an era whose lguest did not take PAE
    guests (before 2.6.31, ABI §7.6)."""
    if image.pae and not era.pae:
        first = next(e.name for e in ERAS if e.pae)
        raise UserError(f"{image.path}: a PAE kernel (it has {PAE_MARKER}) in the {era.name} "
                        f"era, whose CONFIG_LGUEST_GUEST needs CONFIG_X86_PAE off (lguest took "
                        f"PAE guests from {first}; choose CONFIG_HIGHMEM4G or "
                        "CONFIG_NOHIGHMEM)")


def supported_names() -> str:
    """The eras that boot, for messages: ``2.6.24``."""
    return ", ".join(era.name for era in ERAS if era.boots)


def era_choices() -> str:
    """What `--abi` accepts, for messages."""
    return "one of " + ", ".join(era.name for era in ERAS) + ", or a kernel release"
