"""The virtio block device (ABI §12.2), judged by what the guest and the host file show.

Each guest is a `guestasm` program that drives the block queue by hand (`virtioasm`): it
posts one request chain (header, data, status), kicks, and prints the used ring and the
status byte; the test then compares the disk image's bytes and size with what they must be.
With `--block` first, the block queue is queue 0 and the console's follow (ABI §10.3).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest
from conftest import lgemu_main_in_process
from guestasm import assert_killed, assert_one_line, assert_powered_down
from linuxkernel import shell_boot_args
from virtioasm import DEVPT_BSS, MACROS, chain, hexwords, map_device_pages, report

from lgemu.kills import BadRequest

SECTOR = 512
T_IN, T_OUT, T_SCSI, T_BARRIER = 0, 1, 2, 0x80000000
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2


def make_image(path: Path, sectors: int = 8, tail: bytes = b"") -> Path:
    """Sector i holds "sector i says hello" and a NUL, then filler; `tail` follows."""
    data = b"".join(f"sector {i} says hello\0".encode().ljust(SECTOR, b"\xa5")
                    for i in range(sectors))
    path.write_bytes(data + tail)
    return path


def header(label: str, kind: int, sector: int) -> str:
    """A virtio_blk_outhdr at `label`, and a status byte at `label`_status (0xff)."""
    return (f"\t.balign 4\n{label}:\t.long {kind:#x}, 0, {sector & 0xFFFFFFFF:#x}, "
            f"{sector >> 32:#x}, 0, 0\n{label}_status:\t.byte 0xff\n")


def status_of(label: str) -> str:
    return f"\tmovzbl\t{label}_status, %eax\n\tPUTHEX\t%eax\n"


def request(label: str, data: list[tuple[str, str, bool]], queue: int = 0) -> str:
    """Header, data buffers, status: one chain on `queue`, kicked."""
    return chain(queue, [(f"${label}", "$24", False), *data, (f"${label}_status", "$1", True)])


def guest(body: str, queues: int = 3) -> str:
    return MACROS + "\tINIT\n" + map_device_pages(queues) + body + "\tPOWER_DOWN\n"


BUF_BSS = "\t.bss\n\t.balign 4096\nbuf:\t.space 8192\n\t.data\n"


def test_read_puts_the_sector_into_guest_memory(asm_guest, tmp_path):
    image = make_image(tmp_path / "disk.img")
    run = asm_guest(guest(request("r", [("$buf", "$512", True)]) + report(0) + status_of("r")
                          + "\tPUTS\tbuf\n"),
                    header("r", T_IN, 2) + BUF_BSS + DEVPT_BSS, extra=["--block", str(image)])
    # used.idx 1, head 0, len = 512 data bytes + the status byte; status OK
    assert_powered_down(run, hexwords(1, 0, 513, S_OK) + b"sector 2 says hello")


def test_scattered_read_then_gathered_write_copy_a_sector(asm_guest, tmp_path):
    """A read into three buffers of 100, 300 and 112 bytes and a write from the same three
    buffers elsewhere: the file's sector 5 becomes a copy of its sector 1."""
    image = make_image(tmp_path / "disk.img")
    before = image.read_bytes()
    parts = [("$buf", "$100"), ("$buf+1000", "$300"), ("$buf+5000", "$112")]
    body = (request("r", [(a, n, True) for a, n in parts]) + status_of("r")
            + chain(0, [("$w", "$24", False), *[(a, n, False) for a, n in parts],
                        ("$w_status", "$1", True)])
            + report(0, 1) + status_of("w"))
    run = asm_guest(guest(body), header("r", T_IN, 1) + header("w", T_OUT, 5) + BUF_BSS
                    + DEVPT_BSS, extra=["--block", str(image)])
    assert_powered_down(run, hexwords(S_OK, 2, 0, 1, S_OK))
    after = image.read_bytes()
    assert after[5 * SECTOR:6 * SECTOR] == before[SECTOR:2 * SECTOR]
    assert after[:5 * SECTOR] + after[6 * SECTOR:] == before[:5 * SECTOR] + before[6 * SECTOR:]


def test_write_stores_the_guest_bytes_in_the_file(asm_guest, tmp_path):
    image = make_image(tmp_path / "disk.img")
    before = image.read_bytes()
    run = asm_guest(guest(request("w", [("$msg", "$1024", False)]) + report(0)
                          + status_of("w")),
                    header("w", T_OUT, 3) + 'msg:\t.ascii "written by the guest"\n'
                    "\t.fill 1004, 1, 0x5a\n" + DEVPT_BSS, extra=["--block", str(image)])
    assert_powered_down(run, hexwords(1, 0, 1, S_OK))  # a write returns len 1: the status
    after = image.read_bytes()
    assert len(after) == len(before)
    written = b"written by the guest".ljust(1024, b"\x5a")
    assert after == before[:3 * SECTOR] + written + before[5 * SECTOR:]


