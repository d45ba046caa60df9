"""Guest call stacks: DWARF call-frame information, frame pointers, or the leaf alone.

A kernel built with DWARF has `.debug_frame`: for every function, rules saying where the
caller's stack pointer (the CFA) and return address are at each instruction.  2.6.24's real
kernels have no frame pointers but do have these, so they are the first choice; a kernel
with neither gets the leaf function alone.  `Unwinder.method` says which one a profile used.

The rules are read with `struct` in one pass over the section headers (CIEs and FDEs), and
an FDE's instructions are interpreted only when an address in it is first asked about; the
answer is cached per address.  Only what i386 code generators emit is understood (the
`DW_CFA_*` register-offset rules; an expression rule ends the stack there).  Stacks are
read from guest memory, which the guest controls: every step must move up the stack, and a
walk stops at `MAX_DEPTH` frames, at an unreadable word, or at an address with no rule.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from .leb128 import sleb128, uleb128

MAX_DEPTH = 64
U32 = struct.Struct("<I")
ESP, EBP, RA = 4, 5, 8  # DWARF register numbers on i386 (8: the return address column)
CFI, FRAME_POINTERS, LEAF = ("DWARF CFI (.debug_frame)", "frame pointers (EBP chain)",
                             "leaf function only (no CFI, no frame pointers)")


@dataclass(frozen=True)
class Rule:
    """At one address: CFA = register + offset; saved registers at CFA + offset."""

    cfa_reg: int
    cfa_offset: int
    saved: tuple[tuple[int, int], ...]


@dataclass
class _Cie:
    code_align: int
    data_align: int
    ra_reg: int
    initial: bytes


class FrameTable:
    """The FDEs of a `.debug_frame` section, decoded on demand."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._cies: dict[int, _Cie] = {}
        fdes: list[tuple[int, int, int, int, int]] = []  # start, end, cie, insn begin, end
        pos = 0
        while pos + 8 <= len(data):
            length = U32.unpack_from(data, pos)[0]
            if length == 0xFFFFFFFF:  # 64-bit DWARF: not in an i386 kernel
                break
            end = pos + 4 + length
            if length < 4 or end > len(data):
                break
            cie_id = U32.unpack_from(data, pos + 4)[0]
            if cie_id != 0xFFFFFFFF and pos + 16 <= end:
                start, size = struct.unpack_from("<II", data, pos + 8)
                if size:
                    fdes.append((start, start + size, cie_id, pos + 16, end))
            pos = end
        fdes.sort()
        self._starts = [f[0] for f in fdes]
        self._fdes = fdes
        self._rules: dict[int, Rule | None] = {}

    def __len__(self) -> int:
        return len(self._fdes)

    def _cie(self, offset: int) -> _Cie:
        cie = self._cies.get(offset)
        if cie is None:
            data = self.data
            length = U32.unpack_from(data, offset)[0]
            end = offset + 4 + length
            version = data[offset + 8]
            aug_end = data.index(b"\0", offset + 9)
            pos = aug_end + 1
            if version >= 4:
                pos += 2  # address_size, segment_size
            code_align, pos = uleb128(data, pos)
            data_align, pos = sleb128(data, pos)
            if version == 1:
                ra_reg, pos = data[pos], pos + 1
            else:
                ra_reg, pos = uleb128(data, pos)
            cie = self._cies[offset] = _Cie(code_align, data_align, ra_reg, data[pos:end])
        return cie

    def rule(self, address: int) -> Rule | None:
        """The unwind rule in force at link `address`, or None (no FDE, or one lgemu cannot
        follow)."""
        if address in self._rules:
            return self._rules[address]
        i = bisect.bisect_right(self._starts, address) - 1
        rule = None
        if i >= 0 and address < self._fdes[i][1]:
            start, _, cie_offset, begin, end = self._fdes[i]
            try:
                rule = self._run(start, address, self._cie(cie_offset), self.data[begin:end])
            except (IndexError, ValueError, struct.error):
                rule = None  # malformed CFI: no rule
        self._rules[address] = rule
        return rule

    def _run(self, start: int, target: int, cie: _Cie, program: bytes) -> Rule | None:
        state: dict[str, object] = {"reg": ESP, "off": 4, "ok": True}
        saved: dict[int, int | None] = {}
        self._interpret(cie.initial, cie, start, None, state, saved, {})
        initial = dict(saved)
        location = self._interpret(program, cie, start, target, state, saved, initial)
        if location is None or not state["ok"]:
            return None
        ra = saved.get(cie.ra_reg)
        if ra is None:
            return None
        regs = tuple(sorted((reg, off) for reg, off in saved.items()
                            if off is not None and reg != cie.ra_reg))
        return Rule(int(state["reg"]), int(state["off"]), ((RA, ra), *regs))

    @staticmethod
    def _interpret(program: bytes, cie: _Cie, location: int, target: int | None,
                   state: dict[str, object], saved: dict[int, int | None],
                   initial: dict[int, int | None]) -> int | None:
        """Run CFA instructions up to (not past) `target`; returns the location reached."""
        stack: list[tuple[dict[str, object], dict[int, int | None]]] = []
        pos = 0
        n = len(program)
        while pos < n:
            op = program[pos]
            pos += 1
            high, low = op >> 6, op & 0x3F
            advance = None
            if high == 1:
                advance = low * cie.code_align
            elif high == 2:
                off, pos = uleb128(program, pos)
                saved[low] = off * cie.data_align
            elif high == 3:
                saved[low] = initial.get(low)
            elif op == 0x00:
                pass
            elif op == 0x01:
                new = U32.unpack_from(program, pos)[0]
                pos += 4
                advance = new - location
            elif op in (0x02, 0x03, 0x04):
                size = {0x02: 1, 0x03: 2, 0x04: 4}[op]
                advance = int.from_bytes(program[pos:pos + size], "little") * cie.code_align
                pos += size
            elif op == 0x05:
                reg, pos = uleb128(program, pos)
                off, pos = uleb128(program, pos)
                saved[reg] = off * cie.data_align
            elif op == 0x06:
                reg, pos = uleb128(program, pos)
                saved[reg] = initial.get(reg)
            elif op in (0x07, 0x08):
                reg, pos = uleb128(program, pos)
                saved[reg] = None
            elif op == 0x09:
                reg, pos = uleb128(program, pos)
                _, pos = uleb128(program, pos)
                saved[reg] = None  # kept in another register: not followed
                if reg == RA:
                    state["ok"] = False
            elif op == 0x0A:
                stack.append((dict(state), dict(saved)))
            elif op == 0x0B:
                if stack:
                    old_state, old_saved = stack.pop()
                    state.update(old_state)
                    saved.clear()
                    saved.update(old_saved)
            elif op == 0x0C:
                state["reg"], pos = uleb128(program, pos)
                state["off"], pos = uleb128(program, pos)
                state["ok"] = True
            elif op == 0x0D:
                state["reg"], pos = uleb128(program, pos)
            elif op == 0x0E:
                state["off"], pos = uleb128(program, pos)
            elif op == 0x0F:
                size, pos = uleb128(program, pos)
                pos += size
                state["ok"] = False  # a CFA computed by an expression
            elif op in (0x10, 0x16):
                reg, pos = uleb128(program, pos)
                size, pos = uleb128(program, pos)
                pos += size
                saved[reg] = None
                if reg == RA:
                    state["ok"] = False
            elif op == 0x11:
                reg, pos = uleb128(program, pos)
                off, pos = sleb128(program, pos)
                saved[reg] = off * cie.data_align
            elif op == 0x12:
                state["reg"], pos = uleb128(program, pos)
                off, pos = sleb128(program, pos)
                state["off"] = off * cie.data_align
                state["ok"] = True
            elif op == 0x13:
                off, pos = sleb128(program, pos)
                state["off"] = off * cie.data_align
            elif op == 0x2E:
                _, pos = uleb128(program, pos)
            elif op == 0x2F:
                reg, pos = uleb128(program, pos)
                off, pos = uleb128(program, pos)
                saved[reg] = -off * cie.data_align
            else:
                return None  # an instruction lgemu does not know: no rule here
            if advance is not None:
                if target is not None and location + advance > target:
                    return location
                location += advance
        return location


