"""The guest kernel's log buffer: `--dmesg FILE` at every exit and `monitor dmesg` in gdb.

printk keeps every message in a ring in memory, whatever the console loglevel and whether
or not a console was ever registered, so a kernel that died early has told this buffer more
than it told anyone.  Two layouts are understood, both found from symbols alone:

* 2.6.24 and its neighbours: `char *log_buf` pointing at `__log_buf`, its size in
  `log_buf_len`, and `log_end`, the number of characters ever logged; the ring holds the
  last `log_buf_len` of them, each message still carrying its ``<level>`` prefix.
* The bundled guest: `char log_buf[N]` itself and `log_end`, with the same meaning.
* 3.5 to 5.9: a ring of `struct printk_log` records (a 16-byte header: u64 timestamp,
  u16 record length, u16 text length, u16 dictionary length, u8 facility, u8 flags and
  level), from `log_first_idx` to `log_next_idx`; a zero length sends the reader back to
  the start.  Each record becomes a line as ``dmesg -r`` prints it:
  ``<PRI>[seconds.micros] text``.

The buffer is written as the kernel stored it (``dmesg -r`` shows the same).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..errors import UserError
from .kernelmem import KernelMemory

if TYPE_CHECKING:
    from contextlib import ExitStack

    from ..config import BootConfig
    from ..host.guest import Guest
    from .symbols import Symbols

MAX_LOG = 1 << 24  # a log_buf_len above this is guest nonsense, not a buffer


class NoLog(Exception):
    """The kernel has no log buffer lgemu knows how to read (the message says why)."""


RECORD = struct.Struct("<QHHHBB")  # struct printk_log (3.5 to 5.9)
MAX_RECORDS = 1 << 20


def read_log(guest: Guest, symbols: Symbols) -> bytes:
    """The log buffer's contents, oldest first (raises NoLog)."""
    kmem = KernelMemory(guest)
    logs = symbols.named("log_buf")
    if logs and symbols.has("log_first_idx") and symbols.has("log_next_idx"):
        return _read_records(kmem, symbols)
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


def _read_records(kmem: KernelMemory, symbols: Symbols) -> bytes:
    """The structured log of 3.5+ as ``dmesg -r`` lines."""
    base = kmem.u32(symbols.named("log_buf")[0].address)
    size = kmem.u32(symbols.named("log_buf_len")[0].address) \
        if symbols.has("log_buf_len") else None
    first = kmem.u32(symbols.named("log_first_idx")[0].address)
    end = kmem.u32(symbols.named("log_next_idx")[0].address)
    if None in (base, size, first, end):
        raise NoLog("the log buffer's variables are not in guest memory")
    if not 0 < size <= MAX_LOG or first >= size or end >= size:
        raise NoLog(f"log_buf_len {size} and indices {first}, {end} make no sense")
    ring = kmem.read(base, size)
    if ring is None:
        raise NoLog(f"the log buffer at {base:#x} is not in guest memory")
    out = bytearray()
    idx = first
    for _ in range(MAX_RECORDS):
        if idx == end:
            break
        if idx + RECORD.size > size:
            idx = 0
            continue
        ts, length, text_len, _, facility, flags = RECORD.unpack_from(ring, idx)
        if length == 0:  # the writer wrapped here
            idx = 0
            continue
        if length < RECORD.size or idx + length > size:
            break  # a record the guest broke: the log ends here
        text = ring[idx + RECORD.size:idx + RECORD.size + min(text_len, length - RECORD.size)]
        seconds, nanos = divmod(ts, 1_000_000_000)
        out += b"<%d>[%5d.%06d] %s\n" % (facility << 3 | flags >> 5, seconds, nanos // 1000,
                                          text)
        idx += length
    return bytes(out)


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
