"""`--profile`: deterministic samples by instruction count, call stacks from DWARF CFI or
frame pointers, folded stacks, the SVG flame graph (looked at in a real browser) and the
`-v` table."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import lgemu_main_in_process
from linuxkernel import shell_boot_args
from pngread import read_png

FOLDED_LINE = re.compile(r"^(?:[^; ]+;)*[^; ]+ \d+$")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def profile(args: list[str], tmp_path: Path, name: str = "profile") -> tuple[str, str]:
    out = tmp_path / name
    status, _, err = lgemu_main_in_process(["boot", *args, "--profile", str(out), "-v"])
    assert status == 0, err
    return out.read_text(), err


def executed(err: str) -> int:
    return int(re.search(r"executed (\d+) instructions", err).group(1))


def test_bundled_guest_profile_is_folded_stacks_and_repeats(tmp_path: Path) -> None:
    args = ["--profile-every", "1000"]
    first, err = profile(args, tmp_path, "a")
    second, _ = profile(args, tmp_path, "b")
    assert first == second  # byte for byte
    lines = first.splitlines()
    assert lines == sorted(lines) and all(FOLDED_LINE.match(line) for line in lines), first
    counts = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in lines}
    # One sample at every 1000th instruction (the run may end right on one).
    assert executed(err) // 1000 - 1 <= sum(counts.values()) <= executed(err) // 1000
    # Stacks have real depth: start_kernel → paging_init → early_alloc_page → memset.
    assert any(stack.endswith("start_kernel;paging_init;early_alloc_page;memset")
               for stack in counts)
    assert "stacks from DWARF CFI (.debug_frame)" in err
    assert re.search(r"│ memset +│ +\d+\.\d% │", err)


def test_user_mode_samples_are_one_frame(tmp_path: Path) -> None:
    folded, _ = profile(["--append", "lgemu.test=usermode", "--profile-every", "50"],
                        tmp_path)
    assert re.search(r"^\[user\] \d+$", folded, re.M), folded


@pytest.mark.skipif(shutil.which("objcopy") is None, reason="objcopy (binutils) is missing")
def test_frame_pointers_without_cfi(tmp_path: Path) -> None:
    from gdbrun import bundled_guest
    stripped = tmp_path / "nocfi.elf"
    subprocess.run(["objcopy", "--remove-section=.debug_frame", str(bundled_guest()),
                    str(stripped)], check=True)
    folded, err = profile([str(stripped), "--profile-every", "1000"], tmp_path)
    assert "stacks from frame pointers (EBP chain)" in err
    assert any(line.startswith("lguest_init;start_kernel;paging_init;early_alloc_page")
               for line in folded.splitlines()), folded


def test_profile_bad_path_and_options_alone_are_bad_input(tmp_path: Path) -> None:
    status, out, err = lgemu_main_in_process(["boot", "--profile",
                                              str(tmp_path / "missing" / "p")])
    assert status == 2 and out == b"" and err.startswith("lgemu: --profile")
    for option, value in (("--profile-every", "10"), ("--profile-format", "svg")):
        status, out, err = lgemu_main_in_process(["boot", option, value])
        assert status == 2 and out == b""
        assert err == f"lgemu: {option} needs --profile FILE\n"


def test_flame_graph_svg(tmp_path: Path) -> None:
    svg, _ = profile(["--profile-every", "1000", "--profile-format", "svg"], tmp_path)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text for t in root.iter(f"{ns}title")]
    assert any(t.startswith("all (") for t in titles)
    assert any(re.match(r"paging_init \(\d+ samples, \d+\.\d\d%, \d+\.\d{3} ms\)", t)
               for t in titles), titles
    labels = [t.text for t in root.iter(f"{ns}text")]
    assert "start_kernel" in labels and "lgemu profile of lgemu-guest.elf" in labels


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium to look at the flame graph with")
def test_flame_graph_renders_in_chromium(tmp_path: Path) -> None:
    svg, _ = profile(["--profile-every", "1000", "--profile-format", "svg"], tmp_path,
                     "flame.svg")
    height_svg = int(ET.fromstring(svg).get("height"))
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--screenshot={shot}",
                    f"--window-size=1200,{height_svg}", (tmp_path / "flame.svg").as_uri()],
                   cwd=tmp_path, capture_output=True, timeout=120, check=False)
    width, height, rows = read_png(shot.read_bytes())
    assert (width, height) == (1200, height_svg)
    # The bottom row of boxes is the grey "all" bar, the full width; the frames above are
    # warm colours (red dominant), as drawn.
    y_all = height_svg - 10 - 8
    pixel = rows[y_all][3 * 600:3 * 600 + 3]
    assert pixel == bytes((220, 220, 220)), pixel
    warm = sum(1 for row in rows[:y_all] for i in range(0, len(row), 3)
               if row[i] > 200 and row[i + 2] < 70)
    assert warm > 5000


def test_real_kernel_profile_names_start_kernel_with_depth(tmp_path: Path) -> None:
    args = shell_boot_args(tmp_path)
    first, err = profile(args, tmp_path, "a")
    second, _ = profile(args, tmp_path, "b")
    assert first == second
    stacks = [line.rsplit(" ", 1)[0].split(";") for line in first.splitlines()]
    assert ["start_kernel", "calibrate_delay", "delay_loop"] in stacks
    assert any(s[:2] == ["kernel_thread_helper", "kernel_init"] and len(s) >= 6
               for s in stacks)
    assert any(s[0].startswith("[user:") for s in stacks)
    assert "stacks from DWARF CFI (.debug_frame)" in err
