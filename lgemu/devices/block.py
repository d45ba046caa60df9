"""The virtio block device (type 2, ABI §12.2): a disk image file behind one queue.

`--block FILE[,ro]` gives the guest a disk (vda, vdb, … in command-line order) whose capacity
is the file's size in 512-byte sectors; a trailing partial sector is not part of the disk.
A request is one chain: a 24-byte `virtio_blk_outhdr` (16 bytes from 2.6.25) the guest
wrote, the data buffers, and a 1-byte status the host writes.  Reads go straight from the
file into guest memory (`preadv`), writes straight from guest memory into the file
(`pwritev`).

What else the disk offers and serves is its era's (`Era.blk_offers` and friends, as each
release's Launcher did; docs/eras.md): from 2.6.25 it offers BARRIER, and a request flagged
BARRIER is preceded (from 2.6.30 also followed) by an fdatasync of the image; from 2.6.34
(3.0's Launcher) it offers FLUSH instead, the flag is ignored, and a FLUSH request is an
fdatasync answered OK (IOERR if the sync fails), on 4.x's PCI too though never offered there.
Any other type — SCSI_CMD, GET_ID, a FLUSH its era's Launcher did not know — is answered
UNSUPP.

Where the 2.6.24 Launcher aborted (a malformed request) the guest is killed instead, naming
the queue and the head; where it grew or truncated the file (a write past the end) the request
simply fails with IOERR and the file is not touched.  Requests complete before the kick
returns, in order, so a block-only run is exactly reproducible: the same console bytes, the
same instruction counts, the same image afterwards.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..abi import (
    VIRTIO_BLK_OUTHDR_V2,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_BARRIER,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    DeviceType,
)
from ..errors import UserError
from ..launcher.devicepage import DeviceSpec, block_spec
from ..launcher.loader import file_errors
from .base import Device
from .vring import Buffer, Chain, Vring, total_length

SECTOR_SIZE = 512
READ_ONLY_SUFFIX = ",ro"


def disk_name(index: int) -> str:
    """The name 2.6.24's virtio_blk gives disk `index`: vda … vdz, then vdaa …"""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return "vd" + letters


def parse_block_option(text: str) -> tuple[Path, bool]:
    """`FILE[,ro]` → (path, read_only)."""
    read_only = text.endswith(READ_ONLY_SUFFIX)
    name = text[:-len(READ_ONLY_SUFFIX)] if read_only else text
    if not name:
        raise UserError(f"--block {text}: no file named")
    return Path(name), read_only


