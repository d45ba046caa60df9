"""Everything lgemu shows a person besides the guest's own console: rich tables on stderr."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .abi import (
    CONFIG_BLK_F,
    CONFIG_BLK_F_CAPACITY,
    CONFIG_BLK_F_SEG_MAX,
    CONFIG_BLK_F_SIZE_MAX,
    CONFIG_FIELD_HDR,
    CONFIG_FIELD_USED,
    CONFIG_NET_F,
    CONFIG_NET_MAC_F,
    DEVICE_DESC,
    FIRST_EXTERNAL_VECTOR,
    FIRST_NON_EXCEPTION,
    VQCONFIG,
    DeviceStatus,
    DeviceType,
)
from .debug.tap import StreamTap, is_terminal, tap_console, untap_console
from .errors import ExitStatus
from .host.events import TRAP_NAMES

if TYPE_CHECKING:
    from contextlib import ExitStack

    from .config import BootConfig
    from .debug.symbols import Symbols
    from .devices.base import Device
    from .errors import LgemuExit
    from .host.guest import Guest
    from .launcher import BootInfo, DeviceLayout, KernelImage
    from .launcher.era import Detection

# Device-specific config field names (ABI §10.2); type 0x02 is a VIRTQUEUE field.
_FIELD_NAMES = {
    DeviceType.BLOCK: {CONFIG_BLK_F: "features", CONFIG_BLK_F_CAPACITY: "capacity",
                       CONFIG_BLK_F_SIZE_MAX: "size_max", CONFIG_BLK_F_SEG_MAX: "seg_max"},
    DeviceType.NET: {CONFIG_NET_F: "features", CONFIG_NET_MAC_F: "mac"},
}
_STATUS_NAMES = {DeviceStatus.ACKNOWLEDGE: "ack", DeviceStatus.DRIVER: "driver",
                 DeviceStatus.DRIVER_OK: "ok", DeviceStatus.FAILED: "failed"}


def _console(stream: TextIO) -> Console:
    return Console(file=stream, highlight=False, soft_wrap=True)


def _fields(device: DeviceLayout) -> list[tuple[int, str, bytes]]:
    """(offset in the descriptor, name, payload) of every config field the Launcher wrote,
    parsed from its own description of the device (never from guest memory)."""
    fields, offset = [], DEVICE_DESC.size
    vq_size = CONFIG_FIELD_HDR.size + VQCONFIG.size
    for index in range(len(device.queues)):
        fields.append((offset, f"vq{index}", b""))
        offset += vq_size
    config, at = device.spec.config, 0
    names = _FIELD_NAMES.get(device.spec.type, {})
    while at + CONFIG_FIELD_HDR.size <= len(config):
        ftype, length = CONFIG_FIELD_HDR.unpack_from(config, at)
        payload = config[at + CONFIG_FIELD_HDR.size:at + CONFIG_FIELD_HDR.size + length]
        fields.append((offset + at, names.get(ftype, f"{ftype:#04x}"), payload))
        at += CONFIG_FIELD_HDR.size + length
    return fields


def _field_value(name: str, payload: bytes) -> str:
    if name == "mac" and len(payload) == 6:
        return "mac " + ":".join(f"{b:02x}" for b in payload)
    if name == "capacity" and len(payload) == 8:
        return f"capacity {int.from_bytes(payload, 'little')}"  # 512-byte sectors
    if name in ("seg_max", "size_max") and len(payload) == 4:
        return f"{name} {int.from_bytes(payload, 'little')}"
    return f"{name} {payload.hex()}"


def status_text(status: int) -> str:
    """A device status byte (ABI §10.4) as ``0x07 ack|driver|ok``."""
    bits = [name for bit, name in _STATUS_NAMES.items() if status & bit]
    other = status & ~sum(_STATUS_NAMES)
    if other:
        bits.append(f"{other:#x}")
    return f"{status:#04x} " + "|".join(bits) if bits else f"{status:#04x}"


def describe_boot(stream: TextIO, info: BootInfo) -> None:
    """The Launcher's layout: kernel, entry, page tables, initrd and the device page."""
    con = _console(stream)
    con.print(f"[bold]kernel[/] {escape(str(info.kernel.path))} ({info.kernel.kind}), "
              f"entry {info.entry:#x}, "
              f"pgdir {info.pgdir:#x}, pfn_limit {info.pfn_limit:#x}")
    if info.ram_where:
        con.print(f"[bold]RAM[/] {escape(info.ram_where)}")
    if info.initrd_size:
        con.print(f"[bold]initrd[/] {info.initrd_addr:#x} + {info.initrd_size:#x}, "
                  f"{escape(info.initrd_where)}")
    table = Table(title=f"device page at {info.device_page.address:#x}")
    for column in ("offset", "type", "queue", "num", "irq", "pfn", "status"):
        table.add_column(column)
    configs = []
    for dev in info.device_page.devices:
        kind = DeviceType(dev.spec.type).name.lower()
        for q in dev.queues:
            table.add_row(f"{dev.offset:#x}", kind, str(q.index), str(q.num), str(q.irq),
                          f"{q.pfn:#x}", status_text(0) if q.index == 0 else "")
        fields = [_field_value(name, payload) for _, name, payload in _fields(dev) if payload]
        if dev.feature_len:  # 2.6.25 on: the bits the driver may accept
            fields.append(f"features offered {dev.spec.features:#x}")
        if fields:
            configs.append(f"{kind} at {dev.offset:#x}: " + ", ".join(fields))
    con.print(table)
    for line in configs:
        con.print(escape(line))


