"""What `lgemu boot` was asked to do: `BootConfig`, one field per option.

The command line (`lgemu.cli`) fills it in; the Launcher, the devices and the debugging aids
read it.  It lives here, apart from the parser, so those packages depend on the configuration
and never on the command line.  `BootConfig.validate` refuses every contradiction among options
before anything is loaded or opened (see `lgemu.cli.boot`).
"""

from __future__ import annotations

from pathlib import Path

from .record import Record, factory

DEFAULT_MEM_MIB = 64
DEFAULT_NS_PER_INSN = 10
DEFAULT_SNAPSHOT_EVERY = 10_000_000


class BootConfig(Record):
    """Everything `lgemu boot` was asked to do."""

    kernel: Path
    mem_mib: int = DEFAULT_MEM_MIB
    cmdline: str = ""
    initrd: Path | None = None
    clock: str = "virtual"
    ns_per_insn: int = DEFAULT_NS_PER_INSN
    verbose: int = 0
    max_insns: int | None = None
    timeout: float | None = None
    # Devices as (option name, value) in command-line order (ABI §10.3); the option name is a
    # key of `lgemu.devices.DEVICE_OPTIONS` ("block", "net").
    devices: list[tuple[str, str]] = factory(list)
    console_input: Path | None = None
    console_record: Path | None = None  # lgemu.devices.replay
    console_replay: Path | None = None
    # traces, the event log, coverage, the status line (lgemu.debug.trace / .coverage, ui)
    trace: str | None = None
    trace_format: str = "text"
    trace_regs: bool = False
    trace_filter: str | None = None
    events: bool = False
    coverage: Path | None = None
    status: bool | None = None  # --status / --no-status / neither (ui.status_mode)
    # the gdb stub and instruction-count control (lgemu.debug.gdbstub, .stopat, .snapshot)
    gdb: str | None = None
    gdb_wait: bool = False
    stop_at: int | None = None
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    abi: str | None = None  # --abi: the lguest ABI era to run with (lgemu.abi_eras)
    # Linux-aware views, the profiler and the boot timeline (lgemu.debug.dmesg, .profile,
    # .timeline)
    dmesg: Path | None = None
    profile: Path | None = None
    profile_every: int = 100_000
    profile_format: str = "folded"
    timeline: Path | None = None

    @property
    def traced(self) -> bool:
        """Does this run write an instruction trace or the event log?"""
        return self.trace is not None or self.events

    def contradictions(self) -> str | None:
        """The first pair of options that cannot go together (a one-line complaint), or
        None.  Option values are checked by their own parsers (`lgemu.assemble.check_config`)."""
        if not self.traced:
            for option, given in (("--trace-regs", self.trace_regs),
                                  ("--trace-filter", self.trace_filter),
                                  ("--trace-format", self.trace_format != "text")):
                if given:
                    return f"{option} needs --trace FILE or --events"
        elif self.trace_regs and self.events:
            return "--trace-regs: --events writes no instructions"
        if self.console_replay is not None and self.console_input is not None:
            return "--console-replay: the recording is the console's input (no --console-input)"
        if self.console_replay is not None and self.console_record is not None:
            return "--console-record cannot be combined with --console-replay"
        if self.gdb is None and self.gdb_wait:
            return "-S needs --gdb (or -s)"
        if self.timeline is not None and self.gdb is not None:
            return "--timeline cannot be combined with --gdb (both use Unicorn's exits)"
        return None
