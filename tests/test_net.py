"""The virtio network device (ABI §12.3) and its host wires: UDP over loopback, pcap, TAP.

Unit tests drive a `Net` device on hand-made rings with a fake wire; end-to-end tests run
`guestasm` guests that post rx buffers, halt until a frame arrives and send frames, with the
peer being a Python socket on 127.0.0.1 or a second lgemu.  Networked runs follow the host
clock, so these tests wait for frames (with hang timeouts) and never time anything.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SUBPROCESS_TIMEOUT
from guestasm import assert_killed, assert_one_line, assert_powered_down, build_guest
from handring import HandRings
from virtioasm import (
    DEVPT_BSS,
    MACROS,
    chain,
    map_device_pages,
    ring,
    used_flags,
    used_idx,
    used_len,
)

from lgemu.abi import VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY
from lgemu.devices.net import BACKLOG_FRAMES, Net, default_mac
from lgemu.devices.netback import Link, NetOption
from lgemu.errors import GuestKilled
from lgemu.kills import BadRequest

HDR = 8  # struct virtio_net_hdr in 2.6.24
ETHERTYPE = b"\x88\xb5"  # IEEE local experimental
MAC_A = bytes.fromhex("02aa00000001")
MAC_B = bytes.fromhex("02bb00000002")
EPOCH = 1_201_132_800  # lgemu's virtual wall clock at boot


def frame(dst: bytes, src: bytes, text: bytes, size: int = 60) -> bytes:
    return (dst + src + ETHERTYPE + text).ljust(size, b"\0")


class FakeLink(Link):
    """A wire the test controls: `arrived` frames are received, `sent` records sends."""

    def __init__(self) -> None:
        self.arrived: list[bytes] = []
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        return True

    def receive(self) -> list[bytes]:
        frames, self.arrived = self.arrived, []
        return frames

    def fileno(self) -> int:
        return 0


def net_on_rings(pcap: Path | None = None) -> tuple[Net, FakeLink, HandRings, list[int]]:
    option = NetOption("pcap", pcap=pcap)  # pcap-only builds no wire; the fake one is put in
    net = Net(option, 0)
    link = net.link = FakeLink()
    rings = HandRings(2, ["eth0.0", "eth0.1"])
    irqs: list[int] = []
    net.attach(rings.vrings, irqs.append)
    return net, link, rings, irqs


# -- receive ------------------------------------------------------------------------------

def test_rx_queue_asks_for_no_kicks_and_tx_queue_for_kicks():
    _, _, rings, _ = net_on_rings()
    assert rings.rings[0].used_flags == VRING_USED_F_NO_NOTIFY
    assert rings.rings[1].used_flags == 0


def test_frames_are_never_delivered_inside_the_rx_kick():
    """2.6.24's virtnet_open kicks before napi_enable: completing then loses rx for good."""
    net, link, rings, irqs = net_on_rings()
    rx = rings.rings[0]
    link.arrived.append(frame(MAC_A, MAC_B, b"early"))
    net.poll()  # the frame waits: no buffers yet
    rx.chain(0, [(0x10000, HDR, True), (0x11000, 1514, True)])
    net.kick(rx.vring)
    assert rx.used() == [] and irqs == []
    net.poll()  # the next slice boundary
    assert rx.used() == [(0, HDR + 60)] and irqs == [1]


def test_a_received_frame_follows_a_zero_header_across_the_buffers():
    net, link, rings, _ = net_on_rings()
    rx = rings.rings[0]
    mem = rings.memory.ram
    mem[0x10000:0x10008] = b"\xff" * 8
    rx.chain(0, [(0x10000, HDR, True), (0x11000, 20, True), (0x12000, 1494, True)])
    data = frame(MAC_A, MAC_B, b"split across two buffers", 100)
    link.arrived.append(data)
    net.poll()
    assert rx.used() == [(0, HDR + 100)]
    assert mem[0x10000:0x10008] == bytes(8)
    assert mem[0x11000:0x11014] + mem[0x12000:0x12000 + 80] == data
    assert sorted(rings.written.take()) == [0x10, 0x11, 0x12]  # pages to invalidate


