"""gdb's `monitor` commands (the `qRcmd` packet), as QEMU's monitor answers through gdb.

Each command answers in text for a person, from whatever state the guest is stopped in:
before LGUEST_INIT, in the middle of the boot, after user space started, or after a crash.
What needs the kernel's symbols or DWARF (`dmesg`, `ps`) loads them on first use and keeps
them; nothing here changes the guest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..abi import (
    FIRST_EXTERNAL_VECTOR,
    HCALL_STATUS_EMPTY,
    LD_CR2,
    LD_HCALL_STATUS,
    LD_PGDIR,
    LD_TSC_KHZ,
    LHCALL_RING_SIZE,
    U16,
    VRING_USED_ELEM,
    X86_CR0_TS,
    X86_EFLAGS_IF,
    DeviceType,
)
from ..machine.cpu import Reg

if TYPE_CHECKING:
    import mmap

    from ..devices.vring import Vring
    from ..host.guest import Guest
    from ..host.lguest_data import LguestData
    from .symbols import Symbols
    from .tasks import TaskList

HELP = """\
lgemu monitor commands (as `monitor COMMAND` in gdb):
  help          this list
  lguest        the Host's view: lguest_data, interrupts, the timer, page directories
  devices       the device page: each device's status and its queues' indices
  hcalls        hypercalls so far, by name (sync and from the async ring)
  dmesg [N]     the kernel's log buffer (its last N lines)
  ps            the kernel's task list from init_task: pid, state, comm
