"""`lgemu lab`: several bundled guests in one process on one virtual clock, joined by switches.

The guests run the virtio-net programs of guest_kernel/tests/net_test.c (net_echo reflects
frames, net_ping and net_send send them).  What is judged is what a user sees: the prefixed
console lines, the per-guest lines on stderr and the exit status, console files, and the
per-switch capture read independently of lgemu, which must be byte-identical across runs.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from conftest import lgemu_main_in_process

MAC_ECHO = "02:00:00:00:00:0a"
MAC_PING = "02:00:00:00:00:0b"
LATENCY_US = 1000


def lab_file(tmp_path: Path, switch: str, echo: str, other: str, extra: str = "") -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(f"""
[[switch]]
name = "sw0"
{switch}
[[guest]]
name = "echo"
append = "{echo}"
net = ["sw0,mac={MAC_ECHO}"]
{extra}
[[guest]]
name = "ping"
append = "{other}"
net = ["sw0,mac={MAC_PING}"]
""")
    return path


def ping_lab(tmp_path: Path, switch: str = f"latency_us = {LATENCY_US}", count: int = 5,
             extra: str = "") -> Path:
    return lab_file(tmp_path, switch, "lgemu.test=net_echo",
                    f"lgemu.test=net_ping net.count={count} net.timeout=5 net.peer={MAC_ECHO}",
                    extra)


def read_pcap(path: Path) -> list[tuple[int, bytes]]:
    """A classic pcap file: [(microseconds since the epoch, frame)]."""
    data = path.read_bytes()
    magic, major, minor, _, _, _, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    records, offset = [], 24
    while offset < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, offset)
        assert incl == orig
        records.append((sec * 1_000_000 + usec, data[offset + 16:offset + 16 + incl]))
        offset += 16 + incl
    return records


def lines_of(out: bytes, name: str) -> list[str]:
    prefix = f"{name}| "
    return [line[len(prefix):] for line in out.decode().splitlines() if line.startswith(prefix)]


def run_lab(lab: Path, *options: str) -> tuple[int, bytes, str]:
    return lgemu_main_in_process(["lab", str(lab), *options])


def test_two_guests_exchange_frames_the_same_way_every_run(tmp_path):
    lab = ping_lab(tmp_path)
    runs = []
    for run in range(2):
        status, out, err = run_lab(lab, "--pcap", str(tmp_path / f"run{run}.pcap"))
        runs.append((status, out, err, (tmp_path / f"run{run}-sw0.pcap").read_bytes()))
    assert runs[0] == runs[1]
    status, out, err, _ = runs[0]
    assert status == 0
    assert err.splitlines() == ["lgemu: echo: powered down (exit 0)",
                                "lgemu: ping: powered down (exit 0)"]
    assert "PASS net_ping.echoes" in lines_of(out, "ping")
    assert "net_ping: 5 of 5 frames echoed (6 sent, 0 other frames)" in lines_of(out, "ping")
    assert "PASS net_echo.stop" in lines_of(out, "echo")
    # Every frame is captured once as it enters the switch, in time order; each echo leaves
    # the echo guest at least one latency after its ping left the ping guest.
    records = read_pcap(tmp_path / "run0-sw0.pcap")
    assert len(records) == 12
    assert [t for t, _ in records] == sorted(t for t, _ in records)
    echo_mac, ping_mac = bytes.fromhex(MAC_ECHO.replace(":", "")), \
        bytes.fromhex(MAC_PING.replace(":", ""))
    for (sent, ping), (back, echo) in zip(records[::2], records[1::2], strict=True):
        assert ping[:12] == echo_mac + ping_mac and echo[:12] == ping_mac + echo_mac
        assert echo[12:] == ping[12:]
        assert back - sent >= LATENCY_US


def test_a_console_file_and_a_trace_per_guest(tmp_path):
    lab = ping_lab(tmp_path, extra='console = "echo.log"')
    traces = []
    for run in range(2):
        trace = tmp_path / f"ping{run}.trace"
        status, out, _err = run_lab(lab, "--trace", f"ping:{trace}", "--events")
        assert status == 0
        assert lines_of(out, "echo") == []  # its console went to its file
        traces.append((trace.read_bytes(), (tmp_path / "echo.log").read_bytes(), out))
    assert traces[0] == traces[1]
    trace_text, echo_log, _ = traces[0]
    assert b"PASS net_echo.stop\r\n" in echo_log  # the guest's own bytes
    assert b"eth0.0" in trace_text  # the ping guest's receive queue, in its event log


def test_loss_follows_the_seed(tmp_path):
    captures = {}
    for seed in (7, 7, 8):
        lab = ping_lab(tmp_path, f"latency_us = 100\nloss = 0.3\nseed = {seed}", count=6)
        status, out, err = run_lab(lab, "--pcap", str(tmp_path / "c.pcap"), "-v")
        assert status == 0, err
        assert "PASS net_ping.echoes" in lines_of(out, "ping")
        summary = [line for line in err.splitlines() if line.startswith("switch sw0:")]
        captures.setdefault(seed, []).append((out, summary,
                                              (tmp_path / "c-sw0.pcap").read_bytes()))
    assert captures[7][0] == captures[7][1]
    assert captures[7][0] != captures[8][0]
    # Lost frames were sent (and captured) but never arrived: the guest resent them.
    out, summary, _ = captures[7][0]
    assert summary == ["switch sw0: 2 ports, 21 frames, 6 lost, 0 reordered, 0 dropped "
                       "(queue full)"]
    assert err.splitlines()[-3].startswith("lab: ") and " windows (lookahead 100 µs;" in err
    assert "net_ping: 6 of 6 frames echoed (13 sent, 0 other frames)" in lines_of(out, "ping")


def test_reordering_follows_the_seed(tmp_path):
    lab = lab_file(tmp_path, "latency_us = 200\nreorder = 0.5\nseed = 3",
                   "lgemu.test=net_echo net.idle=20",
                   f"lgemu.test=net_send net.count=8 net.peer={MAC_ECHO}")
    runs = []
    for _ in range(2):
        status, out, err = run_lab(lab, "--pcap", str(tmp_path / "c.pcap"))
        runs.append((status, out, err, (tmp_path / "c-sw0.pcap").read_bytes()))
    assert runs[0] == runs[1]
    assert "net_echo: 8 frames echoed, 0 short frames dropped" in lines_of(runs[0][1], "echo")
    frames = [frame for _, frame in read_pcap(tmp_path / "c-sw0.pcap")]
    ping_mac = bytes.fromhex(MAC_PING.replace(":", ""))
    sent = [int.from_bytes(f[20:24], "big") for f in frames if f[6:12] == ping_mac]
    echoed = [int.from_bytes(f[20:24], "big") for f in frames if f[:6] == ping_mac]
    assert sent == list(range(8))
    assert sorted(echoed) == sent and echoed != sent  # echoed in the order they arrived


def test_the_worst_status_is_the_lab_s_and_each_guest_has_its_line(tmp_path):
    status, _out, err = run_lab(ping_lab(tmp_path), "--max-insns", "200000")
    assert status == 5
    assert err.splitlines() == [
        "lgemu: echo: instruction limit of 200000 reached (exit 5)",
        "lgemu: ping: instruction limit of 200000 reached (exit 5)"]


@pytest.mark.parametrize("text, complaint", [
    ('[[guest]]\nname = "a"\ncolour = 1\n', "guest 1: unknown key 'colour'"),
    ('[[guest]]\nname = "a"\nnet = ["sw9"]\n', "no switch named 'sw9'"),
    ('[[guest]]\nname = "a"\n[[guest]]\nname = "a"\n', "two guests have the same name"),
    ('[[switch]]\nname = "s"\nlatency_us = 0\n[[guest]]\nname = "a"\n',
     "latency_us must be positive"),
    ('[[switch]]\nname = "s"\nlatency_us = inf\n[[guest]]\nname = "a"\n',
     "latency_us must be positive"),
    ('[[switch]]\nname = "s"\nloss = 2\n[[guest]]\nname = "a"\n', "loss must be between"),
    ('[[switch]]\nname = "s"\n[[guest]]\nname = "a"\nnet = ["s,mac=02:00:00:00:00:01"]\n'
     '[[guest]]\nname = "b"\nnet = ["s,mac=02:00:00:00:00:01"]\n', "the same MAC address"),
    ('[[guest]\n', "not TOML"),
    ('', "no [[guest]]"),
])
def test_a_bad_lab_file_is_one_line_and_status_2(tmp_path, text, complaint):
    lab = tmp_path / "lab.toml"
    lab.write_text(text)
    status, out, err = run_lab(lab)
    assert (status, out) == (2, b"")
    assert len(err.splitlines()) == 1 and complaint in err, err


def test_per_guest_options_name_a_guest_of_the_lab(tmp_path):
    status, out, err = run_lab(ping_lab(tmp_path), "--trace", "nobody:t.txt")
    assert (status, out) == (2, b"")
    assert err == "lgemu: --trace nobody:t.txt: no guest named 'nobody' in the lab\n"


def test_gdb_on_one_guest_holds_the_lab_and_changes_nothing(tmp_path):
    """-S: the lab waits for gdb on the ping guest before its first instruction; after gdb
    continues, the run is byte for byte the one without gdb."""
    import socket
    import subprocess
    import sys

    from conftest import REPO_ROOT, SUBPROCESS_TIMEOUT
    from rspclient import RspClient

    lab = ping_lab(tmp_path)
    plain = subprocess.run([sys.executable, "-m", "lgemu", "lab", str(lab)], cwd=REPO_ROOT,
                           capture_output=True, timeout=SUBPROCESS_TIMEOUT, check=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lgemu", "lab", str(lab), "--gdb",
                             f"ping:tcp::{port}", "-S"], cwd=REPO_ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        client = RspClient.connect(port)
        assert client.command("?").startswith(("S05", "T05"))
        client.send("c")
        out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
        client.close()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert out == plain.stdout
    assert err.decode().splitlines()[-2:] == plain.stderr.decode().splitlines()


# -- two real 2.6.24 guests --------------------------------------------------------------------
INIT_SOURCE = Path(__file__).parent / "labinit" / "udp_init.c"
INIT_CFLAGS = ("-m32", "-march=i686", "-Os", "-ffreestanding", "-nostdlib", "-static",
               "-fno-pic", "-no-pie", "-fno-stack-protector")


def newc_cpio(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc initramfs of (name, mode, data, (rdev major, minor)) entries."""
    out = b""
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))],
                                                   1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        out += b"070701" + "".join(f"{v:08x}" for v in fields).encode() + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return out