def test_rx_completions_honour_no_interrupt():
    net, link, rings, irqs = net_on_rings()
    rx = rings.rings[0]
    rx.avail_flags = VRING_AVAIL_F_NO_INTERRUPT
    rx.chain(0, [(0x10000, HDR, True), (0x11000, 1514, True)])
    link.arrived.append(frame(MAC_A, MAC_B, b"quiet"))
    net.poll()
    assert len(rx.used()) == 1 and irqs == []


def test_a_frame_too_long_for_the_buffers_is_cut_like_a_tap_read():
    net, link, rings, _ = net_on_rings()
    rx = rings.rings[0]
    rx.chain(0, [(0x10000, HDR, True), (0x11000, 50, True)])
    link.arrived.append(frame(MAC_A, MAC_B, b"long", 200))
    net.poll()
    assert rx.used() == [(0, HDR + 50)]


def test_frames_wait_for_buffers_up_to_a_bound():
    net, link, _, _ = net_on_rings()
    link.arrived.extend(frame(MAC_A, MAC_B, b"%d" % i) for i in range(BACKLOG_FRAMES + 10))
    net.poll()
    assert len(net.backlog) == BACKLOG_FRAMES and net.stats["dropped"] == 10


@pytest.mark.parametrize(("buffers", "reason"), [
    ([(0x10000, 10, True), (0x11000, 1514, True)],
     "first buffer is 10 bytes, not the 8-byte virtio_net_hdr"),
    ([(0x10000, HDR, False), (0x11000, 1514, True)],
     "device-readable buffer in the receive queue"),
])
def test_malformed_rx_buffers_kill(buffers, reason):
    net, link, rings, _ = net_on_rings()
    rings.rings[0].chain(0, buffers)
    link.arrived.append(frame(MAC_A, MAC_B, b"x"))
    with pytest.raises(GuestKilled) as caught:
        net.poll()
    assert caught.value.kill == BadRequest("eth0.0", 0, reason)


# -- transmit -----------------------------------------------------------------------------

def test_tx_sends_the_frame_without_its_header_and_returns_its_length():
    net, link, rings, irqs = net_on_rings()
    tx = rings.rings[1]
    data = frame(MAC_B, MAC_A, b"out", 64)
    rings.memory.ram[0x20000:0x20000 + 64] = data
    tx.chain(0, [(0x1F000, HDR, False), (0x20000, 14, False), (0x20000 + 14, 50, False)])
    net.kick(tx.vring)
    assert link.sent == [data]
    assert tx.used() == [(0, 64)] and irqs == [2]


@pytest.mark.parametrize(("buffers", "reason"), [
    ([(0x1F000, 12, False), (0x20000, 60, False)],
     "first buffer is 12 bytes, not the 8-byte virtio_net_hdr"),
    ([(0x1F000, HDR, False), (0x20000, 60, True)],
     "device-writable buffer in the transmit queue"),
])
def test_malformed_tx_chains_kill(buffers, reason):
    net, _, rings, _ = net_on_rings()
    rings.rings[1].chain(0, buffers)
    with pytest.raises(GuestKilled) as caught:
        net.kick(rings.vrings[1])
    assert caught.value.kill == BadRequest("eth0.1", 0, reason)


def test_an_oversized_tx_chain_is_dropped_without_being_read():
    net, link, rings, _ = net_on_rings()
    tx = rings.rings[1]
    tx.chain(0, [(0x1F000, HDR, False), *[(0x100000 * i, 0x100000, False) for i in range(1, 4)]])
    net.kick(tx.vring)
    assert link.sent == [] and tx.used() == [(0, 0)] and net.stats["dropped"] == 1


def test_default_macs_follow_the_device_index():
    assert [default_mac(i).hex(":") for i in (0, 1)] == ["02:6c:67:00:00:00",
                                                         "02:6c:67:00:00:01"]


# -- pcap -----------------------------------------------------------------------------------

def read_pcap(path: Path) -> tuple[tuple, list[tuple[int, int, bytes]]]:
    """An independent reader of classic pcap: (header fields, [(sec, usec, frame)])."""
    data = path.read_bytes()
    magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    records, at = [], 24
    while at < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, at)
        assert incl == orig
        records.append((sec, usec, data[at + 16:at + 16 + incl]))
        at += 16 + incl
    assert at == len(data)
    return (magic, major, minor, zone, sigfigs, snaplen, linktype), records


