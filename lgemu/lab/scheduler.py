"""Runs a lab: every guest advanced in windows of guest time, one lookahead long.

The rule that makes a lab reproducible: at the start of a window [T, T + L) every live guest's
clock reads T, and L is at most the smallest switch latency.  A frame sent inside the window
arrives at T + L or later, so no guest can receive, inside the window, anything another guest
sends in it: the guests can be run one after the other (or, one day, in several processes),
in any order, and see the same frames at the same instructions.  Frames already on their way
are known when the window starts, so each guest's window is cut at their arrival times
(`Guest.run_until`) and a frame is delivered at the first instruction boundary at or after
its arrival.  When every guest is halted, the window stretches to the next timer or arrival.

How a lab ends: each guest ends as `lgemu boot` would (power-down, crash, kill, stuck,
`--max-insns`); the lab ends when all have, or at `--timeout`, or on a signal.  A guest halted
with no timer while no frame is on its way to it, and every other guest ended or likewise
halted, is stuck, unless a switch has a live uplink (a host wire, `lgemu.lab.uplink`,
served between windows): then the lab waits for the wire.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TextIO

from ..config import BootConfig
from ..errors import ExitStatus, GuestStuck, LgemuExit, LimitReached, UserError
from ..signals import SIGNALS
from .config import GuestSpec, LabSpec
from .switch import Switch, SwitchPort

if TYPE_CHECKING:
    from ..host.guest import Guest
    from .uplink import Uplink

NO_SWITCH_WINDOW_NS = 10_000_000  # guests that share no switch cannot disturb each other
IDLE_WAIT_MAX_S = 0.1  # longest wait on uplinks between looks at --timeout
LAB_MAC_PREFIX = bytes((0x02, 0x6C, 0x67))


class PrefixedLines:
    """A guest's console on a shared stream: each complete line as ``NAME| line``."""

    def __init__(self, name: str, stream: BinaryIO) -> None:
        self.prefix = name.encode() + b"| "
        self.stream = stream
        self.partial = b""

    def write(self, data: bytes) -> int:
        """Take console bytes; write out the lines they complete."""
        *lines, self.partial = (self.partial + data).split(b"\n")
        if lines:
            self.stream.write(b"".join(self.prefix + line + b"\n" for line in lines))
        return len(data)

    def flush(self) -> None:
        """Flush the shared stream (a partial line waits for its end)."""
        self.stream.flush()

    def close(self) -> None:
        """The guest has ended: its last partial line, ended."""
        if self.partial:
            self.write(b"\n")
        self.stream.flush()


@dataclass
class LabOptions:
    """`lgemu lab`'s options besides the lab file."""

    pcap: Path | None = None
    verbose: int = 0
    max_insns: int | None = None
    timeout: float | None = None
    trace: dict[str, str] = field(default_factory=dict)
    events: bool = False
    trace_format: str = "text"
    trace_regs: bool = False
    trace_filter: dict[str, str] = field(default_factory=dict)
    coverage: dict[str, Path] = field(default_factory=dict)
    dmesg: dict[str, Path] = field(default_factory=dict)
    profile: dict[str, Path] = field(default_factory=dict)
    profile_every: int = 100_000
    profile_format: str = "folded"
    timeline: dict[str, Path] = field(default_factory=dict)
    gdb: dict[str, str] = field(default_factory=dict)
    gdb_wait: bool = False
    workers: int = 1


class Pool(Protocol):
    """Runs the lab's windows in other processes (`lgemu.lab.workers.WorkerPool`)."""

    def window(self, live: list[Member], end: int) -> None:
        """Advance the live guests to guest time `end`."""

    def waiting(self, member: Member) -> tuple[bool, int | None, int | None]:
        """Is the guest halted, its timer, and the next frame on its way to it."""

    def close(self) -> None:
        """Stop the worker processes."""


@dataclass
class Member:
    """One guest of a running lab."""

    spec: GuestSpec
    config: BootConfig
    guest: Guest
    ports: list[SwitchPort]
    console: PrefixedLines | None  # None: the console has a file of its own
    outcome: LgemuExit | None = None


def per_guest(values: list[str], option: str, names: list[str]) -> dict[str, str]:
    """`NAME:VALUE` options → {name: value}, every name a guest of the lab."""
    result: dict[str, str] = {}
    for text in values:
        name, sep, value = text.partition(":")
        if not sep or not value:
            raise UserError(f"{option} {text}: want NAME:VALUE")
        if name not in names:
            raise UserError(f"{option} {text}: no guest named {name!r} in the lab")
        if name in result:
            raise UserError(f"{option}: guest {name!r} given twice")
        result[name] = value
    return result


