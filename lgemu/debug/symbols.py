"""Addresses → names: a kernel's symbol table and DWARF line table, for traces and `info`.

A trace line says ``startup_32+0x3`` and ``guest_kernel/boot.S:42`` instead of a bare EIP.
Two things make that less obvious than a lookup:

* **Physical aliases.**  A vmlinux is linked at PAGE_OFFSET (0xC0100000) but loaded at its
  physical address, and lguest starts it there with paging mapping virtual = physical
  (ABI §1, §2): until `lguest_entry` jumps into the kernel window, EIP is 0x1000xx.  An address
  inside a PT_LOAD segment's *physical* range (and no segment's virtual range) is looked up
  at ``address - p_paddr + p_vaddr``, its link address.
* **Size.**  A real vmlinux has tens of thousands of symbols and megabytes of DWARF.  The
  symbol table is read with `struct` in one pass (`lgemu.elf`, not pyelftools), and
  line tables are decoded one compilation unit at a time, when an address in it is first
  asked for (.debug_aranges says which unit).

Nothing here trusts the file beyond what the Launcher already checked: a symbol table or
DWARF that pyelftools cannot read leaves that part empty and says why in `problems`.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import posixpath
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..elf import (
    PT_LOAD,
    SHN_LORESERVE,
    SHN_UNDEF,
    STB_GLOBAL,
    STB_WEAK,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    iter_symbols,
    name_at,
    program_headers,
    symbol_table,
)
from ..launcher.guestcheck import LGUEST_SYMBOLS
from .leb128 import sleb128, uleb128

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

KIND_NAMES = {STT_NOTYPE: "label", STT_OBJECT: "object", STT_FUNC: "function"}


@dataclass(frozen=True)
class Symbol:
    """One symbol at its link (virtual) address."""

    name: str
    address: int
    size: int
    kind: str  # "function" | "object" | "label"
    is_global: bool
    weak: bool = False


@dataclass(frozen=True)
class LoadSegment:
    """A PT_LOAD program header: where it is linked and where it is loaded."""

    vaddr: int
    paddr: int
    memsz: int
    flags: str  # "rwx" letters

    def alias(self, address: int) -> int | None:
        """The link address for `address` if it lies in this segment's physical range."""
        if self.paddr <= address < self.paddr + self.memsz:
            return address - self.paddr + self.vaddr
        return None


def _rank(sym: Symbol) -> tuple[bool, bool, bool, str]:
    """Which of several symbols at one address names it: functions first, then sized
    symbols, then globals; the name breaks ties so the choice never depends on file order."""
    return (sym.kind != "function", sym.size == 0, not sym.is_global, sym.name)


class Rows:
    """One line table, compactly: sorted row addresses, and per row an index into `places`
    (``file:line`` strings, each stored once; None after an end_sequence).  A row costs a
    few bytes instead of a Python int and str apiece."""

    __slots__ = ("addrs", "places", "which")

    def __init__(self, rows: list[tuple[int, str | None]]) -> None:
        rows.sort(key=lambda r: r[0])  # stable: within one address, the row order stands
        index: dict[str | None, int] = {}
        self.addrs = array("L", (a for a, _ in rows))
        self.which = array("L", (index.setdefault(s, len(index)) for _, s in rows))
        self.places: list[str | None] = list(index)

    def __len__(self) -> int:
        return len(self.addrs)

    def source(self, address: int) -> str | None:
        i = bisect.bisect_right(self.addrs, address) - 1
        return self.places[self.which[i]] if i >= 0 else None


