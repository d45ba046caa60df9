"""`--profile FILE`: a sampling profiler that samples by instruction count, not by time.

Every `--profile-every` instructions (the guest's own count: instruction N, 2N, 3N, …) the
run loop hands control to the profiler (it is a run-loop controller, `lgemu.host.guest`,
capping runs to land on the next multiple exactly), which records the guest's call stack:
symbolized kernel frames from the unwinder (`lgemu.debug.unwind`: DWARF CFI, frame
pointers or the leaf alone), or one frame ``[user:COMM]`` for a sample in ring 3 (the user
program's ELF is not ours; COMM is the running task's name where the kernel's DWARF gives
it).  Two runs of the same inputs sample the same instructions and write byte-identical
profiles.

Time spent halted executes no instructions and is not sampled.  Each sample stands for
`every` instructions, i.e. `every × --insn-ns` nanoseconds of guest time.

Output, written when the run ends however it ends:

* ``folded`` — one line per distinct stack, ``outer;…;inner COUNT``, sorted: the input of
  flamegraph.pl, inferno and speedscope;
* ``svg`` — a flame graph drawn here (`lgemu.debug.flamegraph`), viewable in any browser;
* with ``-v``, the top functions by self and total time, on stderr.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from elftools.elf.elffile import ELFFile

from ..host.guest import Stage
from ..machine.cpu import GPRS, Reg
from .kernelmem import KernelMemory
from .outfile import check_writable, write_text
from .unwind import RA, Unwinder

if TYPE_CHECKING:
    from contextlib import ExitStack

    from ..config import BootConfig
    from ..host.guest import Guest
    from .symbols import Symbols
    from .tasks import TaskList

TOP_FUNCTIONS = 20
FRAME_POINTER_SAMPLE = 200  # function prologues looked at to judge frame pointers
PROLOGUE = 12  # bytes of each in which `mov %esp,%ebp` must appear
# DWARF numbers of the general registers, in `GPRS` order (eax ecx edx ebx esp ebp esi edi).
DWARF_GPRS = (0, 1, 2, 3, 4, 5, 6, 7)


class Profiler:
    """Samples one guest's call stacks; a run-loop controller."""

    def __init__(self, guest: Guest, symbols: Symbols, every: int) -> None:
        self.guest = guest
        self.symbols = symbols
        self.every = every
        self.next = every
        self.samples: Counter[tuple[str, ...]] = Counter()
        self.kmem = KernelMemory(guest)
        self.unwinder = Unwinder.for_kernel(str(symbols.path), _has_frame_pointers(symbols),
                                            symbols.link_address)
        self._names: dict[int, str] = {}
        self._tasks: TaskList | None = None

    # -- the controller ------------------------------------------------------------------
    def boundary(self, guest: Guest) -> int:
        """Sample when the count reaches the next multiple of `every`; cap the run there."""
        icount = guest.icount
        if icount < self.next - self.every:  # the guest was rewound (gdb's reverse steps)
            self.next = (icount // self.every + 1) * self.every
        if icount >= self.next:
            self.sample()
            self.next = (icount // self.every + 1) * self.every
        return self.next - icount

    def sample(self) -> None:
        """Record the guest's stack as it stands (between two instructions)."""
        cpu = self.guest.cpu
        if cpu.cpl() == 3:
            self.samples[(self._user_frame(),)] += 1
            return
        values = cpu.regs((*GPRS, Reg.EIP))
        regs = dict(zip((*DWARF_GPRS, RA), values, strict=True))
        addresses = self.unwinder.stack(regs, self.kmem.u32)
        self.samples[tuple(self._name(a) for a in reversed(addresses))] += 1

    def _name(self, address: int) -> str:
        name = self._names.get(address)
        if name is None:
            found = self.symbols.symbolize(address)
            name = self._names[address] = found[0] if found else f"{address:#x}"
        return name

    def _user_frame(self) -> str:
        """``[user:COMM]`` for the running task, ``[user]`` when the kernel cannot say."""
        from .tasks import NoTasks, TaskList

        if self._tasks is None:
            self._tasks = TaskList(self.guest, self.symbols)
        try:
            comm = self._tasks.current_comm()
        except NoTasks:
            comm = None
        return f"[user:{comm}]" if comm else "[user]"

    # -- results -------------------------------------------------------------------------
    def folded(self) -> str:
        """The folded-stack text: ``outer;…;inner COUNT`` per line, sorted."""
        return "".join(f"{';'.join(stack)} {n}\n" for stack, n in sorted(self.samples.items()))

    def functions(self) -> list[tuple[str, int, int]]:
        """(function, self samples, total samples), busiest first (total, then self)."""
        own: Counter[str] = Counter()
        total: Counter[str] = Counter()
        for stack, n in self.samples.items():
            own[stack[-1]] += n
            for name in set(stack):
                total[name] += n
        return sorted(((name, own[name], total[name]) for name in total),
                      key=lambda row: (-row[1], -row[2], row[0]))

    def describe(self) -> str:
        """One line: how many samples, how often, how stacks were found."""
        count = sum(self.samples.values())
        return (f"{count} samples, one every {self.every} instructions "
                f"({self.every * self.guest.clock.ns_per_insn / 1e3:g} µs of guest time); "
                f"stacks from {self.unwinder.method}")


def _has_frame_pointers(symbols: Symbols) -> bool:
    """Was the kernel built with frame pointers?  A vmlinux does not carry its configuration,
    so look: most functions then begin with ``push %ebp`` (55) and set ``mov %esp,%ebp``
    (89 e5) within their first few instructions (GCC schedules others in between)."""
    functions = [s for s in symbols.symbols if s.kind == "function" and s.size >= 8]
    if not functions:
        return False
    step = max(1, len(functions) // FRAME_POINTER_SAMPLE)
    checked = framed = 0
    try:
        with open(symbols.path, "rb") as f:
            elf = ELFFile(f)
            segments = [(s["p_vaddr"], s["p_filesz"], s["p_offset"]) for s in elf.iter_segments()
                        if s["p_type"] == "PT_LOAD"]
            for sym in functions[::step]:
                for vaddr, size, offset in segments:
                    if vaddr <= sym.address < vaddr + size - PROLOGUE:
                        f.seek(offset + sym.address - vaddr)
                        code = f.read(PROLOGUE)
                        checked += 1
                        framed += code[0] == 0x55 and b"\x89\xe5" in code
                        break
    except Exception:  # an unreadable file: no frame pointers
        return False
    return checked > 0 and framed * 4 >= checked * 3


def write_profile(profiler: Profiler, path: Path, fmt: str, stderr: TextIO | None,
                  verbose: int) -> None:
    """Write the profile in `fmt`; with `verbose`, the top functions on stderr."""
    if fmt == "svg":
        from .flamegraph import flame_graph
        data = flame_graph(profiler.samples, f"lgemu profile of {profiler.symbols.path.name}",
                           profiler.describe(),
                           profiler.every * profiler.guest.clock.ns_per_insn)
    else:
        data = profiler.folded()
    write_text("--profile", path, data)
    if verbose and stderr is not None:
        print_top(profiler, stderr)


def print_top(profiler: Profiler, stream: TextIO) -> None:
    """The top functions by self time, with their total time, as a rich table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    ns = profiler.every * profiler.guest.clock.ns_per_insn
    total = sum(profiler.samples.values()) or 1
    table = Table(title=f"profile: {profiler.describe()}")
    for column in ("function", "self", "self ms", "total", "total ms"):
        table.add_column(column, justify="left" if column == "function" else "right")
    for name, own, whole in profiler.functions()[:TOP_FUNCTIONS]:
        table.add_row(escape(name), f"{100 * own / total:.1f}%", f"{own * ns / 1e6:.3f}",
                      f"{100 * whole / total:.1f}%", f"{whole * ns / 1e6:.3f}")
    Console(file=stream, width=100, highlight=False).print(table)


def attach_profile(stack: ExitStack, guest: Guest, config: BootConfig,
                   stderr: TextIO | None) -> None:
    """`--profile FILE` and its options, for the duration of `stack`."""
    from .symbols import Symbols

    path = Path(config.profile)
    check_writable("--profile", path)
    symbols = Symbols.load(Path(guest.boot.kernel.path))
    profiler = Profiler(guest, symbols, config.profile_every)
    guest.add_controller(profiler, Stage.TRACE)
    stack.callback(write_profile, profiler, path, config.profile_format, stderr,
                   config.verbose)
