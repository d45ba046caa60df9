"""`lgemu`: the command line.  Options are declared as a table, parsed into a `BootConfig`
(`lgemu.config`), which is checked whole before anything is loaded or opened.

Every way a run ends maps to one line on stderr (nothing on a clean power-down) and an exit
status; see `lgemu.errors.ExitStatus` and the README.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO, NoReturn, TextIO

from . import __version__
from .config import DEFAULT_MEM_MIB, BootConfig
from .errors import ExitStatus, InternalError, Interrupted, LgemuExit, UserError
from .signals import SIGNALS


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _abi_era(text: str) -> str:
    from .abi_eras import era_named
    from .launcher.era import era_choices

    if era_named(text) is None:
        raise argparse.ArgumentTypeError(f"not an lguest ABI era: {text!r} ({era_choices()})")
    return text


# (flags, argparse keyword arguments) for `lgemu boot`.
BOOT_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("kernel",), dict(nargs="?", type=Path, metavar="VMLINUX",
                       help="lguest guest kernel: ELF vmlinux or bzImage "
                            "(default: the bundled guest)")),
    (("-m", "--mem"), dict(type=_positive, default=DEFAULT_MEM_MIB, metavar="MIB", dest="mem_mib",
                           help="guest RAM in MiB (default %(default)s)")),
    (("--append",), dict(default="", metavar="CMDLINE", dest="cmdline",
                         help="kernel command line")),
    (("--initrd",), dict(type=Path, metavar="FILE", help="initial ramdisk, loaded at the top "
                                                         "of RAM (or of low memory)")),
    (("--clock",), dict(choices=("virtual", "realtime"), default="virtual",
                        help="guest time from the instruction count (reproducible, default) or "
                             "the host's clock")),
    (("--insn-ns",), dict(type=_positive, default=10, metavar="NS", dest="ns_per_insn",
                          help="virtual nanoseconds per instruction (default %(default)s: a "
                               "100 MHz virtual CPU)")),
    (("--max-insns",), dict(type=_positive, metavar="N",
                            help="stop after N guest instructions (exit status 5)")),
    (("--timeout",), dict(type=_positive_float, metavar="SECONDS",
                          help="stop after this much wall-clock time (exit status 6)")),
    (("--block",), dict(action="append", type=lambda v: ("block", v), default=[],
                        dest="devices", metavar="FILE[,ro]",
                        help="a virtio disk backed by FILE (vda, vdb, … in order); ,ro "
                             "refuses writes")),
    (("--net",), dict(action="append", type=lambda v: ("net", v), default=[], dest="devices",
                      metavar="WIRE[,mac=M][,pcap=FILE][,record=FILE]",
                      help="a virtio network card (eth0, eth1, … in order) on WIRE: "
                           "udp:LOCALPORT:HOST:PORT, tap:IFNAME, replay:FILE (of a udp or tap "
                           "card's record=FILE) or pcap:FILE")),
    (("--console-input",), dict(type=Path, metavar="FILE",
                                help="feed FILE to the console instead of stdin, reproducibly")),
    (("--console-record",), dict(type=Path, metavar="FILE",
                                 help="record the console input read (terminal, pipe) with the "
                                      "instruction count it arrived at, for --console-replay")),
    (("--console-replay",), dict(type=Path, metavar="FILE",
                                 help="feed the console exactly what --console-record recorded, "
                                      "at the same instruction counts")),
    (("--trace",), dict(metavar="FILE", help="write an instruction trace with lguest events "
                                             "to FILE ('-': stdout, among the guest's output)")),
    (("--trace-format",), dict(choices=("text", "jsonl", "tenet"), default="text",
                               help="trace format (default %(default)s)")),
    (("--trace-regs",), dict(action="store_true",
                             help="add the registers each traced instruction changed")),
    (("--trace-filter",), dict(metavar="SPEC",
                               help="trace only sym:NAME, addr:A-B, ring:N, icount:A-B, call:NAME "
                                    "(comma-separated)")),
    (("--events",), dict(action="store_true",
                         help="the lguest event log only (hypercalls, traps, interrupts, "
                              "vrings), to the --trace FILE or else stderr")),
    (("--coverage",), dict(type=Path, metavar="FILE",
                           help="write the executed blocks to FILE (drcov, for Lighthouse)")),
    (("--status",), dict(action=argparse.BooleanOptionalAction, default=None,
                         help="--status: show the status line even when stderr is not a "
                              "terminal (in the terminal's title while the console is "
                              "typed at); --no-status: never (default: on a terminal the "
                              "console does not read)")),
    (("-v", "--verbose"), dict(action="count", default=0,
                               help="print the boot layout and a summary on stderr")),
    (("--gdb",), dict(metavar="tcp::PORT",
                      help="serve gdb's remote protocol on 127.0.0.1:PORT")),
    (("-s",), dict(action="store_const", const="tcp::1234", dest="gdb",
                   help="shorthand for --gdb tcp::1234")),
    (("-S",), dict(action="store_true", dest="gdb_wait",
                   help="with --gdb: wait for gdb before the first instruction")),
    (("--stop-at",), dict(type=_positive, metavar="ICOUNT",
                          help="stop after exactly ICOUNT instructions (exit status 5; with "
                               "--gdb, wait for gdb there)")),
    (("--snapshot-every",), dict(type=_positive, default=10_000_000, metavar="ICOUNT",
                                 help="while gdb is attached, snapshot the guest every ICOUNT "
                                      "instructions for reverse execution "
                                      "(default %(default)s)")),
    (("--abi",), dict(type=_abi_era, metavar="ERA",
                      help="run with this lguest ABI era instead of the one detected "
                           "(e.g. 2.6.24; see 'lgemu info')")),
    (("--dmesg",), dict(type=Path, metavar="FILE",
                        help="at exit, write the guest kernel's log buffer (log_buf) to FILE")),
    (("--profile",), dict(type=Path, metavar="FILE",
                          help="sample the guest's call stack every --profile-every "
                               "instructions; write the profile to FILE")),
    (("--profile-every",), dict(type=_positive, default=100_000, metavar="N",
                                help="instructions between profile samples "
                                     "(default %(default)s)")),
    (("--profile-format",), dict(choices=("folded", "svg"), default="folded",
                                 help="folded stacks (flamegraph.pl, inferno, speedscope) or "
                                      "an SVG flame graph (default %(default)s)")),
    (("--timeline",), dict(type=Path, metavar="FILE",
                           help="write the boot timeline (phases and initcalls, in guest "
                                "time) to FILE: .svg for a picture, anything else a table")),
]


# (flags, argparse keyword arguments) for `lgemu lab`; per-guest options take NAME:VALUE.
LAB_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("lab_file",), dict(type=Path, metavar="LAB.toml", help="the lab: guests and switches")),
    (("--pcap",), dict(type=Path, metavar="FILE",
                       help="capture every switch, each in its own classic pcap file: "
                            "FILE-SWITCH.pcap (virtual timestamps)")),
    (("--max-insns",), dict(type=_positive, metavar="N",
                            help="stop each guest after N instructions (exit status 5)")),
    (("--timeout",), dict(type=_positive_float, metavar="SECONDS",
                          help="stop the lab after this much wall-clock time (exit status 6)")),
    (("-v", "--verbose"), dict(action="count", default=0,
                               help="a summary per guest and per switch on stderr")),
    (("--trace",), dict(action="append", default=[], metavar="NAME:FILE",
                        help="an instruction trace of guest NAME (repeatable)")),
    (("--events",), dict(action="store_true",
                         help="the traced guests' lguest event log only")),
    (("--trace-format",), dict(choices=("text", "jsonl", "tenet"), default="text",
                               help="the traces' format (default %(default)s)")),
    (("--trace-regs",), dict(action="store_true",
                             help="add the registers each traced instruction changed")),
    (("--trace-filter",), dict(action="append", default=[], metavar="NAME:SPEC",
                               help="trace only what SPEC selects in guest NAME's trace "
                                    "(as lgemu boot --trace-filter)")),
    (("--coverage",), dict(action="append", default=[], metavar="NAME:FILE",
                           help="guest NAME's executed blocks (drcov)")),
    (("--dmesg",), dict(action="append", default=[], metavar="NAME:FILE",
                        help="at its end, write guest NAME's kernel log buffer to FILE")),
    (("--profile",), dict(action="append", default=[], metavar="NAME:FILE",
                          help="profile guest NAME's call stacks into FILE")),
    (("--profile-every",), dict(type=_positive, default=100_000, metavar="N",
                                help="instructions between profile samples "
                                     "(default %(default)s)")),
    (("--profile-format",), dict(choices=("folded", "svg"), default="folded",
                                 help="the profiles' format (default %(default)s)")),
    (("--timeline",), dict(action="append", default=[], metavar="NAME:FILE",
                           help="guest NAME's boot timeline (.svg or a table)")),
    (("--gdb",), dict(action="append", default=[], metavar="NAME:tcp::PORT",
                      help="serve gdb for guest NAME; the others wait while it is stopped")),
    (("-S",), dict(action="store_true", dest="gdb_wait",
                   help="with --gdb: wait for gdb before the first instruction")),
    (("--workers",), dict(type=_positive, default=1, metavar="N",
                          help="run the guests in N worker processes (the same bytes as one; "
                               "not with what watches a guest: --trace, --coverage, --dmesg, "
                               "--profile, --timeline, --gdb, -v)")),
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (try '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The `lgemu` argument parser."""
    parser = _Parser(prog="lgemu", description="Run Linux 2.6.24 lguest guests on Unicorn.")
    parser.add_argument("--version", action="version", version=f"lgemu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    boot = sub.add_parser("boot", help="boot a guest kernel")
    for flags, kwargs in BOOT_OPTIONS:
        boot.add_argument(*flags, **kwargs)
    lab = sub.add_parser("lab", help="run several guests on one virtual clock, joined by "
                                     "virtual switches (lgemu.lab)")
    for flags, kwargs in LAB_OPTIONS:
        lab.add_argument(*flags, **kwargs)
    info = sub.add_parser("info", help="describe a kernel image: ELF, lguest ABI, symbols")
    info.add_argument("kernel", type=Path, metavar="VMLINUX", help="ELF vmlinux or bzImage")
    return parser


def info(kernel: Path, stdout: TextIO) -> int:
    """`lgemu info VMLINUX`: what lgemu sees in a kernel image (raises UserError)."""
    from .debug.symbols import Symbols
    from .launcher import load_kernel
    from .launcher.era import detect_era
    from .ui import describe_kernel

    image = load_kernel(kernel)  # the Launcher's checks: a bad file is one line, exit 2
    describe_kernel(stdout, image, Symbols.load(kernel), detect_era(image))
    return 0


def lab(args: argparse.Namespace) -> int:
    """`lgemu lab LAB.toml`: returns the worst exit status of its guests (lgemu.lab)."""
    from .lab.config import load_lab
    from .lab.scheduler import LabOptions, main_lab, per_guest

    spec = load_lab(args.lab_file)
    names = [g.name for g in spec.guests]

    def paths(values: list[str], option: str) -> dict[str, Path]:
        return {k: Path(v) for k, v in per_guest(values, option, names).items()}

    options = LabOptions(
        pcap=args.pcap, verbose=args.verbose, max_insns=args.max_insns, timeout=args.timeout,
        trace=per_guest(args.trace, "--trace", names), events=args.events,
        trace_format=args.trace_format, trace_regs=args.trace_regs,
        trace_filter=per_guest(args.trace_filter, "--trace-filter", names),
        coverage=paths(args.coverage, "--coverage"),
        dmesg=paths(args.dmesg, "--dmesg"), profile=paths(args.profile, "--profile"),
        profile_every=args.profile_every, profile_format=args.profile_format,
        timeline=paths(args.timeline, "--timeline"),
        gdb=per_guest(args.gdb, "--gdb", names), gdb_wait=args.gdb_wait, workers=args.workers)
    if options.workers > 1:
        for option, given in (("--trace", options.trace), ("--coverage", options.coverage),
                              ("--dmesg", options.dmesg), ("--profile", options.profile),
                              ("--timeline", options.timeline),
                              ("--gdb", options.gdb), ("-v", options.verbose)):
            if given:
                raise UserError(f"--workers: {option} watches a guest in its own process; "
                                "run without --workers")
    if options.workers > 1 and any(s.uplink is not None for s in spec.switches):
        raise UserError("--workers: a switch's uplink is served by one process; run without "
                        "--workers")
    if options.gdb_wait and not options.gdb:
        raise UserError("-S needs --gdb NAME:tcp::PORT")
    for option, given in (("--events", options.events), ("--trace-regs", options.trace_regs),
                          ("--trace-format", options.trace_format != "text")):
        if given and not options.trace:
            raise UserError(f"{option} needs --trace NAME:FILE")
    for name in options.trace_filter:
        if name not in options.trace:
            raise UserError(f"--trace-filter {name}:…: needs --trace {name}:FILE")
    for option, given in (("--profile-every", options.profile_every != 100_000),
                          ("--profile-format", options.profile_format != "folded")):
        if given and not options.profile:
            raise UserError(f"{option} needs --profile NAME:FILE")
    if options.workers > 1:
        from .lab.workers import WorkerPool
        return main_lab(args.lab_file, options, WorkerPool)
    return main_lab(args.lab_file, options)


def parse_boot(args: argparse.Namespace) -> BootConfig:
    """Options → BootConfig: every option's `dest` is the BootConfig field of that name
    (the kernel defaults to the bundled guest)."""
    from .firmware_path import bundled_guest

    values = {name: getattr(args, name) for name in BootConfig._fields if hasattr(args, name)}
    values["kernel"] = args.kernel or bundled_guest()
    return BootConfig(**values)



def boot(config: BootConfig, stdout: BinaryIO, stderr: BinaryIO | None = None, *,
         own_process: bool = False) -> LgemuExit:
    """Launch and run one guest; returns how it ended (raises UserError for bad input).
    `own_process`: lgemu is this whole process (the `lgemu` command), not a library call."""
    from .assemble import assemble_guest, check_config
    from .debug import attach_debugging
    from .devices import build_devices
    from .devices.console import ConsoleOutput
    from .host.clock import Clock
    from .launcher import load_kernel
    from .launcher.era import boot_era
    from .machine.cpu import SelfTestError, self_test

    if own_process:
        # Everything made so far, the modules above all, lives until lgemu exits.  Frozen,
        # the collector stops walking it: neither the run's full collections nor the
        # interpreter's at exit (a tenth of start-up, issue 12).  Never in a caller's
        # process, whose garbage not yet collected would be frozen along with it, for good.
        gc.freeze()
    mem = check_config(config)
    kernel = load_kernel(config.kernel)
    era = boot_era(kernel, config.abi)  # an era lgemu cannot run stops here, before it runs
    try:
        self_test()
    except SelfTestError as e:
        raise UserError(f"unsupported Unicorn: {e}") from None
    output = ConsoleOutput(stdout)
    devices = build_devices(config, output, era)  # command-line order, console last (ABI §10.3)
    try:
        clock = Clock(config.ns_per_insn, realtime=config.clock == "realtime")
        guest = assemble_guest(kernel, era, mem, config.cmdline, config.initrd, devices,
                               output, clock)
        info = guest.boot
        with attach_debugging(guest, config, stderr):
            # Only now, with every file and port opened: bad input stays the only line.
            if config.verbose and stderr is not None:
                from .ui import describe_boot
                describe_boot(stderr, info)
            started = time.monotonic()
            outcome = guest.run(config.max_insns, config.timeout)
        if config.verbose and stderr is not None:
            from .ui import describe_run, is_terminal
            wall = time.monotonic() - started  # shown where repeatability matters less
            describe_run(stderr, guest, outcome,
                         wall if config.verbose > 1 or is_terminal(stderr) else None)
        return outcome
    finally:
        for device in devices:
            device.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lgemu` command; returns the exit status.  SIGINT, SIGTERM and
    SIGHUP are noted from the start and end the run at its next safe point (lgemu.signals);
    one that arrives before the ending is printed decides it.  `argv` None: the command line
    of this process, which lgemu then has to itself (`boot`'s `own_process`)."""
    installed = SIGNALS.install()
    try:
        return _main(argv)
    finally:
        if installed:
            SIGNALS.uninstall()


def _say(line: str) -> None:
    """The last line on stderr (which may be a terminal that has gone away)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "info":
            return info(args.kernel, sys.stdout)
        if args.command == "lab":
            return lab(args)
        config = parse_boot(args)
        outcome = boot(config, sys.stdout.buffer, sys.stderr, own_process=argv is None)
    except LgemuExit as e:
        outcome = e
    except KeyboardInterrupt:  # only where lgemu.signals could not catch SIGINT
        outcome = Interrupted("interrupted")
    except Exception as bug:
        if os.environ.get("LGEMU_DEBUG"):
            raise
        outcome = InternalError(f"{type(bug).__name__}: {bug}")
    ending = SIGNALS.pending()
    if ending is not None:  # the signal decides, whatever else the run ended with
        outcome = ending
    if outcome.status != ExitStatus.POWER_DOWN:
        _say(outcome.line())
    return outcome.status
