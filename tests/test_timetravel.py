"""Determinism under a debugger, `--stop-at`, snapshots and reverse execution.

The run loop's promise (lgemu.host.guest): however controllers cut the guest's slices into
CPU runs — single steps, breakpoint stops, watchpoint stops — the guest executes exactly the
same instructions and prints exactly the same bytes as an undebugged run.  Time travel
rests on it: going back is restoring a snapshot and running forward again.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import lgemu_main_in_process
from gdbrun import (
    Lgemu,
    bundled_guest,
    instruction_before,
    needs_gdb,
    received,
    registers,
    run_under_gdb,
    symbol,
)
from rspclient import RspClient
from test_gdb import with_client

from lgemu.debug.snapshot import Timeline
from lgemu.host.guest import Guest, Stage
from lgemu.machine.cpu import GPRS, Reg

PROGRAMS = ["banner", "timer", "usermode", "traps", "paging", "ioports"]
Attach = Callable[[Guest], None]


@pytest.fixture
def boot_with(monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, bytes, str, int]]:
    """Boot the bundled guest in this process with `attach(guest)` called on the new Guest
    (to add controllers and hooks): (status, stdout, stderr, instructions executed)."""
    def run(program: str, attach: Attach | None = None) -> tuple[int, bytes, str, int]:
        guests: list[Guest] = []
        original = Guest.__init__

        def init(self: Guest, *args: object, **kwargs: object) -> None:
            original(self, *args, **kwargs)
            guests.append(self)
            if attach is not None:
                attach(self)
        with monkeypatch.context() as patch:
            patch.setattr(Guest, "__init__", init)
            status, out, err = lgemu_main_in_process(
                ["boot", f"--append=lgemu.test={program}"])
        return status, out, err, guests[0].clock.executed
    return run


class RandomCuts:
    """Cut every run at a pseudo-random length."""

    def __init__(self, seed: int, longest: int) -> None:
        self.random = random.Random(seed)
        self.longest = longest
        self.calls = 0

    def boundary(self, guest: Guest) -> int:
        self.calls += 1
        return self.random.randint(1, self.longest)


class BreakpointStops:
    """Stop at every instruction at `addresses` (Unicorn exits), then step over it, as the
    gdb stub does."""

    def __init__(self, guest: Guest, addresses: frozenset[int], shared: bool = False) -> None:
        self.addresses = addresses
        self.hits = 0
        self.stepping = False
        self.shared = shared  # kernel text: only the changed blocks are dropped
        guest.cpu.set_breakpoints(addresses, shared)

    def boundary(self, guest: Guest) -> int | None:
        cpu = guest.cpu
        if self.stepping:
            self.stepping = False
            cpu.set_breakpoints(self.addresses, self.shared)
        eip = cpu.reg(Reg.EIP)
        if eip in self.addresses:
            self.hits += cpu.at_breakpoint
            self.stepping = True
            cpu.set_breakpoints(self.addresses - {eip}, self.shared)
            return 1
        return None


@pytest.mark.parametrize("program", PROGRAMS)
def test_cutting_runs_changes_nothing(boot_with: Callable[..., tuple], program: str) -> None:
    plain = boot_with(program)
    assert plain[0] == 0
    cuts = RandomCuts(seed=len(program), longest=300)
    cut = boot_with(program, lambda g: g.add_controller(cuts, Stage.STEER))
    assert cuts.calls > 1000
    assert cut == plain


def test_controllers_are_asked_in_stage_order_then_adding_order(
        boot_with: Callable[..., tuple]) -> None:
    """Added out of order, controllers are still asked by their `Stage`; within a stage in
    the order they were added.  A removed one is not asked again."""
    asked: list[str] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def boundary(self, guest: Guest) -> None:
            asked.append(self.name)

    def attach(guest: Guest) -> None:
        gone = Named("gone")
        for name, stage in (("steer1", Stage.STEER), ("status", Stage.STATUS),
                            ("steer2", Stage.STEER), ("trace", Stage.TRACE)):
            guest.add_controller(Named(name), stage)
        guest.add_controller(gone, Stage.TRACE)
        guest.remove_controller(gone)
    status, _, _, _ = boot_with("timer", attach)
    assert status == 0 and len(asked) >= 4 and len(asked) % 4 == 0
    assert asked[:8] == ["trace", "status", "steer1", "steer2"] * 2


@pytest.mark.parametrize("program", ["timer", "usermode"])
def test_shared_breakpoints_drop_only_their_blocks_and_hit_as_often(
        boot_with: Callable[..., tuple], program: str) -> None:
    """Breakpoints changed with `shared` (only the blocks at the changed addresses are
    dropped) stop exactly where and as often as with all code dropped on every change."""
    elf = bundled_guest()
    hot = frozenset(symbol(elf, name) for name in ("printk", "memcpy", "lguest_iret"))
    runs = {}
    for shared in (False, True):
        seen: list[BreakpointStops] = []

        def attach(guest: Guest, shared: bool = shared, seen: list = seen) -> None:
            seen.append(BreakpointStops(guest, hot, shared))
            guest.add_controller(seen[0], Stage.STEER)
        runs[shared] = (boot_with(program, attach), seen[0].hits)
    assert runs[True] == runs[False]
    assert runs[True][1] > 10 and runs[True][0] == boot_with(program)


@pytest.mark.parametrize("program", ["timer", "usermode"])
def test_breakpoint_and_watchpoint_stops_change_nothing(boot_with: Callable[..., tuple],
                                                        program: str) -> None:
    elf = bundled_guest()
    hot = frozenset(symbol(elf, name) for name in ("printk", "memcpy", "lguest_iret"))
    data = symbol(elf, "lguest_data") - 0xC0000000  # memory hooks see physical addresses
    seen: dict[str, object] = {}

    def attach(guest: Guest) -> None:
        stops = seen["stops"] = BreakpointStops(guest, hot)
        guest.add_controller(stops, Stage.STEER)
        writes = seen["writes"] = []

        def on_write(is_write: bool, address: int, size: int, value: int) -> None:
            writes.append(guest.icount)
            guest.pause_after()
        guest.cpu.on_mem_access(on_write, data, data + 3, read=False, write=True)
    plain = boot_with(program)
    stopped = boot_with(program, attach)
    assert seen["stops"].hits > 10 and len(seen["writes"]) > 10
    assert stopped == plain


def test_stop_at(lgemu_main: Callable[..., tuple[int, bytes, str]]) -> None:
    status, full, _ = lgemu_main(["boot"])
    assert status == 0
    first = lgemu_main(["boot", "--stop-at", "200000"])
    second = lgemu_main(["boot", "--stop-at", "200000"])
    assert first == second
    status, out, err = first
    assert status == 5
    assert re.fullmatch(r"lgemu: stopped at instruction 200000, eip 0x[0-9a-f]+\n", err), err
    assert full.startswith(out) and len(out) < len(full)


@pytest.mark.parametrize("program", ["timer", "usermode", "paging"])
def test_snapshot_restore_replays_exactly(boot_with: Callable[..., tuple], program: str) -> None:
    """Snapshot at A, run to B and look; go back to A, run to B again and look: the same
    registers, memory and console position; the run then ends as an undebugged one, its
    output printed once."""
    plain = boot_with(program)
    a, b = plain[3] // 3, plain[3] * 2 // 3
    looks: list[tuple] = []

    class BackAndForth:
        def __init__(self, guest: Guest) -> None:
            self.timeline = Timeline(guest, every=1 << 62)

        def boundary(self, guest: Guest) -> int | None:
            icount = guest.icount
            if icount == a and not self.timeline.snapshots:
                self.timeline.take()
            if icount == b:
                ram = guest.memory.ram
                looks.append((guest.cpu.regs((*GPRS, Reg.EIP, Reg.EFLAGS)),
                              hash(ram[:]), bytes(guest.memory.host),
                              self.timeline.output.position, guest.clock.now_ns()))
                if len(looks) == 1:
                    self.timeline.restore(self.timeline.snapshots[0])
                    assert guest.icount == a
            for goal in (a, b):
                if guest.icount < goal:
                    return goal - guest.icount
            return None
    replayed = boot_with(program, lambda g: g.add_controller(BackAndForth(g), Stage.STEER))
    assert len(looks) == 2 and looks[0] == looks[1]
    assert replayed == plain


@pytest.mark.parametrize("why", ["realtime clock", "disk"])
def test_no_reverse_execution_when_it_cannot_be_replayed(why: str, tmp_path: Path) -> None:
    """A realtime clock, or a device with state outside lgemu: gdb is not offered it."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4096))
    argv = ["--clock", "realtime"] if why == "realtime clock" else ["--block", str(disk)]

    def talk(gdb: RspClient) -> None:
        features = gdb.command("qSupported:swbreak+").split(";")
        assert "ReverseStep+" not in features and "ReverseContinue+" not in features
        assert gdb.command("bs") == ""
        assert gdb.command("bc") == ""
        assert gdb.command("c") == "W00"
    status, _, _ = with_client(argv, talk)
    assert status == 0