class Block(Device):
    """One virtio disk backed by a host file."""

    type = DeviceType.BLOCK
    num_queues = 1

    def __init__(self, path: Path, read_only: bool, index: int = 0) -> None:
        super().__init__()
        self.path = path
        self.read_only = read_only
        self.name = disk_name(index)
        self.fd = self._open(path, read_only)
        try:
            size = os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as e:
            os.close(self.fd)
            raise UserError(f"{path}: cannot find its size ({e.strerror})") from None
        self.capacity = size // SECTOR_SIZE  # sectors the guest sees
        self.stats = {"read": 0, "written": 0, "requests": 0, "errors": 0, "flushes": 0,
                      "barriers": 0}

    @staticmethod
    def _open(path: Path, read_only: bool) -> int:
        """Open the image (regular file or block device), or one-line `UserError`."""
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
        with file_errors(path):
            mode = path.stat().st_mode
            if stat.S_ISDIR(mode):
                raise UserError(f"{path}: is a directory")
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise UserError(f"{path}: not a regular file or block device")
            try:
                return os.open(path, flags)
            except PermissionError:
                if read_only:
                    raise
                raise UserError(f"{path}: permission denied (add ,ro to use it read-only)") \
                    from None

    def spec(self) -> DeviceSpec:
        return block_spec(self.capacity, self.read_only, self.era.blk_offers)

    def close(self) -> None:
        """Flush every completed write to the disk and close the image (every exit path)."""
        if self.fd >= 0:
            if not self.read_only and self.stats["written"]:
                try:
                    os.fsync(self.fd)
                except OSError:
                    pass  # a pipe or device that cannot sync: the writes were made
            os.close(self.fd)
            self.fd = -1

    def summary(self) -> str:
        s = self.stats
        mode = "read-only " if self.read_only else ""
        syncs = "".join(f"{s[kind]} {kind}, " for kind in ("flushes", "barriers") if s[kind])
        return (f"{mode}{self.path}: {s['requests']} requests, read {s['read']} bytes, "
                f"wrote {s['written']} bytes, {syncs}{s['errors']} failed")

    # -- requests ----------------------------------------------------------------------------
    def kick(self, queue: Vring) -> None:
        self.serve(queue, lambda chain: self._request(queue, chain))

    def _request(self, queue: Vring, chain: Chain) -> int:
        """One request, its status byte written: returns the bytes written into the guest
        (data read, then the status byte)."""
        header, status_buffer = self._layout(queue, chain)
        status, written = self._serve(queue, chain, header)
        if status != VIRTIO_BLK_S_OK:
            self.stats["errors"] += 1
        queue.write((status_buffer,), bytes([status]))
        return written + 1

    def _layout(self, queue: Vring, chain: Chain) -> tuple[Buffer, Buffer]:
        """The header and status buffers of a request, checked as ABI §12.2 says: the first
        out buffer is exactly the era's header (24 bytes; 16 from 2.6.25), the last in
        buffer exactly 1 byte."""
        out, into = chain.readable, chain.writable
        if not out:
            raise queue.reject(chain, "no device-readable virtio_blk_outhdr")
        if out[0].length != self.era.blk_outhdr_size:
            raise queue.reject(chain, f"header is {out[0].length} bytes, not "
                                      f"{self.era.blk_outhdr_size}")
        if not into:
            raise queue.reject(chain, "no device-writable status byte")
        if into[-1].length != 1:
            raise queue.reject(chain, f"status buffer is {into[-1].length} bytes, not 1")
        return out[0], into[-1]

    def _serve(self, queue: Vring, chain: Chain, header: Buffer) -> tuple[int, int]:
        """Carry out one request: (status, data bytes written into the guest).  Like the
        Launcher, a write uses the out buffers after the header and a read the in buffers
        before the status byte; any others are ignored (a FLUSH has none)."""
        # type, ioprio and sector lead both eras' headers; 2.6.24's unused id follows them
        kind, _ioprio, sector = VIRTIO_BLK_OUTHDR_V2.unpack_from(queue.memory.ram, header.addr)
        self.stats["requests"] += 1
        era = self.era
        syncs: tuple[str, ...] = ()
        if kind & VIRTIO_BLK_T_BARRIER:
            # The Launchers had no way to ask the host kernel for a barrier, so they synced
            # the whole image around the request (3.0's and later ignore the flag).
            self.stats["barriers"] += 1
            syncs = era.blk_barrier_syncs
            kind &= ~VIRTIO_BLK_T_BARRIER
        if kind not in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT) and not (
                kind == VIRTIO_BLK_T_FLUSH and era.blk_flush):
            return VIRTIO_BLK_S_UNSUPP, 0  # SCSI_CMD, GET_ID, anything its Launcher refused
        if "before" in syncs and not self._sync():
            return VIRTIO_BLK_S_IOERR, 0
        if kind == VIRTIO_BLK_T_IN:
            status, got = self._read(queue, sector, chain.writable[:-1])
        elif kind == VIRTIO_BLK_T_OUT:
            status, got = self._write(queue, sector, chain.readable[1:]), 0
        else:
            self.stats["flushes"] += 1
            status, got = (VIRTIO_BLK_S_OK if self._sync() else VIRTIO_BLK_S_IOERR), 0
        if "after" in syncs and not self._sync():
            status = VIRTIO_BLK_S_IOERR
        return status, got

    def _sync(self) -> bool:
        """Everything written so far reaches the image's storage (fdatasync): did it?"""
        try:
            os.fdatasync(self.fd)
        except OSError:
            return False
        return True

    def _extent(self, sector: int, length: int) -> int | None:
        """Byte offset of [sector, +length) if it lies inside the disk, else None."""
        offset = sector * SECTOR_SIZE
        return offset if offset + length <= self.capacity * SECTOR_SIZE else None

    def _read(self, queue: Vring, sector: int, buffers: tuple[Buffer, ...]) -> tuple[int, int]:
        length = total_length(buffers)
        offset = self._extent(sector, length)
        if offset is None:
            return VIRTIO_BLK_S_IOERR, 0
        got = 0
        if length:
            with queue.views(buffers) as views:
                try:
                    got = os.preadv(self.fd, views, offset)
                except OSError:
                    return VIRTIO_BLK_S_IOERR, 0
            queue.wrote(buffers, got)
            if got != length:  # the file shrank underneath us
                return VIRTIO_BLK_S_IOERR, got
        self.stats["read"] += got
        return VIRTIO_BLK_S_OK, got

    def _write(self, queue: Vring, sector: int, buffers: tuple[Buffer, ...]) -> int:
        length = total_length(buffers)
        offset = self._extent(sector, length)
        if self.read_only or offset is None:
            return VIRTIO_BLK_S_IOERR
        done = 0
        while done < length:
            with queue.views(_skip(buffers, done)) as views:
                try:
                    n = os.pwritev(self.fd, views, offset + done)
                except OSError:
                    return VIRTIO_BLK_S_IOERR
            if n <= 0:
                return VIRTIO_BLK_S_IOERR
            done += n
        self.stats["written"] += length
        return VIRTIO_BLK_S_OK


def _skip(buffers: tuple[Buffer, ...], count: int) -> tuple[Buffer, ...]:
    """`buffers` without their first `count` bytes (after a short write)."""
    rest = []
    for b in buffers:
        if count >= b.length:
            count -= b.length
            continue
        rest.append(Buffer(b.addr + count, b.length - count, b.writable))
        count = 0
    return tuple(rest)
