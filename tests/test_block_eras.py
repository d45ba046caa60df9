"""The virtio disk era by era: the features each release's Launcher offered, and the requests
they make a guest send served as that Launcher served them (docs/eras.md, `Era.blk_offers`).

Small guests assembled in an era's ABI (`build_guest(..., era=...)`, run with ``--abi``)
read the offered feature bits from the device page, then drive the disk's queue by hand as
that era's driver would: a write flagged BARRIER (2.6.25-2.6.33), a FLUSH (3.0's driver, with
no data buffers), and types no Launcher served.  What is judged is what the guest and the user
see: the bits, the status byte and used length the guest reads back, the image's bytes, and
the disk's line under ``-v``.  When the image is synced around a barrier is checked on the
device directly, by recording the writes and syncs it makes to the image.

A real 3.13 kernel (where shared/kernels has one) shows a guest's `fsync` of /dev/vda arriving
as a FLUSH; its 2.6.32 accepts BARRIER, 4.4 (virtio 1.0 over PCI) is offered neither, as its
Launcher offered neither.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from linuxkernel import shared_kernel, with_program
from virtioasm import DEVPT_BSS, MACROS, MEM, chain, hexwords, map_device_pages, report

from lgemu.abi import PAGE_SIZE, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP
from lgemu.abi_eras import era_named
from lgemu.devices.block import Block
from lgemu.devices.vring import Vring
from lgemu.launcher import descriptor_format, lay_out_devices
from lgemu.machine.memory import GuestMemory

SECTOR = 512
T_OUT, T_SCSI_CMD, T_FLUSH, T_GET_ID, T_BARRIER = 1, 2, 4, 8, 0x80000000
ACK = 1 | 2 | 4  # ACKNOWLEDGE | DRIVER | DRIVER_OK


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(8 * SECTOR))
    return path


def _guest(body: str) -> str:
    return MACROS + "\tINIT\n" + map_device_pages(3) + body + "\tPOWER_DOWN\n"


# -- the features offered, as the guest reads them ------------------------------------------------
# era → the offered bitmap (SEG_MAX is bit 2, BARRIER bit 0, FLUSH bit 9) and its length
OFFERS = {"2.6.25": (0x05, 1), "2.6.26": (0x05, 1), "2.6.29": (0x05, 1), "2.6.30": (0x05, 1),
          "2.6.32": (0x05, 1), "3.0": (0x0204, 2)}


@pytest.mark.parametrize("release", OFFERS)
def test_the_disk_offers_what_its_eras_launcher_offered(asm_guest, tmp_path, release):
    """The guest reads its block descriptor: feature_len (byte 2), then the offered bitmap
    after the one vqconfig (byte 13 on)."""
    era = era_named(release)
    body = (f"\tmovzbl\t{MEM + 2:#x}, %eax\n\tPUTHEX\t%eax\n"
            f"\tmovzwl\t{MEM + 13:#x}, %eax\n\tPUTHEX\t%eax\n")
    run = asm_guest(_guest(body), DEVPT_BSS, era=era,
                    extra=["--block", str(_image(tmp_path))])
    bits, length = OFFERS[release]
    assert (run.status, run.err) == (0, ""), run.err
    # the byte after a 1-byte bitmap is the accepted bitmap: zero until the driver writes it
    assert run.out == hexwords(length, bits)


def test_2_6_24_offers_no_barrier_field(asm_guest, tmp_path):
    """2.6.24's Launcher gave CAPACITY and SEG_MAX and no VIRTIO_CONFIG_BLK_F field (so its
    driver never ordered barriers): config_len is one VIRTQUEUE field (10) + 10 + 6."""
    body = f"\tmovzbl\t{MEM + 1:#x}, %eax\n\tPUTHEX\t%eax\n"
    run = asm_guest(_guest(body), DEVPT_BSS, extra=["--block", str(_image(tmp_path))])
    assert (run.status, run.out) == (0, hexwords(26))


# -- requests -------------------------------------------------------------------------------------
def _request(kind: int, sector: int = 0, data: bool = True) -> str:
    """Set the driver status (accepting nothing), then one request of `kind` at `sector`:
    header, (for a write) the 512 bytes at `data`, status byte; print used.idx, id, len and
    the status byte."""
    hdr = (f"\tmovl\t${kind:#x}, hdr\n\tmovl\t$0, hdr+4\n\tmovl\t${sector}, hdr+8\n"
           "\tmovl\t$0, hdr+12\n\tmovb\t$0xff, status\n")
    buffers = [("$hdr", "$16", False)] + ([("$data", "$512", False)] if data else []) + [
        ("$status", "$1", True)]
    return (hdr + chain(0, buffers) + report(0)
            + "\tmovzbl\tstatus, %eax\n\tPUTHEX\t%eax\n")


def _status(value: int) -> str:
    return f"\tmovb\t${value}, {MEM + 4:#x}\n\tHCALL\t$LHCALL_NOTIFY, ${MEM:#x}\n"


DATA = ("\t.balign 4\nhdr:\t.fill 16, 1, 0\nstatus:\t.byte 0\n\t.balign 4\n"
        "data:\t.ascii \"written then flushed\"\n\t.fill 492, 1, 0x5a\n" + DEVPT_BSS)
WRITTEN = b"written then flushed" + b"\x5a" * 492


def _run(asm_guest, tmp_path, release: str, body: str):
    image = _image(tmp_path)
    run = asm_guest(_guest(body), DATA, era=era_named(release),
                    extra=["--block", str(image), "-v"])
    assert run.status == 0, run.err
    disk_line = next(line for line in run.err.splitlines() if f"{image}:" in line)
    return run.out, image.read_bytes(), disk_line


def test_a_flush_after_a_write_is_served_ok_with_the_data_on_disk(asm_guest, tmp_path):
    """3.0's Launcher answered FLUSH (no data buffers) with an fdatasync of the image, then
    OK."""
    out, disk, line = _run(asm_guest, tmp_path, "3.0",
                           _status(ACK) + _request(T_OUT, 2) + _request(T_FLUSH, data=False))
    assert out == hexwords(1, 0, 1, VIRTIO_BLK_S_OK, 2, 0, 1, VIRTIO_BLK_S_OK)
    assert disk[2 * SECTOR:3 * SECTOR] == WRITTEN
    assert ": 2 requests, read 0 bytes, wrote 512 bytes, 1 flushes, 0 failed" in line


@pytest.mark.parametrize(("release", "kind"), [
    ("2.6.32", T_FLUSH),  # its driver knew FLUSH, but its Launcher neither offered nor served it
    ("3.0", T_GET_ID), ("3.0", T_SCSI_CMD), ("2.6.26", T_SCSI_CMD), ("2.6.26", 0x40)])
def test_a_type_its_launcher_did_not_serve_is_unsupp(asm_guest, tmp_path, release, kind):
    out, disk, line = _run(asm_guest, tmp_path, release,
                           _status(ACK) + _request(kind, 1, data=False))
    assert out == hexwords(1, 0, 1, VIRTIO_BLK_S_UNSUPP)
    assert disk == bytes(8 * SECTOR)
    assert ": 1 requests, read 0 bytes, wrote 0 bytes, 1 failed" in line


@pytest.mark.parametrize("release", ["2.6.26", "2.6.30", "3.0"])
def test_a_barrier_write_lands_and_is_answered_ok(asm_guest, tmp_path, release):
    """2.6.25-2.6.33 guests flag an ordered write BARRIER (their Launchers synced the image
    around it); 3.0's Launcher ignored the flag and did the write."""
    out, disk, line = _run(asm_guest, tmp_path, release,
                           _status(ACK) + _request(T_OUT | T_BARRIER, 3))
    assert out == hexwords(1, 0, 1, VIRTIO_BLK_S_OK)
    assert disk[3 * SECTOR:4 * SECTOR] == WRITTEN
    assert ": 1 requests, read 0 bytes, wrote 512 bytes, 1 barriers, 0 failed" in line