def test_pcap_records_received_and_sent_frames(tmp_path):
    net, link, rings, _ = net_on_rings(tmp_path / "eth0.pcap")
    net.wall_ns = lambda: EPOCH * 10**9 + 1_500_000
    rx, tx = rings.rings
    incoming, outgoing = frame(MAC_A, MAC_B, b"in"), frame(MAC_B, MAC_A, b"out", 70)
    rx.chain(0, [(0x10000, HDR, True), (0x11000, 1514, True)])
    link.arrived.append(incoming)
    net.poll()
    rings.memory.ram[0x20000:0x20000 + 70] = outgoing
    tx.chain(0, [(0x1F000, HDR, False), (0x20000, 70, False)])
    net.kick(tx.vring)
    net.close()
    header, records = read_pcap(tmp_path / "eth0.pcap")
    assert header == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # LINKTYPE_ETHERNET
    assert records == [(EPOCH, 1500, incoming), (EPOCH, 1500, outgoing)]


# -- guests ------------------------------------------------------------------------------

# With --net first: rx is queue 0 (IRQ 1), tx queue 1 (IRQ 2), then the console's two.
RX, TX = 0, 1
RX_RING, TX_RING = ring(RX), ring(TX)

# Post one rx buffer and halt until a frame of our ethertype fills it (a TAP interface also
# brings the host's own IPv6 chatter); afterwards %esi is the frame's length.
WAIT_FOR_FRAME = f"""
	SET_GATE 0x21, on_rx, GATE_INT
	movl	$0, lguest_data+LD_BLOCKED
	PUTS	ready
7:
{chain(RX, [("$rxhdr", "$8", True), ("$rxbuf", "$1514", True)], kick=False)}
	incw	expect
9:	movw	expect, %ax
	cmpw	%ax, {used_idx(RX)}
	je	8f
	movl	$0x200, lguest_data+LD_IRQ_ENABLED
	HCALL	$LHCALL_HALT
	jmp	9b
8:	cmpw	$0xb588, rxbuf+12
	jne	7b
	movzwl	expect, %eax
	decl	%eax
	andl	$127, %eax
	movl	{used_len(RX)}(,%eax,8), %esi	/* used.ring[expect - 1].len */
	subl	$8, %esi
"""

ECHO = MACROS + "\tINIT\n" + map_device_pages(4) + WAIT_FOR_FRAME + f"""
	movl	$0x676e6f70, rxbuf+14		/* "ping" becomes "pong" */
	DESC	{TX_RING:#x}, 0, $txhdr, $8, $1, $1
	DESC	{TX_RING:#x}, 1, $rxbuf, %esi
	POST	{TX_RING:#x}, $0
	KICK	{TX_RING:#x}
	movzwl	{used_flags(RX)}, %eax
	PUTHEX	%eax
	movzwl	{used_flags(TX)}, %eax
	PUTHEX	%eax
	POWER_DOWN
on_rx:	iret
"""

PING = MACROS + "\tINIT\n" + map_device_pages(4) + f"""
{chain(TX, [("$txhdr", "$8", False), ("$ping", "$60", False)])}
""" + WAIT_FOR_FRAME + """
	PUTS	rxbuf+14
	POWER_DOWN
on_rx:	iret
"""

NET_DATA = ('ready:\t.asciz "ready\\n"\n\t.balign 2\nexpect:\t.short 0\n'
            "txhdr:\t.space 8\nrxhdr:\t.space 8\n"
            "\t.bss\n\t.balign 4096\nrxbuf:\t.space 2048\n\t.data\n" + DEVPT_BSS)


