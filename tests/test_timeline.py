"""`--timeline`: phases and initcalls with their guest-time durations, found from the
initcall table and symbols alone; a table or an SVG picture, identical on every run."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import lgemu_main_in_process
from linuxkernel import shell_boot_args

ROW = re.compile(r"^│ +(\d+\.\d{3}) │ +(\d+\.\d{3}|\(running at exit\)|) │ (\w+) +│ (.+?) +│"
                 r" +(-?\d*) │$")


def timeline(args: list[str], path: Path) -> tuple[str, str, bytes]:
    status, out, err = lgemu_main_in_process(["boot", *args, "--timeline", str(path)])
    assert status == 0, err
    return path.read_text(), err, out


def rows(table: str) -> list[tuple[float, float | None, str, str, str]]:
    found = []
    for line in table.splitlines():
        match = ROW.match(line)
        if match:
            start, duration, kind, name, result = match.groups()
            found.append((float(start), float(duration) if duration[:1].isdigit() else None,
                          kind, name, result))
    return found


def test_bundled_guest_initcalls_and_phases(tmp_path: Path) -> None:
    args = ["--append", "lgemu.test=initcalls"]
    first, _, out = timeline(args, tmp_path / "a.txt")
    second, _, _ = timeline(args, tmp_path / "b.txt")
    assert first == second
    assert b"lgemu guest: initcall 0 returned -19" in out
    table = rows(first)
    calls = {name: (start, duration, result) for start, duration, kind, name, result in table
             if kind == "initcall"}
    assert set(calls) == {"quick_setup_init", "slow_driver_init", "missing_device_init"}
    # spin(20000) against spin(1000) against spin(10): the durations say which is which.
    assert calls["slow_driver_init"][1] > 10 * calls["quick_setup_init"][1] > 0
    assert calls["missing_device_init"][1] < calls["quick_setup_init"][1]
    assert calls["missing_device_init"][2] == "-19" and calls["slow_driver_init"][2] == "0"
    # Table order is the kernel's calling order (the table's), starts in guest time.
    starts = [start for start, _, kind, _, _ in table if kind == "initcall"]
    assert starts == sorted(starts)
    phases = {name: (start, duration) for start, duration, kind, name, _ in table
              if kind == "phase"}
    assert phases["start_kernel"][1] is None  # never returns
    assert phases["paging_init"][1] > 0
    assert phases["initcalls (3 of 3 run)"][0] == min(starts)


def test_timeline_svg_and_verbose_table(tmp_path: Path) -> None:
    svg_path = tmp_path / "boot.svg"
    status, _, err = lgemu_main_in_process(["boot", "--append", "lgemu.test=initcalls",
                                            "--timeline", str(svg_path), "-v"])
    assert status == 0
    assert "│ initcall │ slow_driver_init" in err
    root = ET.fromstring(svg_path.read_text())
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text for t in root.iter(f"{ns}title")]
    assert any(re.match(r"slow_driver_init: at \d+\.\d{3} ms \d+\.\d{3} ms$", t)
               for t in titles), titles
    assert len(list(root.iter(f"{ns}rect"))) >= 1 + len(titles)


def test_timeline_refuses_gdb_and_bad_paths(tmp_path: Path) -> None:
    status, _, err = lgemu_main_in_process(["boot", "--timeline", str(tmp_path / "t"),
                                            "--gdb", "tcp::0"])
    assert status == 2 and "--timeline cannot be combined with --gdb" in err
    status, _, err = lgemu_main_in_process(["boot", "--timeline",
                                            str(tmp_path / "no" / "t")])
    assert status == 2 and err.startswith("lgemu: --timeline")


def test_real_kernel_timeline(tmp_path: Path) -> None:
    args = shell_boot_args(tmp_path)
    first, _, _ = timeline(args, tmp_path / "a.txt")
    second, _, _ = timeline(args, tmp_path / "b.txt")
    assert first == second
    table = rows(first)
    calls = {name: duration for _, duration, kind, name, _ in table if kind == "initcall"}
    assert len(calls) > 90 and all(d is not None for d in calls.values())
    assert calls["inet_init"] > 1.0 and "populate_rootfs" in calls
    phases = {name: duration for _, duration, kind, name, _ in table if kind == "phase"}
    assert phases["calibrate_delay"] > 100  # ms: the delay loop waits for jiffies
    assert phases["setup_arch"] > 0 and phases["mem_init"] > 0
    assert any(re.fullmatch(r"initcalls \((\d+) of \1 run\)", name) for name in phases)
    names = [name for _, _, _, name, _ in table]
    assert names[-1] == "first user-space instruction"
    assert names.index("free_initmem") < names.index("first user-space instruction")
