"""Trace file formats: one small base class, one subclass per `--trace-format`.

The tracer (`lgemu.debug.trace`) decides *which* instructions and events to write; a format
decides how they look.  It works in one of two modes:

* **Fast mode** (text and jsonl without ``--trace-regs``): the format renders each
  instruction once per address and ring into a line template with a single ``%d`` for the
  instruction count; the tracer caches it, so a traced instruction costs one dictionary
  lookup, one ``%`` and one write.
* **State mode** (``--trace-regs``, and always for tenet): at every traced instruction the
  tracer reads the registers the format names and hands over those that changed since the
  previous traced instruction (and, for tenet, the memory accesses in between).  `step`
  returns what to write now; a format that attaches the changes to the *previous* line
  keeps that line `pending` until the next step or `settle`.

Lines are stable (README, "Traces and the event log"):

text::

    <icount> r<ring> <eip> <symbol+offset> <bytes> <disassembly (AT&T)> [<file:line>]
    <icount> -- <event text>

jsonl: one object per line, ``{"icount", "ring", "eip", "sym", "off", "bytes", "asm",
"src"}`` (``"regs"`` and ``"untraced"`` with ``--trace-regs``) or ``{"icount", "event",
"text"}``.  tenet: Tenet's x86 delta lines, ``eax=0x1,…,eip=0x…,mr=0x…:hex,mw=0x…:hex``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

# The registers `--trace-regs` reports (EIP is the line's own address), and Tenet's x86 set.
STATE_REGISTERS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eflags",
                   "cs", "ss", "ds", "es", "fs", "gs")
TENET_REGISTERS = ("eax", "ebx", "ecx", "edx", "ebp", "esp", "esi", "edi")
MAX_MEMORY_VALUE = 8  # bytes of one access Unicorn hands a hook


@dataclass(frozen=True, slots=True)
class Insn:
    """One decoded instruction, as the trace shows it."""

    address: int
    size: int
    code: bytes | None  # None: the bytes could not be read back
    asm: str  # "mnemonic operands" (AT&T), or "(bad)"
    symbol: str | None
    offset: int
    source: str | None  # "file:line"
    changes_ring: bool  # iret, lret, far jmp/call, sysexit: the next one may be elsewhere

    @property
    def where(self) -> str:
        """``symbol+0xoff``, or ``?`` outside every known symbol."""
        return f"{self.symbol}+{self.offset:#x}" if self.symbol is not None else "?"

    @property
    def hex(self) -> str:
        return self.code.hex() if self.code is not None else "??"


# (is_write, address, size, value) for one memory access, as `Cpu.on_memory_values` reports it.
Access = tuple[bool, int, int, int]


class TraceFormat:
    """How one file format writes instructions and events (see the module docstring)."""

    name: ClassVar[str] = ""
    carries_events: ClassVar[bool] = True
    records_memory: ClassVar[bool] = False
    always_state: ClassVar[bool] = False
    state_registers: ClassVar[tuple[str, ...]] = STATE_REGISTERS

    def __init__(self, regs: bool) -> None:
        self.stateful = regs or self.always_state
        self.pending = False  # a line waits for the registers its instruction changed

    def header(self) -> str:
        """Written once, before anything else."""
        return ""

    def template(self, insn: Insn, ring: int) -> str:
        """The instruction's whole line with ``%d`` where its count goes (fast mode)."""
        raise NotImplementedError

    def event(self, icount: int, kind: str, text: str) -> str:
        """The line for an lguest event (only called when `carries_events`)."""
        raise NotImplementedError

    def step(self, icount: int, template: str, changed: list[tuple[str, int]],
             memory: list[Access], gap: int) -> str:
        """State mode: instruction `icount` (its `template`) is about to run; `changed` are
        the registers that changed since the previous step, `gap` the untraced instructions
        in between."""
        raise NotImplementedError

    def settle(self, changed: list[tuple[str, int]], gap: int) -> str:
        """State mode: finish the pending line (before an event, and at the end)."""
        return ""


