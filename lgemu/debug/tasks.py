"""The guest kernel's task list, walked from `init_task` with the kernel's own DWARF types.

`monitor ps` needs four fields of `struct task_struct` — `tasks` (the list every task is
on), `pid`, `comm` and `state` (`__state` from 5.14) — and their offsets differ with every
configuration, so they come from the kernel's DWARF, never from constants.  The structure is
looked up once, lazily, in the compilation unit of the fork code (found through
.debug_aranges, so only that unit is decoded) and cached on the `TaskLayout`.

A walk trusts nothing it reads: it stops at an address outside guest RAM, after
`MAX_TASKS`, or when it comes back to a task it has already seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from elftools.elf.elffile import ELFFile

from .kernelmem import KernelMemory

if TYPE_CHECKING:
    from ..host.guest import Guest
    from .symbols import Symbols

MAX_TASKS = 4096
COMM_LEN = 16
# Functions compiled in the unit that defines task creation: their unit has task_struct.
FORK_FUNCTIONS = ("do_fork", "_do_fork", "kernel_clone", "copy_process", "sched_fork")
# 2.6.24's TASK_* and EXIT_* bits, as ps(1) prints them.
STATE_LETTERS = ((1, "S"), (2, "D"), (4, "T"), (8, "t"), (16, "Z"), (32, "X"))


class NoTasks(Exception):
    """The kernel's task list cannot be found or read (the message says why)."""


@dataclass(frozen=True)
class TaskLayout:
    """Offsets of the task_struct fields `ps` shows."""

    size: int
    tasks: int
    pid: int
    comm: int
    state: int


@dataclass(frozen=True)
class Task:
    """One task as `monitor ps` prints it."""

    address: int
    pid: int
    comm: str
    state: int

    @property
    def state_letter(self) -> str:
        """R, S, D, T, t, Z or X, as ps(1) says it."""
        for bit, letter in STATE_LETTERS:
            if self.state & bit:
                return letter
        return "R" if self.state == 0 else "?"


def _member_offset(die: object) -> int | None:
    attr = die.attributes.get("DW_AT_data_member_location")
    if attr is None:
        return None
    if isinstance(attr.value, int):
        return attr.value
    # DWARF 2/3: a location expression, DW_OP_plus_uconst (0x23) ULEB128.
    expr = list(attr.value)
    if expr and expr[0] == 0x23:
        value, shift = 0, 0
        for byte in expr[1:]:
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return value
    return None


def find_layout(symbols: Symbols) -> TaskLayout:
    """task_struct's layout from the kernel's DWARF (raises NoTasks)."""
    with open(Path(symbols.path), "rb") as f:
        try:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                raise NoTasks("the kernel has no DWARF debugging information")
            dwarf = elf.get_dwarf_info()
            aranges = dwarf.get_aranges()
            units = []
            for name in FORK_FUNCTIONS:
                for sym in symbols.named(name):
                    offset = aranges.cu_offset_at_addr(sym.address) if aranges else None
                    if offset is not None and offset not in units:
                        units.append(offset)
            for offset in units:
                layout = _layout_in(dwarf.get_CU_at(offset))
                if layout is not None:
                    return layout
        except NoTasks:
            raise
        except Exception as e:  # pyelftools raises many kinds on odd DWARF
            raise NoTasks(f"the kernel's DWARF is unreadable ({type(e).__name__}: {e})") \
                from None
    raise NoTasks("no complete struct task_struct in the DWARF of the fork code")


def _layout_in(cu: object) -> TaskLayout | None:
    for die in cu.iter_DIEs():
        if die.tag != "DW_TAG_structure_type" or "DW_AT_declaration" in die.attributes:
            continue
        name = die.attributes.get("DW_AT_name")
        if name is None or name.value != b"task_struct":
            continue
        members = {}
        for child in die.iter_children():
            member = child.attributes.get("DW_AT_name")
            if child.tag == "DW_TAG_member" and member is not None:
                members[member.value.decode("latin-1")] = _member_offset(child)
        state = members.get("state", members.get("__state"))
        wanted = (members.get("tasks"), members.get("pid"), members.get("comm"), state)
        if None in wanted:
            return None
        size = die.attributes["DW_AT_byte_size"].value \
            if "DW_AT_byte_size" in die.attributes else 0
        return TaskLayout(size, *wanted)  # type: ignore[arg-type]
    return None


class TaskList:
    """Walks a guest's task list; the layout is found on first use and kept."""

    def __init__(self, guest: Guest, symbols: Symbols) -> None:
        self.guest = guest
        self.symbols = symbols
        self._layout: TaskLayout | NoTasks | None = None
        self.stopped_early: str | None = None  # why the last walk ended before its start

    def layout(self) -> TaskLayout:
        if self._layout is None:
            try:
                self._layout = find_layout(self.symbols)
            except NoTasks as e:
                self._layout = e
        if isinstance(self._layout, NoTasks):
            raise self._layout
        return self._layout

    def tasks(self) -> list[Task]:
        """Every task from init_task round the list (raises NoTasks); a list that breaks
        off part-way gives the tasks before the break and says why in `stopped_early`."""
        init = self.symbols.named("init_task")
        if not init:
            raise NoTasks("the kernel has no init_task")
        layout = self.layout()
        kmem = KernelMemory(self.guest)
        out: list[Task] = []
        seen: set[int] = set()
        start = task = init[0].address
        self.stopped_early = None
        while task not in seen:
            if len(out) == MAX_TASKS:
                self.stopped_early = f"more than {MAX_TASKS} tasks"
                break
            seen.add(task)
            pid = kmem.u32(task + layout.pid)
            state = kmem.u32(task + layout.state)
            comm = kmem.read(task + layout.comm, COMM_LEN)
            following = kmem.u32(task + layout.tasks)
            if pid is None or state is None or comm is None or following is None:
                if not out:
                    raise NoTasks(f"init_task at {task:#x} is not in guest memory")
                self.stopped_early = f"the list leads out of guest memory ({task:#x})"
                break
            name = comm.split(b"\0", 1)[0].decode("latin-1")
            out.append(Task(task, pid, _printable(name), state))
            task = (following - layout.tasks) & 0xFFFFFFFF
        if task != start and self.stopped_early is None:
            self.stopped_early = f"the list loops back to {task:#x}, not to init_task"
        return out

    def current_comm(self) -> str | None:
        """The running task's name, or None where the kernel cannot say (raises NoTasks
        when its layout is unknown)."""
        current = self.current()
        if current is None:
            return None
        comm = KernelMemory(self.guest).read(current + self.layout().comm, COMM_LEN)
        if comm is None:
            return None
        return _printable(comm.split(b"\0", 1)[0].decode("latin-1")) or None

    def current(self) -> int | None:
        """The running task's address (a uniprocessor kernel's `current_task`), or None."""
        for name in ("per_cpu__current_task", "current_task"):
            found = self.symbols.named(name)
            if found:
                return KernelMemory(self.guest).u32(found[0].address)
        return None


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
