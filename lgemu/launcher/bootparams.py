"""The zero page and the kernel command line: how a 2.6.24 guest learns about its machine.

A PC bootloader hands Linux a `struct boot_params` (the "zero page") describing memory, the
command line and the initrd.  lguest's Launcher fakes just enough of one at guest-physical 0
(ABI §1.2), and the guest's ``startup_32`` copies it before doing anything else:

* ``version`` 0x0207 with ``KEEP_SEGMENTS``: without them ``startup_32`` would execute
  ``lgdt`` and reload segment registers, which fault in ring 1 before the guest has an IDT;
* ``hardware_subarch`` 1 sends ``startup_32`` to ``lguest_entry`` instead of the PC path;
* one e820 entry covering all of RAM (the guest reads only entry 0, and finds the device page
  right after it);
* the initrd's place, and ``type_of_loader`` 0xFF ("unknown"), without which the guest ignores
  the initrd;
* ``cmd_line_ptr`` pointing at the command line the Launcher puts right after the zero page.

Everything else stays zero: no screen, no MCA table, no EDD, no setup header copied from a
bzImage.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

from ..abi import (
    BOOT_PROTOCOL_VERSION,
    CMDLINE_ADDR,
    COMMAND_LINE_SIZE,
    E820_RAM,
    LOADER_TYPE_UNKNOWN,
    LOADFLAG_KEEP_SEGMENTS,
    PAGE_SIZE,
    SUBARCH_LGUEST,
    BootParams,
    E820Entry,
)
from ..errors import UserError


def build_zero_page(mem: int, initrd_addr: int, initrd_size: int) -> bytes:
    """The 4096-byte zero page for `mem` bytes of RAM, exactly as the 2.6.24 Launcher writes it.

    `initrd_size` is the page-rounded size the Launcher reports (ABI §1.2); 0 means "no initrd",
    in which case `initrd_addr` is ignored and the initrd fields and ``type_of_loader`` stay 0,
    as they do when lguest runs without ``--initrd``.
    """
    params = BootParams()
    params.e820_entries = 1
    params.e820_map[0] = E820Entry(addr=0, size=mem, type=E820_RAM)
    params.version = BOOT_PROTOCOL_VERSION
    params.loadflags = LOADFLAG_KEEP_SEGMENTS
    params.cmd_line_ptr = CMDLINE_ADDR
    params.hardware_subarch = SUBARCH_LGUEST
    if initrd_size:
        params.type_of_loader = LOADER_TYPE_UNKNOWN
        params.ramdisk_image = initrd_addr
        params.ramdisk_size = initrd_size
    page = bytes(params)
    assert len(page) == PAGE_SIZE == ctypes.sizeof(BootParams)
    return page


def command_line_bytes(args: str | Sequence[str], trailing_space: bool = True) -> bytes:
    """The NUL-terminated command line the Launcher places at `CMDLINE_ADDR`.

    lguest's Launcher writes each kernel argument followed by one space, then a NUL (so
    ``root=/dev/vda`` becomes ``"root=/dev/vda \\0"``), and no arguments give just the NUL.
    From 2.6.25 (`trailing_space` False, `Era.cmdline_trailing_space`) the arguments are
    joined by one space with none after the last.
    `args` is either that argument list or the arguments already joined by single spaces (an
    empty string meaning none).  Arguments are encoded the way Python decoded ``sys.argv``
    (`os.fsencode`), so any bytes a shell could pass survive.

    The guest copies exactly ``COMMAND_LINE_SIZE`` (2048) bytes from the pointer and relies
    on finding the NUL inside them, so a longer command line is a `UserError` here rather
    than a silently truncated (or unterminated) one in the guest.
    """
    words = ([args] if args else []) if isinstance(args, str) else list(args)
    joined = "".join(word + " " for word in words) if trailing_space else " ".join(words)
    line = os.fsencode(joined) + b"\0"
    if b"\0" in line[:-1]:
        raise UserError("kernel command line contains a NUL character")
    if len(line) > COMMAND_LINE_SIZE:
        raise UserError(
            f"kernel command line is {len(line) - 1} bytes long; the guest reads at most "
            f"{COMMAND_LINE_SIZE - 1}"
        )
    return line