# -- when the image is synced around a barrier ----------------------------------------------
@pytest.mark.parametrize(("release", "calls"), [
    ("2.6.24", ["sync", "write"]),  # fdatasync before the request (never offered, though)
    ("2.6.26", ["sync", "write"]),
    ("2.6.30", ["sync", "write", "sync"]),  # "Barriers specify no reordering … or the back"
    ("3.0", ["write"]),  # the flag ignored
])
def test_a_barrier_is_synced_where_its_launcher_synced_it(tmp_path, monkeypatch, release,
                                                          calls):
    era = era_named(release)
    disk = Block(_image(tmp_path), False)
    disk.era = era
    memory = GuestMemory(MEM + 16 * PAGE_SIZE)
    page = lay_out_devices(memory.ram, MEM, [disk.spec()], descriptor_format(era))
    memory.limit = page.pfn_limit * PAGE_SIZE
    queue = page.devices[0].queues[0]
    ring = Vring(memory, "vda.0", queue.pfn, queue.num, queue.irq)
    disk.attach([ring], lambda line: None)
    header, data, status = 0x1000, 0x2000, 0x3000
    size = era.blk_outhdr_size
    memory.ram[header:header + 16] = (T_OUT | T_BARRIER).to_bytes(4, "little") + bytes(4) + \
        (5).to_bytes(8, "little")
    memory.ram[data:data + SECTOR] = WRITTEN
    desc = ring.desc
    for i, (addr, length, flags) in enumerate([(header, size, 1), (data, SECTOR, 1),
                                               (status, 1, 2)]):
        entry = desc + 16 * i
        memory.ram[entry:entry + 16] = (addr.to_bytes(8, "little") + length.to_bytes(4, "little")
                                        + flags.to_bytes(2, "little")
                                        + (i + 1 if flags & 1 else 0).to_bytes(2, "little"))
    avail = ring.avail
    memory.ram[avail + 4:avail + 6] = (0).to_bytes(2, "little")  # ring[0] = head 0
    memory.ram[avail + 2:avail + 4] = (1).to_bytes(2, "little")  # avail.idx
    seen: list[str] = []
    real_sync, real_write = os.fdatasync, os.pwritev
    monkeypatch.setattr(os, "fdatasync", lambda fd: (seen.append("sync"), real_sync(fd))[1])
    monkeypatch.setattr(os, "pwritev", lambda fd, views, offset: (
        seen.append("write"), real_write(fd, views, offset))[1])
    disk.kick(ring)
    disk.close()
    assert memory.ram[status] == VIRTIO_BLK_S_OK
    assert seen == calls
    assert disk.path.read_bytes()[5 * SECTOR:6 * SECTOR] == WRITTEN


