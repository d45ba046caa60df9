"""The devices behind the lguest bus, built from the command line.

Each device option (`--block`, `--net`) is registered once in `DEVICE_OPTIONS` under its name:
how its value is parsed (checked before anything is opened) and how the device is built.
`build_devices` returns them in creation order — the order of their options on the command
line — with the console last, exactly as the 2.6.24 Launcher created them (ABI §10.3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..abi_eras import ERA_2_6_24, Era
from ..record import Record
from .base import Device
from .console import Console, ConsoleOutput, open_console_input

if TYPE_CHECKING:
    from ..config import BootConfig


class DeviceOption(Record, frozen=True):
    """One repeatable device option: `parse` turns its value into what `build` takes
    (raising UserError), `build(parsed, index)` opens the index-th device of its kind."""

    parse: Callable[[str], Any]
    build: Callable[[Any, int], Device]


# Block and network code is imported only when asked for: `lgemu boot` with just a console
# starts faster.
def _parse_block(value: str) -> tuple[Any, bool]:
    from .block import parse_block_option
    return parse_block_option(value)


def _build_block(parsed: tuple[Any, bool], index: int) -> Device:
    from .block import Block
    path, read_only = parsed
    return Block(path, read_only, index)


def _parse_net(value: str) -> Any:
    from .netback import parse_net_option
    return parse_net_option(value)


def _build_net(parsed: Any, index: int) -> Device:
    from .net import Net
    return Net(parsed, index)


DEVICE_OPTIONS: dict[str, DeviceOption] = {
    "block": DeviceOption(_parse_block, _build_block),
    "net": DeviceOption(_parse_net, _build_net),
}


def check_options(config: BootConfig) -> None:
    """Parse every device option (UserError for a bad one), opening nothing."""
    for name, value in config.devices:
        DEVICE_OPTIONS[name].parse(value)


def console_device(config: BootConfig, output: ConsoleOutput) -> Console:
    """The console, its input recorded (`--console-record`) or replayed (`--console-replay`)
    if asked (lgemu.devices.replay)."""
    if config.console_replay is not None:
        from .replay import ReplayInput
        source: Any = ReplayInput(config.console_replay)
    else:
        source = open_console_input(config.console_input)
        if config.console_record is not None and source is not None:
            from .replay import RecordingInput
            source = RecordingInput(source, config.console_record)
    console = Console(output, source)
    if hasattr(source, "position"):
        source.position = lambda: (console.icount(), console.wall_ns())
    return console


def build_devices(config: BootConfig, output: ConsoleOutput,
                  era: Era = ERA_2_6_24) -> list[Device]:
    """The devices `config` asks for (`--block`, `--net`, in order), then the console, each
    speaking `era`'s protocols.  If one cannot be built, those already open are closed
    before the error goes up."""
    devices: list[Device] = []
    counts: dict[str, int] = {}
    try:
        for name, value in config.devices:
            option = DEVICE_OPTIONS[name]
            index = counts.get(name, 0)
            devices.append(option.build(option.parse(value), index))
            counts[name] = index + 1
        devices.append(console_device(config, output))
        for device in devices:
            device.era = era
    except BaseException:
        for device in devices:
            device.close()
        raise
    return devices