def ping_data(dst: bytes, src: bytes) -> str:
    data = frame(dst, src, b"ping from A")
    return NET_DATA + "ping:\t.byte " + ", ".join(str(b) for b in data) + "\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(elf: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lgemu", "boot", str(elf), *args],
                            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_ready(proc: subprocess.Popen) -> None:
    """Read the guest's console until it says "ready" (its socket is bound by then)."""
    seen = b""
    while not seen.endswith(b"ready\n"):
        ready, _, _ = select.select([proc.stdout], [], [], SUBPROCESS_TIMEOUT)
        chunk = os.read(proc.stdout.fileno(), 1) if ready else b""
        assert chunk, (seen, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        seen += chunk


def finish(proc: subprocess.Popen) -> tuple[int, bytes, str]:
    out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    return proc.returncode, out, err.decode()


def test_a_guest_halted_for_a_frame_wakes_and_echoes_it_over_udp(tmp_path):
    elf = build_guest(tmp_path, ECHO, NET_DATA)
    guest_port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(SUBPROCESS_TIMEOUT)
        pcap = tmp_path / "echo.pcap"
        proc = start(elf, "--net", f"udp:{guest_port}:127.0.0.1:{peer.getsockname()[1]},"
                                   f"mac={MAC_B.hex(':')},pcap={pcap}")
        try:
            wait_ready(proc)
            sent = frame(MAC_B, MAC_A, b"ping from the test")
            peer.sendto(sent, ("127.0.0.1", guest_port))
            echoed, source = peer.recvfrom(2048)
        finally:
            status, out, err = finish(proc)
    assert (status, err) == (0, "")
    assert source == ("127.0.0.1", guest_port)
    assert echoed == sent.replace(b"ping", b"pong")
    # after "ready": rx asks for no kicks, tx wants them
    assert out == f"{VRING_USED_F_NO_NOTIFY:08x}{0:08x}".encode()
    _, records = read_pcap(pcap)
    assert [r[2] for r in records] == [sent, echoed]


def test_two_guests_exchange_frames_over_loopback_udp(tmp_path):
    port_a, port_b = free_port(), free_port()
    echo = start(build_guest(tmp_path, ECHO, NET_DATA),
                 "--net", f"udp:{port_b}:127.0.0.1:{port_a},mac={MAC_B.hex(':')}")
    try:
        wait_ready(echo)
        ping = start(build_guest(tmp_path, PING, ping_data(MAC_B, MAC_A)),
                     "--net", f"udp:{port_a}:localhost:{port_b},mac={MAC_A.hex(':')}")
        status_a, out_a, err_a = finish(ping)
    finally:
        status_b, _, err_b = finish(echo)
    assert (status_a, err_a, status_b, err_b) == (0, "", 0, "")
    assert out_a == b"ready\npong from A"


def test_pcap_only_device_records_what_the_guest_sends(asm_guest, tmp_path):
    pcap = tmp_path / "tx.pcap"
    body = MACROS + "\tINIT\n" + map_device_pages(4) + chain(
        TX, [("$txhdr", "$8", False), ("$ping", "$60", False)]) + "\tPOWER_DOWN\n"
    run = asm_guest(body, ping_data(MAC_B, MAC_A), extra=["--net", f"pcap:{pcap}"])
    assert_powered_down(run, b"")
    header, records = read_pcap(pcap)
    assert header[6] == 1
    assert records == [(EPOCH, records[0][1], frame(MAC_B, MAC_A, b"ping from A"))]
    first = pcap.read_bytes()
    run = asm_guest(body, ping_data(MAC_B, MAC_A), extra=["--net", f"pcap:{pcap}"])
    assert pcap.read_bytes() == first  # guest time stamps: reproducible


def test_a_guest_halted_for_a_frame_with_no_wire_is_stuck(asm_guest):
    run = asm_guest(ECHO, NET_DATA, extra=["--net", "pcap:/dev/null"])
    assert run.status == 4
    assert assert_one_line(run.err) == ("lgemu: guest stuck: halted with no timer set and no "
                                        "interrupt that can wake it")


def test_a_malformed_tx_chain_from_a_guest_kills_it(asm_guest):
    body = MACROS + "\tINIT\n" + map_device_pages(4) + chain(
        TX, [("$ping", "$60", False)]) + "\tPOWER_DOWN\n"
    run = asm_guest(body, ping_data(MAC_B, MAC_A), extra=["--net", "pcap:/dev/null"])
    assert_killed(run, BadRequest("eth0.1", 0, "first buffer is 60 bytes, not the 8-byte "
                                               "virtio_net_hdr"))


# -- options -------------------------------------------------------------------------------

def test_a_local_port_in_use_is_one_line_and_exit_2(lgemu_main):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        status, out, err = lgemu_main(["boot", "--net", f"udp:{port}:127.0.0.1:9"])
    assert (status, out) == (2, b"")
    assert assert_one_line(err) == f"lgemu: --net udp: local port {port} is in use"


@pytest.mark.parametrize(("value", "message"), [
    ("udp:1:2", "--net udp:1:2: want udp:LOCALPORT:HOST:PORT"),
    ("udp:x:127.0.0.1:9", "--net udp:x:127.0.0.1:9: local port 'x' is not a port number"),
    ("udp:0:127.0.0.1:70000",
     "--net udp:0:127.0.0.1:70000: port '70000' is not a port number"),
    ("ether:eth0", "--net ether:eth0: unknown kind 'ether' (udp:LOCALPORT:HOST:PORT, "
                   "tap:IFNAME, replay:FILE or pcap:FILE)"),
    ("pcap:", "--net pcap:: want pcap:FILE"),
    ("pcap:x.pcap,mac=01:00:5e:00:00:01", "--net: MAC address 01:00:5e:00:00:01 is a "
                                          "multicast address"),
    ("pcap:x.pcap,mac=02:00:00:00:00", "--net: bad MAC address '02:00:00:00:00' (want "
                                       "XX:XX:XX:XX:XX:XX)"),
    ("pcap:x.pcap,speed=10", "--net pcap:x.pcap,speed=10: unexpected 'speed=10' (mac=XX:..., "
                             "pcap=FILE, and record=FILE on udp and tap)"),
    ("pcap:x.pcap,record=r", "--net pcap:x.pcap,record=r: unexpected 'record=r' (mac=XX:..., "
                             "pcap=FILE, and record=FILE on udp and tap)"),
    ("replay:", "--net replay:: want replay:FILE"),
    ("tap:", "--net tap:: not a valid interface name"),
    ("tap:a-name-far-too-long", "--net tap:a-name-far-too-long: not a valid interface name"),
])
def test_bad_net_options_are_one_line_and_exit_2(lgemu_main, tmp_path, value, message):
    os.chdir(tmp_path)
    status, out, err = lgemu_main(["boot", "--net", value])
    assert (status, out) == (2, b"")
    assert assert_one_line(err) == f"lgemu: {message}"


def test_a_pcap_file_that_cannot_be_written_is_exit_2(lgemu_main, tmp_path):
    status, _, err = lgemu_main(["boot", "--net", f"pcap:{tmp_path}"])
    assert status == 2
    assert assert_one_line(err) == f"lgemu: {tmp_path}: is a directory"


def _can_make_taps() -> bool:
    try:
        from lgemu.devices.netback import TapLink
        TapLink("lgemuprobe0").close()
    except Exception:
        return False
    return True


@pytest.mark.skipif(_can_make_taps(), reason="this user may create TAP interfaces")
def test_tap_without_the_privilege_is_one_line_and_exit_2(lgemu_main):
    status, _, err = lgemu_main(["boot", "--net", "tap:lgemu0"])
    assert status == 2
    assert assert_one_line(err).startswith("lgemu: --net tap:lgemu0: ")


@pytest.mark.skipif(not _can_make_taps(), reason="needs CAP_NET_ADMIN")
def test_tap_carries_frames_both_ways(tmp_path):
    """The guest waits for a frame on a TAP interface and echoes it; the test talks to the
    interface through a packet socket, as the host's network stack would."""
    import fcntl

    name = "lgemutest0"
    proc = start(build_guest(tmp_path, ECHO, NET_DATA), "--net", f"tap:{name}")
    try:
        wait_ready(proc)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
            flags = struct.unpack_from("16sH", fcntl.ioctl(ctl, 0x8913, struct.pack(
                "16sH", name.encode(), 0)))[1]  # SIOCGIFFLAGS
            fcntl.ioctl(ctl, 0x8914, struct.pack("16sH", name.encode(), flags | 1))  # IFF_UP
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5)) as raw:
            raw.bind((name, 0))
            raw.settimeout(SUBPROCESS_TIMEOUT)
            sent = frame(default_mac(0), MAC_A, b"ping over tap")
            raw.send(sent)
            while True:
                echoed = raw.recv(2048)
                if echoed != sent:
                    break
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            pytest.skip(f"packet sockets not allowed: {e}")
        raise
    finally:
        status, _, err = finish(proc)
    assert (status, err) == (0, "")
    assert echoed == sent.replace(b"ping", b"pong")
