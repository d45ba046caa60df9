"""`--timeline FILE`: the boot as a timeline of phases and initcalls, in guest virtual time.

Without touching the kernel and without `initcall_debug`: the kernel's initcall table
(`__initcall_start` … `__initcall_end`, function pointers the linker gathered) is read from
the ELF file, and a few well-known boot functions (`PHASES`) are looked up by name.  lgemu
then stops the CPU at the entry of each of them with Unicorn's exits (`Cpu.set_breakpoints`:
free while the guest runs elsewhere, unlike code hooks, which slow every instruction); at an
entry it notes the guest time and the return address on the stack and stops there next, so
the duration is exact: from the call to the return, with the value returned (an initcall's
error code).  Each address is watched only until it is reached, so the run is stopped a few
hundred times in a whole boot.  The first instruction in ring 3 (a code hook over user
addresses, installed only once the kernel is about to start `init`) ends the boot.

A run-loop controller (`lgemu.host.guest`); gdb also sets Unicorn's exits, so the two do
not go together.  Guest time is virtual: two runs give identical timelines.

Output: a text table (rich), or with a FILE ending in ``.svg`` a picture in the manner of
Linux's bootgraph.pl; `-v` also prints the table on stderr.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from xml.sax.saxutils import escape

from elftools.elf.elffile import ELFFile

from ..errors import UserError
from ..host.guest import Stage
from ..machine.cpu import Reg
from .kernelmem import KernelMemory
from .outfile import check_writable, write_text

if TYPE_CHECKING:
    from contextlib import ExitStack

    from ..config import BootConfig
    from ..host.guest import Guest
    from .symbols import Symbols

# Boot functions shown as phases where the kernel has them (2.6.24's init/main.c order).
PHASES = ("start_kernel", "setup_arch", "paging_init", "trap_init", "sched_init", "time_init",
          "console_init", "mem_init", "kmem_cache_init", "calibrate_delay", "rest_init",
          "kernel_init", "do_basic_setup", "free_initmem", "run_init_process")
# Calling these means user space is about to start: watch for its first instruction.
EXEC_INIT = ("run_init_process", "kernel_execve", "init_post")
USER_LIMIT = 0xC0000000  # below PAGE_OFFSET: user addresses
MAX_INITCALLS = 1 << 14


@dataclass
class Span:
    """One call on the timeline."""

    kind: str  # "phase" | "initcall" | "event"
    name: str
    start_ns: int
    end_ns: int | None = None
    result: int | None = None  # EAX at the return: an initcall's error code

    @property
    def duration_ns(self) -> int | None:
        return None if self.end_ns is None else self.end_ns - self.start_ns


def initcall_table(symbols: Symbols) -> list[int]:
    """The function addresses in the kernel's initcall table, in calling order."""
    begin, end = symbols.named("__initcall_start"), symbols.named("__initcall_end")
    if not begin or not end:
        return []
    start, stop = begin[0].address, end[0].address
    if not 0 < stop - start <= 4 * MAX_INITCALLS:
        return []
    with open(symbols.path, "rb") as f:
        elf = ELFFile(f)
        for segment in elf.iter_segments():
            vaddr, size = segment["p_vaddr"], segment["p_filesz"]
            if segment["p_type"] == "PT_LOAD" and vaddr <= start and stop <= vaddr + size:
                f.seek(segment["p_offset"] + start - vaddr)
                data = f.read(stop - start)
                return list(struct.unpack(f"<{len(data) // 4}I", data[:len(data) // 4 * 4]))
    return []


class Timeline:
    """Records phases and initcalls of one boot; a run-loop controller."""

    def __init__(self, guest: Guest, symbols: Symbols) -> None:
        self.guest = guest
        self.symbols = symbols
        self.kmem = KernelMemory(guest)
        self.spans: list[Span] = []
        self.entries: dict[int, tuple[str, str]] = {}  # address → (kind, name)
        for name in PHASES:
            for sym in symbols.named(name)[:1]:
                if sym.kind == "function":
                    self.entries.setdefault(sym.address, ("phase", name))
        for address in initcall_table(symbols):
            if address not in self.entries:
                found = symbols.symbolize(address)
                self.entries[address] = ("initcall", found[0] if found and not found[1]
                                         else f"{address:#x}")
        self.exec_init = {sym.address for name in EXEC_INIT for sym in symbols.named(name)}
        self.returns: dict[int, list[tuple[int, Span]]] = {}  # address → [(esp, span)]
        self.armed: set[int] = set(self.entries)
        self.skip: int | None = None
        self.user_hook: int | None = None
        self.user_seen = False
        self.initcalls = sum(1 for kind, _ in self.entries.values() if kind == "initcall")

    def _now(self) -> int:
        return self.guest.clock.now_ns()

    def boundary(self, guest: Guest) -> int | None:
        """At a watched address: note the entry or the return, then watch what is next."""
        cpu = guest.cpu
        if self.user_seen and self.user_hook is not None:
            cpu.remove_hook(self.user_hook)  # never from inside the hook itself
            self.user_hook = None
        eip = cpu.reg(Reg.EIP)
        cap = None
        if self.skip is not None and eip != self.skip:
            self.skip = None
        if eip in self.armed and self.skip is None:
            esp = cpu.reg(Reg.ESP)
            handled = False
            if eip in self.returns:
                handled = self._returned(eip, esp)
            if eip in self.entries:
                self._entered(eip, esp)
                handled = True
            if not handled:  # a return address reached by someone else: step over it
                self.skip = eip
                cap = 1
        wanted = self.armed - {self.skip} if self.skip is not None else self.armed
        cpu.set_breakpoints(frozenset(wanted), shared=True)  # kernel text only
        return cap

    def _entered(self, eip: int, esp: int) -> None:
        kind, name = self.entries.pop(eip)
        self.armed.discard(eip)
        span = Span(kind, name, self._now())
        self.spans.append(span)
        ret = self.kmem.u32(esp)
        # start_kernel and others that never return were not called: what is on the stack
        # there is no return address (it need not even be kernel code).
        if ret is not None and self.symbols.symbolize(ret) is not None:
            self.returns.setdefault(ret, []).append((esp + 4, span))
            self.armed.add(ret)
        if eip in self.exec_init and self.user_hook is None and not self.user_seen:
            self.user_hook = self.guest.cpu.on_code(self._user_code, 0, USER_LIMIT - 1)

    def _returned(self, eip: int, esp: int) -> bool:
        waiting = self.returns[eip]
        for i in range(len(waiting) - 1, -1, -1):
            if waiting[i][0] == esp:
                span = waiting.pop(i)[1]
                span.end_ns = self._now()
                span.result = self.guest.cpu.reg(Reg.EAX)
                if not waiting:
                    del self.returns[eip]
                    if eip not in self.entries:
                        self.armed.discard(eip)
                return True
        return False

    def _user_code(self, address: int) -> None:
        if not self.user_seen and self.guest.cpu.cpl() == 3:
            self.user_seen = True
            self.spans.append(Span("event", "first user-space instruction",
                                   self.guest.clock.now_ns(self.guest.position())))

    def close(self) -> None:
        """The run is over: stop watching."""
        if self.user_hook is not None:
            self.guest.cpu.remove_hook(self.user_hook)
            self.user_hook = None
        self.guest.cpu.set_breakpoints(frozenset())

    # -- output ----------------------------------------------------------------------------
    def rows(self) -> list[Span]:
        """Every span, initcalls gathered under one "initcalls" phase, by start time."""
        spans = list(self.spans)
        calls = [s for s in spans if s.kind == "initcall"]
        if calls:
            ends = [s.end_ns for s in calls if s.end_ns is not None]
            spans.append(Span("phase", f"initcalls ({len(calls)} of {self.initcalls} run)",
                              calls[0].start_ns, max(ends) if ends else None))
        order = {"phase": 0, "event": 1, "initcall": 2}
        return sorted(spans, key=lambda s: (s.start_ns, order[s.kind], s.name))

    def table_text(self, width: int = 100) -> str:
        """The timeline as a rich table (plain text)."""
        import io

        from rich.console import Console
        from rich.markup import escape as markup_escape
        from rich.table import Table

        table = Table(title=f"boot timeline of {self.symbols.path.name} (guest time, "
                            f"{self.guest.clock.ns_per_insn} ns per instruction)")
        for column, justify in (("start ms", "right"), ("duration ms", "right"),
                                ("kind", "left"), ("name", "left"), ("returned", "right")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for span in self.rows():
            duration = "(running at exit)" if span.duration_ns is None and span.kind != \
                "event" else "" if span.duration_ns is None else f"{span.duration_ns / 1e6:.3f}"
            result = "" if span.result is None or span.kind != "initcall" else \
                str(span.result - (1 << 32) if span.result >> 31 else span.result)
            table.add_row(f"{span.start_ns / 1e6:.3f}", duration, span.kind,
                          markup_escape(span.name), result)
        out = io.StringIO()
        Console(file=out, width=width, no_color=True, highlight=False,
                color_system=None).print(table)
        return out.getvalue()

    def svg(self) -> str:
        """The timeline as a picture: one row per call, bars on a guest-time axis."""
        rows = self.rows()
        end = max([s.end_ns or s.start_ns for s in rows] + [self._now(), 1])
        left, width, row_h, top = 10, 1180, 14, 70
        label_room = 300
        scale = (width - label_room) / end
        height = top + row_h * len(rows) + 20
        colours = {"phase": "#4a7fb5", "initcall": "#e8913a", "event": "#c0392b"}
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 2 * left}" '
               f'height="{height}" font-family="monospace" font-size="11">',
               '<rect width="100%" height="100%" fill="#ffffff"/>',
               f'<text x="{left}" y="20" font-size="16">boot timeline of '
               f"{escape(self.symbols.path.name)}</text>",
               f'<text x="{left}" y="38" fill="#555">guest virtual time, '
               f"{self.guest.clock.ns_per_insn} ns per instruction; phases blue, initcalls "
               f"orange, the first user instruction red</text>"]
        step = _tick(end)
        t = 0
        while t <= end:
            x = left + t * scale
            out.append(f'<line x1="{x:.1f}" y1="{top - 12}" x2="{x:.1f}" y2="{height - 20}" '
                       f'stroke="#ddd"/><text x="{x + 2:.1f}" y="{top - 14}" fill="#777">'
                       f"{t / 1e6:g} ms</text>")
            t += step
        for i, span in enumerate(rows):
            y = top + i * row_h
            x = left + span.start_ns * scale
            stop = span.end_ns if span.end_ns is not None else end
            w = max((stop - span.start_ns) * scale, 1.0)
            ms = "" if span.duration_ns is None else f" {span.duration_ns / 1e6:.3f} ms"
            out.append(f'<g><title>{escape(span.name)}: at {span.start_ns / 1e6:.3f} ms'
                       f"{ms}</title>"
                       f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{row_h - 3}" '
                       f'fill="{colours[span.kind]}"/>'
                       f'<text x="{x + w + 3:.2f}" y="{y + row_h - 4}">'
                       f"{escape(span.name)}{ms}</text></g>")
        out.append("</svg>\n")
        return "\n".join(out)


def _tick(end_ns: int) -> int:
    """A round tick interval giving at most ~10 ticks."""
    step = 1_000
    while end_ns / step > 10:
        for factor in (2, 5 / 2, 2):
            step = int(step * factor)
            if end_ns / step <= 10:
                break
    return step


def write_timeline(timeline: Timeline, path: Path, stderr: TextIO | None,
                   verbose: int) -> None:
    """Write the picture or the table; with `verbose`, the table on stderr too."""
    timeline.close()
    data = timeline.svg() if path.suffix.lower() == ".svg" else timeline.table_text()
    write_text("--timeline", path, data)
    if verbose and stderr is not None:
        stderr.write(timeline.table_text())


def attach_timeline(stack: ExitStack, guest: Guest, config: BootConfig,
                    stderr: TextIO | None) -> None:
    """`--timeline FILE` for the duration of `stack`."""
    from .symbols import Symbols

    if config.gdb is not None:
        raise UserError("--timeline cannot be combined with --gdb (both use Unicorn's exits)")
    path = Path(config.timeline)
    check_writable("--timeline", path)
    timeline = Timeline(guest, Symbols.load(Path(guest.boot.kernel.path)))
    if not timeline.entries and stderr is not None:
        print(f"lgemu: --timeline: {guest.boot.kernel.path} names no boot function and no "
              "initcall table: the timeline will be empty", file=stderr)
    guest.add_controller(timeline, Stage.TRACE)
    stack.callback(write_timeline, timeline, path, stderr, config.verbose)
