"""The devices behind the lguest bus, built from the command line.

`build_devices` returns them in creation order — the order of their options on the command
line — with the console last, exactly as the 2.6.24 Launcher created them (ABI §10.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Device
from .console import Console, ConsoleOutput, open_console_input

if TYPE_CHECKING:
    from ..cli import BootConfig


def build_devices(config: BootConfig, output: ConsoleOutput) -> list[Device]:
    """The devices `config` asks for (`--block`, `--net`, in order), then the console.
    If one cannot be built, those already open are closed before the error goes up."""
    devices: list[Device] = []
    disks = nets = 0
    try:
        for kind, value in config.devices:
            # Block and network code is imported only when asked for: `lgemu boot` with
            # just a console starts faster.
            if kind == "block":
                from .block import Block, parse_block_option

                path, read_only = parse_block_option(value)
                devices.append(Block(path, read_only, disks))
                disks += 1
            else:
                from .net import Net
                from .netback import parse_net_option

                devices.append(Net(parse_net_option(value), nets))
                nets += 1
        devices.append(Console(output, open_console_input(config.console_input)))
    except BaseException:
        for device in devices:
            device.close()
        raise
    return devices