def capture_path(pcap: Path, switch: str) -> Path:
    """Where switch `switch`'s capture goes: ``cap.pcap`` → ``cap-SWITCH.pcap``."""
    return pcap.with_name(f"{pcap.stem}-{switch}{pcap.suffix or '.pcap'}")



def guest_config(spec: GuestSpec, options: LabOptions) -> BootConfig:
    """What `lgemu boot` would be given for this guest."""
    from ..firmware_path import bundled_guest

    return BootConfig(kernel=spec.kernel or bundled_guest(), mem_mib=spec.mem_mib,
                      cmdline=spec.cmdline, initrd=spec.initrd,
                      devices=[("block", b) for b in spec.block],
                      console_input=spec.console_input, max_insns=options.max_insns,
                      trace=options.trace.get(spec.name),
                      events=options.events and spec.name in options.trace,
                      trace_format=options.trace_format if spec.name in options.trace
                      else "text",
                      trace_regs=options.trace_regs and spec.name in options.trace,
                      trace_filter=options.trace_filter.get(spec.name),
                      coverage=options.coverage.get(spec.name),
                      dmesg=options.dmesg.get(spec.name), profile=options.profile.get(spec.name),
                      # the guests not profiled keep the defaults (their own check)
                      **({"profile_every": options.profile_every,
                          "profile_format": options.profile_format}
                         if spec.name in options.profile else {}),
                      timeline=options.timeline.get(spec.name),
                      gdb=options.gdb.get(spec.name),
                      gdb_wait=options.gdb_wait and spec.name in options.gdb, status=False)