def test_barrier_write_is_done_like_a_write(asm_guest, tmp_path):
    image = make_image(tmp_path / "disk.img")
    run = asm_guest(guest(request("w", [("$msg", "$512", False)]) + status_of("w")),
                    header("w", T_OUT | T_BARRIER, 0) + "msg:\t.fill 512, 1, 0x42\n"
                    + DEVPT_BSS, extra=["--block", str(image)])
    assert_powered_down(run, hexwords(S_OK))
    assert image.read_bytes()[:SECTOR] == b"\x42" * SECTOR


def test_scsi_commands_are_unsupported(asm_guest, tmp_path):
    image = make_image(tmp_path / "disk.img")
    before = image.read_bytes()
    run = asm_guest(guest(request("s", [("$buf", "$96", True)]) + report(0) + status_of("s")),
                    header("s", T_SCSI, 0) + BUF_BSS + DEVPT_BSS,
                    extra=["--block", str(image)])
    assert_powered_down(run, hexwords(1, 0, 1, S_UNSUPP))
    assert image.read_bytes() == before


def test_read_only_image_refuses_writes_and_is_not_changed(asm_guest, tmp_path):
    image = make_image(tmp_path / "disk.img")
    before, mtime = image.read_bytes(), image.stat().st_mtime_ns
    body = (request("w", [("$msg", "$512", False)]) + report(0) + status_of("w")
            + chain(0, [("$r", "$24", False), ("$buf", "$512", True), ("$r_status", "$1", True)])
            + status_of("r") + "\tPUTS\tbuf\n")
    run = asm_guest(guest(body), header("w", T_OUT, 0) + header("r", T_IN, 4)
                    + "msg:\t.fill 512, 1, 0x42\n" + BUF_BSS + DEVPT_BSS,
                    extra=["--block", f"{image},ro"])
    assert_powered_down(run, hexwords(1, 0, 1, S_IOERR, S_OK) + b"sector 4 says hello")
    assert image.read_bytes() == before
    assert image.stat().st_mtime_ns == mtime


@pytest.mark.parametrize(("kind", "sector", "length"), [
    (T_OUT, 7, 1024),  # starts inside, ends one sector past the end
    (T_OUT, 8, 512),  # the partial sector after the last whole one is not part of the disk
    (T_IN, 8, 512),
    (T_OUT, 1 << 55, 512),  # an offset far beyond any file
    (T_IN, (1 << 64) - 1, 512),
])
def test_request_past_the_end_fails_and_leaves_the_file_alone(asm_guest, tmp_path, kind,
                                                               sector, length):
    image = make_image(tmp_path / "disk.img", tail=b"partial sector")
    before = image.read_bytes()
    writable = kind == T_IN
    run = asm_guest(guest(request("x", [("$buf", f"${length}", writable)]) + report(0)
                          + status_of("x")),
                    header("x", kind, sector) + BUF_BSS + DEVPT_BSS,
                    extra=["--block", str(image)])
    assert_powered_down(run, hexwords(1, 0, 1, S_IOERR))
    assert image.stat().st_size == len(before)
    assert image.read_bytes() == before


def test_the_last_whole_sector_is_readable(asm_guest, tmp_path):
    image = make_image(tmp_path / "disk.img", tail=b"partial sector")
    run = asm_guest(guest(request("r", [("$buf", "$512", True)]) + status_of("r")
                          + "\tPUTS\tbuf\n"),
                    header("r", T_IN, 7) + BUF_BSS + DEVPT_BSS, extra=["--block", str(image)])
    assert_powered_down(run, hexwords(S_OK) + b"sector 7 says hello")


def test_two_disks_are_served_in_command_line_order(asm_guest, tmp_path):
    """vda is queue 0, vdb queue 1, the console after them (ABI §10.3)."""
    first = tmp_path / "first.img"
    second = tmp_path / "second.img"
    first.write_bytes(b"first disk\0".ljust(SECTOR, b"\0"))
    second.write_bytes(b"second disk\0".ljust(SECTOR * 2, b"\0"))
    body = (request("a", [("$buf", "$512", True)], queue=0) + "\tPUTS\tbuf\n"
            + request("b", [("$buf", "$512", True)], queue=1) + "\tPUTS\tbuf\n")
    run = asm_guest(guest(body, queues=4),
                    header("a", T_IN, 0) + header("b", T_IN, 0) + BUF_BSS + DEVPT_BSS,
                    extra=["--block", str(first), "--block", str(second)])
    assert_powered_down(run, b"first disksecond disk")


