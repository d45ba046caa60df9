"""Debugging attachments: whatever watches a run (traces, coverage, the gdb stub).

`attach_debugging` installs what the configuration asks for on a guest before it runs and
closes it afterwards, whatever the outcome.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, TextIO

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import BootConfig
    from ..host.guest import Guest


def check_options(config: BootConfig) -> None:
    """Refuse debugging options that cannot work (UserError), before the machine is built:
    a bad trace filter or format, a bad `--gdb` endpoint."""
    if config.traced:
        from .trace import check_options as check_trace
        check_trace(config)
    if config.gdb is not None:
        from .gdbstub import parse_endpoint
        parse_endpoint(config.gdb)


@contextmanager
def attach_debugging(guest: Guest, config: BootConfig, stderr: TextIO | None) -> Iterator[None]:
    """Attach the configured debugging aids to `guest` for the duration of the run.
    Traces, coverage and the status line are imported only when asked for (capstone,
    pyelftools and rich take a while to load)."""
    from .tap import is_terminal

    with ExitStack() as stack:
        if config.status or (config.status is None and is_terminal(stderr)):
            # first: it taps the console stream
            from ..ui import attach_status
            attach_status(stack, guest, config, stderr)
        if config.traced:
            from .trace import attach_trace
            attach_trace(stack, guest, config, stderr)
        if config.coverage is not None:
            from .coverage import attach_coverage
            attach_coverage(stack, guest, config)
        if config.dmesg is not None:
            from .dmesg import attach_dmesg
            attach_dmesg(stack, guest, config, stderr)
        if config.profile is not None:
            from .profile import attach_profile
            attach_profile(stack, guest, config, stderr)
        elif config.profile_format != "folded" or \
                config.profile_every != type(config).profile_every:  # not the default
            option = "--profile-format" if config.profile_format != "folded" \
                else "--profile-every"
            raise UserError(f"{option} needs --profile FILE")
        if config.timeline is not None:
            from .timeline import attach_timeline
            attach_timeline(stack, guest, config, stderr)
        if config.gdb is not None or config.gdb_wait or config.stop_at is not None:
            from .gdbstub import attach_control
            attach_control(stack, guest, config, stderr)  # last: time travel rewinds the guest
        yield