# -- with gdb ------------------------------------------------------------------------------------
@needs_gdb
def test_reverse_stepi_and_reverse_continue(lgemu_main: Callable[..., tuple]) -> None:
    elf = bundled_guest()
    forward = ["info registers"]
    for _ in range(3):
        forward += ["stepi", "info registers"]
    backward = []
    for _ in range(3):
        backward += ["reverse-stepi", "info registers"]
    run = run_under_gdb(
        ["break start_kernel", "continue", *forward, "maint packet qlgemu.icount", *backward,
         "break lguest_init", "reverse-continue", "info registers eip",
         "maint packet qlgemu.icount", "reverse-continue", "continue", "continue", "delete",
         "continue"], ["--snapshot-every", "50000"])
    blocks = registers(run.gdb)
    ahead, back = blocks[0:4], blocks[4:7]
    assert back == ahead[2::-1]  # each reverse-stepi lands on the state a stepi left
    assert "Breakpoint 2, lguest_init ()" in run.gdb
    assert blocks[7]["eip"] == symbol(elf, "lguest_init")
    assert "No more reverse-execution history." in run.gdb
    assert "[Inferior 1 (Remote target) exited normally]" in run.gdb
    assert run.status == 0
    assert run.out == lgemu_main(["boot"])[1]  # replays printed nothing twice
    # The instruction count gdb was shown is the one a forward run stops at, at the same EIP.
    after_steps, at_init = (int(reply, 16) for reply in received(run.gdb))
    stopped = lgemu_main(["boot", "--stop-at", str(at_init)])[2]
    assert stopped.endswith(f"eip {symbol(elf, 'lguest_init'):#x}\n")
    stopped = lgemu_main(["boot", "--stop-at", str(after_steps)])[2]
    assert stopped.endswith(f"eip {ahead[3]['eip']:#x}\n")