# -- real kernels ----------------------------------------------------------------------------------
FSYNC = """	.globl	_start
_start:
	movl	8(%esp), %ebx		/* open(argv[1], O_RDWR) */
	movl	$5, %eax
	movl	$2, %ecx
	xorl	%edx, %edx
	int	$0x80
	testl	%eax, %eax
	js	1f
	movl	%eax, %ebx		/* fsync(fd) */
	movl	$118, %eax
	int	$0x80
1:	movl	%eax, %ebx		/* exit(-result) */
	negl	%ebx
	movl	$1, %eax
	int	$0x80
"""


# kernel → (command line, last shell line, the features -v says the driver accepted)
REAL = {
    "linux-2.6.32": ("console=hvc0 rdinit=/init", "exit",
                     r"vda\W+0x07 ack\|driver\|ok\W+0x5\W"),
    "linux-3.13": ("console=hvc0 rdinit=/bin/sh", "poweroff",
                   r"vda\W+0x07 ack\|driver\|ok\W+0x204\W"),
    "linux-4.4": ("console=hvc0 rdinit=/bin/sh", "poweroff", None),
}


@pytest.mark.parametrize("name", REAL)
def test_a_real_kernels_fsync_of_its_disk(boot_guest, tmp_path, name):
    """`fsync /dev/vda` after a write: 3.13's block layer sends the FLUSH its Launcher
    offered; 2.6.32's (BARRIER accepted) and 4.4's (offered neither) send none."""
    kernel = shared_kernel(name)
    cmdline, last, accepted = REAL[name]
    image = _image(tmp_path)
    script = tmp_path / "console-input"
    script.write_text("echo written-here > /tmp/w\ndd if=/tmp/w of=/dev/vda bs=512 seek=1\n"
                      f"fsync /dev/vda\necho fsync=$?\n{last}\n")
    status, out, err = boot_guest(kernel, cmdline, extra=[
        "--initrd", str(with_program(tmp_path, "fsync", FSYNC)), "--console-input", str(script),
        "--block", str(image), "-v"])
    assert status == 0, err[-3000:]
    assert b"fsync=0\r\n" in out
    assert image.read_bytes()[SECTOR:SECTOR + 13] == b"written-here\n"
    line = next(line for line in err.splitlines() if f"{image}:" in line)
    flushes = re.search(r"(\d+) flushes", line)
    assert (flushes is not None) == (name == "linux-3.13"), line
    assert "barriers" not in line  # ext2 and a raw disk never order a write
    if accepted is not None:
        assert re.search(accepted, err), err[-2000:]
