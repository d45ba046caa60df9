"""Where the prebuilt guest images that ship with lgemu live."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED_GUEST = "lgemu-guest.elf"


def firmware_dir() -> Path:
    """The installed `lgemu.firmware` package, or `firmware/` in a source checkout."""
    try:
        return Path(str(resources.files("lgemu.firmware")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "firmware"


def bundled_guest() -> Path:
    """The default kernel of `lgemu boot`: our own guest, built from guest_kernel/."""
    return firmware_dir() / BUNDLED_GUEST