@needs_gdb
def test_stepping_in_gdb_changes_nothing(lgemu_main: Callable[..., tuple],
                                         tmp_path: Path) -> None:
    """Hundreds of single steps through the timer program's interrupt handling, then on to
    the end: the same console bytes and instruction count as without gdb."""
    script = tmp_path / "steps.gdb"
    script.write_text("set $i = 0\nwhile $i < 400\n  stepi\n  set $i = $i + 1\nend\n")
    run = run_under_gdb(["break trap_common", "continue", "delete",
                         "maint packet qlgemu.icount", f"source {script}",
                         "maint packet qlgemu.icount", "continue"],
                        ["--append", "lgemu.test=timer", "-v"])
    assert "Breakpoint 1, " in run.gdb, run.gdb
    before, after = (int(reply, 16) for reply in received(run.gdb))
    assert after - before >= 400
    status, plain, err = lgemu_main(["boot", "--append=lgemu.test=timer", "-v"])
    assert run.status == status == 0
    assert run.out == plain

    def executed(text: str) -> str:
        return re.search(r"executed (\d+) instructions", text).group(1)
    assert executed(run.err) == executed(err)


@needs_gdb
def test_reverse_continue_to_a_watchpoint() -> None:
    """Going back, a watchpoint stops before the instruction that wrote the watched word."""
    elf = bundled_guest()
    run = run_under_gdb(["watch *(int*)&lguest_data", "continue", "continue",
                         "info registers eip", "reverse-continue", "info registers eip",
                         "delete", "continue"], ["--append", "lgemu.test=timer"])
    after_write, before_write = (block["eip"] for block in registers(run.gdb))
    assert before_write == instruction_before(elf, after_write)[0]
    assert "[Inferior 1 (Remote target) exited normally]" in run.gdb
    assert run.status == 0


@pytest.mark.parametrize("written", ["before lgemu starts", "while lgemu waits for gdb"])
def test_console_input_from_a_pipe_is_not_replayed(written: str) -> None:
    """Piped input read after a snapshot cannot be read again: reverse-continue stops where
    the input came in (the start of what can be replayed), reverse-stepi before it is refused,
    and the run still ends normally, its echo printed once.  With -S nothing reaches the
    guest before gdb lets it run, even input already waiting in the pipe when lgemu starts:
    history begins before it."""
    elf = bundled_guest()
    early = written == "before lgemu starts"
    lgemu = Lgemu(["--append", "lgemu.test=console_echo"], piped=True,
                  preload=b"hello\n" if early else b"")
    if not early:
        lgemu.stdin.write(b"hello\n")
        lgemu.stdin.flush()
    gdb = RspClient.connect(lgemu.port)
    gdb.command("qSupported:swbreak+")
    gdb.command(f"Z0,{symbol(elf, 'echo_line'):x},1")
    assert gdb.command("c").startswith("T05swbreak")
    at_echo = int(gdb.command("qlgemu.icount"), 16)
    assert gdb.command("bc").startswith("T05replaylog:begin;")
    input_came = int(gdb.command("qlgemu.icount"), 16)
    assert 0 < input_came < at_echo
    refused = gdb.command("bs")
    assert refused.startswith("E.") and "terminal or pipe" in refused
    gdb.command(f"z0,{symbol(elf, 'echo_line'):x},1")
    lgemu.stdin.close()
    assert gdb.command("c") == "W00"  # the program gives up waiting for more, powers down
    gdb.close()
    status, out, err = lgemu.finish()
    assert status == 0
    assert out.count(b"echo: hello") == 1
    assert "reverse-continue stops here: console input was read from a terminal or pipe" in err