class LineTable:
    """DWARF line information, decoded one compilation unit at a time.

    A traced kernel reaches code in hundreds of units; kept whole, their decoded rows (and
    the entries pyelftools caches behind them) took hundreds of megabytes.  So each unit is
    kept as compact `Rows`, only the most recently used units up to `MAX_ROWS` rows in all
    stay decoded (a unit asked for again is decoded again), and pyelftools' own copy of a
    line program is dropped once it is read: memory stays bounded however long the run."""

    MAX_ROWS = 400_000

    def __init__(self, elf: ELFFile) -> None:
        self._dwarf = elf.get_dwarf_info()
        self._aranges = self._dwarf.get_aranges()
        self._units: OrderedDict[int, Rows] = OrderedDict()  # by unit offset, oldest first
        self._rows = 0
        self._all: Rows | None = None

    def source(self, address: int) -> str | None:
        """``file:line`` of the instruction at link `address`, or None."""
        if self._aranges is not None:
            offset = self._aranges.cu_offset_at_addr(address)
            if offset is None:
                return None
            rows = self._units.get(offset)
            if rows is None:
                rows = self._keep(offset, Rows(self._decode(self._dwarf.get_CU_at(offset))))
            else:
                self._units.move_to_end(offset)
        else:  # no .debug_aranges: decode every unit once, into one table
            if self._all is None:
                self._all = Rows([row for cu in self._dwarf.iter_CUs()
                                  for row in self._decode(cu)])
            rows = self._all
        return rows.source(address)

    def _keep(self, offset: int, rows: Rows) -> Rows:
        self._units[offset] = rows
        self._rows += len(rows)
        while self._rows > self.MAX_ROWS and len(self._units) > 1:
            _, dropped = self._units.popitem(last=False)
            self._rows -= len(dropped)
        return rows

    def _decode(self, cu: object) -> list[tuple[int, str | None]]:
        found = _unit_line_attributes(self._dwarf, cu)
        parse = getattr(self._dwarf, "_parse_line_program_at_offset", None)
        if found is not None and parse is not None:  # without parsing its abbreviations
            raw_dir, stmt_list = found
            if stmt_list is None:
                return []
            program = parse(stmt_list, cu.structs)  # type: ignore[attr-defined]
            comp_dir = _text(raw_dir) if raw_dir is not None else ""
        else:
            program = self._dwarf.line_program_for_CU(cu)
            if program is None:
                return []
            top = cu.get_top_DIE()
            comp_dir = _text(top.attributes["DW_AT_comp_dir"].value) \
                if "DW_AT_comp_dir" in top.attributes else ""
            stmt_list = top.attributes["DW_AT_stmt_list"].value
        header = program.header
        version = header["version"]
        dirs = [_text(d) for d in header["include_directory"]]
        files = header["file_entry"]
        names: dict[int, str] = {}

        def directory(d: int) -> str:
            if version >= 5:  # entry 0 is the compilation directory itself
                return (dirs[0] if dirs else comp_dir) if d == 0 \
                    else posixpath.join(comp_dir, dirs[d])
            return comp_dir if d == 0 else posixpath.join(comp_dir, dirs[d - 1])

        def name(index: int) -> str:
            if index not in names:
                entry = files[index if version >= 5 else index - 1]
                path = posixpath.join(directory(entry.dir_index), _text(entry.name))
                if posixpath.isabs(comp_dir) and path.startswith(comp_dir + "/"):
                    path = path[len(comp_dir) + 1:]  # a build tree's absolute paths
                names[index] = posixpath.normpath(path)
            return names[index]

        rows: list[tuple[int, str | None]] = []
        fast = _line_rows(program)
        if fast is not None:
            for address, file, line in fast:
                rows.append((address, None if file is None else f"{name(file)}:{line}"))
        else:
            for entry in program.get_entries():
                state = entry.state
                if state is None:
                    continue
                rows.append((state.address, None if state.end_sequence
                             else f"{name(state.file)}:{state.line}"))
        self._forget(cu, stmt_list)
        return rows

    def _forget(self, cu: object, line_offset: int) -> None:
        """pyelftools keeps, in private caches, every unit, abbreviation table and decoded
        line program it ever parsed: drop this unit's (we have its rows).  Should those
        caches change shape, nothing breaks — memory is merely not given back."""
        dwarf = self._dwarf
        programs = getattr(dwarf, "_linetable_cache", None)
        if isinstance(programs, dict):
            programs.pop(line_offset, None)
        abbrevs = getattr(dwarf, "_abbrevtable_cache", None)
        if isinstance(abbrevs, dict):
            with contextlib.suppress(Exception):
                abbrevs.pop(cu["debug_abbrev_offset"], None)
        units, offsets = getattr(dwarf, "_cu_cache", None), getattr(dwarf, "_cu_offsets_map", None)
        if isinstance(units, list) and isinstance(offsets, list) and len(units) == len(offsets):
            i = bisect.bisect_left(offsets, getattr(cu, "cu_offset", -1))
            if i < len(units) and units[i] is cu:
                del units[i], offsets[i]


