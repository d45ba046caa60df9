"""The real lguest kernels for tests, where they are present, and what tests add to them.

CI keeps the prebuilt kernels next to the repository, in ``shared/kernels`` beside the
repository root.  `shared_kernel(name)` gives one of them (a vmlinux decompressed once per test
session, or the bzImage as it is); without it the test skips, saying why.

klibc's own network tools make the ``socket`` system call, which i386 kernels only have from
4.3 (before, everything went through ``socketcall``), so `shell_with_netup` adds a 30-line
static program, ``netup``, to a copy of the shell initramfs: it gives eth0 10.0.2.15, brings
it up and sends one datagram to 10.0.2.2:9, whose ARP request (`arp_who_has`) is the frame a
capture must then hold; its exit status is 0 or the errno of the step that failed.
"""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from guestasm import tools_or_skip

REPO_ROOT = Path(__file__).resolve().parent.parent
KERNELS = REPO_ROOT.parent / "shared" / "kernels"
VMLINUX_XZ = KERNELS / "linux-2.6.24.vmlinux.xz"
SHELL_CPIO = KERNELS / "klibc-shell.cpio"
SHELL_ARGS = ("--append", "console=hvc0 rdinit=/init")
_cache: dict[str, Path] = {}


def shared_kernel(name: str, form: str = "vmlinux") -> Path:
    """The prebuilt kernel `name` (e.g. ``linux-2.6.32``): its vmlinux, decompressed once per
    session, or its bzImage (`form`).  Skips the test where it, or the shell, is absent."""
    packed = KERNELS / (f"{name}.bzImage" if form == "bzImage" else f"{name}.vmlinux.xz")
    if not packed.exists() or not SHELL_CPIO.exists():
        pytest.skip(f"no prebuilt {name} kernel and shell in {KERNELS}")
    if form == "bzImage":
        return packed
    if name not in _cache:
        target = Path(tempfile.mkdtemp(prefix="lgemu-k-")) / f"{name}.vmlinux"
        with lzma.open(packed) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        _cache[name] = target
    return _cache[name]


def real_kernel() -> Path:
    """The decompressed 2.6.24 vmlinux (skips the test when the kernels are absent)."""
    return shared_kernel("linux-2.6.24")


def shell_boot_args(tmp_path: Path, lines: str = "exit\n") -> list[str]:
    """`lgemu boot` arguments for the real kernel with the klibc shell running `lines`."""
    script = tmp_path / "console-input"
    script.write_text(lines)
    return [str(real_kernel()), "--initrd", str(SHELL_CPIO), *SHELL_ARGS,
            "--console-input", str(script)]


NETUP = r"""
	.text
	.globl	_start
_start:
	movl	$102, %eax		/* socketcall(SYS_SOCKET, AF_INET, SOCK_DGRAM, 0) */
	movl	$1, %ebx
	movl	$sock_args, %ecx
	int	$0x80
	testl	%eax, %eax
	js	out
	movl	%eax, fd
	movl	%eax, send_args
	movl	$54, %eax		/* ioctl(fd, SIOCSIFADDR, eth0 10.0.2.15) */
	movl	fd, %ebx
	movl	$0x8916, %ecx
	movl	$ifr_addr, %edx
	int	$0x80
	testl	%eax, %eax
	js	out
	movl	$54, %eax		/* ioctl(fd, SIOCSIFFLAGS, eth0 IFF_UP) */
	movl	fd, %ebx
	movl	$0x8914, %ecx
	movl	$ifr_flags, %edx
	int	$0x80
	testl	%eax, %eax
	js	out
	movl	$102, %eax		/* socketcall(SYS_SENDTO, ... 10.0.2.2:9) */
	movl	$11, %ebx
	movl	$send_args, %ecx
	int	$0x80
	testl	%eax, %eax
	js	out
	xorl	%eax, %eax
out:
	negl	%eax
	movl	%eax, %ebx		/* exit(errno or 0) */
	movl	$1, %eax
	int	$0x80

	.data
sock_args:	.long	2, 2, 0
fd:		.long	0
ifr_addr:	.ascii	"eth0"
		.fill	12, 1, 0
		.word	2, 0
		.byte	10, 0, 2, 15
		.fill	8, 1, 0
ifr_flags:	.ascii	"eth0"
		.fill	12, 1, 0
		.word	1
		.fill	22, 1, 0
dest:		.word	2
		.byte	0, 9, 10, 0, 2, 2
		.fill	8, 1, 0
payload:	.ascii	"lgemu-net"
send_args:	.long	0, payload, 9, 0, dest, 16
"""


def _newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data), with its trailer."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1000):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + "".join(f"{v:08X}" for v in fields).encode() + encoded
        out += bytes(-len(out) % 4) + data
        out += bytes(-len(out) % 4)
    return bytes(out)


def with_program(tmp_path: Path, name: str, source: str, initrd: Path = SHELL_CPIO) -> Path:
    """`initrd` with /bin/`name` appended, a static i386 program assembled from `source` (the
    kernel unpacks both archives); skips the test without binutils."""
    assembler, linker = tools_or_skip()
    src, obj, exe = (tmp_path / f"{name}{ext}" for ext in (".S", ".o", ""))
    src.write_text(source)
    for cmd in ([assembler, "--32", "-o", str(obj), str(src)],
                [linker, "-m", "elf_i386", "-static", "-o", str(exe), str(obj)]):
        subprocess.run(cmd, check=True, capture_output=True)
    base = initrd.read_bytes()
    out = tmp_path / f"{initrd.stem}+{name}.cpio"
    out.write_bytes(base + bytes(-len(base) % 4)
                    + _newc([(f"bin/{name}", 0o100755, exe.read_bytes())]))
    return out


def shell_with_netup(tmp_path: Path) -> Path:
    """klibc-shell.cpio with /bin/netup appended."""
    return with_program(tmp_path, "netup", NETUP)


def arp_who_has(mac: str) -> bytes:
    """The ARP request "who has 10.0.2.2, tell 10.0.2.15" from `mac`: what netup causes."""
    raw = bytes.fromhex(mac.replace(":", ""))
    return (b"\xff" * 6 + raw + b"\x08\x06" + bytes.fromhex("0001080006040001") + raw
            + bytes((10, 0, 2, 15)) + bytes(6) + bytes((10, 0, 2, 2)))


def pcap_frames(pcap: Path) -> list[bytes]:
    """The frames of a classic pcap file, in order."""
    data = pcap.read_bytes()[24:]
    frames = []
    while len(data) >= 16:
        length = struct.unpack_from("<I", data, 8)[0]
        frames.append(data[16:16 + length])
        data = data[16 + length:]
    return frames
