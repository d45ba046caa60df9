"""The real 2.6.26 lguest kernel under lgemu: the klibc shell with a virtio disk and a network
card, powering off (status 0) or asking to restart (status 7).

2.6.26 reads 5-byte device descriptors with feature bitmaps and fixed config structs, reports
every status write with a NOTIFY into the device page, sends 16-byte block headers and powers
off through LHCALL_SHUTDOWN (ABI Appendix C).  Skipped, saying why, where the prebuilt
kernels in shared/kernels beside the repository are absent.

The shell's own network tools cannot bring eth0 up on this kernel (Debian's klibc calls the
`socket` system call, which 2.6.26 does not have), so the network test adds a 60-line user
program to a copy of the initramfs: through `socketcall` and `ioctl` it gives eth0 an address,
brings it up and sends one UDP datagram to a neighbour, which makes the kernel send an ARP
request — a frame the pcap file must hold.
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
from linuxkernel import KERNELS, SHELL_ARGS, SHELL_CPIO

VMLINUX_XZ = KERNELS / "linux-2.6.26.vmlinux.xz"
BZIMAGE = KERNELS / "linux-2.6.26.bzImage"
SECTORS = 64
MARK = b"lgemu-disk-mark-0123456789abcdef"  # 32 bytes at the start of the image
_cache: dict[str, Path] = {}


def _vmlinux() -> Path:
    if not VMLINUX_XZ.exists() or not SHELL_CPIO.exists():
        pytest.skip(f"no prebuilt 2.6.26 kernel and shell at {KERNELS}")
    if "vmlinux" not in _cache:
        target = Path(tempfile.mkdtemp(prefix="lgemu-k26-")) / "linux-2.6.26.vmlinux"
        with lzma.open(VMLINUX_XZ) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        _cache["vmlinux"] = target
    return _cache["vmlinux"]


def _shell(boot_guest, tmp_path: Path, kernel: Path, lines: str, *extra: str):
    script = tmp_path / "console-input"
    script.write_text(lines)
    return boot_guest(kernel, SHELL_ARGS[1], extra=["--initrd", str(SHELL_CPIO),
                                                    "--console-input", str(script), *extra])


def test_shell_disk_and_network_then_power_off(boot_guest, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(MARK + bytes(SECTORS * 512 - len(MARK)))
    pcap = tmp_path / "net.pcap"
    lines = ("cat /proc/partitions\n"
             "dd if=/dev/vda bs=32 count=1\n"
             "echo\n"
             "echo written-by-2.6.26 > /dev/vda\n"
             "sync\n"
             "ls /sys/class/net\n"
             "cat /sys/class/net/eth0/address\n"
             "exit\n")
    status, out, err = _shell(boot_guest, tmp_path, _vmlinux(), lines, "--block", str(disk),
                              "--net", f"pcap:{pcap}")
    assert (status, err) == (0, ""), (status, err, out[-2000:])
    assert b"lgemu-shell: ready (Linux version 2.6.26 " in out
    # The disk: 64 sectors are 32 KiB, read back through the 16-byte request header...
    assert b" 254     0         32 vda\r\n" in out
    assert MARK in out.split(b"dd if=/dev/vda")[-1]
    # ...and written: the guest's bytes are in the image, the rest of it untouched.
    image = disk.read_bytes()
    assert image.startswith(b"written-by-2.6.26\n") and len(image) == SECTORS * 512
    # The network card: probed with the MAC from its config struct (the MAC feature acked).
    assert b"eth0 -> ../../devices/lguest/virtio" in out
    assert b"lg# 02:6c:67:00:00:00\r\n" in out
    assert pcap.read_bytes()[:4] == b"\xd4\xc3\xb2\xa1"  # the capture file was opened
    assert out.endswith(b"lgemu-shell: powering off\r\nPower down.\r\n")


def test_an_ext2_disk_mounts_and_keeps_what_the_guest_writes(boot_guest, tmp_path):
    mke2fs = shutil.which("mke2fs") or shutil.which("mkfs.ext2")
    if mke2fs is None:
        pytest.skip("mke2fs not installed")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hello.txt").write_text("hello from the host\n")
    disk = tmp_path / "ext2.img"
    disk.write_bytes(bytes(1 << 20))
    made = subprocess.run([mke2fs, "-q", "-F", "-d", str(tree), str(disk)],
                          capture_output=True, check=False)
    if made.returncode:
        pytest.skip(f"{mke2fs} cannot build an image from a directory (-d)")
    lines = ("mount -t ext2 /dev/vda /mnt\ncat /mnt/hello.txt\n"
             "echo from-2.6.26 > /mnt/guest.txt\numount /mnt\n"
             "mount -t ext2 -o ro /dev/vda /mnt\ncat /mnt/guest.txt\nexit\n")
    status, out, err = _shell(boot_guest, tmp_path, _vmlinux(), lines, "--block", str(disk))
    assert (status, err) == (0, ""), (status, err, out[-2000:])
    assert b"lg# hello from the host\r\n" in out and b"lg# from-2.6.26\r\n" in out


def test_the_bzimage_reboots_to_status_7(boot_guest, tmp_path):
    if not BZIMAGE.exists():
        pytest.skip(f"no prebuilt 2.6.26 bzImage at {BZIMAGE}")
    _vmlinux()  # the same skip when the shell is absent
    status, out, err = _shell(boot_guest, tmp_path, BZIMAGE, "reboot\n")
    assert (status, err) == (7, "lgemu: guest asked to restart\n")
    assert out.endswith(b"Restarting system.\r\n")


def test_a_trace_names_status_writes(boot_guest, tmp_path):
    """The event log shows each driver's status writes, ending in DRIVER_OK with the features
    it accepted (the block device's SEG_MAX, bit 2)."""
    trace = tmp_path / "events"
    status, _out, err = _shell(boot_guest, tmp_path, _vmlinux(), "exit\n",
                              "--block", str(_blank(tmp_path)), "--events", "--trace", str(trace))
    assert (status, err) == (0, "")
    text = trace.read_text()
    assert "device vda status 0x07 features=0x4" in text
    assert "device console status 0x07 features=0x0" in text


NETPROBE = r"""
	.text
	.globl	_start
_start:
	movl	$102, %eax		/* socketcall(SYS_SOCKET, AF_INET, SOCK_DGRAM, 0) */
	movl	$1, %ebx
	movl	$socket_args, %ecx
	int	$0x80
	movl	%eax, sendto_args
	movl	%eax, %edi
	movl	$54, %eax		/* ioctl(fd, SIOCSIFADDR, eth0 10.0.2.15) */
	movl	%edi, %ebx
	movl	$0x8916, %ecx
	movl	$ifr_addr, %edx
	int	$0x80
	movl	$54, %eax		/* ioctl(fd, SIOCSIFFLAGS, eth0 IFF_UP) */
	movl	%edi, %ebx
	movl	$0x8914, %ecx
	movl	$ifr_flags, %edx
	int	$0x80
	movl	$102, %eax		/* socketcall(SYS_SENDTO, 14 bytes to 10.0.2.2:9) */
	movl	$11, %ebx
	movl	$sendto_args, %ecx
	int	$0x80
	movl	$done, %ecx
	movl	$5, %edx
	cmpl	$14, %eax
	je	1f
	movl	$failed, %ecx
	movl	$7, %edx
1:	movl	$4, %eax		/* write(1, "sent\n" or "failed\n") */
	movl	$1, %ebx
	int	$0x80
	movl	$1, %eax		/* exit(0) */
	xorl	%ebx, %ebx
	int	$0x80
	.data
socket_args:	.long 2, 2, 0
sendto_args:	.long 0, payload, 14, 0, peer, 16
payload:	.ascii "lgemu-net-test"
peer:	.word 2
	.byte 0, 9, 10, 0, 2, 2
	.fill 8, 1, 0
ifr_addr:	.ascii "eth0"
	.fill 12, 1, 0
	.word 2, 0
	.byte 10, 0, 2, 15
	.fill 8, 1, 0
ifr_flags:	.ascii "eth0"
	.fill 12, 1, 0
	.word 1
	.fill 14, 1, 0
done:	.ascii "sent\n"
failed:	.ascii "failed\n"
"""


def _cpio_entry(name: str, data: bytes, mode: int) -> bytes:
    """One newc archive member."""
    fields = (0x4C47, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
    entry = b"070701" + b"".join(b"%08X" % v for v in fields) + name.encode() + b"\0"
    entry += bytes(-len(entry) % 4) + data
    return entry + bytes(-len(entry) % 4)


def _shell_with_netprobe(tmp_path: Path) -> Path:
    """The klibc initramfs with /bin/netprobe added before its trailer."""
    assembler, linker = tools_or_skip()
    src, obj, exe = (tmp_path / f"netprobe{ext}" for ext in (".S", ".o", ""))
    src.write_text(NETPROBE)
    subprocess.run([assembler, "--32", "-o", str(obj), str(src)], check=True)
    subprocess.run([linker, "-m", "elf_i386", "-static", "-o", str(exe), str(obj)], check=True)
    archive = SHELL_CPIO.read_bytes()
    trailer = archive.rindex(b"070701", 0, archive.rindex(b"TRAILER!!!"))
    cpio = tmp_path / "shell.cpio"
    cpio.write_bytes(archive[:trailer] + _cpio_entry("bin/netprobe", exe.read_bytes(), 0o100755)
                     + archive[trailer:])
    return cpio


def _pcap_frames(path: Path) -> list[bytes]:
    data = path.read_bytes()
    frames, at = [], 24
    while at + 16 <= len(data):
        length, = struct.unpack_from("<I", data, at + 8)
        frames.append(data[at + 16:at + 16 + length])
        at += 16 + length
    return frames


def test_the_guest_sends_frames_once_its_network_card_is_up(boot_guest, tmp_path):
    vmlinux = _vmlinux()
    cpio = _shell_with_netprobe(tmp_path)
    pcap = tmp_path / "net.pcap"
    script = tmp_path / "console-input"
    script.write_text("netprobe\ncat /sys/class/net/eth0/statistics/tx_packets\nexit\n")
    status, out, err = boot_guest(vmlinux, SHELL_ARGS[1], extra=[
        "--initrd", str(cpio), "--console-input", str(script), "--net", f"pcap:{pcap}"])
    assert (status, err) == (0, ""), (status, err, out[-2000:])
    assert b"lg# sent\r\n" in out
    mac = bytes.fromhex("026c67000000")
    arp = (b"\xff" * 6 + mac + b"\x08\x06" + bytes.fromhex("0001080006040001") + mac
           + bytes([10, 0, 2, 15]) + bytes(6) + bytes([10, 0, 2, 2]))
    frames = _pcap_frames(pcap)
    assert arp in frames  # who has 10.0.2.2? tell 10.0.2.15, from eth0's MAC
    assert all(frame[6:12] == mac for frame in frames)


def _blank(tmp_path: Path) -> Path:
    disk = tmp_path / "blank.img"
    disk.write_bytes(bytes(SECTORS * 512))
    return disk
