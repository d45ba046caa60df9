"""Instruction traces and the lguest event log (`--trace`, `--events`, `--trace-filter`).

One `Tracer` per run.  It watches two things:

* **Instructions**, through code hooks on the CPU (`Cpu.on_instruction`).  Each address is
  decoded once — bytes read back through the page tables, capstone for the disassembly, the
  symbol table and DWARF for ``symbol+offset`` and ``file:line`` — and rendered once per ring
  into a line template, so the hot path is a dictionary lookup, a ``%`` and a write.  The
  cache is keyed by address, so it must forget code that changed: when Unicorn links a block
  (`Cpu.on_block_linked`, which a newly translated block meets at the latest when a direct
  jump first reaches it) its bytes are compared with what was decoded, and a switch of
  address space (NEW_PGTABLE) forgets everything below the kernel.  A rewrite in place of
  kernel code reached only by indirect jumps would go unnoticed; kernels do not do that.
* **lguest events**, as an observer of `Guest.emit` (wording: `lgemu.host.events`).

**Block mode.**  A plain text or jsonl trace to a file with no filter (the common, longest
case) does not call Python per instruction.  A block hook appends to a log the block about
to run, rendered once per address and ring, and the instruction count there; nothing else
(a real boot runs a block every three or four instructions).  The log is worked out in bulk
when it fills, at an event, at a run's end and when the trace closes: a block ran whole when
the next one started that many instructions later (found with C-level maps), else only as
many of its lines are written (a block cut short by a fault or a slice end).  Lines are kept
as UTF-8 bytes and written to the file's byte layer thousands at a time; the text format's
count column is pieced together from one formatted number per ten lines.

**Tenet mode.**  A Tenet trace needs the registers at every instruction, so it keeps a code
hook, but a raw one whose common case is cheap: the eight registers are one 64-byte snapshot
of Unicorn's own storage (`Cpu.gpr_view`), compared as bytes and unpacked only when they
differ (half the instructions of a boot); memory accesses are formatted by a raw memory hook
as they happen; lines are queued and written thousands at a time.

Both write byte for byte what the per-instruction path writes (tests compare them;
``LGEMU_TRACE_EXACT=1`` forces that path).

The ring is not read per instruction (a register read costs more than the rest of the line):
it can only change at an event (a trap, an interrupt, a hypercall), at a run boundary, or at
an instruction that changes privilege by itself (iret, lret, far jmp/call, sysexit).  Those
mark it unknown by pointing the line cache at an empty dictionary; the next instruction then
takes the slow path, reads CS once, and switches to that ring's cache.

`--trace-filter` (grammar in `parse_filter`) costs nothing outside what it selects where it
can: symbol and address filters become range-limited code hooks, which Unicorn checks in C
(Unicorn §6); instruction-count windows install and remove the hooks at run boundaries,
the Tracer being a run-loop controller (`Guest.controllers`) that asks to stop exactly at
each window edge.  A ring filter cannot be an address range: it costs a Python call per
instruction in the other ring.  Tenet traces record memory with a memory hook, which slows
every load while the trace window is open (Unicorn §7).
"""

from __future__ import annotations

import io
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import attrgetter, ne, sub
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import capstone
import unicorn

from ..errors import InternalError, LgemuExit, UserError
from ..host.events import VMCALL_REWRITTEN
from ..host.guest import Stage
from ..machine.cpu import GPRS, Reg
from .symbols import Symbols
from .tap import StreamTap, is_terminal, tap_console, untap_console
from .trace_formats import (
    FORMATS,
    MAX_MEMORY_VALUE,
    TENET_REGISTERS,
    Access,
    Insn,
    TenetFormat,
    TextFormat,
    TraceFormat,
)

if TYPE_CHECKING:
    from contextlib import ExitStack

    from ..config import BootConfig
    from ..host.guest import Guest

KERNEL_BASE = 0xC0000000  # PAGE_OFFSET: a new address space keeps what is above
ALL = (1, 0)  # a Unicorn hook range meaning "every address"
MAX_ACCESSES = 64  # memory accesses kept per instruction for tenet (rep loops restart)
RING_CHANGERS = frozenset({capstone.x86.X86_INS_IRET, capstone.x86.X86_INS_IRETD,
                           capstone.x86.X86_INS_RETF, capstone.x86.X86_INS_RETFQ,
                           capstone.x86.X86_INS_LJMP, capstone.x86.X86_INS_LCALL,
                           capstone.x86.X86_INS_SYSEXIT, capstone.x86.X86_INS_SYSRET})
FILTER_KINDS = ("sym", "addr", "ring", "icount", "call")
UNBOUNDED = 1 << 64
SKIP = "%.0s"  # a line template that formats the count into nothing
MAX_INSN = 15  # bytes in the longest x86 instruction
MAX_BLOCK = 1 << 16  # more than any translated block
PAGE = 4096
LOG_LIMIT = 1 << 13  # entries (two per block) block mode logs before it writes
_block_lines = attrgetter("lines")
_block_count = attrgetter("count")
_DIGITS = tuple(b"%d" % digit for digit in range(10))
_NO_TENS = b" " * 9  # the count column's first nine characters for counts below 10
# Tenet mode: the low halves of `Cpu.gpr_view`'s eight u64s (EAX ECX EDX EBX ESP EBP ESI
# EDI), and what Tenet calls each, in the order of its lines (`TENET_REGISTERS`).
_GPR_LOW = struct.Struct("<" + "I4x" * len(GPRS)).unpack
(_EAX, _EBX, _ECX, _EDX, _EBP, _ESP, _ESI, _EDI) = (f"{name}=%#x" for name in TENET_REGISTERS)
_ACCESS = ("mr=%#x:", "mw=%#x:")
_MASKS = tuple((1 << 8 * size) - 1 for size in range(MAX_MEMORY_VALUE + 1))
LINES_LIMIT = 1 << 12  # lines tenet mode queues before it writes


