"""The real 2.6.26 lguest kernel under lgemu: the klibc shell with a virtio disk and a network
card, powering off (status 0) or asking to restart (status 7).

2.6.26 reads 5-byte device descriptors with feature bitmaps and fixed config structs, reports
every status write with a NOTIFY into the device page, sends 16-byte block headers and powers
off through LHCALL_SHUTDOWN (ABI Appendix C).  Skipped, saying why, where the prebuilt
kernels in shared/kernels beside the repository are absent.

The shell's own network tools cannot bring eth0 up on this kernel, so the network test adds
`netup` (tests/linuxkernel.py) to a copy of the initramfs: the ARP request its datagram causes
is a frame the pcap file must hold.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from linuxkernel import (
    KERNELS,
    SHELL_ARGS,
    SHELL_CPIO,
    arp_who_has,
    pcap_frames,
    shared_kernel,
    shell_with_netup,
)

VMLINUX_XZ = KERNELS / "linux-2.6.26.vmlinux.xz"
BZIMAGE = KERNELS / "linux-2.6.26.bzImage"
SECTORS = 64
MARK = b"lgemu-disk-mark-0123456789abcdef"  # 32 bytes at the start of the image
MAC = "02:6c:67:00:00:00"  # eth0's default


def _vmlinux() -> Path:
    return shared_kernel("linux-2.6.26")


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
                              "--net", f"pcap:{pcap}", "-v")
    assert status == 0, (status, err, out[-2000:])
    # -v: each device's status byte and the features its driver accepted, read where 2.6.25's
    # descriptors keep them (barriers and seg_max for the disk, the MAC for the card).
    assert "features accepted" in err
    for name, acked in (("vda", 1 << 2 | 1), ("eth0", 1 << 5), ("hvc0", 0)):
        assert re.search(rf"│ {name} +│ 0x07 ack\|driver\|ok +│ {acked:#x} +│", err), err
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
    it accepted (the block device's BARRIER and SEG_MAX, bits 0 and 2)."""
    trace = tmp_path / "events"
    status, _out, err = _shell(boot_guest, tmp_path, _vmlinux(), "exit\n",
                              "--block", str(_blank(tmp_path)), "--events", "--trace", str(trace))
    assert (status, err) == (0, "")
    text = trace.read_text()
    assert "device vda status 0x07 features=0x5" in text
    assert "device console status 0x07 features=0x0" in text


def test_the_guest_sends_frames_once_its_network_card_is_up(boot_guest, tmp_path):
    vmlinux = _vmlinux()
    cpio = shell_with_netup(tmp_path)
    pcap = tmp_path / "net.pcap"
    script = tmp_path / "console-input"
    script.write_text("netup\necho netup=$?\ncat /sys/class/net/eth0/statistics/tx_packets\n"
                      "exit\n")
    status, out, err = boot_guest(vmlinux, SHELL_ARGS[1], extra=[
        "--initrd", str(cpio), "--console-input", str(script), "--net", f"pcap:{pcap}"])
    assert (status, err) == (0, ""), (status, err, out[-2000:])
    assert b"lg# netup=0\r\n" in out
    frames = pcap_frames(pcap)
    assert arp_who_has(MAC) in frames  # who has 10.0.2.2? tell 10.0.2.15, from eth0's MAC
    assert all(frame[6:12] == bytes.fromhex(MAC.replace(":", "")) for frame in frames)


def _blank(tmp_path: Path) -> Path:
    disk = tmp_path / "blank.img"
    disk.write_bytes(bytes(SECTORS * 512))
    return disk
