"""The devices end to end: the bundled guest's drivers against lgemu's console, disks and wires.

The guest programs (``guest_kernel/tests``: console_echo, blk_read, blk_write, net_echo,
net_ping, net_send) bring up the lguest bus and print what they saw; here the other side is
checked independently — checksums computed from the image files, the files read back after a
run, frames rebuilt byte for byte, pcap files parsed by a reader written here.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from conftest import REPO_ROOT, SUBPROCESS_TIMEOUT, boot_args, lgemu_main_in_process

SECTOR = 512
MAC_ECHO = "02:00:00:00:00:0a"
MAC_PING = "02:00:00:00:00:0b"
BROADCAST = b"\xff" * 6


def boot(cmdline: str, *extra: str) -> tuple[int, bytes, str]:
    """Boot the bundled guest in this process: (status, console bytes, stderr)."""
    return lgemu_main_in_process(boot_args(None, cmdline, extra=extra))


def lines(console: bytes) -> list[str]:
    """Console text as lines (the guest's hvc writer ends each with \\r\\n)."""
    return console.decode("latin-1").replace("\r\n", "\n").splitlines()


def results(console: bytes) -> dict[str, str]:
    """{case: "PASS" | "FAIL"} from a program's PASS/FAIL lines."""
    found = re.findall(r"^(PASS|FAIL) (\S+?)(?::.*)?$", "\n".join(lines(console)), re.MULTILINE)
    return {case: verdict for verdict, case in found}


def mac_bytes(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


# -- console -----------------------------------------------------------------------------------
CONSOLE_SCRIPT = b"hello world\r\nsecond\tline\nquit\nnot seen\n"
CONSOLE_ECHOES = ["echo: hello world", "echo: second\\x09line"]


def test_console_input_file_is_echoed_reproducibly(tmp_path: Path) -> None:
    script = tmp_path / "input.txt"
    script.write_bytes(CONSOLE_SCRIPT)
    runs = [boot("lgemu.test=console_echo", "--console-input", str(script)) for _ in range(2)]
    status, out, err = runs[0]
    assert (status, err) == (0, "")
    text = lines(out)
    assert "virtio console: switched to vring" in text
    start = text.index("console_echo: ready (idle limit 500 ticks)")
    assert text[start + 1:] == [*CONSOLE_ECHOES, "console_echo: quit after 2 lines",
                                "lgemu guest: power down"]
    assert runs[1] == runs[0]  # a scripted session is reproducible byte for byte


def test_console_input_from_a_stdin_pipe_is_echoed() -> None:
    proc = subprocess.run([sys.executable, "-m", "lgemu", "boot", "--append",
                           "lgemu.test=console_echo"], cwd=REPO_ROOT,
                          input=CONSOLE_SCRIPT, capture_output=True,
                          timeout=SUBPROCESS_TIMEOUT, check=False)
    assert (proc.returncode, proc.stderr) == (0, b"")
    text = lines(proc.stdout)
    assert text[text.index(CONSOLE_ECHOES[0]):] == [
        *CONSOLE_ECHOES, "console_echo: quit after 2 lines", "lgemu guest: power down"]


def test_an_idle_guest_waits_for_late_typing_in_real_time() -> None:
    """The 2.6.24 console polls its input on timer ticks (no interrupt), so while the guest
    sleeps lgemu waits for live input in real time instead of racing through virtual time:
    a line typed two seconds late still arrives well inside the guest's 500-tick (5 s of
    guest time) idle limit."""
    proc = subprocess.Popen([sys.executable, "-m", "lgemu", "boot", "--append",
                             "lgemu.test=console_echo"], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2.0)
    out, err = proc.communicate(b"late\nquit\n", timeout=SUBPROCESS_TIMEOUT)
    assert (proc.returncode, err) == (0, b"")
    assert lines(out)[-3:] == ["echo: late", "console_echo: quit after 1 lines",
                               "lgemu guest: power down"]


def test_console_echo_gives_up_after_its_idle_limit(tmp_path: Path) -> None:
    script = tmp_path / "input.txt"
    script.write_bytes(b"no newline at the end")
    status, out, err = boot("lgemu.test=console_echo console.idle=20", "--console-input",
                            str(script))
    assert (status, err) == (0, "")
    assert lines(out)[-3:] == ["echo: no newline at the end",
                               "FAIL console_echo: no input for 20 ticks after 1 lines",
                               "lgemu guest: power down"]


# -- block ---------------------------------------------------------------------------------------
def image(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def sector_pattern(sector: int) -> bytes:
    """What blk_write writes into one sector (guest_kernel/tests/blk_test.c)."""
    return b"".join(f"LGEMU s={sector:08x} k={k:02x}".ljust(31, ".").encode() + b"\n"
                    for k in range(SECTOR // 32))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_blk_read_checksums_match_the_image_files(tmp_path: Path) -> None:
    # vdb ends in a partial sector, which is not part of the disk.
    a = image(tmp_path / "a.img", 256 * 1024, 1)
    b = image(tmp_path / "b.img", 40 * SECTOR + 100, 2)
    status, out, err = boot("lgemu.test=blk_read", "--block", str(tmp_path / "a.img"),
                            "--block", str(tmp_path / "b.img"))
    assert (status, err) == (0, "")
    text = lines(out)
    assert "virtio_blk vda: 512 sectors (262144 bytes), seg_max 126" in text
    assert "virtio_blk vdb: 40 sectors (20480 bytes), seg_max 126" in text
    assert f"blk_read vda: 512 sectors from 0: crc32 {zlib.crc32(a):08x}" in text
    assert f"blk_read vdb: 40 sectors from 0: crc32 {zlib.crc32(b[:40 * SECTOR]):08x}" in text
    assert results(out) == {"blk_read.vda": "PASS", "blk_read.vdb": "PASS"}


def test_blk_read_of_a_range_is_reproducible(tmp_path: Path) -> None:
    data = image(tmp_path / "disk.img", 64 * SECTOR, 3)
    args = ("lgemu.test=blk_read blk.sector=5 blk.sectors=300", "--block",
            str(tmp_path / "disk.img"))
    first, second = boot(*args), boot(*args)
    assert first == second
    status, out, err = first
    assert (status, err) == (0, "")
    # 300 sectors asked for, 59 left after sector 5.
    assert f"blk_read vda: 59 sectors from 5: crc32 {zlib.crc32(data[5 * SECTOR:]):08x}" \
        in lines(out)


def test_blk_write_lands_in_the_file_and_nowhere_else(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    before = image(disk, 32 * SECTOR, 4)
    status, out, err = boot("lgemu.test=blk_write blk.sector=3 blk.count=5", "--block",
                            str(disk))
    assert (status, err) == (0, "")
    assert results(out) == {case: "PASS" for case in (
        "blk_write.write", "blk_write.readback", "blk_write.barrier", "blk_write.scsi_cmd",
        "blk_write.write_past_end", "blk_write.write_across_end", "blk_write.read_past_end")}
    text = lines(out)
    assert "blk_write: scsi_cmd: status 2 (UNSUPP), used.len 1" in text
    assert "blk_write: write_past_end: status 1 (IOERR), used.len 1" in text
    after = disk.read_bytes()
    pattern = b"".join(sector_pattern(s) for s in range(3, 8))
    assert after == before[:3 * SECTOR] + pattern + before[8 * SECTOR:]


def test_blk_write_to_a_read_only_image_changes_nothing(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    image(disk, 16 * SECTOR, 5)
    digest = sha256(disk)
    status, out, err = boot("lgemu.test=blk_write", "--block", f"{disk},ro")
    assert (status, err) == (0, "")
    assert sha256(disk) == digest
    assert results(out)["blk_write.write"] == "FAIL"
    assert results(out)["blk_write.readback"] == "FAIL"
    assert "blk_write: write: status 1 (IOERR), used.len 1" in lines(out)


def test_blk_requests_past_the_end_are_refused(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    image(disk, 10 * SECTOR + 7, 6)
    digest = sha256(disk)
    # Every write starts at or after the end of the disk (10 sectors; the 7 bytes after them
    # are not part of it), or runs across it: all are refused and the file stays as it was.
    status, out, err = boot("lgemu.test=blk_write blk.sector=10 blk.count=2", "--block",
                            str(disk))
    assert (status, err) == (0, "")
    assert disk.stat().st_size == 10 * SECTOR + 7
    assert sha256(disk) == digest
    verdicts = results(out)
    assert verdicts["blk_write.write"] == verdicts["blk_write.barrier"] == "FAIL"
    for case in ("write_past_end", "write_across_end", "read_past_end"):
        assert verdicts[f"blk_write.{case}"] == "PASS"
    assert "blk_write: write: status 1 (IOERR), used.len 1" in lines(out)


def test_blk_programs_without_a_disk_say_so() -> None:
    status, out, err = boot("lgemu.test=blk_read")
    assert (status, err) == (0, "")
    assert "FAIL blk_read: no block devices" in lines(out)


# -- network -------------------------------------------------------------------------------------
def expected_frame(dst: bytes, src: bytes, kind: bytes, seq: int) -> bytes:
    """The frames the network programs exchange (guest_kernel/tests/devtest.h)."""
    length = 60 if kind == b"S" else 1514 if seq % 4 == 1 else 60 + (97 * seq) % 1400
    head = dst + src + b"\x88\xb5" + b"LGEMU" + kind + seq.to_bytes(4, "big")
    return head + bytes((j + 13 * seq) & 0xFF for j in range(len(head), length))


def read_pcap(path: Path) -> list[tuple[int, int, bytes]]:
    """A classic pcap file, read independently of lgemu: [(ts_sec, ts_usec, frame)]."""
    data = path.read_bytes()
    magic, major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack_from("<IHHiIII",
                                                                                 data)
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)  # Ethernet
    records, offset = [], 24
    while offset < len(data):
        ts_sec, ts_usec, incl_len, orig_len = struct.unpack_from("<IIII", data, offset)
        offset += 16
        assert incl_len == orig_len <= snaplen and ts_usec < 1_000_000
        frame = data[offset:offset + incl_len]
        assert len(frame) == incl_len, "truncated record"
        records.append((ts_sec, ts_usec, frame))
        offset += incl_len
    return records


def test_pcap_records_every_frame_sent_reproducibly(tmp_path: Path) -> None:
    captures = []
    for run in range(2):
        pcap = tmp_path / f"run{run}.pcap"
        status, out, err = boot("lgemu.test=net_send net.count=6", "--net",
                                f"pcap:{pcap},mac={MAC_PING}")
        assert (status, err) == (0, "")
        assert results(out) == {"net_send.sent": "PASS"}
        captures.append(pcap.read_bytes())
    assert captures[0] == captures[1]
    records = read_pcap(tmp_path / "run0.pcap")
    src = mac_bytes(MAC_PING)
    assert [frame for _, _, frame in records] == [expected_frame(BROADCAST, src, b"D", seq)
                                                  for seq in range(6)]
    stamps = [(sec, usec) for sec, usec, _ in records]
    assert stamps == sorted(stamps)


def test_net_ping_without_a_peer_gives_up_with_a_fail_line(tmp_path: Path) -> None:
    status, out, err = boot("lgemu.test=net_ping net.count=2 net.timeout=5 net.tries=2 "
                            "net.stop=0", "--net", f"pcap:{tmp_path / 'out.pcap'}")
    assert (status, err) == (0, "")
    assert "FAIL net_ping.echoes: 0 of 2 frames echoed" in lines(out)
    assert len(read_pcap(tmp_path / "out.pcap")) == 4  # two tries for each frame


def free_udp_ports(count: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def lgemu_process(args: Sequence[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lgemu", *args], cwd=REPO_ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


class Reader(threading.Thread):
    """Collects a process's stdout; `ready` is set once `marker` has been printed."""

    def __init__(self, proc: subprocess.Popen, marker: bytes) -> None:
        super().__init__(daemon=True)
        self.proc, self.marker = proc, marker
        self.data = b""
        self.ready = threading.Event()
        self.start()

    def run(self) -> None:
        for line in self.proc.stdout:
            self.data += line
            if self.marker in line:
                self.ready.set()
        self.ready.set()


def ping_over_udp(ping_card: str, *ping_args: str) -> tuple[
        subprocess.CompletedProcess, subprocess.Popen, Reader]:
    """A net_echo guest and a ping guest in two processes over loopback UDP.  `ping_card` ends
    the ping card's option (e.g. ``,pcap=FILE``), `ping_args` follow it; returns the ping run,
    the echo process (ended) and what the echo guest printed."""
    echo_port, ping_port = free_udp_ports(2)
    echo = lgemu_process(["boot", "--net", f"udp:{echo_port}:127.0.0.1:{ping_port},"
                          f"mac={MAC_ECHO}", "--append", "lgemu.test=net_echo"])
    try:
        echo_out = Reader(echo, b"ready")
        assert echo_out.ready.wait(SUBPROCESS_TIMEOUT), "net_echo never became ready"
        ping = subprocess.run(
            [sys.executable, "-m", "lgemu", "boot", "--net",
             f"udp:{ping_port}:127.0.0.1:{echo_port},mac={MAC_PING}{ping_card}", *ping_args],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=SUBPROCESS_TIMEOUT, check=False)
        echo.wait(SUBPROCESS_TIMEOUT)
    finally:
        echo.kill()
        echo.wait()
    echo_out.join(5)
    return ping, echo, echo_out


def test_two_guests_exchange_frames_over_udp(tmp_path: Path) -> None:
    pcap = tmp_path / "ping.pcap"
    ping, echo, echo_out = ping_over_udp(
        f",pcap={pcap}", "--append", f"lgemu.test=net_ping net.count=5 net.peer={MAC_ECHO}")
    assert (ping.returncode, ping.stderr) == (0, b"")
    assert (echo.returncode, echo.stderr.read()) == (0, b"")
    assert results(ping.stdout) == {"net_ping.echoes": "PASS"}
    assert "net_ping: stop frame echoed: the peer stopped" in lines(ping.stdout)
    assert results(echo_out.data) == {"net_echo.stop": "PASS"}
    assert f"net_echo: eth0 {MAC_ECHO} ready" in lines(echo_out.data)

    # The capture holds each ping and its echo (addresses swapped), in that order.
    frames = [frame for _, _, frame in read_pcap(pcap)]
    ping_mac, echo_mac = mac_bytes(MAC_PING), mac_bytes(MAC_ECHO)
    for kind, seq in [(b"P", s) for s in range(5)] + [(b"S", 5)]:
        sent = expected_frame(echo_mac, ping_mac, kind, seq)
        back = ping_mac + echo_mac + sent[12:]
        assert sent in frames and back in frames
        assert frames.index(sent) < frames.index(back)

