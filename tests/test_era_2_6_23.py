"""2.6.23, the first lguest: entered after the "GenuineLguest" marker, devices on the DMA
lguest bus (`lgemu.devices.dma_bus`, docs/eras.md "2.6.23").

Small guests assembled in the 2.6.23 ABI (`build_guest(..., era=ERA_2_6_23)`: PUTS is a
SEND_DMA to the console's key 0) check the entry, BIND_DMA/SEND_DMA and the hostile cases;
`test_the_real_2_6_23_kernel_boots_to_its_shell` runs a real kernel where one was built
(shared/kernels; the recipe in its README builds it).
"""

from __future__ import annotations

import lzma

import pytest
from conftest import REPO_ROOT
from guestasm import assert_killed, assert_powered_down

from lgemu.abi_eras import era_named
from lgemu.kills import BadDma

ERA = era_named("2.6.23")
STRINGS = """
hi:	.asciz	"hi "
"""


def hexword(value: int) -> bytes:
    return f"{value:08x}".encode()


def test_the_guest_starts_after_the_marker_at_its_page_offset_alias(asm_guest):
    """EIP is the marker's end + 0xC0000000, %esi the boot header (0), and PUTS reaches the
    console through SEND_DMA key 0, with used_len set to the bytes printed."""
    run = asm_guest("""
        movl	%esi, %edi
        call	1f
    1:	popl	%ebp
        INIT
        PUTHEX	%edi
        PUTHEX	%ebp
        PUTS	hi
        PUTHEX	__dma
        POWER_DOWN
    """, STRINGS, era=ERA)
    assert run.status == 0, run.err
    out = run.out
    assert out.startswith(hexword(0)), out
    # `call 1f` pushed the address of `1:`, 7 bytes into guest_main (movl, call).
    assert int(out[8:16], 16) == 0xC0000000 + run.symbol("guest_main") + 7
    assert_powered_down(run, hexword(0) + out[8:16] + b"hi " + hexword(3))


def test_bind_dma_answers_one_and_console_input_fills_the_bound_buffer(asm_guest, tmp_path):
    """BIND_DMA(0, buf, 1 << 8 | 1) answers 1; console input lands in the buffer, used_len
    says how much, and IRQ 1 is raised (here: polled after a HALT woken by it)."""
    feed = tmp_path / "in.txt"
    feed.write_bytes(b"abc")
    run = asm_guest("""
        INIT
        HCALL	$LHCALL_BIND_DMA, $0, $inbuf_dma, $0x101
        PUTHEX	%eax
    wait:
        cmpl	$0, inbuf_dma
        jne	got
        HCALL	$LHCALL_HALT
        jmp	wait
    got:
        PUTHEX	inbuf_dma
        movb	$0, inbuf + 3
        PUTS	inbuf
        POWER_DOWN
    """, """
        .balign	4
    inbuf_dma:
        .long	0
        .long	inbuf
        .fill	15, 4, 0
        .word	16
        .fill	15, 2, 0
    inbuf:	.fill	16, 1, 0
    """, era=ERA, extra=["--console-input", str(feed)])
    assert_powered_down(run, hexword(1) + hexword(3) + b"abc")


@pytest.mark.parametrize(("call", "detail"), [
    ("$LHCALL_SEND_DMA, $0, $0x7ffffff0",
     "SEND_DMA: struct lguest_dma at 0x7ffffff0 is not in guest memory"),
    ("$LHCALL_SEND_DMA, $0, $bad_dma",
     "SEND_DMA: buffer 0xfffff000 len 16 is not in guest memory"),
    ("$LHCALL_BIND_DMA, $0, $bad_dma, $0x140",
     "BIND_DMA: interrupt 64 is not one of lguest's 32"),
    ("$LHCALL_BIND_DMA, $0, $bad_dma, $0x2101",
     "BIND_DMA: 33 buffers at {bad_dma:#x} are not in guest memory"),
    ("$LHCALL_BIND_DMA, $0, $bad_dma, $0x101",
     "BIND_DMA: buffer 0xfffff000 len 16 is not in guest memory"),
])
def test_hostile_dma_descriptors_kill_the_guest(asm_guest, call, detail):
    run = asm_guest(f"""
        INIT
        HCALL	{call}
        POWER_DOWN
    """, """
        .balign	4
    bad_dma:
        .long	0
        .long	0xfffff000
        .fill	15, 4, 0
        .word	16
        .fill	15, 2, 0
    """, era=ERA)
    expected = detail.format(bad_dma=run.symbol("bad_dma"))
    assert_killed(run, lambda kill: isinstance(kill, BadDma) and kill.text() == expected)
    assert f"lgemu: guest killed: {expected}" in run.err


def test_an_image_without_the_marker_is_refused(asm_guest):
    """No "GenuineLguest" (the 2.6.24 prelude has none): one line, status 2."""
    run = asm_guest("\tPOWER_DOWN\n", extra=["--abi", "2.6.23"])
    assert run.status == 2
    assert "\"GenuineLguest\" marker" in run.err


KERNELS = REPO_ROOT.parent / "shared" / "kernels"
KERNEL = KERNELS / "linux-2.6.23.vmlinux.xz"


@pytest.mark.skipif(not KERNEL.exists(), reason="no linux-2.6.23.vmlinux.xz in shared/kernels "
                    "(the recipe of its README builds one; none is shipped)")
def test_the_real_2_6_23_kernel_boots_to_its_shell_with_disk_and_network(boot_guest,
                                                                          tmp_path):
    """The klibc shell on hvc0; the disk lgba (its major is dynamic: 254, the first one)
    read and written; eth0 sends an ARP request (the netprobe program of the 2.6.26 test);
    power-off is status 0."""
    from test_era_2_6_26 import _pcap_frames, _shell_with_netprobe
    vmlinux = tmp_path / "linux-2.6.23.vmlinux"
    vmlinux.write_bytes(lzma.decompress(KERNEL.read_bytes()))
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"disk-says-hello-2.6.23!\n" + bytes((1 << 20) - 24))
    pcap = tmp_path / "net.pcap"
    feed = tmp_path / "in.txt"
    feed.write_bytes(b"echo up-$((6*7))\nmknod /dev/lgba b 254 0\n"
                     b"dd if=/dev/lgba bs=24 count=1\necho written-by-2.6.23 > /dev/lgba\n"
                     b"netprobe\nexit\n")
    status, out, err = boot_guest(vmlinux, "console=hvc0 rdinit=/init", 64,
                                  ["--initrd", str(_shell_with_netprobe(tmp_path)),
                                   "--console-input", str(feed), "--block", str(disk),
                                   "--net", f"pcap:{pcap}"])
    assert (status, err) == (0, ""), (status, err, out[-2000:])
    assert b"lgemu-shell: ready (Linux version 2.6.23" in out
    assert b"up-42" in out and b"disk-says-hello-2.6.23!" in out
    assert disk.read_bytes().startswith(b"written-by-2.6.23\n")
    mac = bytes.fromhex("020000000000")  # 02:00 and lguest_data.guestid (0)
    arp = (b"\xff" * 6 + mac + b"\x08\x06" + bytes.fromhex("0001080006040001") + mac
           + bytes([10, 0, 2, 15]) + bytes(6) + bytes([10, 0, 2, 2]))
    assert arp in _pcap_frames(pcap)
    assert out.endswith(b"Power down.\r\n") or b"Power down." in out[-40:]
