"""The gdb stub (`--gdb`, `-s`, `-S`), driven by Debian's gdb and by raw protocol packets.

What a user sees: gdb connects, breaks on guest symbols, reads registers and memory through
the guest's page tables, steps, watches `lguest_data`, detaches; the guest then runs to its
normal end with its full console output.  Raw-packet tests cover what gdb's batch mode
cannot show: Ctrl-C, physical memory mode, writes into code, the stop replies, errors.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import lgemu_main_in_process
from gdbrun import (
    Lgemu,
    bundled_guest,
    instruction_at,
    instruction_before,
    needs_gdb,
    registers,
    run_under_gdb,
    symbol,
    words,
)
from guestasm import build_guest
from rspclient import RspClient

from lgemu.debug.target_xml import REGISTERS

VIRTUAL_EPOCH_S = 1_201_132_800  # lguest_data.time after LGUEST_INIT, virtual clock


def plain_output(args: list[str]) -> bytes:
    status, out, _ = lgemu_main_in_process(["boot", *args])
    assert status == 0
    return out


# -- with gdb ------------------------------------------------------------------------------------
@needs_gdb
def test_break_registers_memory_step_detach() -> None:
    elf = bundled_guest()
    init = symbol(elf, "lguest_init")
    run = run_under_gdb(["break lguest_init", "continue", "info registers eip",
                         "x/4xw &lguest_data", "stepi", "info registers eip", "detach"])
    assert "Breakpoint 1, lguest_init ()" in run.gdb, run.gdb
    at_break, after_step = registers(run.gdb)[-2:]
    assert at_break["eip"] == init
    assert after_step["eip"] == init + instruction_at(elf, init)[0]
    # irq_enabled, blocked_interrupts (IRQ 0 blocked), cr2, and the time the Host set at INIT.
    assert words(run.gdb, "lguest_data") == [0, 1, 0, VIRTUAL_EPOCH_S]
    assert "[Inferior 1 (Remote target) detached]" in run.gdb
    assert run.status == 0
    assert run.out == plain_output([])
    assert run.err.splitlines()[-1].startswith("lgemu: gdb stub listening on 127.0.0.1:")


@needs_gdb
def test_breakpoint_where_nothing_is_mapped_changes_nothing() -> None:
    """A breakpoint at an address no page table maps (Unicorn §9.12) is never hit, and the
    guest, faults and address-space switches included, runs exactly as without gdb."""
    run = run_under_gdb(["break *0x08048000", "continue"])
    assert "Breakpoint 1 at 0x8048000" in run.gdb, run.gdb
    assert "[Inferior 1 (Remote target) exited normally]" in run.gdb, run.gdb
    assert "guest killed" not in run.err
    assert run.status == 0
    assert run.out == plain_output([])


@needs_gdb
def test_watchpoint_on_lguest_data() -> None:
    """The guest's own stores to lguest_data.irq_enabled stop it right after the store."""
    elf = bundled_guest()
    data = symbol(elf, "lguest_data")
    run = run_under_gdb(["watch *(int*)&lguest_data", "continue", "info registers eip",
                         "continue", "info registers eip", "delete", "detach"],
                        ["--append", "lgemu.test=timer"])
    assert "Hardware watchpoint 1: *(int*)&lguest_data" in run.gdb
    assert len(re.findall(r"New value = ", run.gdb)) == 2, run.gdb
    for stop in registers(run.gdb):
        _, mnemonic, operands = instruction_before(elf, stop["eip"])
        assert mnemonic == "mov" and f"{data:#x}" in operands, (hex(stop["eip"]), operands)
    assert run.status == 0
    assert run.out == plain_output(["--append", "lgemu.test=timer"])


@needs_gdb
def test_power_down_crash_and_kill_reach_gdb() -> None:
    down = run_under_gdb(["continue"])
    assert "[Inferior 1 (Remote target) exited normally]" in down.gdb
    assert down.status == 0
    crash = run_under_gdb(["continue"], ["--append", "crash"])
    assert "Program terminated with signal SIGABRT" in crash.gdb, crash.gdb
    assert crash.status == 1
    assert crash.err.splitlines()[-1] == "lgemu: guest crashed: guest requested crash"
    killed = run_under_gdb(["break start_kernel", "continue", "kill"])
    assert killed.status == 130
    assert killed.err.splitlines()[-1] == "lgemu: killed from gdb"


