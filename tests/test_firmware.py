"""The shipped guest images are exactly what guest_kernel/ builds, and they ship with lgemu."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lgemu.firmware_path import BUNDLED_GUEST, bundled_guest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                    reason="needs gcc and make")
def test_firmware_is_byte_identical_to_a_fresh_build(tmp_path: Path) -> None:
    # Build from a copy at another path too: no absolute path may leak into the image.
    copy = tmp_path / "elsewhere" / "guest_kernel"
    shutil.copytree(ROOT / "guest_kernel", copy, ignore=shutil.ignore_patterns("build"))
    for source, out in ((ROOT / "guest_kernel", tmp_path / "o1"), (copy, tmp_path / "o2")):
        subprocess.run(["make", "-s", "-C", str(source), f"O={out}"], check=True,
                       capture_output=True, timeout=300)
        built = (out / BUNDLED_GUEST).read_bytes()
        assert built == (ROOT / "firmware" / BUNDLED_GUEST).read_bytes(), \
            f"firmware/{BUNDLED_GUEST} differs from a build of {source}: run make -C guest_kernel"


def test_bundled_guest_is_found() -> None:
    path = bundled_guest()
    assert path.name == BUNDLED_GUEST
    assert path.read_bytes()[:4] == b"\x7fELF"