def udp_initramfs(tmp_path: Path) -> Path:
    """tests/labinit/udp_init.c as /init (skips without a compiler for 32-bit x86)."""
    import subprocess

    binary = tmp_path / "udp_init"
    try:
        built = subprocess.run(["gcc", *INIT_CFLAGS, "-o", str(binary), str(INIT_SOURCE)],
                               capture_output=True, timeout=60, check=False)
    except FileNotFoundError:
        pytest.skip("no gcc to build the lab's /init")
    if built.returncode != 0:
        pytest.skip(f"gcc cannot build 32-bit x86 programs: {built.stderr.decode()[:200]}")
    cpio = tmp_path / "udp.cpio"
    cpio.write_bytes(newc_cpio([("dev", 0o40755, b"", (0, 0)),
                                ("dev/console", 0o20600, b"", (5, 1)),
                                ("init", 0o100755, binary.read_bytes(), (0, 0))]))
    return cpio


def real_udp_lab(tmp_path: Path, kernel: Path) -> Path:
    cpio = udp_initramfs(tmp_path)
    lab = tmp_path / "real.toml"
    lab.write_text("".join(f"""
[[guest]]
name = "{role}"
kernel = "{kernel}"
initrd = "{cpio}"
append = "console=hvc0 rdinit=/init {role}"
net = ["sw0"]
""" for role in ("echo", "ping")) + '[[switch]]\nname = "sw0"\nlatency_us = 100\n')
    return lab