def describe_run(stream: TextIO, guest: Guest, outcome: LgemuExit,
                 wall_s: float | None = None) -> None:
    """A summary at exit: its exit status, instructions and time, then what the Host did:
    hypercalls by name, traps by vector, interrupts by line, vring operations by queue.
    `wall_s` (the run's wall-clock seconds) is shown when given: it differs between runs,
    so the caller passes it only where that is wanted (a terminal, or -vv)."""
    con = _console(stream)
    clock, stats = guest.clock, guest.stats
    if outcome.status == ExitStatus.POWER_DOWN:  # the one ending lgemu prints nothing for
        con.print(f"[bold]{escape(outcome.line())}[/] (exit {outcome.status})")
    else:  # its line comes last, once, from lgemu.cli
        con.print(f"[bold]run ended[/] with exit status {outcome.status}")
    wall = ""
    if wall_s is not None:
        rate = clock.executed / wall_s / 1e6 if wall_s > 0 else 0.0
        wall = f"; wall time {wall_s:.3f} s ({rate:.1f} M instructions/s)"
    con.print(f"executed {clock.executed} instructions in {stats.slices} slices; "
              f"guest time {clock.now_ns() / 1e9:.6f} s{wall}")
    if clock.halted_ns:
        con.print(f"halted for {clock.halted_ns / 1e9:.6f} s of that guest time, waiting for "
                  "a timer or for input")
    spins = guest.spins
    if spins is not None and spins.skipped:
        heads = ", ".join(f"{head:#x}" for head in sorted(spins.loops))
        con.print(f"of which {spins.skipped} counted in waiting loops without running them "
                  f"(loops at {heads})")
    table = Table(title="hypercalls")
    table.add_column("call")
    table.add_column("sync", justify="right")
    table.add_column("async", justify="right")
    for nr in sorted(set(stats.hypercalls) | set(stats.async_hypercalls)):
        ring = stats.async_hypercalls[nr]
        table.add_row(guest.hcalls.name(nr), str(stats.hypercalls[nr] - ring), str(ring))
    con.print(table)
    events = Table(title="traps, interrupts and vrings")
    for column, justify in (("event", "left"), ("which", "left"), ("count", "right")):
        events.add_column(column, justify=justify)  # type: ignore[arg-type]
    for vector, n in sorted(stats.traps.items()):
        name = TRAP_NAMES.get(vector, f"int ${vector:#x}" if vector >= FIRST_NON_EXCEPTION
                              else str(vector))
        events.add_row("trap", f"{name} (vector {vector})", str(n))
    if stats.page_fills:
        events.add_row("page fill", "#PF absorbed by the Host", str(stats.page_fills))
    for line, n in enumerate(guest.interrupts.delivered):
        if n:
            events.add_row("interrupt", f"irq {line} → vector {FIRST_EXTERNAL_VECTOR + line:#x}",
                           str(n))
    for queue, n in sorted(stats.vring.items()):
        events.add_row("vring", f"{queue} chains returned", str(n))
    if events.row_count:
        con.print(events)
    describe_devices(con, guest)


def describe_devices(con: Console, guest: Guest) -> None:
    """The device page as the guest left it: status bits, the config fields it read (their
    type byte has 0x80 set, ABI §10.2) or, from 2.6.25, the features its driver accepted,
    and what each device did."""
    if guest.dma is not None:  # 2.6.23: descriptors of its own shape
        _describe_dma_devices(con, guest)
        return
    if guest.pci is not None:  # 4.x: virtio PCI functions, no device page
        _describe_pci_devices(con, guest)
        return
    page = guest.boot.device_page
    ram = guest.memory.ram
    rows = []
    bitmaps = any(dev.features_offset for dev in page.devices)  # 2.6.25's descriptors on
    for device, dev in zip(guest.devices, page.devices, strict=True):
        base = page.address + dev.offset
        if bitmaps:
            at = page.address + dev.acked_offset
            used = f"{int.from_bytes(ram[at:at + dev.feature_len], 'little'):#x}"
        else:
            used = ", ".join(name for offset, name, _ in _fields(dev)
                             if ram[base + offset] & CONFIG_FIELD_USED) or "-"
        rows.append(([f"{dev.offset:#x}", _device_name(device),
                      status_text(ram[page.address + dev.status_offset]), used], device))
    _print_devices(con, "devices at exit", ("offset", "device", "status",
                                            "features accepted" if bitmaps else "fields read"),
                   rows)