# -- raw packets -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_client(argv: list[str], talk: Callable[[RspClient], None]) -> tuple[int, bytes, str]:
    """Run `lgemu boot ARGV --gdb -S` in this process while `talk` speaks to the stub from a
    thread; a failure in `talk` fails the test."""
    port = free_port()
    failure: list[BaseException] = []

    def client() -> None:
        try:
            gdb = RspClient.connect(port)
            try:
                talk(gdb)
            finally:
                gdb.close()
        except BaseException as e:  # reported in the main thread
            failure.append(e)
    thread = threading.Thread(target=client)
    thread.start()
    try:
        result = lgemu_main_in_process(["boot", *argv, "--gdb", f"tcp::{port}", "-S"])
    finally:
        thread.join(30)
    if failure:
        raise failure[0]
    return result


def register(reply: str, name: str) -> int:
    """One register from a `g` reply."""
    offset = 0
    for reg in REGISTERS:
        size = reg.bits // 4
        if reg.name == name:
            return int.from_bytes(bytes.fromhex(reply[offset:offset + size]), "little")
        offset += size
    raise KeyError(name)


def test_qsupported_target_xml_and_first_stop() -> None:
    def talk(gdb: RspClient) -> None:
        features = gdb.command("qSupported:swbreak+;hwbreak+").split(";")
        assert {"PacketSize=4000", "qXfer:features:read+", "ReverseStep+",
                "ReverseContinue+"} <= set(features)
        xml, offset = "", 0
        while True:
            reply = gdb.command(f"qXfer:features:read:target.xml:{offset:x},200")
            xml += reply[1:]
            offset += len(reply) - 1
            if reply[0] == "l":
                break
        names = [reg.get("name") for reg in ET.fromstring(xml).iter("reg")]
        assert names[:16] == ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip",
                              "eflags", "cs", "ss", "ds", "es", "fs", "gs"]
        assert names[16:24] == [f"st{i}" for i in range(8)]
        assert names[32:] == ["cr0", "cr2", "cr3", "cr4", "shadow_cr3"]
        assert gdb.command("?").startswith("T05")
        regs = gdb.command("g")
        assert len(regs) == sum(r.bits for r in REGISTERS) // 4
        assert register(regs, "eip") == 0x100000  # the bundled guest's entry
        assert register(regs, "cs") == 0x61
        assert gdb.command("p8") == regs[64:72]
        assert gdb.command("qXfer:features:read:other.xml:0,10") == "E00"
        assert gdb.command("qNoSuchThing") == ""
        assert gdb.command("vCont?") == "vCont;c;C;s;S"
        assert gdb.command("c") == "W00"
    status, _, _ = with_client([], talk)
    assert status == 0


def test_ctrl_c_stops_a_running_guest(tmp_path: Path) -> None:
    elf = build_guest(tmp_path, "\tINIT\nspin:\tincl %eax\n\tjmp spin\n")
    spin = symbol(elf, "spin")

    def talk(gdb: RspClient) -> None:
        # On a loaded machine the first interrupt may land before the guest reached its
        # loop; continue and interrupt again (not a timed assert: any moment would do).
        for _ in range(50):
            gdb.send("c")
            time.sleep(0.2)
            gdb.interrupt()
            stop = gdb.reply()
            assert stop.startswith("T02"), stop
            eip = register(gdb.command("g"), "eip")
            if eip in (spin, spin + 1):  # incl %eax; jmp spin
                break
        assert eip in (spin, spin + 1)
        gdb.send("k")
    status, _, err = with_client([str(elf)], talk)
    assert status == 130
    assert err.splitlines()[-1] == "lgemu: killed from gdb"


CODE_PATCH = """
	INIT
	call	f
here:	PUTHEX	%eax
	NEWLINE
	call	f
	PUTHEX	%eax
	NEWLINE
	POWER_DOWN
f:	mov	$0x11111111, %eax
	ret
"""


def test_register_and_code_writes_take_effect(tmp_path: Path) -> None:
    """P sets EAX before it is printed; M rewrites an instruction that already ran (its
    translation must be dropped); the breakpoint itself never touched guest memory."""
    elf = build_guest(tmp_path, CODE_PATCH)
    here, f = symbol(elf, "here"), symbol(elf, "f")

    def talk(gdb: RspClient) -> None:
        original = gdb.command(f"m{here:x},1")
        assert gdb.command(f"Z0,{here:x},1") == "OK"
        assert gdb.command(f"m{here:x},1") == original  # no int3 in guest memory
        assert gdb.command("c").startswith("T05")
        assert register(gdb.command("g"), "eip") == here
        assert gdb.command("P0=33333333") == "OK"
        regs = gdb.command("g")
        assert register(regs, "eax") == 0x33333333
        assert gdb.command("G" + regs) == "OK"  # unchanged selectors are fine in a G
        assert gdb.command("Pa=73000000") == "E00"  # CS: the Host's, not gdb's to change
        eflags = register(regs, "eflags")
        assert gdb.command(f"P9={(eflags | 0x3000).to_bytes(4, 'little').hex()}") == "E00"
        assert gdb.command(f"M{f + 1:x},4:22222222") == "OK"
        assert gdb.command(f"m{f:x},5") == "b822222222"
        assert gdb.command(f"z0,{here:x},1") == "OK"
        assert gdb.command("c") == "W00"
    status, out, _ = with_client([str(elf)], talk)
    assert status == 0
    assert out == b"33333333\n22222222\n"