def check_real_udp_lab(tmp_path: Path, kernel: Path) -> None:
    """Two real 2.6.24 guests exchange UDP datagrams (and ARP) over a switch, the same bytes
    and the same capture in two runs."""
    lab = real_udp_lab(tmp_path, kernel)
    runs = []
    for run in range(2):
        status, out, err = run_lab(lab, "--pcap", str(tmp_path / f"r{run}.pcap"))
        runs.append((status, out, err, (tmp_path / f"r{run}-sw0.pcap").read_bytes()))
    assert runs[0] == runs[1]
    status, out, err, _ = runs[0]
    assert status == 0, err
    assert [line for line in lines_of(out, "ping") if line.startswith("udp_init")] == [
        "udp_init: ping 10.0.0.1 -> 10.0.0.2", *(f"udp_init: echoed: hello {i} (8 bytes)"
                                                  for i in range(3)),
        "udp_init: 3 rounds"]
    assert "udp_init: got: hello 2 (8 bytes)" in lines_of(out, "echo")
    frames = [frame for _, frame in read_pcap(tmp_path / "r0-sw0.pcap")]
    udp = [f for f in frames if f[12:14] == b"\x08\x00" and f[23] == 17]
    assert sorted(f[42:50] for f in udp) == sorted(2 * [b"hello %d\0" % i for i in range(3)])
    assert any(f[12:14] == b"\x08\x06" for f in frames)  # the kernels resolved each other