@dataclass(frozen=True, slots=True)
class _Block:
    """A translated block as block mode writes it: its instructions' line templates, as
    UTF-8 bytes (``bytes % args`` finds each ``%`` with memchr where ``str % args`` steps
    through every character, and the file takes them without another encoding)."""

    size: int  # bytes, as Unicorn reported them
    span: int  # bytes its cached lines depend on
    count: int  # instructions
    lines: tuple[bytes, ...]  # templates, or (text format) the lines after the count
    changes_ring: bool  # it ends with an instruction that may change rings


# -- the filter -------------------------------------------------------------------------
@dataclass
class TraceFilter:
    """What `--trace-filter` selects.  Terms of one kind are alternatives (either symbol);
    terms of different kinds must all hold (this symbol, and in ring 1)."""

    symbols: list[str] = field(default_factory=list)
    ranges: list[tuple[int, int]] = field(default_factory=list)  # [begin, end) addresses
    rings: frozenset[int] | None = None
    windows: list[tuple[int, int]] = field(default_factory=list)  # [first, end) icounts
    calls: list[str] = field(default_factory=list)  # functions whose calls are traced whole

    def call_ranges(self, symbols: Symbols | None) -> list[tuple[int, int]]:
        """Where the `call:` functions start (see lgemu.debug.callwindow)."""
        return [r for name in self.calls for r in _symbol_ranges(symbols, name)]

    def code_ranges(self, symbols: Symbols | None) -> list[tuple[int, int]] | None:
        """Merged [begin, end) ranges the code hooks cover, None for everywhere."""
        wanted = list(self.ranges)
        for name in self.symbols:
            wanted.extend(_symbol_ranges(symbols, name))
        if not wanted:
            return None
        return _merge(wanted)

    def window(self, n: int) -> tuple[bool, int | None]:
        """Is instruction number `n` inside the windows, and the next number where that
        changes (None: never)."""
        if not self.windows:
            return True, None
        for first, end in self.windows:
            if n < first:
                return False, first
            if n < end:
                return True, end if end < UNBOUNDED else None
        return False, None

    def in_window(self, icount: int) -> bool:
        return self.window(icount)[0]


def _symbol_ranges(symbols: Symbols | None, name: str) -> list[tuple[int, int]]:
    """Where symbol `name` lies ([begin, end) ranges); a UserError if the kernel has none."""
    found = symbols.ranges(name) if symbols is not None else []
    if not found:
        where = symbols.path if symbols is not None else "the kernel"
        raise UserError(f"--trace-filter: no symbol {name!r} in {where}")
    return found


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for begin, end in sorted(ranges):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((begin, end))
    return merged