def _describe_pci_devices(con: Console, guest: Guest) -> None:
    assert guest.pci is not None
    rows = [([str(slot), _device_name(function.device), status_text(function.status)],
             function.device)
            for slot, function in sorted(guest.pci.slots.items())
            if getattr(function, "device", None) is not None]  # not the host bridge
    _print_devices(con, "devices at exit (virtio PCI functions on bus 0)",
                   ("slot", "device", "status"), rows)


def _describe_dma_devices(con: Console, guest: Guest) -> None:
    assert guest.dma is not None
    rows = [([str(index), _device_name(device), status_text(status)], device)
            for index, device, status in guest.dma.at_exit()]
    _print_devices(con, "devices at exit (the 2.6.23 DMA lguest bus)",
                   ("index", "device", "status"), rows)


def _device_name(device: Device) -> str:
    return "hvc0" if device.type == DeviceType.CONSOLE else device.name


def _print_devices(con: Console, title: str, columns: tuple[str, ...],
                   rows: list[tuple[list[str], Device]]) -> None:
    """One table row per device (its name in the second column), then what each did."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for cells, _ in rows:
        table.add_row(*cells)
    con.print(table)
    for cells, device in rows:
        if device.summary():
            con.print(escape(f"{cells[1]}: {device.summary()}"))


# -- the status line --------------------------------------------------------------------
class StatusLine:
    """A live line on stderr while a guest runs: instructions, rate, hypercalls, guest time.

    A run-loop controller (`Guest.add_controller`): it looks at the clock at run boundaries
    and redraws at most every `PERIOD_S`.  Where it goes (`mode`):

    * ``"line"`` — stderr is a terminal the guest's console does not read: redrawn in place
      (carriage return, erase to end of line), taken off before every piece of guest output,
      shown only once a run has lasted `DELAY_S`;
    * ``"title"`` — the console is that terminal, where a person types at the guest: the
      line would overwrite the guest's prompt and their typing, so it goes into the
      terminal's title instead (the title is saved first and put back at the end, where the
      terminal keeps a title stack);
    * ``"lines"`` — stderr is not a terminal (``--status``): whole lines.

    The rate is instructions executed per wall-clock second since the previous draw, idle
    time included: what the host really got done.  It never changes what the guest sees:
    it only reads counters."""

    PERIOD_S = 0.25
    DELAY_S = 0.5
    TITLE_SAVE, TITLE_RESTORE = "\x1b[22;2t", "\x1b[23;2t"  # xterm's title stack

    def __init__(self, guest: Guest, stream: TextIO, mode: str) -> None:
        self.guest = guest
        self.stream = stream
        self.mode = mode
        self._start = time.monotonic()
        self._next = self._start + (self.DELAY_S if mode == "line" else 0.0)
        self._last = (self._start, 0)
        self._shown = False
        self._console = guest.console
        self._tap: StreamTap | None = None

    @property
    def terminal(self) -> bool:
        """Is the line drawn on a terminal (in place or in its title)?"""
        return self.mode != "lines"

    def attach(self) -> None:
        from .host.guest import Stage  # here: `lgemu info` needs no run loop

        self.guest.add_controller(self, Stage.STATUS)
        if self.mode == "line":
            self._tap = tap_console(self._console, lambda data: self.clear())
        elif self.mode == "title":
            self._write(self.TITLE_SAVE)

    def boundary(self, guest: Guest) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.PERIOD_S
            self.draw(now)

    def text(self, now: float) -> str:
        """The line itself (rate over the time since the previous one)."""
        executed = self.guest.clock.executed
        then, before = self._last
        self._last = (now, executed)
        rate = (executed - before) / (now - then) / 1e6 if now > then else 0.0
        hcalls = sum(self.guest.stats.hypercalls.values())
        return (f"lgemu: {executed:,} instructions, {rate:.1f} M/s, {hcalls:,} hypercalls, "
                f"guest time {self.guest.clock.now_ns() / 1e9:.3f} s")

    def draw(self, now: float) -> None:
        line = self.text(now)
        if self.mode == "line":
            self._write(f"\r{line}\x1b[K")
            self._shown = True
        elif self.mode == "title":
            self._write(f"\x1b]2;{line}\x07")
        else:
            self._write(line + "\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a terminal that went away: nothing more to show
            self.mode = "off"

    def clear(self) -> None:
        """Take the line off the terminal (before guest output, and at the end)."""
        if self._shown:
            self._shown = False
            self._write("\r\x1b[K")

    def close(self) -> None:
        self.guest.remove_controller(self)
        untap_console(self._console, self._tap)
        if self.mode == "line":
            self.clear()
        elif self.mode == "title":
            self._write(self.TITLE_RESTORE)
        elif self.mode == "lines":
            self.draw(time.monotonic())


def status_mode(asked: bool | None, stream: TextIO | None, guest: Guest) -> str | None:
    """Where the status line goes (see `StatusLine`), or None for nowhere.  `asked` is
    ``--status`` (True), ``--no-status`` (False) or neither (None: only on a terminal the
    console does not read from)."""
    if stream is None or asked is False:
        return None
    interactive = any(getattr(device, "interactive", False) for device in guest.devices)
    if not is_terminal(stream):
        return "lines" if asked else None
    if interactive:
        return "title" if asked else None
    return "line"


def attach_status(stack: ExitStack, guest: Guest, config: BootConfig,
                  stream: TextIO | None) -> None:
    """The status line where `status_mode` puts it, for `stack`'s life."""
    mode = status_mode(config.status, stream, guest)
    if mode is None or stream is None:
        return
    status = StatusLine(guest, stream, mode)
    status.attach()
    stack.callback(status.close)