def test_two_real_linux_guests_exchange_udp_the_same_way_twice(tmp_path):
    from linuxkernel import real_kernel

    check_real_udp_lab(tmp_path, real_kernel())


def test_ctrl_c_ends_every_guest_of_the_lab_the_documented_way(tmp_path):
    import signal
    import subprocess
    import sys

    from conftest import REPO_ROOT, SUBPROCESS_TIMEOUT
    from test_devices_e2e import Reader

    # The echo guest waits (idling on its timer) far longer than the test does.
    lab = lab_file(tmp_path, "", "lgemu.test=net_echo net.idle=100000000",
                   "lgemu.test=net_echo net.idle=100000000")
    proc = subprocess.Popen([sys.executable, "-m", "lgemu", "lab", str(lab)], cwd=REPO_ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out = Reader(proc, b"ping| net_echo: eth0")
        assert out.ready.wait(SUBPROCESS_TIMEOUT)
        proc.send_signal(signal.SIGINT)
        proc.wait(SUBPROCESS_TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130
    assert proc.stderr.read().decode().splitlines() == [
        "lgemu: echo: interrupted (exit 130)", "lgemu: ping: interrupted (exit 130)"]


def test_bandwidth_delays_each_frame_by_its_length(tmp_path):
    """At 10 Mbit/s a 1514-byte frame takes 1211 µs to leave its card, on top of the latency."""
    lab = ping_lab(tmp_path, f"latency_us = {LATENCY_US}\nbandwidth_mbps = 10", count=2)
    status, _out, err = run_lab(lab, "--pcap", str(tmp_path / "c.pcap"))
    assert status == 0, err
    records = read_pcap(tmp_path / "c-sw0.pcap")
    gaps = {len(ping): back - sent
            for (sent, ping), (back, _) in zip(records[::2], records[1::2], strict=True)}
    serialise = {length: length * 8 / 10 for length in gaps}  # µs at 10 Mbit/s
    assert set(gaps) == {60, 1514}
    for length, gap in gaps.items():
        assert gap >= LATENCY_US + serialise[length] - 1  # stamps are whole µs
    assert gaps[1514] - gaps[60] >= serialise[1514] - serialise[60] - 1


def test_a_card_flooding_the_switch_costs_the_others_bounded_memory():
    from lgemu.lab.switch import INBOX_FRAMES, Switch, SwitchSpec

    switch = Switch(SwitchSpec("sw0", 50_000), 0)
    flooder, victim = switch.port("a"), switch.port("b")
    for n in range(INBOX_FRAMES + 100):
        flooder.send(b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + n.to_bytes(4, "big"))
    victim.now_ns = lambda: 10**9
    frames = victim.receive()
    assert len(frames) == INBOX_FRAMES and switch.stats["dropped"] == 100
    assert [int.from_bytes(f[12:], "big") for f in frames] == list(range(INBOX_FRAMES))


@pytest.mark.parametrize("workers", [2, 3])
def test_worker_processes_give_the_same_bytes(tmp_path, workers):
    """--workers: the guests run in other processes; consoles (stdout and a console file),
    stderr and the capture are those of one process, with loss and reordering on."""
    lab = lab_file(tmp_path, "latency_us = 200\nloss = 0.2\nreorder = 0.3\nseed = 5",
                   "lgemu.test=net_echo net.idle=50",
                   f"lgemu.test=net_ping net.count=6 net.timeout=5 net.peer={MAC_ECHO}",
                   'console = "echo.log"')
    runs = []
    for count in (1, workers):
        status, out, err = run_lab(lab, "--pcap", str(tmp_path / f"w{count}.pcap"),
                                   "--workers", str(count))
        runs.append((status, out, err, (tmp_path / "echo.log").read_bytes(),
                     (tmp_path / f"w{count}-sw0.pcap").read_bytes()))
    assert runs[0] == runs[1]
    status, out, err, echo_log, _ = runs[0]
    assert status == 0 and "PASS net_ping.echoes" in lines_of(out, "ping")
    assert b"net_echo: " in echo_log


def test_workers_refuse_what_watches_a_guest(tmp_path):
    status, out, err = run_lab(ping_lab(tmp_path), "--workers", "2", "-v")
    assert (status, out) == (2, b"")
    assert err == ("lgemu: --workers: -v watches a guest in its own process; run without "
                   "--workers\n")


def test_filtered_traces_profiles_timelines_and_dmesg_per_guest(tmp_path):
    """The debugging options of `lgemu boot`, per guest by name: two runs, the same bytes."""
    lab = ping_lab(tmp_path)
    runs = []
    for run in range(2):
        files = {kind: tmp_path / f"{kind}{run}" for kind in ("trace", "dmesg", "prof", "tl")}
        status, out, err = run_lab(
            lab, "--trace", f"ping:{files['trace']}", "--trace-filter", "ping:icount:20000-20005",
            "--trace-regs", "--dmesg", f"echo:{files['dmesg']}", "--profile",
            f"ping:{files['prof']}", "--profile-every", "5000", "--timeline", f"echo:{files['tl']}")
        assert status == 0, err
        runs.append((out, err, *(path.read_bytes() for path in files.values())))
    assert runs[0] == runs[1]
    _, _, trace, dmesg, profile, timeline = runs[0]
    lines = trace.decode().splitlines()
    assert [int(line.split()[0]) for line in lines] == list(range(20000, 20005))
    assert any(" | " in line and "eflags=" in line for line in lines)  # --trace-regs
    assert b'command line: "lgemu.test=net_echo"' in dmesg  # the echo guest's own log
    assert profile.startswith(b"lguest_init;start_kernel;")
    assert b"boot timeline" in timeline


@pytest.mark.parametrize("options, complaint", [
    (["--trace-filter", "ping:ring:1"], "--trace-filter ping:…: needs --trace ping:FILE"),
    (["--trace-regs"], "--trace-regs needs --trace NAME:FILE"),
    (["--profile-every", "5"], "--profile-every needs --profile NAME:FILE"),
    (["--dmesg", "nobody:d"], "--dmesg nobody:d: no guest named 'nobody' in the lab"),
    (["--workers", "2", "--profile", "ping:p"], "--workers: --profile watches a guest"),
])
def test_per_guest_debugging_options_are_checked(tmp_path, options, complaint):
    status, out, err = run_lab(ping_lab(tmp_path), *options)
    assert (status, out) == (2, b"")
    assert len(err.splitlines()) == 1 and complaint in err, err


def test_a_udp_uplink_joins_a_lab_to_the_host_and_replays_when_recorded(tmp_path):
    """A Python UDP socket on 127.0.0.1 talks through a switch's uplink to a lab guest
    (net_echo); the uplink recorded, the lab replays to the same console with no wire."""
    import socket
    import subprocess
    import sys

    from conftest import REPO_ROOT, SUBPROCESS_TIMEOUT
    from test_devices_e2e import Reader, expected_frame, free_udp_ports

    lab_port, host_port = free_udp_ports(2)
    echo_mac, host_mac = bytes.fromhex(MAC_ECHO.replace(":", "")), bytes(range(2, 8))

    def lab(uplink: str) -> Path:
        path = tmp_path / "uplink.toml"
        path.write_text(f'[[switch]]\nname = "sw0"\nlatency_us = 500\nuplink = "{uplink}"\n'
                        f'[[guest]]\nname = "echo"\nappend = "lgemu.test=net_echo"\n'
                        f'net = ["sw0,mac={MAC_ECHO}"]\n')
        return path
    host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host.bind(("127.0.0.1", host_port))
    host.settimeout(SUBPROCESS_TIMEOUT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lgemu", "lab", "-v",
         str(lab(f"udp:{lab_port}:127.0.0.1:{host_port},record=up.rec"))],
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reader = Reader(proc, b"ready")
        assert reader.ready.wait(SUBPROCESS_TIMEOUT), "net_echo never became ready"
        echoes = []
        for kind, seq in ((b"P", 1), (b"S", 0)):
            host.sendto(expected_frame(echo_mac, host_mac, kind, seq), ("127.0.0.1", lab_port))
            echoes.append(host.recvfrom(2048))
        _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
        host.close()
    reader.join(5)
    assert [frame for frame, _ in echoes] == [expected_frame(host_mac, echo_mac, b"P", 1),
                                              expected_frame(host_mac, echo_mac, b"S", 0)]
    assert echoes[0][1] == ("127.0.0.1", lab_port)
    assert proc.returncode == 0, err
    assert f"uplink sw0: udp {lab_port} → 127.0.0.1:{host_port}, recorded to " in err.decode()
    assert "PASS net_echo.stop" in lines_of(reader.data, "echo")
    # The replay: no socket at all, the same console bytes and the same ending.
    status, out, err = run_lab(lab("replay:up.rec"), "-v")
    assert (status, out) == (0, reader.data), err
    assert "uplink sw0: replay of " in err and ": 2 frames out, 2 in" in err
    # A guest that answers otherwise (another MAC) diverges from the recording: status 8.
    lab("replay:up.rec").write_text(lab("replay:up.rec").read_text().replace(
        MAC_ECHO, "02:00:00:00:00:0c"))
    status, out, err = run_lab(tmp_path / "uplink.toml")
    assert status == 8, err
    assert err.startswith("lgemu: echo: replay diverged: frame 1 sent at ")


@pytest.mark.parametrize("uplink, options, complaint", [
    ("pcap:x.pcap", [], "switch 1: uplink 'pcap:x.pcap': want udp:LOCALPORT:HOST:PORT"),
    ("udp:1", [], "switch 1: uplink: udp:1: want udp:LOCALPORT:HOST:PORT"),
    ("replay:missing.rec", [], "missing.rec: cannot read the recording"),
    ("replay:missing.rec", ["--workers", "2"], "--workers: a switch's uplink is served by one"),
])
def test_a_bad_uplink_is_one_line_and_status_2(tmp_path, uplink, options, complaint):
    lab = ping_lab(tmp_path, f'uplink = "{uplink}"')
    status, out, err = run_lab(lab, *options)
    assert (status, out) == (2, b"")
    assert len(err.splitlines()) == 1 and complaint in err, err