def _line_rows(program: object) -> list[tuple[int, int | None, int]] | None:
    """The rows of a DWARF 2–4 line program as (address, file, line), file None for an
    end of sequence: the same rows pyelftools' `get_entries` yields, some twenty times
    faster (a traced kernel decodes hundreds of units).  None when the program uses what
    this does not do (VLIW operation indexes, DW_LNE_define_file, DWARF 5) or is malformed:
    pyelftools then decodes it."""
    try:
        header = program.header  # type: ignore[attr-defined]
        if header["version"] > 4 or header.get("maximum_operations_per_instruction", 1) != 1:
            return None
        structs = program.structs  # type: ignore[attr-defined]
        start = program.program_start_offset  # type: ignore[attr-defined]
        stream = program.stream  # type: ignore[attr-defined]
        stream.seek(start)
        data = stream.read(program.program_end_offset - start)  # type: ignore[attr-defined]
        order = "little" if structs.little_endian else "big"
        step = header["minimum_instruction_length"]
        line_base, line_range = header["line_base"], header["line_range"]
        base = header["opcode_base"]
        lengths = header["standard_opcode_lengths"]
        const_add = (255 - base) // line_range * step
        rows: list[tuple[int, int | None, int]] = []
        address, file, line = 0, 1, 1
        i, n = 0, len(data)
        while i < n:
            op = data[i]
            i += 1
            if op >= base:
                adjusted = op - base
                address += adjusted // line_range * step
                line += line_base + adjusted % line_range
                rows.append((address, file, line))
            elif op == 0:  # extended: length, sub-opcode, operands
                length, i = uleb128(data, i)
                end = i + length
                if length == 0 or end > n:
                    return None
                sub = data[i]
                if sub == 1:  # DW_LNE_end_sequence
                    rows.append((address, None, line))
                    address, file, line = 0, 1, 1
                elif sub == 2:  # DW_LNE_set_address
                    address = int.from_bytes(data[i + 1:end], order)
                elif sub == 3:  # DW_LNE_define_file
                    return None
                i = end
            elif op == 1:  # DW_LNS_copy
                rows.append((address, file, line))
            elif op == 2:  # DW_LNS_advance_pc
                value, i = uleb128(data, i)
                address += value * step
            elif op == 3:  # DW_LNS_advance_line
                value, i = sleb128(data, i)
                line += value
            elif op == 4:  # DW_LNS_set_file
                file, i = uleb128(data, i)
            elif op == 8:  # DW_LNS_const_add_pc
                address += const_add
            elif op == 9:  # DW_LNS_fixed_advance_pc
                address += int.from_bytes(data[i:i + 2], order)
                i += 2
            else:  # column, flags, isa, …: operands skipped
                for _ in range(lengths[op - 1]):
                    _, i = uleb128(data, i)
        return rows
    except (IndexError, KeyError, AttributeError, ValueError, TypeError, ZeroDivisionError,
            OSError):
        return None


# DWARF attribute forms by the bytes their value takes (DWARF 2–4, 32-bit format).
_FIXED_FORMS = {0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x0E: 4, 0x11: 1, 0x12: 2,
                0x13: 4, 0x14: 8, 0x17: 4, 0x19: 0, 0x20: 8}
_BLOCK_FORMS = {0x0A: 1, 0x03: 2, 0x04: 4}  # block1, block2, block4: a length, then bytes
DW_AT_STMT_LIST, DW_AT_COMP_DIR = 0x10, 0x1B
DW_FORM_ADDR, DW_FORM_STRING, DW_FORM_STRP = 0x01, 0x08, 0x0E
DIE_WINDOW = 4096  # bytes read for a unit's top DIE and for its abbreviation


