"""The real 2.6.24 lguest kernel for tests, where it is present.

CI keeps the prebuilt kernels next to the repository, in ``shared/kernels`` beside
the repository root; `real_kernel()` decompresses linux-2.6.24's vmlinux from there once per
test session.  Without it the tests that need it skip, saying why.
"""

from __future__ import annotations

import lzma
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
KERNELS = REPO_ROOT.parent / "shared" / "kernels"
VMLINUX_XZ = KERNELS / "linux-2.6.24.vmlinux.xz"
SHELL_CPIO = KERNELS / "klibc-shell.cpio"
SHELL_ARGS = ("--append", "console=hvc0 rdinit=/init")
_cache: dict[str, Path] = {}


def real_kernel() -> Path:
    """The decompressed 2.6.24 vmlinux (skips the test when the kernels are absent)."""
    if not VMLINUX_XZ.exists():
        pytest.skip(f"no prebuilt 2.6.24 kernel at {VMLINUX_XZ}")
    if "vmlinux" not in _cache:
        target = Path(tempfile.mkdtemp(prefix="lgemu-k-")) / "linux-2.6.24.vmlinux"
        with lzma.open(VMLINUX_XZ) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        _cache["vmlinux"] = target
    return _cache["vmlinux"]


def shell_boot_args(tmp_path: Path, lines: str = "exit\n") -> list[str]:
    """`lgemu boot` arguments for the real kernel with the klibc shell running `lines`."""
    if not SHELL_CPIO.exists():
        pytest.skip(f"no shell initramfs at {SHELL_CPIO}")
    script = tmp_path / "console-input"
    script.write_text(lines)
    return [str(real_kernel()), "--initrd", str(SHELL_CPIO), *SHELL_ARGS,
            "--console-input", str(script)]