class Lab:
    """The guests and switches of one lab, and the scheduler that runs them."""

    def __init__(self, lab: LabSpec, options: LabOptions) -> None:
        from ..host.clock import DEFAULT_EPOCH_NS

        self.lab = lab
        self.options = options
        self.switches = {s.name: Switch(s, DEFAULT_EPOCH_NS) for s in lab.switches}
        self.members: list[Member] = []
        self.lookahead = min((s.latency_ns for s in lab.switches), default=NO_SWITCH_WINDOW_NS)
        self.now_ns = 0  # start of the current window
        self.windows = 0
        self.pool: Pool | None = None  # --workers: guests run in other processes
        self.current: Member | None = None
        self.uplinks: list[Uplink] = []  # host wires on switches (lgemu.lab.uplink)
        self.pace_origin = (0.0, 0)  # (host monotonic time, lab time) pacing idle waits

    # -- building ---------------------------------------------------------------------------
    def build(self, stack: contextlib.ExitStack, stdout: BinaryIO, stderr: TextIO | None) -> None:
        """Open every file and device and launch every guest (UserError on bad input)."""
        from ..assemble import assemble_guest, check_config
        from ..debug import attach_debugging
        from ..devices import DEVICE_OPTIONS
        from ..devices.console import Console, ConsoleOutput, open_console_input
        from ..devices.net import Net
        from ..devices.netback import NetOption
        from ..host.clock import Clock
        from ..launcher import load_kernel
        from ..launcher.era import boot_era
        from ..machine.cpu import SelfTestError, self_test

        configs = [guest_config(spec, self.options) for spec in self.lab.guests]
        sizes = [check_config(config) for config in configs]
        macs: dict[bytes, str] = {}
        for index, spec in enumerate(self.lab.guests):
            for card, (_, mac) in enumerate(spec.net):
                mac = mac or LAB_MAC_PREFIX + bytes((index >> 8, index & 0xFF, card))
                if mac in macs:
                    raise UserError(f"{self.lab.path}: guests {macs[mac]!r} and {spec.name!r} "
                                    "have the same MAC address")
                macs[mac] = spec.name
        kernels = [load_kernel(config.kernel) for config in configs]
        eras = [boot_era(kernel, None) for kernel in kernels]
        try:
            self_test()
        except SelfTestError as e:
            raise UserError(f"unsupported Unicorn: {e}") from None
        from .uplink import Uplink

        for switch in self.switches.values():
            if switch.spec.uplink is not None:
                uplink = Uplink(switch, switch.spec.uplink)
                stack.callback(uplink.close)
                self.uplinks.append(uplink)
        if self.options.pcap is not None:
            for switch in self.switches.values():
                switch.capture_to(capture_path(self.options.pcap, switch.spec.name))
                stack.callback(switch.close)
        for index, (spec, config, mem, kernel, era) in enumerate(
                zip(self.lab.guests, configs, sizes, kernels, eras, strict=True)):
            if spec.console is not None:
                try:
                    stream: BinaryIO = stack.enter_context(spec.console.open("wb"))
                except OSError as e:
                    raise UserError(f"{spec.console}: {e.strerror}") from None
                closer = None
            else:
                closer = stream = PrefixedLines(spec.name, stdout)  # type: ignore[assignment]
            output = ConsoleOutput(stream)
            devices = []
            stack.callback(lambda devices=devices: [d.close() for d in devices])
            for block_index, value in enumerate(b for _, b in config.devices):
                option = DEVICE_OPTIONS["block"]
                devices.append(option.build(option.parse(value), block_index))
            ports = []
            for card, (switch, mac) in enumerate(spec.net):
                net = Net(NetOption("switch", mac=mac or LAB_MAC_PREFIX +
                                    bytes((index >> 8, index & 0xFF, card))), card)
                port = self.switches[switch].port(spec.name)
                net.link = port
                ports.append(port)
                devices.append(net)
            source = open_console_input(spec.console_input) if spec.console_input else None
            devices.append(Console(output, source))
            guest = assemble_guest(kernel, era, mem, config.cmdline, config.initrd, devices,
                                   output, Clock(config.ns_per_insn))
            for port in ports:
                port.now_ns = guest.clock.now_ns
            member = Member(spec, config, guest, ports, closer)
            stack.enter_context(attach_debugging(guest, config, stderr))
            for device in devices:
                device.run_starts()
                stack.callback(device.run_ends)
            self.members.append(member)

    # -- running -----------------------------------------------------------------------------
    def _interrupt(self) -> None:
        if self.current is not None:
            self.current.guest.interrupt()

    def _end(self, member: Member, outcome: LgemuExit) -> None:
        member.outcome = member.outcome or outcome
        for port in member.ports:
            port.close()
        if isinstance(member.console, PrefixedLines):
            member.console.close()

    def _live(self) -> Iterator[Member]:
        return (m for m in self.members if m.outcome is None)

    def run(self) -> None:
        """Run every guest to its end (see the module docstring)."""
        deadline = None if self.options.timeout is None else \
            time.monotonic() + self.options.timeout
        SIGNALS.on_signal = self._interrupt
        self.pace_origin = (time.monotonic(), self.now_ns)
        try:
            while any(self._live()):
                pending = SIGNALS.pending()
                if pending is not None:
                    for member in list(self._live()):
                        self._end(member, pending)
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    limit = LimitReached(f"timeout: {self.options.timeout:g} s of wall-clock "
                                         "time", ExitStatus.TIMEOUT)
                    for member in list(self._live()):
                        self._end(member, limit)
                    break
                self._window()
        finally:
            SIGNALS.on_signal = None
            self.current = None

    def _next_arrival(self, member: Member) -> int | None:
        arrivals = [a for port in member.ports if (a := port.next_arrival()) is not None]
        return min(arrivals, default=None)

    def _waiting(self, member: Member) -> tuple[bool, int | None, int | None]:
        """Is the guest halted, its timer, and the next frame on its way to it."""
        if self.pool is not None:
            return self.pool.waiting(member)
        guest = member.guest
        return guest.interrupts.halted, guest.clock.deadline_ns, self._next_arrival(member)

    def _window(self) -> None:
        live = list(self._live())
        end = self.now_ns + self.lookahead
        waiting = [self._waiting(m) for m in live]
        if all(halted for halted, _, _ in waiting):
            # Nobody runs, so nobody sends before the next timer or arrival: go there.
            events = [t for _, deadline, arrival in waiting for t in (deadline, arrival)
                      if t is not None]
            events += [a for u in self.uplinks if (a := u.port.next_arrival()) is not None]
            if self.uplinks and self._idle_uplinks(min(events, default=None)):
                return  # a frame came in from the host: served, the lab's time standing still
            if not events:
                for member in live:
                    self._end(member, GuestStuck("halted with no timer set and no frame on "
                                                 "its way (every guest of the lab waits)"))
                return
            end = max(end, min(events))
        if self.pool is not None:
            self.pool.window(live, end)
        else:
            for member in live:
                self.advance(member, end)
        self.now_ns = end
        self.windows += 1
        self._serve_uplinks()
        for switch in self.switches.values():
            switch.flush_capture(end)

    def _serve_uplinks(self) -> None:
        from ..devices.replay import ReplayDiverged

        try:
            for uplink in self.uplinks:
                uplink.serve(self.now_ns)
        except ReplayDiverged as diverged:
            for member in list(self._live()):
                self._end(member, diverged)

    def _idle_uplinks(self, event: int | None) -> bool:
        """Every guest is halted and the lab has uplinks: wait on the host's wires until the
        host's clock reaches `event` (lab time; None: no event, wait for the wires alone).
        True if frames came in (and were served at the current lab time)."""
        if any(u.due_now() for u in self.uplinks):  # a replay: the recording says so
            self._serve_uplinks()
            return True
        fds = [fd for u in self.uplinks if (fd := u.fileno()) >= 0]
        if not fds:
            return False
        wall0, lab0 = self.pace_origin
        left = IDLE_WAIT_MAX_S if event is None else \
            min(IDLE_WAIT_MAX_S, (event - lab0) / 1e9 - (time.monotonic() - wall0))
        if event is not None and left <= 0:
            return False
        try:
            ready = SIGNALS.wait(fds, left)
        except LgemuExit:
            return True  # the run loop ends the lab with the signal's ending
        if ready:
            self._serve_uplinks()
        return True  # look again (the host's clock has moved)

    def advance(self, member: Member, end: int) -> None:
        """Run one guest to guest time `end`, its run cut at each frame's arrival."""
        guest = member.guest
        self.current = member
        while member.outcome is None and guest.clock.now_ns() < end:
            arrival = self._next_arrival(member)
            now = guest.clock.now_ns()
            horizon = end if arrival is None or arrival <= now else min(end, arrival)
            outcome = guest.run_until(horizon, member.config.max_insns)
            if outcome is not None:
                self._end(member, outcome)
        self.current = None