def _unit_line_attributes(dwarf: object, cu: object) -> tuple[bytes | None, int | None] | None:
    """(DW_AT_comp_dir, DW_AT_stmt_list) of a unit's top DIE, read straight from the
    sections: pyelftools would parse the unit's whole abbreviation table first, several
    milliseconds a unit, and a traced kernel reaches hundreds.  None for anything this
    does not read (DWARF 5, 64-bit DWARF, unusual forms, a top DIE past the window):
    pyelftools then does it."""
    try:
        header = cu.header  # type: ignore[attr-defined]
        structs = cu.structs  # type: ignore[attr-defined]
        version = header["version"]
        if not 2 <= version <= 4 or structs.dwarf_format != 32:
            return None
        order = "little" if structs.little_endian else "big"
        addr_size = header["address_size"]
        info = dwarf.debug_info_sec.stream  # type: ignore[attr-defined]
        info.seek(cu.cu_die_offset)  # type: ignore[attr-defined]
        die = info.read(DIE_WINDOW)
        code, at = uleb128(die, 0)
        abbrevs = dwarf.debug_abbrev_sec.stream  # type: ignore[attr-defined]
        abbrevs.seek(header["debug_abbrev_offset"])
        table = abbrevs.read(DIE_WINDOW)
        i = 0
        while True:  # find the abbreviation `code` (the first one, as a rule)
            entry, i = uleb128(table, i)
            if entry == 0:
                return None
            _, i = uleb128(table, i)  # tag
            i += 1  # has children
            specs = []
            while True:
                name, i = uleb128(table, i)
                form, i = uleb128(table, i)
                if name == 0 and form == 0:
                    break
                specs.append((name, form))
            if entry == code:
                break
        comp_dir: bytes | None = None
        stmt_list: int | None = None
        for name, form in specs:
            start = at
            if form == DW_FORM_STRING:
                end = die.index(b"\0", at)
                value: bytes | int = die[at:end]
                at = end + 1
            elif form == DW_FORM_STRP:
                value = int.from_bytes(die[at:at + 4], order)
                at += 4
                if name == DW_AT_COMP_DIR:
                    strings = dwarf.debug_str_sec.stream  # type: ignore[attr-defined]
                    strings.seek(value)
                    text = strings.read(DIE_WINDOW)
                    if b"\0" not in text:
                        return None
                    value = text[:text.index(b"\0")]
            elif form in _FIXED_FORMS:
                at += _FIXED_FORMS[form]
                value = int.from_bytes(die[start:at], order)
            elif form == DW_FORM_ADDR or (form == 0x10 and version == 2):  # ref_addr in v2
                at += addr_size
                value = int.from_bytes(die[start:at], order)
            elif form == 0x10:
                at += 4
                value = int.from_bytes(die[start:at], order)
            elif form in (0x0F, 0x15):  # udata, ref_udata
                value, at = uleb128(die, at)
            elif form == 0x0D:  # sdata
                value, at = sleb128(die, at)
            elif form in (0x09, 0x18):  # block, exprloc: a ULEB length, then bytes
                length, at = uleb128(die, at)
                at += length
                value = 0
            elif form in _BLOCK_FORMS:
                size = _BLOCK_FORMS[form]
                at += size + int.from_bytes(die[at:at + size], order)
                value = 0
            else:
                return None
            if at > len(die):
                return None
            if name == DW_AT_COMP_DIR:
                if not isinstance(value, bytes):
                    return None
                comp_dir = value
            elif name == DW_AT_STMT_LIST:
                if not isinstance(value, int):
                    return None
                stmt_list = value
        return comp_dir, stmt_list
    except (IndexError, KeyError, AttributeError, ValueError, TypeError, OSError):
        return None


def _text(value: bytes | str) -> str:
    return _printable(value) if isinstance(value, bytes) else value


def _printable(raw: bytes) -> str:
    """A name from the file as one token: control characters and spaces as \\xNN (a hostile
    name must not split a trace line or a table row)."""
    text = raw.decode("utf-8", "replace")
    if text.isprintable() and " " not in text:
        return text
    return "".join(c if c.isprintable() and c != " " else f"\\x{ord(c):02x}" for c in text)