def test_device_page_is_the_2624_launchers(asm_guest, tmp_path):
    """ABI §10.3's example, byte for byte: `lguest --block=disk.img 64 vmlinux`."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(SECTOR * 3000))
    expected = (bytes.fromhex("02 1A 00 02 08 80 00 01 00 01 40 00 00 41 08")
                + (3000).to_bytes(8, "little") + bytes.fromhex("43 04 7E 00 00 00")
                + bytes.fromhex("03 14 00 02 08 80 00 02 00 03 40 00 00"
                                "02 08 80 00 03 00 05 40 00 00 00 00 00 00"))
    words = struct.unpack(f"<{len(expected) // 4}I", expected)
    body = "".join(f"\tPUTHEX\t{0x4000000 + 4 * i:#x}\n" for i in range(len(words)))
    run = asm_guest(guest(body), DEVPT_BSS, extra=["--block", str(image)])
    assert_powered_down(run, hexwords(*words))


CODE_A = bytes.fromhex("b8 41 41 41 41 c3")  # mov $0x41414141, %eax; ret
CODE_B = bytes.fromhex("b8 42 42 42 42 c3")  # mov $0x42424242, %eax; ret


def test_code_read_from_disk_twice_runs_the_new_code(asm_guest, tmp_path):
    """The host's writes into guest memory drop the code Unicorn translated from those
    pages (Unicorn §8.3): the second read over the same page must run the new code."""
    image = tmp_path / "code.img"
    image.write_bytes(CODE_A.ljust(SECTOR, b"\xcc") + CODE_B.ljust(SECTOR, b"\xcc"))
    body = (request("a", [("$buf", "$512", True)]) + "\tcall\tbuf\n\tPUTHEX\t%eax\n"
            + request("b", [("$buf", "$512", True)]) + "\tcall\tbuf\n\tPUTHEX\t%eax\n")
    run = asm_guest(guest(body), header("a", T_IN, 0) + header("b", T_IN, 1) + BUF_BSS
                    + DEVPT_BSS, extra=["--block", str(image)])
    assert_powered_down(run, hexwords(0x41414141, 0x42424242))


def test_code_in_the_second_page_of_a_two_page_read_is_replaced(asm_guest, tmp_path):
    """One request that fills two adjacent pages drops the code of both: the second read
    puts new code in the second page, and the guest runs the new code."""
    page = 4096
    filler = b"\xcc" * page
    image = tmp_path / "code.img"
    image.write_bytes(filler + CODE_A.ljust(page, b"\xcc") + filler + CODE_B.ljust(page, b"\xcc"))
    call = "\tcall\tbuf+4096\n\tPUTHEX\t%eax\n"
    body = (request("a", [("$buf", "$8192", True)]) + call
            + request("b", [("$buf", "$8192", True)]) + call)
    run = asm_guest(guest(body), header("a", T_IN, 0) + header("b", T_IN, 2 * page // SECTOR)
                    + BUF_BSS + DEVPT_BSS, extra=["--block", str(image)])
    assert_powered_down(run, hexwords(0x41414141, 0x42424242))


@pytest.mark.parametrize(("buffers", "reason"), [
    ([("$h", "$16", False), ("$buf", "$512", True), ("$h_status", "$1", True)],
     "header is 16 bytes, not 24"),
    ([("$h", "$24", False), ("$buf", "$512", False)], "no device-writable status byte"),
    ([("$h", "$24", False), ("$buf", "$512", True), ("$h_status", "$2", True)],
     "status buffer is 2 bytes, not 1"),
    ([("$h", "$24", True), ("$h_status", "$1", True)], "no device-readable virtio_blk_outhdr"),
])
def test_malformed_requests_kill_the_guest(asm_guest, tmp_path, buffers, reason):
    image = make_image(tmp_path / "disk.img")
    before = image.read_bytes()
    run = asm_guest(guest(chain(0, buffers)), header("h", T_IN, 0) + BUF_BSS + DEVPT_BSS,
                    extra=["--block", str(image)])
    assert_killed(run, BadRequest("vda.0", 0, reason))
    assert image.read_bytes() == before


def test_block_only_runs_are_reproducible(boot_guest, tmp_path):
    """Same inputs, same console bytes, same instruction count, same image afterwards."""
    from guestasm import build_guest

    elf = build_guest(tmp_path, guest(request("w", [("$msg", "$512", False)])
                                      + request("r", [("$buf", "$1024", True)])
                                      + "\tPUTS\tbuf\n"),
                      header("w", T_OUT, 1) + header("r", T_IN, 0)
                      + 'msg:\t.asciz "again"\n\t.fill 506, 1, 0\n' + BUF_BSS + DEVPT_BSS)
    results = []
    for n in range(2):
        image = make_image(tmp_path / f"disk{n}.img")
        status, out, err = boot_guest(elf, extra=["--block", str(image), "-v"])
        executed = [line for line in err.splitlines() if line.startswith("executed")]
        results.append((status, out, executed, image.read_bytes()))
    assert results[0] == results[1]
    assert results[0][0] == 0 and results[0][1] == b"sector 0 says hello"
    assert results[0][2]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_images_are_closed_whatever_the_outcome(asm_guest, tmp_path):
    image = make_image(tmp_path / "disk.img")
    before = _open_fds()
    killed = asm_guest(guest(chain(0, [("$h", "$8", False)])), header("h", T_IN, 0) + DEVPT_BSS,
                       extra=["--block", str(image), "--block", f"{image},ro"])
    assert killed.status == 3
    missing = asm_guest("\tINIT\n", extra=["--block", str(image),
                                            "--block", str(tmp_path / "nothing.img")])
    assert missing.status == 2
    assert _open_fds() == before


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "missing.img", "missing.img: no such file"),
    (lambda p: p, ": is a directory"),
    (lambda p: Path("/dev/null"), "/dev/null: not a regular file or block device"),
])
def test_unusable_image_is_one_line_and_exit_2(lgemu_main, tmp_path, make, message):
    status, out, err = lgemu_main(["boot", "--block", str(make(tmp_path))])
    assert status == 2 and out == b""
    line = assert_one_line(err)
    assert line.startswith("lgemu: ") and line.endswith(message)


def test_verbose_shows_the_disk_in_the_device_page(boot_guest, tmp_path):
    image = make_image(tmp_path / "disk.img")
    status, _out, err = boot_guest(None, extra=["--block", f"{image},ro", "-v"])
    assert status == 0
    assert "block at 0x0: capacity 8, seg_max 126" in err
    assert "vda" in err and "read-only" in err


def test_verbose_shows_at_exit_the_status_and_fields_the_guest_left(boot_guest, tmp_path):
    """The guest writes the status byte and marks the fields it read with 0x80 (ABI §10.2, §10.4):
    -v shows both at exit.  Block descriptor: status at +2, CAPACITY's type byte at +13."""
    from guestasm import build_guest

    image = make_image(tmp_path / "disk.img")
    elf = build_guest(tmp_path, guest("\tmovb\t$0x87, 0x4000002\n\torb\t$0x80, 0x400000d\n"),
                      DEVPT_BSS)
    status, _out, err = boot_guest(elf, extra=["--block", str(image), "-v"])
    assert status == 0
    exit_table = err[err.index("devices at exit"):]
    assert re.search(r"vda\W+0x87 ack\|driver\|ok\|failed\W+capacity\W", exit_table)
    assert re.search(r"hvc0\W+0x00\W+-\W", exit_table)
    assert "vda: " + str(image) + ": 0 requests" in exit_table


