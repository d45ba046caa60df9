"""The lab file (`lgemu lab LAB.toml`): guests, and the switches their cards are plugged into.

```toml
[[switch]]
name = "sw0"
latency_us = 50          # optional (default 50): bandwidth_mbps, loss, reorder, seed
uplink = "udp:LOCALPORT:HOST:PORT"  # optional: a host wire (lgemu.lab.uplink)
[[guest]]
name = "a"
kernel = "vmlinux"       # optional (default: the bundled guest); paths relative to the file
mem = 64
initrd = "a.cpio"
append = "console=hvc0 rdinit=/init"
console = "a.log"        # optional; default: stdout, each line prefixed "a| "
console_input = "a.in"   # optional: fed to the console, as --console-input
net = ["sw0"]            # one card per entry: a switch name, optionally ",mac=…"
block = ["disk.img"]     # optional, as --block
```

Every mistake is one `UserError` line naming the lab file and the key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MEM_MIB
from ..errors import UserError
from .switch import SwitchSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the backport of the same parser
    import tomli as tomllib

DEFAULT_LATENCY_US = 50
SWITCH_KEYS = {"name", "latency_us", "bandwidth_mbps", "loss", "reorder", "seed", "uplink"}
GUEST_KEYS = {"name", "kernel", "mem", "initrd", "append", "console", "console_input", "net",
              "block"}


@dataclass
class GuestSpec:
    """A `[[guest]]` of the lab file, paths resolved."""

    name: str
    kernel: Path | None = None
    mem_mib: int = DEFAULT_MEM_MIB
    initrd: Path | None = None
    cmdline: str = ""
    console: Path | None = None
    console_input: Path | None = None
    net: list[tuple[str, bytes | None]] = field(default_factory=list)  # (switch, MAC)
    block: list[str] = field(default_factory=list)


@dataclass
class LabSpec:
    """A whole lab file."""

    path: Path
    switches: list[SwitchSpec]
    guests: list[GuestSpec]


def _type(where: str, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(f"{where}: {key} must be a {names}")
    return value


def _rate(where: str, key: str, value: Any) -> float:
    value = _type(where, key, value, (int, float))
    if not 0 <= value <= 1:
        raise UserError(f"{where}: {key} must be between 0 and 1")
    return float(value)


def _name(where: str, value: Any) -> str:
    name = _type(where, "name", value, str)
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise UserError(f"{where}: name {name!r}: use letters, digits, '-', '_' and '.'")
    return name


def _switch(where: str, table: dict[str, Any], base: Path) -> SwitchSpec:
    unknown = sorted(set(table) - SWITCH_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} ({', '.join(sorted(SWITCH_KEYS))})")
    if "name" not in table:
        raise UserError(f"{where}: needs a name")
    name = _name(where, table["name"])
    latency = _type(where, "latency_us", table.get("latency_us", DEFAULT_LATENCY_US),
                    (int, float))
    if not 0 < latency < float("inf"):
        raise UserError(f"{where}: latency_us must be positive (it is the lab's lookahead)")
    bandwidth = table.get("bandwidth_mbps")
    if bandwidth is not None and not _type(where, "bandwidth_mbps", bandwidth,
                                           (int, float)) > 0:
        raise UserError(f"{where}: bandwidth_mbps must be positive")
    uplink = None
    if "uplink" in table:
        from .uplink import parse_uplink

        uplink = parse_uplink(where, _type(where, "uplink", table["uplink"], str))
        # recording and replay files are relative to the lab file, like every path in it
        uplink.record = None if uplink.record is None else base / uplink.record
        uplink.replay = None if uplink.replay is None else base / uplink.replay
    return SwitchSpec(name, int(latency * 1000), bandwidth,
                      _rate(where, "loss", table.get("loss", 0)),
                      _rate(where, "reorder", table.get("reorder", 0)),
                      _type(where, "seed", table.get("seed", 0), int), uplink)


def _guest(where: str, table: dict[str, Any], base: Path, switches: set[str]) -> GuestSpec:
    from ..devices.netback import parse_mac

    unknown = sorted(set(table) - GUEST_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} ({', '.join(sorted(GUEST_KEYS))})")
    if "name" not in table:
        raise UserError(f"{where}: needs a name")
    guest = GuestSpec(_name(where, table["name"]))

    def path(key: str) -> Path | None:
        value = table.get(key)
        return None if value is None else base / _type(where, key, value, str)

    guest.kernel, guest.initrd = path("kernel"), path("initrd")
    guest.console, guest.console_input = path("console"), path("console_input")
    guest.mem_mib = _type(where, "mem", table.get("mem", DEFAULT_MEM_MIB), int)
    guest.cmdline = _type(where, "append", table.get("append", ""), str)
    for entry in _type(where, "net", table.get("net", []), list):
        switch, *extras = _type(where, "net", entry, str).split(",")
        if switch not in switches:
            raise UserError(f"{where}: net {entry!r}: no switch named {switch!r}")
        mac = None
        for extra in extras:
            key, _, value = extra.partition("=")
            if key != "mac" or mac is not None:
                raise UserError(f"{where}: net {entry!r}: unexpected {extra!r} (mac=XX:...)")
            mac = parse_mac(value)
        guest.net.append((switch, mac))
    for entry in _type(where, "block", table.get("block", []), list):
        disk, _, flags = _type(where, "block", entry, str).partition(",")
        guest.block.append(str(base / disk) + ("," + flags if flags else ""))
    return guest


def load_lab(path: Path) -> LabSpec:
    """Read and check a lab file (UserError for any problem)."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise UserError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not TOML: {e}") from None
    unknown = sorted(set(data) - {"switch", "guest"})
    if unknown:
        raise UserError(f"{path}: unknown table {unknown[0]!r} ([[switch]], [[guest]])")
    base = path.parent
    switches = [_switch(f"{path}: switch {i + 1}", _type(str(path), "switch", t, dict), base)
                for i, t in enumerate(_type(str(path), "switch", data.get("switch", []), list))]
    names = {s.name for s in switches}
    if len(names) != len(switches):
        raise UserError(f"{path}: two switches have the same name")
    guests = [_guest(f"{path}: guest {i + 1}", _type(str(path), "guest", t, dict), base, names)
              for i, t in enumerate(_type(str(path), "guest", data.get("guest", []), list))]
    if not guests:
        raise UserError(f"{path}: no [[guest]]")
    if len({g.name for g in guests}) != len(guests):
        raise UserError(f"{path}: two guests have the same name")
    return LabSpec(path, switches, guests)