# -- lgemu info ----------------------------------------------------------------------------
def _era_plan(detection: Detection) -> str:
    """What `lgemu boot` will do with a kernel of this era, in one line."""
    from .abi_eras import ERA_2_6_24
    from .launcher.era import supported_names

    force = f"--abi {ERA_2_6_24.key} forces the 2.6.24 ABI, for experiments"
    if detection.era is None:
        return f"will not boot it: its ABI era is unknown ({force})"
    if detection.era.boots:
        return f"boots it with the {detection.era.name} ABI"
    return (f"booting {detection.era.name} guests is not yet supported (lgemu boots "
            f"{supported_names()}; {force})")


def describe_kernel(stream: TextIO, image: KernelImage, symbols: Symbols,
                    detection: Detection) -> None:
    """`lgemu info`: the image, its segments, whether it is an lguest guest and of which ABI
    era (with the evidence, `lgemu.launcher.era`), what lgemu will do with it, and the
    symbols that matter to lguest."""
    from .debug.symbols import NOTABLE_SYMBOLS

    con = _console(stream)
    entry = symbols.symbolize(image.entry)
    where = f" ({entry[0]}+{entry[1]:#x})" if entry else ""
    kind = "ELF vmlinux (i386)" if image.kind == "elf" else "bzImage"
    con.print(f"[bold]{escape(str(image.path))}[/]: {kind}, entry {image.entry:#x}"
              f"{escape(where)}")
    segments = Table(title="loadable segments")
    for column in ("virtual", "physical", "size", "flags"):
        segments.add_column(column, justify="right" if column == "size" else "left")
    if symbols.segments:
        for s in symbols.segments:
            segments.add_row(f"{s.vaddr:#010x}", f"{s.paddr:#010x}", f"{s.memsz:#x}", s.flags)
    else:
        for seg in image.segments:
            segments.add_row("-", f"{seg.paddr:#010x}", f"{seg.memsz:#x}", "")
    con.print(segments)
    verdict = {True: "yes", False: "no", None: "cannot tell"}[detection.is_guest]
    release = f", Linux {detection.release}" if detection.release else ""
    con.print(f"lguest guest: [bold]{verdict}[/]{escape(release)}; ABI era: "
              f"{escape(detection.describe())}")
    for line in detection.evidence:
        con.print(f"  {escape(line)}")
    if image.pae:  # ABI §7.6
        con.print("  symbol __pmd_alloc: a PAE kernel (three-level page tables; lguest took "
                  "them from 2.6.31)")
    con.print(f"lgemu: {escape(_era_plan(detection))}")
    dwarf = "DWARF line table" if symbols.lines is not None else "no DWARF line table"
    con.print(f"{len(symbols.symbols)} symbols, {dwarf}")
    for problem in symbols.problems:
        con.print(f"[yellow]note[/]: {escape(problem)}")
    found = Table(title="symbols lguest cares about")
    for column in ("symbol", "address", "size", "kind"):
        found.add_column(column, justify="right" if column == "size" else "left")
    for name in NOTABLE_SYMBOLS:
        for sym in symbols.named(name):
            found.add_row(sym.name, f"{sym.address:#010x}", str(sym.size),
                          sym.kind + ("" if sym.is_global else ", local"))
    if found.row_count:
        con.print(found)
