"""The guest kernel's log buffer: `--dmesg FILE` at every exit and `monitor dmesg` in gdb.

printk keeps every message in a ring in memory, whatever the console loglevel and whether
or not a console was ever registered, so a kernel that died early has told this buffer more
than it told anyone.  Two layouts are understood, both found from symbols alone:

* 2.6.24 and its neighbours: `char *log_buf` pointing at `__log_buf`, its size in
  `log_buf_len`, and `log_end`, the number of characters ever logged; the ring holds the
  last `log_buf_len` of them, each message still carrying its ``<level>`` prefix.
* The bundled guest: `char log_buf[N]` itself and `log_end`, with the same meaning.

The buffer is written as the kernel stored it (``dmesg -r`` shows the same).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..errors import UserError
from .kernelmem import KernelMemory

if TYPE_CHECKING:
    from contextlib import ExitStack

    from ..cli import BootConfig
    from ..host.guest import Guest
    from .symbols import Symbols

MAX_LOG = 1 << 24  # a log_buf_len above this is guest nonsense, not a buffer


class NoLog(Exception):
    """The kernel has no log buffer lgemu knows how to read (the message says why)."""


def read_log(guest: Guest, symbols: Symbols) -> bytes:
    """The log buffer's contents, oldest first (raises NoLog)."""
    kmem = KernelMemory(guest)
    logs = symbols.named("log_buf")
    end_sym = symbols.named("log_end")
    if not logs or not end_sym:
        raise NoLog("the kernel has no log_buf/log_end symbols")
    log = logs[0]
    if symbols.has("log_buf_len") and log.size in (0, 4):
        base = kmem.u32(log.address)
        size = kmem.u32(symbols.named("log_buf_len")[0].address)
    else:
        base, size = log.address, log.size
    end = kmem.u32(end_sym[0].address)
    if base is None or size is None or end is None:
        raise NoLog("the log buffer's variables are not in guest memory")
    if not 0 < size <= MAX_LOG:
        raise NoLog(f"log_buf_len {size} makes no sense")
    ring = kmem.read(base, size)
    if ring is None:
        raise NoLog(f"the log buffer at {base:#x} is not in guest memory")
    if end <= size:
        return ring[:end]
    start = end % size
    return ring[start:] + ring[:start]


class DmesgAtExit:
    """`--dmesg FILE`: the file is opened before the run (a bad path is bad input) and
    written when the run ends, however it ends."""

    def __init__(self, guest: Guest, path: Path, stderr: TextIO | None) -> None:
        self.guest = guest
        self.path = path
        self.stderr = stderr
        try:
            self.file = open(path, "wb")  # closed in `write`
        except OSError as e:
            raise UserError(f"--dmesg {path}: cannot write ({e.strerror or e})") from None

    def write(self) -> None:
        """Write the log and close the file; without one the file stays empty and stderr
        says why."""
        from .symbols import Symbols

        try:
            try:
                data = read_log(self.guest, Symbols.load(Path(self.guest.boot.kernel.path)))
            except NoLog as e:
                data = b""
                if self.stderr is not None:
                    print(f"lgemu: --dmesg: no kernel log: {e}", file=self.stderr)
            self.file.write(data)
        finally:
            self.file.close()


def attach_dmesg(stack: ExitStack, guest: Guest, config: BootConfig,
                 stderr: TextIO | None) -> None:
    """`--dmesg FILE` for the duration of `stack`."""
    writer = DmesgAtExit(guest, config.dmesg, stderr)
    stack.callback(writer.write)
