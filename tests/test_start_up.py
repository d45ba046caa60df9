"""What a plain `lgemu boot` loads: only what booting needs.  Disassembly (capstone), DWARF
(pyelftools), tables (rich), lab files, sockets and the devices and buses nobody asked for are
imported by the features that use them, so a boot that uses none starts without them (issue
12: start-up, timed as a ratio in tools/bench).  Each run is the `lgemu` command in a fresh
interpreter, which reports every module the command imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, SUBPROCESS_TIMEOUT

# The command as a user runs it (`python -m lgemu ARGS`), then the modules it imported.
COMMAND = """
import runpy, sys
before = set(sys.modules)
sys.argv = ["lgemu", *sys.argv[1:]]
try:
    runpy.run_module("lgemu", run_name="__main__", alter_sys=True)
finally:
    made = [f"{m.__name__}.{c.__qualname__}" for m in list(sys.modules.values())
            if m.__name__.startswith("lgemu") for c in list(vars(m).values())
            if isinstance(c, type) and c.__module__ == m.__name__
            and "__dataclass_fields__" in vars(c)]
    print("dataclasses:", *sorted(made), file=sys.stderr)
    print("imported:", *sorted(set(sys.modules) - before), file=sys.stderr)
"""

# Modules a plain boot of the bundled guest must not import, and what does need them.
NOT_ON_A_PLAIN_BOOT = {
    "capstone": "--trace",
    "elftools": "symbols and lines: --trace, --profile, lgemu info",
    "rich": "-v, the status line, profile tables",
    "lgemu.ui": "-v, the status line",
    "lgemu.debug.trace": "--trace",
    "lgemu.debug.symbols": "--trace, --profile, gdb",
    "lgemu.lab": "lgemu lab",
    "tomllib": "lgemu lab",
    "socket": "--net",
    "lgemu.devices.net": "--net",
    "lgemu.devices.block": "--disk",
    "lgemu.devices.replay": "--record, --replay",
    "lgemu.devices.dma_bus": "a 2.6.23 guest",
    "lgemu.devices.pci": "a 4.x guest",
    "lgemu.devices.virtio_pci": "a 4.x guest",
}


def run_lgemu(*args: str) -> tuple[int, bytes, str]:
    """Run `lgemu ARGS`: (exit status, console bytes, stderr with the report at its end)."""
    proc = subprocess.run([sys.executable, "-c", COMMAND, *args], cwd=REPO_ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=SUBPROCESS_TIMEOUT, check=False)
    return proc.returncode, proc.stdout, proc.stderr.decode()


def imported_by(*args: str) -> tuple[int, bytes, set[str]]:
    """Run `lgemu ARGS`: (exit status, console bytes, the modules it imported)."""
    status, console, stderr = run_lgemu(*args)
    return status, console, set(stderr.rpartition("imported:")[2].split())


def loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


def test_a_plain_boot_imports_only_what_booting_needs() -> None:
    status, console, modules = imported_by("boot")
    assert status == 0 and console  # the bundled guest ran to its power-down
    assert "lgemu.host.guest" in modules and "unicorn" in modules
    assert [name for name in NOT_ON_A_PLAIN_BOOT if loaded(modules, name)] == []


def test_the_features_that_need_them_still_import_them(tmp_path: Path) -> None:
    trace = tmp_path / "boot.trace"
    status, _, modules = imported_by("boot", "-v", "--trace", str(trace), "--max-insns",
                                     "2000")
    assert status == 5 and trace.stat().st_size > 0
    assert {name for name in ("capstone", "elftools", "rich", "lgemu.ui", "lgemu.debug.trace")
            if loaded(modules, name)} == {"capstone", "elftools", "rich", "lgemu.ui",
                                          "lgemu.debug.trace"}


def test_a_plain_boot_generates_no_dataclass_methods() -> None:
    """`@dataclass` compiles each class's methods as the module loads (half a millisecond a
    class); the records a boot loads are `lgemu.record.Record`s, which share one set."""
    status, console, stderr = run_lgemu("boot")
    made = stderr.rpartition("dataclasses:")[2].partition("imported:")[0].split()
    assert status == 0 and console
    assert not made, "use lgemu.record.Record for these"
