"""Debugging attachments: whatever watches a run (traces, coverage, the gdb stub).

`attach_debugging` installs what the configuration asks for on a guest before it runs and
closes it afterwards, whatever the outcome.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ..cli import BootConfig
    from ..host.guest import Guest


# BootConfig fields that ask for a trace or the event log (see lgemu.debug.trace).
TRACE_OPTIONS = ("trace", "events", "trace_regs", "trace_filter")


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
        if any(getattr(config, name) for name in TRACE_OPTIONS) or config.trace_format != "text":
            from .trace import attach_trace
            attach_trace(stack, guest, config, stderr)
        if config.coverage is not None:
            from .coverage import attach_coverage
            attach_coverage(stack, guest, config)
        if config.gdb is not None or config.gdb_wait or config.stop_at is not None:
            from .gdbstub import attach_control
            attach_control(stack, guest, config, stderr)  # last: time travel rewinds the guest
        yield