def run_lab(path: Path, options: LabOptions, stdout: BinaryIO, stderr: TextIO,
            pool: Callable[[Lab, int], Pool] | None = None) -> int:
    """`lgemu lab`: build and run the lab; one line per guest on stderr; the worst status.
    With `options.workers` > 1, `pool` starts the worker processes once the lab is built."""
    from .config import load_lab

    lab_spec = load_lab(path)
    names = [g.name for g in lab_spec.guests]
    for option, given in (("--trace", options.trace), ("--trace-filter", options.trace_filter),
                          ("--coverage", options.coverage), ("--dmesg", options.dmesg),
                          ("--profile", options.profile), ("--timeline", options.timeline),
                          ("--gdb", options.gdb)):
        for name in given:
            if name not in names:
                raise UserError(f"{option}: no guest named {name!r} in the lab")
    lab = Lab(lab_spec, options)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        lab.build(stack, stdout, stderr)
        if options.workers > 1 and pool is not None:
            lab.pool = pool(lab, min(options.workers, len(lab.members)))
            stack.callback(lab.pool.close)
        lab.run()
        stdout.flush()
        if options.verbose:
            from ..ui import describe_run
            wall = time.monotonic() - started if options.verbose > 1 else None
            for member in lab.members:
                print(f"== guest {member.spec.name} ==", file=stderr, flush=True)
                describe_run(stderr, member.guest, member.outcome, wall)
            for switch in lab.switches.values():
                print(switch.summary(), file=stderr, flush=True)
            for uplink in lab.uplinks:
                print(uplink.summary(), file=stderr, flush=True)
            print(f"lab: {lab.windows} windows (lookahead {lab.lookahead / 1000:g} µs; longer "
                  f"while every guest is halted), {lab.now_ns / 1e9:.6f} s of guest time",
                  file=stderr, flush=True)
    worst = 0
    for member in lab.members:
        outcome = member.outcome
        assert outcome is not None
        text = outcome.line().removeprefix("lgemu: ") \
            if outcome.status != ExitStatus.POWER_DOWN else "powered down"
        print(f"lgemu: {member.spec.name}: {text} (exit {outcome.status})", file=stderr,
              flush=True)
        worst = max(worst, outcome.status)
    return worst


def main_lab(path: Path, options: LabOptions,
             pool: Callable[[Lab, int], Pool] | None = None) -> int:
    """`run_lab` on the process's stdout and stderr."""
    return run_lab(path, options, sys.stdout.buffer, sys.stderr, pool)