def test_virtual_and_physical_memory() -> None:
    elf = bundled_guest()
    data = symbol(elf, "lguest_data")
    init = symbol(elf, "lguest_init")

    def talk(gdb: RspClient) -> None:
        gdb.command(f"Z0,{init:x},1")
        assert gdb.command("c").startswith("T05")
        virtual = gdb.command(f"m{data:x},10")
        assert gdb.command("qqemu.PhysicalMemoryMode") == "0"
        assert gdb.command("Qqemu.PhysicalMemoryMode:1") == "OK"
        assert gdb.command("qqemu.PhysicalMemoryMode") == "1"
        assert gdb.command(f"m{data - 0xC0000000:x},10") == virtual
        assert gdb.command("m5000000,4") == "E14"  # beyond guest memory (64 MiB)
        assert gdb.command("Qqemu.PhysicalMemoryMode:0") == "OK"
        assert gdb.command("mffc00000,4") == "E14"  # the switcher: never the guest's
        assert gdb.command("m10000000,4") == "E14"  # beyond RAM: never mapped
        gdb.command(f"z0,{init:x},1")
        assert gdb.command("c") == "W00"
    status, _, _ = with_client([], talk)
    assert status == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--gdb", "tcp:10.0.0.1:1234"], "the gdb stub listens on 127.0.0.1 only"),
    (["--gdb", "udp::1234"], "expected tcp::PORT"),
    (["--gdb", "tcp::99999"], "bad port 99999"),
    (["-S"], "-S needs --gdb (or -s)"),
])
def test_bad_gdb_options(argv: list[str], message: str) -> None:
    status, _, err = lgemu_main_in_process(["boot", *argv])
    assert status == 2
    assert message in err.splitlines()[-1]


def test_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        status, _, err = lgemu_main_in_process(["boot", "--gdb", f"tcp::{port}"])
    assert status == 2
    assert err.splitlines()[-1].startswith(f"lgemu: --gdb: cannot listen on 127.0.0.1:{port}")


def test_detach_then_another_gdb_attaches(tmp_path: Path) -> None:
    """After `D` the guest runs on and the stub listens again: a second gdb can stop it."""
    elf = build_guest(tmp_path, "\tINIT\nspin:\tincl %eax\n\tjmp spin\n")
    lgemu = Lgemu([str(elf)])
    first = RspClient.connect(lgemu.port)
    assert first.command("?").startswith("T05")
    assert first.command("D") == "OK"
    first.close()
    second = RspClient.connect(lgemu.port)
    assert second.command("?").startswith("T05")
    assert int(second.command("qlgemu.icount"), 16) > 0  # it ran in between
    second.send("k")
    status, _, err = lgemu.finish()
    assert status == 130
    assert err.splitlines()[-1] == "lgemu: killed from gdb"


def test_stop_at_hands_control_to_gdb() -> None:
    """With --gdb, --stop-at stops there and waits for gdb; gdb finds it at that count."""
    lgemu = Lgemu(["--stop-at", "100000"], wait=False)
    lgemu.wait_for("waiting for gdb")
    gdb = RspClient.connect(lgemu.port)
    assert gdb.command("?").startswith("T05")
    assert int(gdb.command("qlgemu.icount"), 16) == 100000
    assert gdb.command("c") == "W00"
    gdb.close()
    status, out, err = lgemu.finish()
    assert status == 0
    assert out == plain_output([])
    assert re.search(r"lgemu: stopped at instruction 100000, eip 0x[0-9a-f]+; waiting for gdb "
                     r"on 127\.0\.0\.1:\d+", err), err


def test_s_is_gdb_on_port_1234() -> None:
    from lgemu.cli import build_parser, parse_boot

    config = parse_boot(build_parser().parse_args(["boot", "-s", "-S"]))
    assert (config.gdb, config.gdb_wait) == ("tcp::1234", True)
