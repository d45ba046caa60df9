"""The code is `ruff` clean: the rules in pyproject.toml hold for every file CI ships.

ruff is one of the test extras (``pip install '.[test]'``), so the README's test command
brings it; where it is missing the test says so instead of passing silently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    try:
        import ruff  # noqa: F401  (the package that ships the binary)
    except ImportError:
        pytest.skip("ruff is not installed (it comes with the test extras: pip install '.[test]')")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