@dataclass
class Symbols:
    """Everything about a kernel image that turns an address into words."""

    path: Path
    segments: list[LoadSegment] = field(default_factory=list)
    symbols: list[Symbol] = field(default_factory=list)  # sorted by address, then rank
    entry: int = 0
    lines: LineTable | None = None
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        best: dict[int, Symbol] = {}
        for sym in self.symbols:
            if sym.address not in best or _rank(sym) < _rank(best[sym.address]):
                best[sym.address] = sym
        self._starts = sorted(best)
        self._names = [best[a] for a in self._starts]
        self._by_name: dict[str, list[Symbol]] = {}
        for sym in self.symbols:
            self._by_name.setdefault(sym.name, []).append(sym)
        self._vranges = sorted((s.vaddr, s.vaddr + s.memsz) for s in self.segments)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path, names: bool = True) -> Symbols:
        """Read `path` (already accepted by `launcher.load_kernel`).  A bzImage, or an ELF
        whose tables cannot be read, gives an object that knows fewer names.  Without
        `names`, only the program headers are read (segments, `link_address`): a real
        vmlinux's symbol table and DWARF take a tenth of a second."""
        path = Path(path)
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return cls(path, problems=["not an ELF file: no symbols"])
            try:
                headers = program_headers(f, os.fstat(f.fileno()).st_size)
                if headers is None:
                    raise ValueError("not inside the file")
                entry, phdrs = headers
                segments = [LoadSegment(p.vaddr, p.paddr, p.memsz, _flags(p.flags))
                            for p in phdrs if p.type == PT_LOAD]
                if not names:
                    return cls(path, segments, [], entry)
                from elftools.elf.elffile import ELFFile  # pyelftools: 40 ms to import

                f.seek(0)
                elf = ELFFile(f)  # for DWARF
            except Exception as e:  # pyelftools raises many kinds on hostile input
                return cls(path, problems=[f"program headers unreadable ({e})"])
            result = cls(path, segments, [], entry)
            symbols: list[Symbol] = []
            try:
                symbols = list(_read_symbols(f))
            except Exception as e:
                result.problems.append(f"symbol table unreadable ({e})")
            try:
                lines = LineTable(elf) if elf.has_dwarf_info() else None
                if lines is not None:
                    lines.source(entry)  # fail now, not in the middle of a trace
            except Exception as e:
                lines = None
                result.problems.append(f"DWARF line table unreadable ({e})")
            result = cls(path, segments, symbols, entry, lines, result.problems)
            if not symbols and not result.problems:
                result.problems.append("no symbol table")
            return result

    # -- questions -------------------------------------------------------------------------
    def link_address(self, address: int) -> int | None:
        """The address the image was linked for, for an address the CPU executed; None
        outside every loaded segment."""
        i = bisect.bisect_right(self._vranges, (address, 1 << 64)) - 1
        if i >= 0 and address < self._vranges[i][1]:
            return address
        for segment in self.segments:
            alias = segment.alias(address)
            if alias is not None:
                return alias
        return None

    def symbolize(self, address: int) -> tuple[str, int] | None:
        """(name, offset) of the symbol at or before `address`, within its segment."""
        link = self.link_address(address)
        if link is None:
            return None
        i = bisect.bisect_right(self._starts, link) - 1
        if i < 0:
            return None
        sym = self._names[i]
        if self._segment_end(sym.address) <= link:
            return None
        return sym.name, link - sym.address

    def source(self, address: int) -> str | None:
        """``file:line`` for `address` when the image has DWARF line information."""
        if self.lines is None:
            return None
        link = self.link_address(address)
        if link is None:
            return None
        try:
            return self.lines.source(link)
        except Exception:  # a unit pyelftools cannot decode: no line for it
            return None

    def named(self, name: str) -> list[Symbol]:
        """Every symbol called `name` (statics of several files may share one)."""
        return self._by_name.get(name, [])

    def has(self, name: str) -> bool:
        return name in self._by_name

    def ranges(self, name: str) -> list[tuple[int, int]]:
        """[begin, end) address ranges the code of symbol `name` executes at: its link
        range and, where a segment is loaded elsewhere, its physical alias.  A symbol
        without a size extends to the next symbol."""
        out = []
        for sym in self.named(name):
            end = sym.address + sym.size if sym.size else self._next_start(sym.address)
            out.append((sym.address, end))
            for segment in self.segments:
                if segment.vaddr != segment.paddr and \
                        segment.vaddr <= sym.address < segment.vaddr + segment.memsz:
                    delta = segment.vaddr - segment.paddr
                    out.append((sym.address - delta, end - delta))
        return sorted(set(out))

    def _next_start(self, address: int) -> int:
        i = bisect.bisect_right(self._starts, address)
        limit = self._segment_end(address)
        return min(self._starts[i], limit) if i < len(self._starts) else limit

    def _segment_end(self, link: int) -> int:
        for begin, end in self._vranges:
            if begin <= link < end:
                return end
        return link + 1  # not in a segment: only the symbol's own address


def _flags(p_flags: int) -> str:
    return "".join(c if p_flags & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))


def _read_symbols(f: BinaryIO) -> Iterator[Symbol]:
    """Functions, objects and labels of .symtab (or .dynsym) in allocated sections."""
    tables = symbol_table(f, os.fstat(f.fileno()).st_size)
    if tables is None:
        return
    symtab, strtab = tables
    for name_off, value, size, info, _other, shndx in iter_symbols(symtab):
        kind = info & 0xF
        if kind not in KIND_NAMES or shndx == SHN_UNDEF or shndx >= SHN_LORESERVE:
            continue
        name = _printable(name_at(strtab, name_off))
        if not name or name.startswith((".L", "$")):
            continue
        yield Symbol(name, value, size, KIND_NAMES[kind], info >> 4 == STB_GLOBAL,
                     info >> 4 == STB_WEAK)


# -- what `lgemu info` lists (which era a kernel is: lgemu.launcher.era) --------------------
# 2.6.23's guests talked to the Launcher over the DMA-based lguest bus, not virtio.
DMA_ERA_SYMBOLS = ("lguest_send_dma", "lguest_bind_dma", "lguest_unbind_dma")
# What `lgemu info` lists when present.
NOTABLE_SYMBOLS = ("startup_32", *LGUEST_SYMBOLS, "lguest_iret", "lguest_noirq_start",
                   "lguest_noirq_end", "lguest_noirq_iret", "lguest_devices", "start_kernel",
                   *DMA_ERA_SYMBOLS)