def test_real_guest_copies_one_disk_onto_another_the_same_way_every_time(tmp_path):
    """The unmodified 2.6.24 kernel's shell copies vda onto vdb in 64 KiB reads and writes
    (multi-page requests both ways, tools/bench's workload in small): afterwards vdb holds
    exactly vda's bytes, and a second run prints the same console bytes."""
    size = 1 << 20
    # Bytes that differ from page to page and from sector to sector, and a line to print.
    src = b"".join(struct.pack("<II", i, i * 2654435761 & 0xFFFFFFFF) for i in range(size // 8))
    mark = b"copied-by-guest\n"  # 16 bytes: vdb is read back in blocks of its size
    src = src[:size // 2] + mark + src[size // 2 + len(mark):]
    script = ("IFS=: read maj min < /sys/block/vdb/dev\nmknod /dev/vdb b $maj $min\n"
              "dd if=/dev/vda of=/dev/vdb bs=65536\nsync\n"
              f"dd if=/dev/vdb bs={len(mark)} count=1 skip={size // 2 // len(mark)}\nexit\n")
    assert (size // 2) % len(mark) == 0
    runs = []
    for n in range(2):
        vda, vdb = tmp_path / f"vda{n}.img", tmp_path / f"vdb{n}.img"
        vda.write_bytes(src)
        vdb.write_bytes(bytes(size))
        status, out, err = lgemu_main_in_process(["boot", *shell_boot_args(tmp_path, script),
                                                  "--block", str(vda), "--block", str(vdb)])
        assert (status, err) == (0, ""), out[-2000:]
        assert vdb.read_bytes() == src and vda.read_bytes() == src
        runs.append(out)
    assert b"16+0 records in\r\n16+0 records out\r\n" in runs[0]
    assert b"lg# " + mark.replace(b"\n", b"\r\n") in runs[0]
    assert runs[0] == runs[1]