def _number(text: str, term: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UserError(f"--trace-filter: {term!r}: {text!r} is not a number") from None


def _span(value: str, term: str, open_end: bool) -> tuple[int, int]:
    first, sep, last = value.partition("-")
    if not sep:
        raise UserError(f"--trace-filter: {term!r}: want START-END")
    begin = _number(first, term)
    if not last and open_end:
        return begin, UNBOUNDED
    end = _number(last, term)
    if end <= begin:
        raise UserError(f"--trace-filter: {term!r}: the end must come after the start")
    return begin, end


def parse_filter(text: str) -> TraceFilter:
    """``sym:NAME``, ``addr:START-END``, ``ring:N``, ``icount:FIRST-END`` (or ``FIRST-``),
    ``call:NAME``, comma-separated; ranges include START and stop before END; numbers in C
    syntax."""
    result = TraceFilter()
    rings: set[int] = set()
    for term in (t.strip() for t in text.split(",")):
        kind, sep, value = term.partition(":")
        if not sep or not value or kind not in FILTER_KINDS:
            raise UserError(f"--trace-filter: {term!r}: want one of "
                            + ", ".join(f"{k}:…" for k in FILTER_KINDS))
        if kind == "sym":
            result.symbols.append(value)
        elif kind == "call":
            result.calls.append(value)
        elif kind == "addr":
            result.ranges.append(_span(value, term, open_end=False))
        elif kind == "ring":
            ring = _number(value, term)
            if ring not in range(4):
                raise UserError(f"--trace-filter: {term!r}: rings are 0 to 3")
            rings.add(ring)
        else:
            first, end = _span(value, term, open_end=True)
            if first < 1:
                raise UserError(f"--trace-filter: {term!r}: instructions count from 1")
            result.windows.append((first, end))
    result.rings = frozenset(rings) if rings else None
    result.windows = _merge(result.windows)
    return result


# -- where the lines go ------------------------------------------------------------------
class TraceOutput:
    """A text stream for trace lines: a file of its own, the guest's stdout (``-``, then
    flushed at every event so guest output and trace interleave in order), or stderr."""

    def __init__(self, stream: TextIO, name: str, interleaved: bool, owned: bool) -> None:
        self.stream = stream
        self.name = name
        self.interleaved = interleaved
        self._owned = owned
        self.write = stream.write

    @classmethod
    def open(cls, destination: str, guest: Guest, stderr: TextIO | None) -> TraceOutput:
        """`destination` is a path, ``-`` for stdout, or ``""`` for stderr."""
        if destination == "-":
            stream = io.TextIOWrapper(guest.console.stream, encoding="utf-8",
                                      errors="replace", newline="\n")
            return cls(stream, "stdout", interleaved=True, owned=False)
        if not destination:
            return cls(stderr or sys.stderr, "stderr", interleaved=True, owned=False)
        try:
            stream = open(destination, "w", encoding="utf-8", errors="replace",
                          newline="\n", buffering=1 << 20)
        except OSError as e:
            raise UserError(f"{destination}: cannot write the trace "
                            f"({e.strerror or e})") from None
        return cls(stream, destination, interleaved=False, owned=True)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        """Flush; close a file of our own, leave stdout/stderr open."""
        try:
            self.flush()
        finally:
            if self._owned:
                self.stream.close()
            elif isinstance(self.stream, io.TextIOWrapper) and self.name == "stdout":
                try:
                    self.stream.detach()
                except (OSError, ValueError):  # a reader that went away, already discarded
                    pass

    def discard(self) -> None:
        """The reader went away (``| head``): write nothing more."""
        self.write = lambda text: 0
        self.flush = lambda: None  # type: ignore[method-assign]


# -- the tracer --------------------------------------------------------------------------
class Tracer:
    """Writes one run's instructions and/or events through a `TraceFormat`."""

    def __init__(self, guest: Guest, fmt: TraceFormat, out: TraceOutput,
                 symbols: Symbols | None, trace_filter: TraceFilter,
                 instructions: bool = True, events: bool = True) -> None:
        self.guest = guest
        self.cpu = guest.cpu
        self.fmt = fmt
        self.out = out
        self.symbols = symbols
        self.filter = trace_filter
        self.instructions = instructions
        self.events = events and fmt.carries_events
        self.ranges = trace_filter.code_ranges(symbols) if instructions else None
        self.calls = None
        if instructions and trace_filter.calls:
            from .callwindow import CallWindow
            self.calls = CallWindow(guest, trace_filter.call_ranges(symbols))
        self._rings = trace_filter.rings
        self._disasm = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
        self._disasm.syntax = capstone.CS_OPT_SYNTAX_ATT
        self._decoded: dict[int, Insn] = {}
        self._caches: list[dict[int, str]] = [{}, {}, {}, {}]  # per ring: address → template
        self._unknown: dict[int, str] = {}  # the ring is not known: every lookup misses
        # For a ring the filter leaves out: address → SKIP, a template that writes nothing
        # (instructions that change rings are never cached, so they are still noticed).
        self._skips: list[dict[int, str]] = [{}, {}, {}, {}]
        self._wanted = True
        self._cache = self._unknown
        self._ring = 1
        self._blocks: dict[int, bytes | None] = {}  # block start → bytes when last linked
        self._counter = self.cpu.position_view
        self._base = 0  # instructions executed before the current run
        self._hooks: list[int] = []
        self._broken = False
        self._write = out.write
        # State mode: last register values, last traced instruction, accesses since.
        self._regs = tuple(Reg[name.upper()] for name in fmt.state_registers)
        self._last: list[int] | None = None
        self._last_icount = 0
        self._memory: list[Access] = []
        # Trace to stdout: the console's last byte, and whether it wrote since our last line.
        self._tap: StreamTap | None = None
        self._console_last = b"\n"
        self._console_wrote = False
        # Block mode (module docstring): the block whose lines are still to be written, the
        # count before its first instruction, and how many of its lines are out already.
        self.block_mode = (instructions and not fmt.stateful and not fmt.records_memory
                           and self.ranges is None and self.calls is None
                           and self._rings is None and not trace_filter.windows
                           and not out.interleaved
                           and not os.environ.get("LGEMU_TRACE_EXACT"))
        # Tenet mode (`_tenet_hooks`): the same lines as state mode through a code hook that
        # compares a snapshot of the registers' bytes and a memory hook that formats each
        # access as it happens; lines are queued and written in thousands.
        self.tenet_mode = (instructions and isinstance(fmt, TenetFormat)
                           and self._rings is None and self.calls is None
                           and not os.environ.get("LGEMU_TRACE_EXACT"))
        self._lines: list[str] = []
        self._accesses: list[str] = []
        self._tenet: tuple[Callable[..., None], Callable[..., None]] | None = None
        self._pending: _Block | None = None
        self._pages: dict[int, set[int]] = {}  # page → decoded or block addresses touching it
        # Blocks ending with an instruction that may change rings, per ring: kept out of
        # `_caches` so that the block hook's fast path never meets one (see `_new_block`).
        self._changers: list[dict[int, _Block]] = [{}, {}, {}, {}]
        self._log: list[_Block | int] = []  # block, counter value when it started, ...
        self._batch: list[bytes] = []  # lines (templates) that ran, not yet written
        # The text format's count column is written without a `%` (see `_drain`).
        self._column = isinstance(fmt, TextFormat)
        self._batch_first = 0  # the count before the first queued line
        self._pending_start = 0
        self._pending_done = 0
        self._bwrite: Callable[[bytes], object] = lambda data: 0
        if self.block_mode:  # every write goes to the file's byte layer, in order
            self._bwrite = out.stream.buffer.write  # type: ignore[attr-defined]
            self._write = self._write_text

    # -- attaching ---------------------------------------------------------------------
    def attach(self) -> None:
        """Start watching (before the run)."""
        header = self.fmt.header()
        if header:
            self._write(header)
        if self.events or self.instructions:
            self.guest.add_observer(self._on_event)
        # Sharing a terminal with the guest's console: keep the two on separate lines.
        if self.out.name == "stdout" or (self.out.name == "stderr"
                                         and is_terminal(self.out.stream)):
            self._tap = tap_console(self.guest.console, self._before_console)
        if self.instructions:
            self.guest.add_controller(self, Stage.TRACE)
        if self.calls is not None:
            self.calls.attach()

    def close(self) -> None:
        """Finish the pending line, stop watching, flush (after the run, whatever the
        outcome)."""
        try:
            self._take_log()
            self._write_lines()
            if not self._broken and self._pending is not None:
                self._flush_block(self.guest.clock.executed)
                self._pending = None
            if not self._broken and self.fmt.pending:
                self._settle(self.guest.clock.executed)
        except Exception as e:  # the run is over: report, do not raise from cleanup
            self._fail(e)
        self._unhook()
        if self.calls is not None:
            self.calls.detach()
        untap_console(self.guest.console, self._tap)
        self.guest.remove_observer(self._on_event)
        self.guest.remove_controller(self)
        try:
            self.out.close()
        except OSError as e:
            if not self._broken and not isinstance(e, BrokenPipeError):
                raise UserError(f"{self.out.name}: cannot write the trace "
                                f"({e.strerror or e})") from None

    def _hook(self) -> None:
        if self.tenet_mode:
            if self._tenet is None:  # made once: their state outlasts a window's end
                self._tenet = self._tenet_hooks()
            on_insn, on_memory = self._tenet
            for begin, end in self.ranges or [ALL]:
                last = end - 1 if (begin, end) != ALL else end
                self._hooks.append(self.cpu.on_instruction(on_insn, begin, last, raw=True))
            self._hooks.append(self.cpu.on_memory_values(on_memory, raw=True))
            return
        if self.block_mode:
            self._hooks.append(self.cpu.on_block(self._block_hook(), raw=True))
            self._hooks.append(self.cpu.on_block_linked(self._on_linked))
            return
        on_insn = self._on_state if self.fmt.stateful else self._on_insn
        if self.calls is not None:
            on_insn = self._call_filtered(on_insn)
        for begin, end in self.ranges or [ALL]:
            last = end - 1 if (begin, end) != ALL else end
            self._hooks.append(self.cpu.on_instruction(on_insn, begin, last))
            self._hooks.append(self.cpu.on_block_linked(self._on_linked, begin, last))
        if self.fmt.records_memory:
            self._hooks.append(self.cpu.on_memory_values(self._on_memory))

    def _unhook(self) -> None:
        for handle in self._hooks:
            self.cpu.remove_hook(handle)
        self._hooks.clear()

    # -- run boundaries (a Guest controller) -------------------------------------------
    def boundary(self, guest: Guest) -> int | None:
        """Before each run of the CPU: note the count, forget the ring, open or close the
        instruction-count window; returns how far the next run may go."""
        try:
            self._take_log()
            self._write_lines()
            if self._pending is not None:
                self._flush_block(guest.clock.executed)
        except Exception as e:  # a reader that went away, a full disk: as from a hook
            self._fail(e)
        self._pending = None
        self._base = self._batch_first = guest.clock.executed
        self._cache = self._unknown
        if self._broken:  # hooks are removed here, never from inside one (see `_fail`)
            self._unhook()
            return None
        n = self._base + 1  # the number of the next instruction
        active, change = self.filter.window(n)
        if self.calls is not None:
            active = active and self.calls.inside
        if active and not self._hooks:
            self._hook()
            self._memory.clear()
            self._accesses.clear()
        elif not active and self._hooks:
            if self.fmt.pending:  # the run stopped right after the window's last one
                self._settle(self._base)
            self._unhook()
        return None if change is None else change - n

    # -- instructions --------------------------------------------------------------------
    def _call_filtered(self, on_insn: Callable[[int, int], None]) -> Callable[[int, int], None]:
        """`on_insn`, but an instruction at a return address that ends the outermost watched
        call is not traced (the run is cut before it; the boundary then unhooks)."""
        calls = self.calls
        returns_ended = calls.returning

        def hook(address: int, size: int) -> None:
            if address in calls.returns:
                try:
                    if returns_ended(address):
                        return
                except Exception as e:
                    self._fail(e)
                    return
            if calls.inside:
                on_insn(address, size)
        return hook

    def _on_insn(self, address: int, size: int) -> None:
        """Fast mode: the line is cached for this address and ring, or `_slow` makes it."""
        try:
            self._write(self._cache[address] % (self._base + self._counter.value))
        except KeyError:
            self._slow(address, size)
        except Exception as e:
            self._fail(e)

    def _slow(self, address: int, size: int) -> None:
        try:
            if self._broken:
                return
            line = self._template(address, size)
            if self._wanted:
                if self._console_wrote:
                    self._resume_line()
                self._write(line % (self._base + self._counter.value))
        except Exception as e:
            self._fail(e)

    def _template(self, address: int, size: int) -> str:
        """The line template for `address` in the current ring (SKIP in a ring the filter
        leaves out), cached unless the instruction may change rings."""
        if self._cache is self._unknown:
            self._ring = self.cpu.cpl()
            self._wanted = self._rings is None or self._ring in self._rings
            self._cache = (self._caches if self._wanted else self._skips)[self._ring]
        line = self._cache.get(address)
        if line is None:
            insn = self._insn(address, size)
            line = self.fmt.template(insn, self._ring) if self._wanted else SKIP
            if insn.changes_ring:
                self._cache = self._unknown
            else:
                self._cache[address] = line
        return line

    def _on_state(self, address: int, size: int) -> None:
        """State mode: registers (and memory) since the previous traced instruction."""
        try:
            if self._broken:
                return
            line = self._template(address, size)
            if not self._wanted:
                return
            icount = self._base + self._counter.value
            if self._console_wrote:
                self._resume_line()
            gap = icount - self._last_icount - 1 if self._last is not None else 0
            memory = self._memory if gap == 0 else []  # accesses of untraced code: dropped
            self._memory = []
            self._write(self.fmt.step(icount, line, self._changes(), memory, gap))
            self._last_icount = icount
        except Exception as e:
            self._fail(e)

    def _changes(self) -> list[tuple[str, int]]:
        values = self.cpu.regs(self._regs)
        last, self._last = self._last, values
        names = self.fmt.state_registers
        if last is None:
            return list(zip(names, values, strict=True))
        return [(n, v) for n, v, old in zip(names, values, last, strict=True) if v != old]

    def _settle(self, icount: int) -> None:
        gap = max(0, icount - self._last_icount)
        self._write(self.fmt.settle(self._changes(), gap))

    def _on_memory(self, is_write: bool, address: int, size: int, value: int) -> None:
        if len(self._memory) < MAX_ACCESSES:
            self._memory.append((is_write, address, size, value))

    def _tenet_hooks(self) -> tuple[Callable[[object, int, int, object], None],
                                     Callable[[object, int, int, int, int, object], None]]:
        """Tenet mode's raw code and memory hooks (see `_on_state` and `TenetFormat.step`
        for what they write).  Per instruction the registers are one 64-byte snapshot; only
        when it differs from the last one are they unpacked and compared one by one.  The
        memory hook formats an access as it happens, which `step` would do later anyway."""
        counter = self._counter
        snapshot = self.cpu.gpr_view.tobytes
        accesses = self._accesses
        lines = self._lines
        queue = lines.append
        # Sharing stdout or stderr, each line goes out at once, as state mode's do.
        limit = 0 if self.out.interleaved else LINES_LIMIT
        eips: dict[int, str] = {}  # address → "eip=0x…" (the code's addresses: bounded)
        eip_of = eips.get
        last_regs = b""  # the registers' bytes at the last traced instruction
        last_values = (-1,) * len(GPRS)  # and their values (none yet: all differ)
        last_icount = -1  # its number (none yet)
        write = unicorn.UC_MEM_WRITE

        def on_insn(handle: object, address: int, size: int, data: object) -> None:
            nonlocal last_regs, last_values, last_icount
            try:  # once broken, `_write` writes nothing: no need to look per instruction
                icount = self._base + counter.value
                if self._console_wrote:
                    self._write_lines()
                    self._resume_line()
                eip = eip_of(address)
                if eip is None:
                    eip = eips[address] = f"eip={address:#x}"
                regs = snapshot()
                if regs != last_regs:
                    # Unrolled: a loop or comprehension over the eight costs three times as
                    # much, and half the instructions of a boot change a register.
                    values = _GPR_LOW(regs)
                    eax, ecx, edx, ebx, esp, ebp, esi, edi = values
                    o_eax, o_ecx, o_edx, o_ebx, o_esp, o_ebp, o_esi, o_edi = last_values
                    parts = []
                    if eax != o_eax:
                        parts.append(_EAX % eax)
                    if ebx != o_ebx:
                        parts.append(_EBX % ebx)
                    if ecx != o_ecx:
                        parts.append(_ECX % ecx)
                    if edx != o_edx:
                        parts.append(_EDX % edx)
                    if ebp != o_ebp:
                        parts.append(_EBP % ebp)
                    if esp != o_esp:
                        parts.append(_ESP % esp)
                    if esi != o_esi:
                        parts.append(_ESI % esi)
                    if edi != o_edi:
                        parts.append(_EDI % edi)
                    parts.append(eip)
                    if accesses:
                        if icount - last_icount == 1 or last_icount < 0:
                            parts += accesses
                        accesses.clear()
                    last_regs, last_values = regs, values
                    queue(",".join(parts) + "\n")
                elif accesses:
                    if icount - last_icount == 1:
                        accesses.insert(0, eip)
                        queue(",".join(accesses) + "\n")
                    else:  # accesses of untraced code: dropped
                        queue(eip + "\n")
                    accesses.clear()
                else:
                    queue(eip + "\n")
                last_icount = icount
                if len(lines) > limit:
                    self._write_lines()
            except Exception as e:
                self._fail(e)

        def on_memory(handle: object, access: int, address: int, size: int, value: int,
                      data: object) -> None:
            if len(accesses) < MAX_ACCESSES:
                if size > MAX_MEMORY_VALUE:
                    size = MAX_MEMORY_VALUE
                accesses.append(_ACCESS[access == write] % address
                                + (value & _MASKS[size]).to_bytes(size, "little").hex())
        return on_insn, on_memory

    def _write_lines(self) -> None:
        """Write what tenet mode queued."""
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            self._write(text)

    def _insn(self, address: int, size: int,
              known: tuple[bytes, capstone.CsInsn] | None = None) -> Insn:
        """The decoded instruction at `address` (cached until its code changes); `known`:
        its bytes and capstone's decoding, when a whole block was just disassembled."""
        insn = self._decoded.get(address)
        if insn is not None and insn.size == size:
            return insn
        if known is not None:
            code, decoded = known
        else:
            code = self.cpu.read_code(address, size) if 0 < size <= MAX_INSN else None
            decoded = next(self._disasm.disasm(code, address, 1), None) if code else None
        if decoded is None:
            # Unicorn's size is a placeholder (or short) when translation stopped at this
            # instruction because it faults (#UD, #NM, a fetch from an unmapped page).
            longer = self._readable_prefix(address)
            decoded = next(self._disasm.disasm(longer, address, 1), None) if longer else None
            if decoded is not None:
                code = longer[:decoded.size]
        asm = f"{decoded.mnemonic} {decoded.op_str}".strip() if decoded else "(bad)"
        where = self.symbols.symbolize(address) if self.symbols is not None else None
        source = self.symbols.source(address) if self.symbols is not None else None
        insn = Insn(address, size, code, asm, where[0] if where else None,
                    where[1] if where else 0, source,
                    decoded is not None and decoded.id in RING_CHANGERS)
        self._decoded[address] = insn
        self._index(address, 1)
        return insn

    def _readable_prefix(self, address: int) -> bytes | None:
        """Up to 15 bytes at `address`, fewer if the page after it is not mapped."""
        code = self.cpu.read_code(address, MAX_INSN)
        if code is None:
            code = self.cpu.read_code(address, PAGE - address % PAGE)
        return code

    def _forget(self, begin: int, end: int) -> None:
        """Drop what was decoded for instructions starting in [begin, end), and (block mode)
        every cached block whose bytes overlap it.  Found through a page index, as blocks
        are linked, and so checked, by the thousand."""
        first, last = begin // PAGE, (end - 1) // PAGE
        if last - first < 64:
            pages = [p for p in range(first, last + 1) if p in self._pages]
        else:
            pages = [p for p in self._pages if first <= p <= last]
        decoded = self._decoded
        caches = (*self._caches, *self._changers) if self.block_mode else ()
        for page in pages:
            starts = self._pages[page]
            for address in [a for a in starts if a < end]:
                if begin <= address and address in decoded:
                    del decoded[address]
                    for cache in (*self._caches, *self._skips):  # none outlives its decoding
                        cache.pop(address, None)
                kept = False
                for cache in caches:
                    block = cache.get(address)
                    if block is not None:
                        if begin < address + block.span:  # type: ignore[attr-defined]
                            del cache[address]
                        else:
                            kept = True
                if not kept and address not in decoded:
                    starts.discard(address)
            if not starts:
                del self._pages[page]

    def _index(self, address: int, span: int) -> None:
        for page in range(address // PAGE, (address + max(span, 1) - 1) // PAGE + 1):
            self._pages.setdefault(page, set()).add(address)

    # -- block mode ------------------------------------------------------------------------
    def _block_hook(self) -> Callable[[object, int, int, object], None]:
        """Unicorn's raw block callback (`Cpu.on_block`) for each block about to run.  Its
        common case is two appends to a log: the block as rendered for this address and
        ring, and the counter.  What ran of each block is worked out from the log in bulk
        (`_take_log`); a block not rendered yet, or one that may change rings, takes
        `_new_block`.  A closure over locals, as it runs once per block."""
        counter = self._counter
        log = self._log
        push = log.append

        def on_block(handle: object, address: int, size: int, data: object) -> None:
            block = self._cache.get(address)
            if block is not None and block.size == size:
                push(block)
                push(counter.value)
                if len(log) > LOG_LIMIT:
                    try:
                        self._take_log()
                    except Exception as e:
                        self._fail(e)
            else:
                self._new_block(address, size)
        return on_block

    def _new_block(self, address: int, size: int) -> None:
        """The block hook's other case: render the block if need be, log it, and if it may
        change rings, make the next block look the ring up."""
        try:
            if self._broken:
                return
            if self._cache is self._unknown:
                self._ring = self.cpu.cpl()
                self._cache = self._caches[self._ring]
            block = self._cache.get(address)  # type: ignore[assignment]
            if block is None or block.size != size:
                block = self._changers[self._ring].get(address)
                if block is None or block.size != size:
                    block = self._render_block(address, size)
            self._log.append(block)
            self._log.append(self._counter.value)
            if block.changes_ring:
                self._cache = self._unknown
        except Exception as e:
            self._fail(e)

    def _take_log(self) -> None:
        """Queue the lines of the logged blocks that ran, and write them.  Entry i ran whole
        when entry i + 1 started as many instructions later as it has; those, the common
        case, are found with C-level maps and their lines queued in one extend.  A block
        that did not (cut by a fault, or still running: the last one) goes through
        `_flush_block` as the pending block.  Lines come out as the per-block logic would
        write them."""
        log = self._log
        if not log or self._broken:
            log.clear()
            return
        blocks: list[_Block] = log[0::2]  # type: ignore[assignment]
        starts: list[int] = log[1::2]  # type: ignore[assignment]
        log.clear()
        base = self._base
        self._advance(base + starts[0])
        batch = self._batch
        first = 0
        cut = compress(range(len(blocks) - 1),
                       map(ne, map(sub, starts[1:], starts), map(_block_count, blocks)))
        for i in cut:  # blocks[i] did not run whole
            batch.extend(chain.from_iterable(map(_block_lines, blocks[first:i])))
            self._pending, self._pending_start, self._pending_done = (
                blocks[i], base + starts[i], 0)
            self._flush_block(base + starts[i + 1])
            first = i + 1
        batch.extend(chain.from_iterable(map(_block_lines, blocks[first:-1])))
        self._pending = blocks[-1]
        self._pending_start = base + starts[-1]
        self._pending_done = 0
        self._drain(self._pending_start)

    def _advance(self, now: int) -> None:
        """The pending block's lines, as far as it ran before `now` (a block started)."""
        pending = self._pending
        if pending is None:
            return
        if self._pending_done == 0 and now - self._pending_start == pending.count:
            self._batch.extend(pending.lines)
        else:
            self._flush_block(now)
        self._pending = None

    def _drain(self, end: int) -> None:
        """Write the queued lines, which take the counts after `_batch_first` up to `end`:
        one ``%`` and one write for thousands of lines."""
        batch = self._batch
        if batch:
            first = self._batch_first + 1
            if not self._column:
                data = b"".join(batch) % tuple(range(first, end + 1))
            else:
                data = b"".join(self._count_column(batch, first, end))
            batch.clear()
            self._bwrite(data)
        self._batch_first = end

    @staticmethod
    def _count_column(lines: list[bytes], first: int, end: int) -> list[bytes]:
        """`lines` behind the counts `first` to `end`, right-aligned in ten columns, as the
        pieces of one join: the count's tens once per ten lines, then its last digit.
        Formatting each number would cost more than the rest of the trace's writing."""
        n = len(lines)
        if n != end - first + 1:
            raise InternalError(f"{n} lines for the counts {first} to {end}")
        tens = [b"%9d" % t if t else _NO_TENS for t in range(first // 10, end // 10 + 1)]
        skip = first % 10
        pieces: list[bytes] = [b""] * (3 * n)
        pieces[0::3] = list(chain.from_iterable(map(repeat, tens, repeat(10))))[skip:skip + n]
        pieces[1::3] = (_DIGITS * (n // 10 + 2))[skip:skip + n]
        pieces[2::3] = lines
        return pieces

    def _write_text(self, text: str) -> None:
        """Block mode's `_write`: an event line, encoded as the text layer would."""
        self._bwrite(text.encode("utf-8", "replace"))

    def _flush_block(self, now: int) -> None:
        """Write the queued lines and the pending block's lines for the instructions counted
        up to `now`."""
        block = self._pending
        assert block is not None
        start = self._pending_start
        done = self._pending_done
        ran = min(now - start, block.count)
        if ran > done:
            self._batch.extend(block.lines[done:ran])
            self._pending_done = ran
        self._drain(start + max(ran, done))

    def _render_block(self, address: int, size: int) -> _Block:
        """The lines of the block at `address` in the current ring (cached unless its size is
        Unicorn's placeholder for a block cut at a faulting instruction)."""
        code = self.cpu.read_code(address, size) if 0 < size <= MAX_BLOCK else None
        insns: list[Insn] = []
        at = address
        if code is not None:
            for decoded in self._disasm.disasm(code, address):
                offset = decoded.address - address
                insns.append(self._insn(decoded.address, decoded.size,
                                        (code[offset:offset + decoded.size], decoded)))
                at = decoded.address + decoded.size
        regular = code is not None and at == address + size
        if not regular:  # the rest is one instruction Unicorn could not translate whole
            insns.append(self._insn(at, address + size - at if code is not None else 0))
        render = self.fmt.body if self._column else self.fmt.template  # type: ignore[attr-defined]
        lines = tuple(render(insn, self._ring).encode("utf-8", "replace") for insn in insns)
        changes_ring = any(insn.changes_ring for insn in insns)
        block = _Block(size, max(size, at - address + 1), len(lines), lines, changes_ring)
        if regular:
            cache = self._changers[self._ring] if changes_ring else self._cache
            cache[address] = block  # type: ignore[assignment]
            self._index(address, block.span)
        return block

    def _on_linked(self, address: int, size: int) -> None:
        """A block was linked: if its bytes changed since it was decoded, decode again."""
        try:
            code = self.cpu.read_code(address, size) if 0 < size <= MAX_BLOCK else None
            known = self._blocks.get(address, b"")
            if known != code:
                self._blocks[address] = code
                # A first link (most are) needs no `_forget`, which walks whole pages, when
                # what was decoded there still matches the bytes.
                if known or code is None or not self._decoded_as(address, code):
                    self._forget(address, address + size)
        except Exception as e:
            self._fail(e)

    def _decoded_as(self, address: int, code: bytes) -> bool:
        """Do the instructions decoded over [address, address + len(code)) have these bytes?
        Every cached line or block was rendered from such instructions (`_forget` drops
        them together), so if they all agree nothing cached depends on other bytes."""
        decoded = self._decoded
        end = address + len(code)
        for at in range(max(address - MAX_INSN + 1, 0), end):
            insn = decoded.get(at)
            if insn is None or at + insn.size <= address:
                continue
            if insn.code is None:
                return False
            lo, hi = max(at, address), min(at + insn.size, end)
            if insn.code[lo - at:hi - at] != code[lo - address:hi - address]:
                return False
        return True

    # -- events ----------------------------------------------------------------------------
    def _on_event(self, icount: int, kind: str, text: str) -> None:
        if kind == "pgfill" or self._broken:
            return
        try:
            self._cache = self._unknown  # a trap, interrupt or hypercall may switch rings
            if kind == "hcall" and text.startswith("hcall NEW_PGTABLE"):
                self._forget(0, KERNEL_BASE)
                self._blocks = {a: c for a, c in self._blocks.items() if a >= KERNEL_BASE}
            elif kind == "trap" and text.endswith(VMCALL_REWRITTEN):  # the Host patched code
                eip = int(text.split("eip=", 1)[1].split(None, 1)[0], 16)
                self._forget(eip, eip + 3)  # vmcall is 3 bytes
            if not self.filter.in_window(icount):
                return
            self._take_log()
            if self._pending is not None:
                self._flush_block(icount)
            if self._console_wrote:
                self._resume_line()
            if self.fmt.pending:
                self._settle(icount)
            if self.events:
                self._write(self.fmt.event(icount, kind, text))
            if self.out.interleaved:
                self.out.flush()
        except Exception as e:
            self._fail(e)

    # -- sharing stdout with the guest ----------------------------------------------------
    def _before_console(self, data: bytes) -> None:
        """The console is about to write: our lines go out first; the next one starts on
        a line of its own (and takes the slow path, which looks)."""
        if data:
            self._write_lines()
            self.out.flush()
            self._console_last = data[-1:]
            self._console_wrote = True
            self._cache = self._unknown

    def _resume_line(self) -> None:
        self._console_wrote = False
        if self._console_last != b"\n":
            self._write("\n")

    # -- failures --------------------------------------------------------------------------
    def _fail(self, error: BaseException) -> None:
        """Stop tracing.  A reader that went away is not an error (the guest runs on, as
        its console does); a trace file that cannot be written ends the run."""
        if self._broken:
            return
        # The hooks stay until the next boundary: removing one from inside its own callback
        # would free the ctypes thunk that is running.  They write nothing from now on.
        self._broken = True
        self._write = lambda text: 0
        self._bwrite = lambda data: 0
        self._log.clear()
        if isinstance(error, BrokenPipeError):
            self.out.discard()
            return
        if isinstance(error, OSError):
            outcome: LgemuExit = UserError(f"{self.out.name}: cannot write the trace "
                                           f"({error.strerror or error})")
        else:
            if os.environ.get("LGEMU_DEBUG"):
                import traceback
                traceback.print_exception(error)
            outcome = InternalError(f"trace: {type(error).__name__}: {error}")
        self.out.discard()
        self.guest.finish(outcome)


def check_options(config: BootConfig) -> None:
    """Refuse trace options that cannot work, before anything is loaded (UserError)."""
    if config.events and not FORMATS[config.trace_format].carries_events:
        raise UserError(f"--events: the {config.trace_format} format cannot carry events")
    trace_filter = parse_filter(config.trace_filter) if config.trace_filter else TraceFilter()
    instructions = config.trace is not None and not config.events
    if not instructions and (trace_filter.symbols or trace_filter.ranges or trace_filter.rings):
        raise UserError("--trace-filter: with --events only icount: terms apply "
                        "(sym:, addr: and ring: select instructions)")


def open_tracer(guest: Guest, trace: str | None, trace_format: str, regs: bool,
                filter_text: str | None, events: bool, stderr: TextIO | None) -> Tracer:
    """The tracer `--trace`/`--events` ask for, attached to `guest` (raises UserError for
    an unwritable file; the options were checked by `check_options`)."""
    fmt_class = FORMATS[trace_format]
    trace_filter = parse_filter(filter_text) if filter_text else TraceFilter()
    instructions = trace is not None and not events
    symbols = Symbols.load(Path(guest.boot.kernel.path)) if instructions else None
    if symbols is not None and symbols.problems and stderr is not None:
        for problem in symbols.problems:
            print(f"lgemu: {guest.boot.kernel.path}: {problem}", file=stderr)
    out = TraceOutput.open(trace or "", guest, stderr)
    try:
        tracer = Tracer(guest, fmt_class(regs), out, symbols, trace_filter, instructions,
                        events=True)
        tracer.attach()
    except BaseException:
        out.close()
        raise
    return tracer


def attach_trace(stack: ExitStack, guest: Guest, config: BootConfig,
                 stderr: TextIO | None) -> None:
    """`--trace`, `--events` and their options, for the duration of `stack`."""
    if not config.traced:
        return
    tracer = open_tracer(guest, config.trace, config.trace_format, config.trace_regs,
                         config.trace_filter, config.events, stderr)
    stack.callback(tracer.close)
