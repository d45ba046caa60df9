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
from linuxkernel import arp_who_has, pcap_frames, shell_with_netup

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
    read and written; eth0 sends an ARP request (netup, tests/linuxkernel.py);
    power-off is status 0."""
    vmlinux = tmp_path / "linux-2.6.23.vmlinux"
    vmlinux.write_bytes(lzma.decompress(KERNEL.read_bytes()))
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"disk-says-hello-2.6.23!\n" + bytes((1 << 20) - 24))
    pcap = tmp_path / "net.pcap"
    feed = tmp_path / "in.txt"
    feed.write_bytes(b"echo up-$((6*7))\nmknod /dev/lgba b 254 0\n"
                     b"dd if=/dev/lgba bs=24 count=1\necho written-by-2.6.23 > /dev/lgba\n"
                     b"netup\nexit\n")
    status, out, err = boot_guest(vmlinux, "console=hvc0 rdinit=/init", 64,
                                  ["--initrd", str(shell_with_netup(tmp_path)),
                                   "--console-input", str(feed), "--block", str(disk),
                                   "--net", f"pcap:{pcap}"])
    assert (status, err) == (0, ""), (status, err, out[-2000:])
    assert b"lgemu-shell: ready (Linux version 2.6.23" in out
    assert b"up-42" in out and b"disk-says-hello-2.6.23!" in out
    assert disk.read_bytes().startswith(b"written-by-2.6.23\n")
    # 02:00 and lguest_data.guestid (0)
    assert arp_who_has("02:00:00:00:00:00") in pcap_frames(pcap)
    assert out.endswith(b"Power down.\r\n") or b"Power down." in out[-40:]


BZIMAGE = KERNELS / "linux-2.6.23.bzImage"


@pytest.mark.skipif(not BZIMAGE.exists(), reason="no linux-2.6.23.bzImage in shared/kernels "
                    "(the recipe of its README builds one; none is shipped)")
def test_the_real_2_6_23_bzimage_is_unpacked_and_boots(boot_guest, tmp_path):
    """Boot protocol 2.06, no paravirt entry: the kernel is unpacked at 1 MiB and entered
    after its marker, as 2.6.23's Launcher did."""
    feed = tmp_path / "in.txt"
    feed.write_bytes(b"echo up-$((6*7))\nexit\n")
    status, out, err = boot_guest(BZIMAGE, "console=hvc0 rdinit=/init", 64,
                                  ["--initrd", str(KERNELS / "klibc-shell.cpio"),
                                   "--console-input", str(feed)])
    assert (status, err) == (0, ""), (status, err, out[-2000:])
    assert b"lgemu-shell: ready (Linux version 2.6.23" in out and b"up-42" in out


# The Launcher's page tables map RAM only: map the bus's pages (64 MiB up, PDE 16) in page
# tables of the guest's own, with the low 4 MiB at 0 and at PAGE_OFFSET (where it runs).
MAP_BUS = """
        movl	$pt_low, %eax
        movl	$7, %ecx
    1:	movl	%ecx, (%eax)
        addl	$4, %eax
        addl	$4096, %ecx
        cmpl	$pt_low + 4096, %eax
        jne	1b
        movl	$0x4000007, pt_bus
        movl	$0x4001007, pt_bus + 4
        movl	$pt_low + 7, pgd
        movl	$pt_low + 7, pgd + 768 * 4
        movl	$pt_bus + 7, pgd + 16 * 4
        HCALL	$LHCALL_NEW_PGTABLE, $pgd
"""
MAP_BUS_BSS = """
        .bss
        .balign	4096
    pgd:	.space	4096
    pt_low:	.space	4096
    pt_bus:	.space	4096
        .data
"""

BLOCK_GUEST = """
        INIT
""" + MAP_BUS + """
        movzwl	0x4000000, %eax		/* descriptor 0: the disk (the console comes last) */
        PUTHEX	%eax
        movl	0x4000008, %esi		/* its pfn: the struct lguest_block_page */
        shll	$12, %esi
        PUTHEX	16(%esi)		/* num_sectors */
        HCALL	$LHCALL_BIND_DMA, %esi, $rd_dma, $0x101
        movl	$0, (%esi)		/* type: read */
        movl	$SECTOR, 4(%esi)
        movl	$16, 8(%esi)		/* bytes */
        movl	$0, 12(%esi)		/* result */
        HCALL	$LHCALL_SEND_DMA, %esi, $ping
        PUTHEX	12(%esi)		/* result: 1 done, 2 failed */
        PUTHEX	rd_dma
        movb	$0, buf + 16
        PUTS	buf
        POWER_DOWN
"""
BLOCK_DATA = MAP_BUS_BSS + """
        .balign	4
    rd_dma:	.long	0, buf
        .fill	15, 4, 0
        .word	16
        .fill	15, 2, 0
    ping:	.long	0
        .fill	16, 4, 0
        .fill	16, 2, 0
    buf:	.fill	20, 1, 0
"""


@pytest.mark.parametrize(("sector", "result", "used", "text"), [
    (1, 1, 16, b"sector-one-says!"), (8, 2, 0, b""), (0xFFFFFFFF, 2, 0, b"")],
    ids=["read", "past-the-end", "huge-sector"])
