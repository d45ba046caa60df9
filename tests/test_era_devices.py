"""The 2.6.25+ lguest bus without a real kernel: descriptor bytes, status writes, feature
acknowledgement, resets, the 16-byte block header and LHCALL_SHUTDOWN (ABI Appendix C).

The bundled guest speaks 2.6.24, so these run `guestasm` guests with ``--abi 2.6.26`` (or
2.6.25) that write the device page by hand, as a 2.6.26 driver does, and break its rules
one at a time; each rule broken is a typed kill.  The layout itself, and the checks on
whatever a guest may leave in the status byte and the accepted bitmap, are tested directly.
"""

from __future__ import annotations

import random

import pytest
from guestasm import assert_crashed, assert_killed, assert_one_line, assert_powered_down
from virtioasm import DEVPT_BSS, MACROS, MEM, chain, hexwords, map_device_pages, report

from lgemu.abi import PAGE_SIZE, VIRTQUEUE_NUM, VRING_PAGES, DeviceStatus, vring_size
from lgemu.abi_eras import ERA_2_6_24, era_named
from lgemu.devices.base import Device
from lgemu.devices.status import status_written
from lgemu.devices.vring import Vring
from lgemu.errors import GuestKilled
from lgemu.kills import (
    BadDeviceStatus,
    BadRequest,
    BadShutdown,
    BadStatusNotify,
    UnofferedFeatures,
)
from lgemu.launcher import block_spec, console_spec, descriptor_format, lay_out_devices, net_spec
from lgemu.machine.memory import GuestMemory

ERA_26 = era_named("2.6.26")
MAC = bytes.fromhex("026c67000000")
SECTOR = 512


# -- the descriptors, byte by byte --------------------------------------------------------------
def _page(specs, era=ERA_26, mem=MEM):
    ram = bytearray(mem + 16 * PAGE_SIZE * 8)
    page = lay_out_devices(ram, mem, specs, descriptor_format(era))
    return ram, page


def _vq(irq: int, pfn: int) -> bytes:
    return VIRTQUEUE_NUM.to_bytes(2, "little") + irq.to_bytes(2, "little") + \
        pfn.to_bytes(4, "little")


def test_2_6_26_descriptors_are_header_vqs_features_config():
    ram, page = _page([block_spec(100, read_only=True), net_spec(MAC), console_spec()])
    first = MEM // PAGE_SIZE + 1
    block = (bytes([2, 1, 1, 16, 0]) + _vq(1, first) + b"\x24\x00"
             + (100).to_bytes(8, "little") + (0).to_bytes(4, "little")
             + (126).to_bytes(4, "little"))
    net = (bytes([1, 2, 1, 6, 0]) + _vq(2, first + VRING_PAGES)
           + _vq(3, first + 2 * VRING_PAGES) + b"\x20\x00" + MAC)
    console = (bytes([3, 2, 0, 0, 0]) + _vq(4, first + 3 * VRING_PAGES)
               + _vq(5, first + 4 * VRING_PAGES))
    assert bytes(ram[MEM:MEM + PAGE_SIZE]) == (block + net + console).ljust(PAGE_SIZE, b"\0")
    offsets = [len(block), len(block) + len(net)]
    assert [d.offset for d in page.devices] == [0, *offsets]
    assert [d.status_offset for d in page.devices] == [4, offsets[0] + 4, offsets[1] + 4]
    assert [(d.features_offset, d.feature_len, d.acked_offset) for d in page.devices] == [
        (13, 1, 14), (offsets[0] + 21, 1, offsets[0] + 22), (offsets[1] + 21, 0, offsets[1] + 21)]
    assert page.pfn_limit == first + 5 * VRING_PAGES


def test_2_6_24_descriptors_are_unchanged_by_the_new_format():
    ram, page = _page([block_spec(100, read_only=True), console_spec()], ERA_2_6_24)
    assert bytes(ram[MEM:MEM + 3]) == bytes([2, 10 + 10 + 6, 0])
    assert page.devices[0].status_offset == 2 and page.devices[0].feature_len == 0


def test_the_2_6_26_console_descriptor_is_the_size_the_kernel_reports():
    """2.6.26 prints "Device at 0 has size 21" for a console-only bus."""
    _, page = _page([console_spec()])
    assert descriptor_format(ERA_26).size(page.devices[0].spec) == 21


# -- status and feature bytes, whatever the guest leaves there ---------------------------------
class _Disk(Device):
    name = "vda"
    resets = 0

    def reset(self) -> None:
        self.resets += 1


def _bus():
    memory = GuestMemory(MEM)
    page = lay_out_devices(memory.ram, MEM, [block_spec(8), console_spec()],
                           descriptor_format(ERA_26))
    memory.limit = page.pfn_limit * PAGE_SIZE
    layout = page.devices[0]
    disk = _Disk()
    disk.attach([Vring(memory, "vda.0", q.pfn, q.num, q.irq) for q in layout.queues],
                lambda line: None)
    return memory, page, layout, disk


