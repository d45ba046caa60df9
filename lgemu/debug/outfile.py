"""The files a run's views are written to (`--profile`, `--timeline`, …): checked before the
run, so a bad path is bad input (one line, exit 2) and never a lost run, and written at its
end."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def check_writable(option: str, path: Path) -> None:
    """Create (or empty) `path` now; a UserError naming `option` if that is impossible."""
    write_text(option, path, "")


def write_text(option: str, path: Path, data: str) -> None:
    """Write `data` to `path` (UTF-8, newlines as they are); a UserError naming `option` if
    the file cannot be written."""
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(data)
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write ({e.strerror or e})") from None