def test_a_block_read_answers_in_the_bound_buffer_and_the_shared_page(asm_guest, tmp_path,
                                                                     sector, result, used,
                                                                     text):
    """Read: the request in the disk's shared page, an empty SEND_DMA, the data in the buffer
    bound at the page's key and `result` 1; a request past the end fails (2), nothing read."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(512) + b"sector-one-says!" + bytes(3 * 512 - 16))
    run = asm_guest(BLOCK_GUEST.replace("SECTOR", str(sector)), BLOCK_DATA, era=ERA,
                    extra=["--block", str(disk)])
    assert_powered_down(run, hexword(3) + hexword(4) + hexword(result) + hexword(used) + text)


def test_a_frame_sent_to_peer_0_reaches_the_wire(asm_guest, tmp_path):
    """The net page says the guest is peer 1 (features 0x4001); SEND_DMA to the page's
    key (peer 0) puts the frame on the wire (here a pcap file) and sets used_len."""
    pcap = tmp_path / "net.pcap"
    run = asm_guest("""
        INIT
""" + MAP_BUS + """
        movzwl	0x4000000, %eax
        PUTHEX	%eax
        movzwl	0x4000002, %eax		/* features: NOCSUM | peer 1 */
        PUTHEX	%eax
        movl	0x4000008, %esi
        shll	$12, %esi
        HCALL	$LHCALL_SEND_DMA, %esi, $tx_dma
        PUTHEX	tx_dma
        POWER_DOWN
    """, MAP_BUS_BSS + """
        .balign	4
    tx_dma:	.long	0, frame, frame + 6
        .fill	14, 4, 0
        .word	6, 14
        .fill	14, 2, 0
    frame:	.ascii	"\\xff\\xff\\xff\\xff\\xff\\xff\\x02\\x00\\x00\\x00\\x00\\x01\\x88\\xb5hello!"
    """, era=ERA, extra=["--net", f"pcap:{pcap}"])
    assert_powered_down(run, hexword(2) + hexword(0x4001) + hexword(20))
    assert pcap_frames(pcap) == [b"\xff" * 6 + bytes.fromhex("020000000001") + b"\x88\xb5hello!"]


def test_a_frame_longer_than_max_frame_is_dropped_not_sent(asm_guest, tmp_path):
    """SEND_DMA of 65536 bytes (two sections) to peer 0: dropped as net.py drops one,
    never gathered, never in the pcap (whose snaplen is 65535), used_len 0."""
    pcap = tmp_path / "net.pcap"
    run = asm_guest("""
        INIT
""" + MAP_BUS + """
        movl	0x4000008, %esi
        shll	$12, %esi
        movl	$7, tx_dma
        HCALL	$LHCALL_SEND_DMA, %esi, $tx_dma
        PUTHEX	tx_dma
        POWER_DOWN
    """, MAP_BUS_BSS + """
        .balign	4
    tx_dma:	.long	0, frame, frame + 65535
        .fill	14, 4, 0
        .word	65535, 1
        .fill	14, 2, 0
        .bss
    frame:	.space	65536
        .data
    """, era=ERA, extra=["--net", f"pcap:{pcap}"])
    assert_powered_down(run, hexword(0))
    assert pcap_frames(pcap) == []


def test_v_lists_the_dma_bus_devices_at_exit(asm_guest, tmp_path):
    """`-v` describes 2.6.23's descriptors (index, device, status), not a device page's."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4 * 512))
    run = asm_guest(BLOCK_GUEST.replace("SECTOR", "0"), BLOCK_DATA, era=ERA,
                    extra=["--block", str(disk), "-v"])
    assert run.status == 0, run.err
    assert "devices at exit (the 2.6.23 DMA lguest bus)" in run.err
    assert "hvc0: output " in run.err and ": 1 requests, read 16 bytes" in run.err


def test_a_received_frame_fills_the_buffer_bound_at_the_guests_peer_key(tmp_path):
    """A frame from the wire (loopback UDP) lands in the buffer the guest bound at its peer
    key (page + 4), waking its HALT; the guest sends it back to peer 0 and the wire gets it."""
    import socket

    from guestasm import build_guest
    from test_net import finish, free_port, start, wait_ready
    elf = build_guest(tmp_path, """
        INIT
""" + MAP_BUS + """
        movl	0x4000008, %esi		/* the net card's page: descriptor 0 */
        shll	$12, %esi
        leal	4(%esi), %edi		/* key of peer 1, the guest */
        HCALL	$LHCALL_BIND_DMA, %edi, $rx_dma, $0x101
        PUTS	ready
    wait:
        cmpl	$0, rx_dma
        jne	got
        HCALL	$LHCALL_HALT
        jmp	wait
    got:
        movl	rx_dma, %eax
        movw	%ax, tx_dma + 68
        HCALL	$LHCALL_SEND_DMA, %esi, $tx_dma
        POWER_DOWN
    """, MAP_BUS_BSS + """
        .balign	4
    rx_dma:	.long	0, frame
        .fill	15, 4, 0
        .word	1514
        .fill	15, 2, 0
    tx_dma:	.long	0, frame
        .fill	15, 4, 0
        .fill	16, 2, 0
    ready:	.asciz	"ready\\n"
    frame:	.fill	1514, 1, 0
    """, era=ERA)
    guest_port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(60)
        proc = start(elf, "--abi", "2.6.23", "--net",
                     f"udp:{guest_port}:127.0.0.1:{peer.getsockname()[1]}")
        try:
            wait_ready(proc)
            sent = b"\xff" * 6 + bytes.fromhex("026c67000001") + b"\x88\xb5ping from the test"
            peer.sendto(sent, ("127.0.0.1", guest_port))
            echoed, _ = peer.recvfrom(2048)
        finally:
            status, out, err = finish(proc)
    assert (status, out, err) == (0, b"", "")  # "ready" was read by wait_ready
    assert echoed == sent