def test_any_status_and_accepted_bytes_are_taken_or_killed_for_the_right_rule():
    memory, page, layout, disk = _bus()
    defined = sum(DeviceStatus)
    rng = random.Random(2626)
    for _ in range(400):
        status, accepted = rng.randrange(256), rng.choice([0, 4, rng.randrange(256)])
        memory.ram[MEM + layout.status_offset] = status
        memory.ram[MEM + layout.acked_offset] = accepted
        if status & ~defined:
            expected = BadDeviceStatus("vda", status)
        elif status and accepted & ~4:
            expected = UnofferedFeatures("vda", accepted, 4)
        else:
            expected = None
        if expected is not None:
            with pytest.raises(GuestKilled) as caught:
                status_written(memory.ram, page, layout, disk)
            assert caught.value.kill == expected
            continue
        assert status_written(memory.ram, page, layout, disk) == status
        assert disk.acked == (accepted if status else 0)


def test_status_0_resets_the_device_and_its_queues():
    memory, page, layout, disk = _bus()
    ring = disk.queues[0]
    base = ring.pfn * PAGE_SIZE
    memory.ram[base:base + 2 * PAGE_SIZE] = b"\x77" * (2 * PAGE_SIZE)
    ring.last_avail, ring.in_flight = 5, 2
    memory.ram[MEM + layout.acked_offset] = 4
    memory.ram[MEM + layout.status_offset] = 0
    assert status_written(memory.ram, page, layout, disk) == 0
    size = vring_size(VIRTQUEUE_NUM)  # the ring's bytes; the rest of its pages are no ring's
    assert bytes(memory.ram[base:base + size]) == bytes(size)
    assert (ring.last_avail, ring.in_flight, disk.acked, disk.resets) == (0, 0, 0, 1)
    assert memory.ram[MEM + layout.acked_offset] == 0
    assert ring.written.take() == [ring.pfn, ring.pfn + 1]  # their code is invalidated


# -- guests speaking 2.6.26 by hand ---------------------------------------------------------------
STATUS, OFFERED, ACKED = MEM + 4, MEM + 13, MEM + 14  # the block device's, at offset 0


def _image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(f"sector {i}\0".encode().ljust(SECTOR, b"\xa5") for i in range(8)))
    return path


def _guest(body: str) -> str:
    return (MACROS + "\tINIT\n" + map_device_pages(3) + body
            + "\tHCALL\t$2, $__power_down, $1\n\tud2\n")


def _set_status(status: int, accepted: int | None = None, offset: int = 0) -> str:
    ack = f"\tmovb\t${accepted}, {ACKED:#x}\n" if accepted is not None else ""
    return ack + (f"\tmovb\t${status}, {MEM + offset + 4:#x}\n"
                  f"\tHCALL\t$LHCALL_NOTIFY, ${MEM + offset:#x}\n")


READ = ("\t.balign 4\nhdr:\t.long 0, 0, 3, 0\nhdr_status:\t.byte 0xff\n"
        "\t.bss\n\t.balign 4096\nbuf:\t.space 4096\n\t.data\n" + DEVPT_BSS)


def _read(header_len: int = 16) -> str:
    return chain(0, [("$hdr", f"${header_len}", False), ("$buf", "$512", True),
                     ("$hdr_status", "$1", True)])


def test_a_driver_acks_its_features_reads_with_16_byte_headers_and_powers_off(asm_guest,
                                                                              tmp_path):
    body = (f"\tmovzbl\t{OFFERED:#x}, %eax\n\tPUTHEX\t%eax\n"
            + _set_status(1) + _set_status(3) + _set_status(7, accepted=4)
            + _read() + report(0) + "\tPUTS\tbuf\n")
    run = asm_guest(_guest(body), READ, extra=["--abi", "2.6.26", "--block",
                                              str(_image(tmp_path))])
    assert_powered_down(run, hexwords(5, 1, 0, 513) + b"sector 3")


def test_a_2_6_24_header_is_refused_in_a_later_era(asm_guest, tmp_path):
    run = asm_guest(_guest(_set_status(7, accepted=4) + _read(24)), READ,
                    extra=["--abi", "2.6.26", "--block", str(_image(tmp_path))])
    assert_killed(run, BadRequest("vda.0", 0, "header is 24 bytes, not 16"))


def test_after_a_reset_the_rings_are_fresh_and_serve_again(asm_guest, tmp_path):
    used = MEM + PAGE_SIZE + 0x800 + 2  # vda.0's used.idx (the used ring's page half)
    body = (_set_status(7, accepted=4) + _read() + report(0)
            + _set_status(0) + f"\tmovzwl\t{used:#x}, %eax\n\tPUTHEX\t%eax\n"
            + f"\tmovzbl\t{ACKED:#x}, %eax\n\tPUTHEX\t%eax\n"
            + _set_status(7, accepted=4) + _read() + report(0))
    run = asm_guest(_guest(body), READ, extra=["--abi", "2.6.26", "--block",
                                              str(_image(tmp_path))])
    assert_powered_down(run, hexwords(1, 0, 513, 0, 0, 1, 0, 513))