class Unwinder:
    """Call stacks of a guest kernel: `stack(regs, read_u32)` → return addresses, innermost
    first, each the address of the call's *next* instruction (the leaf is EIP itself)."""

    def __init__(self, frames: FrameTable | None, frame_pointers: bool,
                 link_address: Callable[[int], int | None]) -> None:
        self.frames = frames
        self.link_address = link_address
        self.method = CFI if frames is not None else FRAME_POINTERS if frame_pointers else LEAF

    @classmethod
    def for_kernel(cls, path: str, frame_pointers: bool,
                   link_address: Callable[[int], int | None]) -> Unwinder:
        """The best unwinder `path` allows (`frame_pointers`: the caller knows it was built
        with them)."""
        frames = None
        try:
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    f.seek(0)
                    section = ELFFile(f).get_section_by_name(".debug_frame")
                    if section is not None:
                        table = FrameTable(section.data())
                        frames = table if len(table) else None
        except Exception:  # pyelftools on a hostile file: no CFI
            frames = None
        return cls(frames, frame_pointers, link_address)

    def stack(self, regs: dict[int, int], read_u32: Callable[[int], int | None]) -> list[int]:
        """Addresses from the leaf (EIP) outwards."""
        eip = regs[RA]
        out = [eip]
        if self.method == LEAF:
            return out
        if self.method == FRAME_POINTERS:
            return self._frame_pointers(regs, read_u32, self.link_address, out)
        regs = dict(regs)
        for depth in range(MAX_DEPTH):
            pc = regs[RA]
            link = self.link_address(pc if depth == 0 else pc - 1)
            rule = self.frames.rule(link) if link is not None else None
            if rule is None or rule.cfa_reg not in regs:
                break
            cfa = (regs[rule.cfa_reg] + rule.cfa_offset) & 0xFFFFFFFF
            if cfa <= regs[ESP]:
                break  # a frame must move up the stack
            new = {k: v for k, v in regs.items() if k not in (RA, ESP)}
            for reg, off in rule.saved:
                value = read_u32((cfa + off) & 0xFFFFFFFF)
                if value is None:
                    return out
                new[reg] = value
            if RA not in new or self.link_address((new[RA] - 1) & 0xFFFFFFFF) is None:
                break  # no return address, or one outside the kernel: the stack ends
            new[ESP] = cfa
            regs = new
            out.append(regs[RA])
        return out

    @staticmethod
    def _frame_pointers(regs: dict[int, int], read_u32: Callable[[int], int | None],
                        link_address: Callable[[int], int | None], out: list[int]) -> list[int]:
        ebp, esp = regs[EBP], regs[ESP]
        for _ in range(MAX_DEPTH):
            if ebp <= esp or ebp & 3:
                break
            ra, up = read_u32(ebp + 4), read_u32(ebp)
            if ra is None or up is None or link_address((ra - 1) & 0xFFFFFFFF) is None:
                break
            out.append(ra)
            esp, ebp = ebp, up
        return out
