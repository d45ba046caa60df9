"""Everything lgemu shows a person besides the guest's own console: rich tables on stderr."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .abi import DeviceType, hcall_name

if TYPE_CHECKING:
    from .errors import LgemuExit
    from .host.guest import Guest
    from .launcher import BootInfo


def _console(stream: TextIO) -> Console:
    return Console(file=stream, highlight=False, soft_wrap=True)


def describe_boot(stream: TextIO, info: BootInfo) -> None:
    """The Launcher's layout: kernel, entry, page tables, initrd and the device page."""
    con = _console(stream)
    con.print(f"[bold]kernel[/] {escape(str(info.kernel.path))} ({info.kernel.kind}), "
              f"entry {info.entry:#x}, "
              f"pgdir {info.pgdir:#x}, pfn_limit {info.pfn_limit:#x}")
    if info.initrd_size:
        con.print(f"[bold]initrd[/] {info.initrd_addr:#x} + {info.initrd_size:#x}")
    table = Table(title=f"device page at {info.device_page.address:#x}")
    for column in ("offset", "type", "queue", "num", "irq", "pfn"):
        table.add_column(column)
    for dev in info.device_page.devices:
        for q in dev.queues:
            table.add_row(f"{dev.offset:#x}", DeviceType(dev.spec.type).name.lower(),
                          str(q.index), str(q.num), str(q.irq), f"{q.pfn:#x}")
    con.print(table)


def describe_run(stream: TextIO, guest: Guest, outcome: LgemuExit) -> None:
    """A summary at exit: how it ended, instructions, time, hypercalls and traps."""
    con = _console(stream)
    clock = guest.clock
    con.print(f"[bold]{escape(outcome.line())}[/] (exit {outcome.status})")
    con.print(f"executed {clock.executed} instructions in {guest.stats.slices} slices; "
              f"guest time {clock.now_ns() / 1e9:.6f} s")
    table = Table(title="hypercalls")
    table.add_column("call")
    table.add_column("sync", justify="right")
    table.add_column("async", justify="right")
    stats = guest.stats
    for nr in sorted(set(stats.hypercalls) | set(stats.async_hypercalls)):
        table.add_row(hcall_name(nr), str(stats.hypercalls[nr]), str(stats.async_hypercalls[nr]))
    con.print(table)
    if stats.traps:
        con.print("traps: " + ", ".join(f"{v}×{n}" for v, n in sorted(stats.traps.items())))
    delivered = {line: n for line, n in enumerate(guest.interrupts.delivered) if n}
    if delivered:
        con.print("interrupts: " + ", ".join(f"irq {k}×{n}" for k, n in delivered.items()))