"""


class Monitor:
    """The `monitor` commands of one guest."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self._symbols: Symbols | None = None
        self._tasks: TaskList | None = None
        self.commands: dict[str, Callable[[list[str]], str]] = {
            "help": lambda _: HELP,
            "lguest": lambda _: self.lguest(),
            "devices": lambda _: self.devices(),
            "hcalls": lambda _: self.hcalls(),
            "dmesg": self.dmesg,
            "ps": lambda _: self.ps(),
        }

    @property
    def symbols(self) -> Symbols:
        if self._symbols is None:
            from .symbols import Symbols
            self._symbols = Symbols.load(Path(self.guest.boot.kernel.path))
        return self._symbols

    def run(self, line: str) -> str:
        """The answer to `monitor LINE` (always text ending in a newline)."""
        words = line.split()
        if not words:
            return HELP
        command = self.commands.get(words[0])
        if command is None:
            return f"unknown monitor command {words[0]!r}; try 'monitor help'\n"
        return command(words[1:])

    # -- the Host's view ---------------------------------------------------------------------
    def lguest(self) -> str:
        g = self.guest
        clock, ints = g.clock, g.interrupts
        now = clock.now_ns(g.position())
        out = [f"instruction {g.icount}, guest time {now / 1e9:.9f} s, "
               f"eip {g.cpu.reg(Reg.EIP):#010x} in ring {g.cpu.cpl()}"]
        data = g.lg.data
        if data is None:
            out.append("lguest_data: not yet registered (no LGUEST_INIT so far)")
        else:
            enabled = data.irq_enabled
            out += [f"lguest_data at {data.addr:#x} (guest-physical):",
                    f"  irq_enabled        {enabled:#x} "
                    f"({'on' if enabled & X86_EFLAGS_IF else 'off'})",
                    f"  blocked_interrupts {data.blocked_interrupts:#010x}"
                    f"{_lines(data.blocked_interrupts)}",
                    f"  cr2                {data.u32(LD_CR2):#010x}",
                    f"  pgdir              {data.u32(LD_PGDIR):#010x}",
                    f"  tsc_khz            {data.u32(LD_TSC_KHZ)}",
                    f"  kernel_address     {g.lg.kernel_address:#010x}",
                    f"  noirq              {g.lg.noirq[0]:#010x}-{g.lg.noirq[1]:#010x}",
                    f"  async ring         {_queued(data)} of {LHCALL_RING_SIZE} slots "
                    f"hold calls; the Host reads slot {g.lg.ring_cursor} next"]
        timer = "none set" if clock.deadline_ns is None else \
            f"in {(clock.deadline_ns - now) / 1e6:.3f} ms (guest time " \
            f"{clock.deadline_ns / 1e9:.9f} s)"
        out += [f"interrupts pending {ints.pending:#010x}{_lines(ints.pending)}",
                f"halted             {'yes' if ints.halted else 'no'}",
                f"next timer         {timer}",
                f"task switched (TS) {'yes' if g.cpu.reg(Reg.CR0) & X86_CR0_TS else 'no'}",
                f"page directory     {g.paging.guest_pgdir:#010x} (the guest's), shadow slot "
                f"{g.paging.slot} at {g.cpu.reg(Reg.CR3):#010x} (the Host's)",
                "interrupts delivered "
                + (", ".join(f"irq {line}→{FIRST_EXTERNAL_VECTOR + line:#x}: {n}"
                             for line, n in enumerate(ints.delivered) if n) or "none")]
        return "\n".join(out) + "\n"

    def devices(self) -> str:
        from ..ui import status_text

        g = self.guest
        page = g.boot.device_page
        ram = g.memory.ram
        out = [f"device page at {page.address:#x}"]
        for device, layout in zip(g.devices, page.devices, strict=True):
            status = ram[page.address + layout.status_offset]
            kind = DeviceType(layout.spec.type).name.lower() \
                if layout.spec.type in DeviceType._value2member_map_ else str(layout.spec.type)
            out.append(f"{device.name}: {kind} at offset {layout.offset:#x}, status "
                       f"{status_text(status)}")
            for ring in device.queues:
                avail, used = ring.indices()
                out.append(f"  queue {ring.name}: irq {ring.irq}, pfn {ring.pfn:#x}, "
                           f"{ring.num} entries; avail {avail}, host at {ring.last_avail}, "
                           f"used {used}; {g.stats.vring[ring.name]} chains returned")
                out.append(f"    {_last_chains(ram, ring, avail, used)}")
            if device.summary():
                out.append(f"  {device.summary()}")
        return "\n".join(out) + "\n"

    def hcalls(self) -> str:
        stats = self.guest.stats
        calls = sorted(set(stats.hypercalls) | set(stats.async_hypercalls))
        if not calls:
            return "no hypercalls yet\n"
        out = [f"{'hypercall':<16} {'sync':>8} {'async':>8}"]
        name = self.guest.hcalls.name  # the guest's era's names
        for nr in calls:
            ring = stats.async_hypercalls[nr]
            out.append(f"{name(nr):<16} {stats.hypercalls[nr] - ring:>8} {ring:>8}")
        return "\n".join(out) + "\n"

    # -- the kernel's view -------------------------------------------------------------------
    def dmesg(self, args: list[str]) -> str:
        from .dmesg import NoLog, read_log

        try:
            text = read_log(self.guest, self.symbols).decode("utf-8", "replace")
        except NoLog as e:
            return f"no kernel log: {e}\n"
        if not text:
            return "(the log is empty)\n"
        if args:
            try:
                count = int(args[0])
            except ValueError:
                return "usage: monitor dmesg [LINES]\n"
            text = "".join(text.splitlines(keepends=True)[-count:]) if count > 0 else ""
        return text if text.endswith("\n") or not text else text + "\n"

    def ps(self) -> str:
        from .tasks import NoTasks, TaskList

        if self._tasks is None:
            self._tasks = TaskList(self.guest, self.symbols)
        try:
            tasks = self._tasks.tasks()
        except NoTasks as e:
            return f"no task list: {e}\n"
        current = self._tasks.current()
        out = [f"{'':1} {'PID':>5} {'STATE':5} {'TASK':10} COMM"]
        for task in tasks:
            mark = "*" if task.address == current else " "
            out.append(f"{mark} {task.pid:>5} {task.state_letter:5} {task.address:#010x} "
                       f"{task.comm}")
        if self._tasks.stopped_early:
            out.append(f"(the walk stopped: {self._tasks.stopped_early})")
        if current is not None:
            out.append("* is the running task (current_task)")
        return "\n".join(out) + "\n"


def _last_chains(ram: mmap.mmap, ring: Vring, avail: int, used: int) -> str:
    """The newest entries of the avail and used rings, as guest memory holds them."""
    parts = []
    if avail:
        head = U16.unpack_from(ram, ring.avail + 4 + 2 * ((avail - 1) % ring.num))[0]
        parts.append(f"last offered: head {head}")
    if used:
        head, length = VRING_USED_ELEM.unpack_from(ram, ring.used + 4
                                                   + 8 * ((used - 1) % ring.num))
        parts.append(f"last returned: head {head}, len {length}")
    return "; ".join(parts) if parts else "no chains yet"


def _queued(data: LguestData) -> int:
    base = data.addr + LD_HCALL_STATUS
    return sum(1 for i in range(LHCALL_RING_SIZE) if data.ram[base + i] != HCALL_STATUS_EMPTY)


def _lines(mask: int) -> str:
    bits = [str(i) for i in range(32) if mask >> i & 1]
    return f" (irq {', '.join(bits)})" if bits else ""