def test_frames_carry_the_10_byte_net_header_from_2_6_25(asm_guest, tmp_path):
    """Queue 1 is the card's transmit queue (it comes first); an 8-byte 2.6.24 header is
    refused, a 10-byte one sends the frame."""
    frame = "\t.balign 4\nnethdr:\t.fill 10, 1, 0\nframe:\t.fill 60, 1, 0x42\n" + DEVPT_BSS
    pcap = tmp_path / "net.pcap"
    for size, sent in ((8, False), (10, True)):
        run = asm_guest(_guest(chain(1, [("$nethdr", f"${size}", False),
                                         ("$frame", "$60", False)]) + report(1)),
                        frame, extra=["--abi", "2.6.26", "--net", f"pcap:{pcap}"])
        if sent:
            assert_powered_down(run, hexwords(1, 0, 60))
            assert pcap.read_bytes()[-60:] == b"\x42" * 60
        else:
            assert_killed(run, BadRequest("eth0.1", 0, "first buffer is 8 bytes, not the "
                                                       "10-byte virtio_net_hdr"))


@pytest.mark.parametrize(("body", "kill"), [
    (_set_status(0x47), BadDeviceStatus("vda", 0x47)),
    (_set_status(7, accepted=0x0C), UnofferedFeatures("vda", 0x0C, 5)),
    (_set_status(1, offset=7), BadStatusNotify(7)),
    ("\tHCALL\t$2, $__power_down, $3\n", BadShutdown(3)),
], ids=["undefined-status-bits", "unoffered-feature", "not-a-descriptor", "shutdown-how"])
def test_a_guest_breaking_the_bus_rules_is_killed(asm_guest, tmp_path, body, kill):
    run = asm_guest(_guest(body), DEVPT_BSS, extra=["--abi", "2.6.26", "--block",
                                                   str(_image(tmp_path))])
    assert_killed(run, kill)


def test_2_6_25_reads_the_accepted_features_at_each_kick(asm_guest, tmp_path):
    """2.6.25 reports no status writes; an unoffered bit is caught at the next kick."""
    body = f"\tmovb\t$0x10, {ACKED:#x}\n" + _read()
    run = asm_guest(_guest(body), READ, extra=["--abi", "2.6.25", "--block",
                                              str(_image(tmp_path))])
    assert_killed(run, UnofferedFeatures("vda", 0x10, 5))


def test_2_6_25_resets_a_device_notified_at_its_descriptor(asm_guest, tmp_path):
    """2.6.25's driver resets each device before probing it with NOTIFY(its descriptor);
    the Launcher zeroed the status, the accepted bits and the rings, and printed nothing."""
    used = MEM + PAGE_SIZE + 0x800 + 2  # vda.0's used.idx
    ready = f"\tmovb\t$4, {ACKED:#x}\n\tmovb\t$7, {STATUS:#x}\n"  # never reported
    body = (ready + _read() + report(0) + f"\tHCALL\t$LHCALL_NOTIFY, ${MEM:#x}\n"
            + "".join(f"\tmovzbl\t{addr:#x}, %eax\n\tPUTHEX\t%eax\n"
                      for addr in (STATUS, ACKED))
            + f"\tmovzwl\t{used:#x}, %eax\n\tPUTHEX\t%eax\n" + ready + _read() + report(0))
    run = asm_guest(_guest(body), READ, extra=["--abi", "2.6.25", "--block",
                                              str(_image(tmp_path))])
    assert_powered_down(run, hexwords(1, 0, 513, 0, 0, 0, 1, 0, 513))


def test_2_6_25_kills_a_notify_inside_the_device_page_but_on_no_descriptor(asm_guest,
                                                                            tmp_path):
    run = asm_guest(_guest(f"\tHCALL\t$LHCALL_NOTIFY, ${MEM + 7:#x}\n"), DEVPT_BSS,
                    extra=["--abi", "2.6.25", "--block", str(_image(tmp_path))])
    assert_killed(run, BadStatusNotify(7))


# -- LHCALL_SHUTDOWN ----------------------------------------------------------------------------
SHUTDOWN_DATA = 'boom:\t.asciz "Kernel panic - not syncing: boom\\n"\nnow:\t.asciz "now"\n'


@pytest.mark.parametrize(("call", "status", "line"), [
    ("$__power_down, $1", 0, ""),
    ("$boom, $1", 1, "lgemu: guest crashed: Kernel panic - not syncing: boom\n"),
    ("$now, $2", 7, "lgemu: guest asked to restart: now\n"),
    ("$0x40000000, $2", 7, "lgemu: guest asked to restart\n"),  # __pa(NULL): no reason
], ids=["power-off", "panic", "restart", "restart-without-reason"])
def test_shutdown_powers_off_crashes_or_restarts(asm_guest, call, status, line):
    run = asm_guest(f"\tINIT\n\tHCALL\t$2, {call}\n\tud2\n", SHUTDOWN_DATA,
                    extra=["--abi", "2.6.26"])
    if status == 0:
        assert_powered_down(run, b"")
    elif status == 1:
        assert_crashed(run, line[len("lgemu: guest crashed: "):-1])
    else:
        assert (run.status, assert_one_line(run.err) + "\n") == (status, line)