class LineFormat(TraceFormat):
    """A format whose instruction line waits until the registers it changed are known, then
    gets them appended by `settle`."""

    _pending = ""

    def step(self, icount: int, template: str, changed: list[tuple[str, int]],
             memory: list[Access], gap: int) -> str:
        out = self.settle(changed, gap)
        self._pending = template % icount
        self.pending = True
        return out


def _escape(text: str) -> str:
    return text.replace("%", "%%")


class TextFormat(LineFormat):
    """Aligned columns for people (and grep)."""

    name = "text"

    def template(self, insn: Insn, ring: int) -> str:
        return "%10d" + _escape(self.body(insn, ring))

    def body(self, insn: Insn, ring: int) -> str:
        """The line after its count, which is right-aligned in the first ten columns (what
        the tracer's block mode writes without a ``%``)."""
        source = insn.source or ""
        return (f" r{ring} {insn.address:08x} {insn.where:<30} {insn.hex:<20} "
                f"{insn.asm:<36} {source}").rstrip() + "\n"

    def event(self, icount: int, kind: str, text: str) -> str:
        return f"{icount:10d} -- {text}\n"

    def settle(self, changed: list[tuple[str, int]], gap: int) -> str:
        if not self.pending:
            return ""
        self.pending = False
        regs = " ".join(f"{name}={value:#x}" for name, value in changed)
        if gap:
            regs = f"(+{gap} untraced) {regs}".rstrip()
        return f"{self._pending[:-1]}  | {regs}\n" if regs else self._pending


class JsonlFormat(LineFormat):
    """One JSON object per line, for programs."""

    name = "jsonl"

    def template(self, insn: Insn, ring: int) -> str:
        body = json.dumps({"ring": ring, "eip": insn.address, "sym": insn.symbol,
                           "off": insn.offset, "bytes": insn.hex, "asm": insn.asm,
                           "src": insn.source}, separators=(",", ":"))
        return '{"icount":%d,' + _escape(body[1:]) + "\n"

    def event(self, icount: int, kind: str, text: str) -> str:
        return json.dumps({"icount": icount, "event": kind, "text": text},
                          ensure_ascii=False, separators=(",", ":")) + "\n"

    def settle(self, changed: list[tuple[str, int]], gap: int) -> str:
        if not self.pending:
            return ""
        self.pending = False
        extra = ',"regs":' + json.dumps(dict(changed), separators=(",", ":"))
        if gap:
            extra += f',"untraced":{gap}'
        return self._pending[:-2] + extra + "}\n"


class TenetFormat(TraceFormat):
    """Tenet's text trace (github.com/gaasedelen/tenet, tracers/README.md), x86 profile.

    Each line is the state delta on reaching an instruction: the general registers that
    changed (all of them on the first line), ``eip`` last among the registers, then the
    memory the previous instruction read (``mr``) and wrote (``mw``) as address:hex bytes.
    Tenet's parser accepts nothing else on a line, so events are not written."""

    name = "tenet"
    carries_events = False
    records_memory = True
    always_state = True
    state_registers = TENET_REGISTERS

    def template(self, insn: Insn, ring: int) -> str:
        return f"eip={insn.address:#x}"

    def step(self, icount: int, template: str, changed: list[tuple[str, int]],
             memory: list[Access], gap: int) -> str:
        parts = [f"{name}={value:#x}" for name, value in changed]
        parts.append(template)
        for is_write, address, size, value in memory:
            size = min(size, MAX_MEMORY_VALUE)
            data = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
            parts.append(f"{'mw' if is_write else 'mr'}={address:#x}:{data.hex()}")
        return ",".join(parts) + "\n"


FORMATS: dict[str, type[TraceFormat]] = {f.name: f for f in (TextFormat, JsonlFormat,
                                                             TenetFormat)}
