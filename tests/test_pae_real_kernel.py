"""A real PAE lguest kernel (2.6.32 with CONFIG_X86_PAE and CONFIG_HIGHMEM64G) under lgemu.

It boots to the klibc shell with a virtio disk read and written, on 64 MiB and on 2 GiB of
RAM (where more than 1 GiB is highmem, reached through PAE page tables the guest changes all
the time), then powers off.  Looked for as ``linux-2.6.32-pae.vmlinux.xz`` in shared/kernels
beside the repository (or a vmlinux named by ``LGEMU_PAE_KERNEL``); skipped, saying why,
where there is none: shared/kernels has no PAE build yet (its README says how to make one:
the 2.6.32 config with HIGHMEM64G and X86_PAE).  A 3.0 PAE build (the 2.6.34-3.0 era), as
``linux-3.0-pae.vmlinux.xz``, and a 3.4 one (3.1-4.0: the guest builds its own PAE tables),
as ``linux-3.4-pae.vmlinux.xz``, are run the same way where they are there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from linuxkernel import SHELL_CPIO, shared_kernel

PAE_KERNELS = ("linux-2.6.32-pae", "linux-3.0-pae", "linux-3.4-pae")
MARK = b"lgemu-pae-disk-mark"
def pae_kernel(name: str = PAE_KERNELS[0]) -> Path:
    """The PAE vmlinux `name`, decompressed once per session (``LGEMU_PAE_KERNEL`` names
    another 2.6.32 one); skip the test where there is none."""
    named = os.environ.get("LGEMU_PAE_KERNEL")
    if named and name == PAE_KERNELS[0]:
        return Path(named)
    return shared_kernel(name)


@pytest.mark.parametrize("name", PAE_KERNELS)
@pytest.mark.parametrize("mem", [64, 2048])
def test_pae_kernel_shell_and_disk_then_power_off(boot_guest, tmp_path, mem, name):
    kernel = pae_kernel(name)
    disk = tmp_path / "disk.img"
    disk.write_bytes(MARK + bytes(64 * 512 - len(MARK)))
    script = tmp_path / "console-input"
    script.write_text("dd if=/dev/vda bs=19 count=1\n"
                      "echo\n"
                      "echo written-by-pae > /tmp/w\n"
                      "dd if=/tmp/w of=/dev/vda bs=512 seek=1\n"
                      "cat /proc/meminfo\n"
                      "exit\n")
    status, out, err = boot_guest(kernel, "console=hvc0 rdinit=/init", mem=mem, extra=[
        "--initrd", str(SHELL_CPIO), "--console-input", str(script), "--block", str(disk)])
    assert (status, err) == (0, ""), (status, err, out[-3000:])
    assert f"Linux version {name.split('-')[1]}".encode() in out
    assert b"lg# " + MARK in out  # the disk's first bytes, read by the guest
    assert disk.read_bytes()[512:528] == b"written-by-pae\n\0"
    high = int(re.search(rb"HighTotal: +(\d+) kB", out).group(1))
    total = int(re.search(rb"MemTotal: +(\d+) kB", out).group(1))
    assert total > mem * 1024 * 9 // 10
    assert (high > 1 << 20) if mem == 2048 else high == 0  # over 1 GiB of highmem
    assert out.endswith(b"Power down.\r\n")
