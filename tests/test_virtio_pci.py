"""PCI bus 0 and virtio 1.0 PCI functions, driven through the ports a 4.x guest uses.

Every access here is what the guest's port I/O reaches: `out`/`in` on 0xCF8/0xCFC (through
`PciBus`) and loads/stores on BAR0 (`mmio_read`/`mmio_write`).  The oracle is what a driver
reads back: IDs, the capability chain, BAR sizes, console bytes, used-ring entries, the
ISR, and the kill reason a rule-breaking guest gets.
"""

from __future__ import annotations

import io
import struct

import pytest

from lgemu.abi import MIB, DeviceType
from lgemu.devices.console import Console, ConsoleOutput
from lgemu.devices.pci import CONFIG_ADDRESS, CONFIG_DATA, PciBus
from lgemu.devices.virtio_pci import (
    BAR_SIZE,
    DEVICE_AT,
    ISR_AT,
    NOTIFY_AT,
    VIRTIO_F_VERSION_1,
    VirtioPciFunction,
)
from lgemu.errors import GuestKilled, PowerDown
from lgemu.kills import BadPciAccess, BadVirtioPci, BrokenVring
from lgemu.machine.memory import GuestMemory

BAR = 0x0400_0000  # just above 64 MiB of RAM


class Rig:
    """A bus with a console in slot 1 (where the 4.x early console looks for it)."""

    def __init__(self) -> None:
        self.memory = GuestMemory(64 * MIB)
        self.stdout = io.BytesIO()
        self.console = Console(ConsoleOutput(self.stdout))
        self.lines: list[int] = []
        self.early = bytearray()
        self.function = VirtioPciFunction(self.console, self.memory, 3, BAR,
                                          self.lines.append, emergency=self.early.append)
        self.bus = PciBus()
        assert self.bus.add(self.function) == 1

    def select(self, slot: int, offset: int, bus: int = 0, fn: int = 0) -> None:
        self.bus.port_out(CONFIG_ADDRESS, 4,
                          1 << 31 | bus << 16 | slot << 11 | fn << 8 | (offset & 0xFC))

    def read(self, slot: int, offset: int, size: int = 4) -> int:
        self.select(slot, offset)
        return self.bus.port_in(CONFIG_DATA + (offset & 3), size)

    def write(self, slot: int, offset: int, value: int, size: int = 4) -> None:
        self.select(slot, offset)
        self.bus.port_out(CONFIG_DATA + (offset & 3), size, value)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def kill_of(action) -> object:
    with pytest.raises(GuestKilled) as caught:
        action()
    return caught.value.kill


def test_ids_and_absent_functions(rig: Rig) -> None:
    assert rig.read(1, 0) == 0x10431AF4  # what 4.4's early_put_chars insists on
    assert rig.read(0, 8) >> 16 == 0x0600  # slot 0: a host bridge, so conf1 probing succeeds
    assert rig.read(1, 0x2C) == (DeviceType.CONSOLE << 16) | 0x1AF4
    assert rig.read(1, 0x3C, 1) == 3 and rig.read(1, 0x3D, 1) == 1  # IRQ line 3, INTA
    assert rig.read(2, 0) == 0xFFFFFFFF  # empty slot
    rig.select(1, 0, fn=1)
    assert rig.bus.port_in(CONFIG_DATA, 4) == 0xFFFFFFFF  # function 1 is absent
    rig.select(1, 0, bus=1)
    assert rig.bus.port_in(CONFIG_DATA, 2) == 0xFFFF
    rig.bus.port_out(CONFIG_ADDRESS, 4, 0x0000_0800)  # enable bit clear
    assert rig.bus.port_in(CONFIG_DATA, 4) == 0xFFFFFFFF
    assert rig.bus.port_in(CONFIG_ADDRESS, 4) == 0x0000_0800
    rig.bus.port_out(0xCFB, 1, 1)  # Linux's type-2 probe: ignored
    assert rig.bus.port_in(CONFIG_ADDRESS, 4) == 0x0000_0800


def test_capability_walk(rig: Rig) -> None:
    assert rig.read(1, 6, 2) & 0x10  # status: capability list present
    seen = {}
    at = rig.read(1, 0x34, 1)
    while at:
        cap_id, following, cap_len, cfg_type = struct.pack("<I", rig.read(1, at))
        assert cap_id == 0x09 and cap_len >= 16
        seen[cfg_type] = (rig.read(1, at + 4, 1), rig.read(1, at + 8), rig.read(1, at + 12))
        at = following
    assert seen[1] == (0, 0, 56)  # common config in BAR0 at 0
    assert seen[2] == (0, NOTIFY_AT, 2)
    assert seen[3] == (0, ISR_AT, 1)
    assert seen[4] == (0, DEVICE_AT, 12)  # virtio_console_config
    assert 5 in seen  # the PCI configuration access window


def test_bar_sizing(rig: Rig) -> None:
    assert rig.read(1, 0x10) == BAR
    rig.write(1, 0x10, 0xFFFFFFFF)
    assert rig.read(1, 0x10) == (~(BAR_SIZE - 1)) & 0xFFFFFFFF  # 32-bit memory, 4 KiB
    rig.write(1, 0x10, BAR)
    assert rig.read(1, 0x10) == BAR and rig.function.bar == BAR
    rig.write(1, 0x14, 0xFFFFFFFF)
    assert rig.read(1, 0x14) == 0  # BAR1 is not implemented
    rig.write(1, 0, 0x12345678)
    assert rig.read(1, 0) == 0x10431AF4  # IDs are read-only


def test_early_console_through_the_access_window(rig: Rig) -> None:
    """The 4.4 guest's early_put_chars sequence, one character at a time."""
    for char in b"Linux\n":
        rig.write(1, 0x84 + 4, 0, 1)  # bar
        rig.write(1, 0x84 + 12, 4)  # length
        rig.write(1, 0x84 + 8, DEVICE_AT + 8)  # offset of emerg_wr
        rig.write(1, 0x84 + 16, char)  # the window
    assert bytes(rig.early) == b"Linux\n"


def test_window_checks(rig: Rig) -> None:
    rig.write(1, 0x84 + 4, 1, 1)  # bar 1 does not exist
    rig.write(1, 0x84 + 12, 4)
    assert isinstance(kill_of(lambda: rig.write(1, 0x84 + 16, 0)), BadVirtioPci)
    rig.write(1, 0x84 + 4, 0, 1)
    rig.write(1, 0x84 + 8, 2)  # misaligned for its length
    assert "window" in kill_of(lambda: rig.read(1, 0x84 + 16)).text()
    rig.write(1, 0x84 + 8, BAR_SIZE - 2)
    rig.write(1, 0x84 + 12, 4)
    assert isinstance(kill_of(lambda: rig.read(1, 0x84 + 16)), BadVirtioPci)


def test_bad_port_accesses() -> None:
    bus = PciBus()
    bus.port_out(CONFIG_ADDRESS, 4, 1 << 31)
    kind = kill_of(lambda: bus.port_in(CONFIG_DATA + 2, 4))
    assert isinstance(kind, BadPciAccess) and "0xcff" in kind.text()
    assert isinstance(kill_of(lambda: bus.port_out(CONFIG_DATA + 1, 2, 0)), BadPciAccess)


def setup_queue(fn: VirtioPciFunction, index: int, base: int, size: int = 16) -> None:
    fn.mmio_write(22, 2, index)
    assert fn.mmio_read(24, 2) == 256
    fn.mmio_write(24, 2, size)
    for offset, addr in ((32, base), (40, base + 16 * size), (48, base + 0x1000)):
        fn.mmio_write(offset, 4, addr)
        fn.mmio_write(offset + 4, 4, 0)
    fn.mmio_write(28, 2, 1)


def negotiate(fn: VirtioPciFunction) -> None:
    fn.mmio_write(20, 1, 1 | 2)
    fn.mmio_write(0, 4, 1)
    assert fn.mmio_read(4, 4) == 1  # VIRTIO_F_VERSION_1 is bit 32
    fn.mmio_write(8, 4, 1)
    fn.mmio_write(12, 4, 1)
    fn.mmio_write(20, 1, 1 | 2 | 8)
    assert fn.mmio_read(20, 1) & 8  # FEATURES_OK kept


def test_queue_setup_notify_and_isr(rig: Rig) -> None:
    fn, ram = rig.function, rig.memory.ram
    negotiate(fn)
    assert fn.mmio_read(18, 2) == 2 and fn.mmio_read(16, 2) == 0xFFFF  # 2 queues, no MSI-X
    setup_queue(fn, 0, 0x10000)
    setup_queue(fn, 1, 0x20000)
    fn.mmio_write(20, 1, 1 | 2 | 4 | 8)  # DRIVER_OK
    # One output buffer on queue 1: descriptor 0 -> "hi!\n" at 0x30000, avail.ring[0] = 0.
    ram[0x30000:0x30004] = b"hi!\n"
    struct.pack_into("<QIHH", ram, 0x20000, 0x30000, 4, 0, 0)
    struct.pack_into("<HHH", ram, 0x20000 + 16 * 16, 0, 1, 0)
    fn.mmio_write(NOTIFY_AT, 2, 1)
    assert rig.stdout.getvalue() == b"hi!\n"
    assert struct.unpack_from("<HHII", ram, 0x21000) == (0, 1, 0, 4)  # used: head 0, 4 bytes
    assert rig.lines == [3] and fn.mmio_read(ISR_AT, 1) == 1
    assert fn.mmio_read(ISR_AT, 1) == 0  # reading cleared it
    fn.mmio_write(20, 1, 0)  # reset
    assert fn.mmio_read(20, 1) == 0 and fn.mmio_read(28, 2) == 0


def test_features_refused_without_version_1(rig: Rig) -> None:
    fn = rig.function
    fn.mmio_write(20, 1, 3)
    fn.mmio_write(20, 1, 3 | 8)
    assert not fn.mmio_read(20, 1) & 8
    assert fn.features & VIRTIO_F_VERSION_1


def test_device_config_reads_block_capacity(tmp_path) -> None:
    from lgemu.devices.block import Block
    image = tmp_path / "disk"
    image.write_bytes(bytes(8 * 512))
    block = Block(image, True)
    try:
        fn = VirtioPciFunction(block, GuestMemory(16 * MIB), 5, BAR, lambda line: None)
        assert fn.space.read(2, 2) == 0x1042
        assert fn.mmio_read(DEVICE_AT, 4) == 8 and fn.mmio_read(DEVICE_AT + 4, 4) == 0
    finally:
        block.close()


@pytest.mark.parametrize(("action", "words"), [
    (lambda fn: fn.mmio_read(2, 2), "not a whole register"),
    (lambda fn: fn.mmio_write(4, 4, 0), "read-only device_feature"),
    (lambda fn: fn.mmio_read(59, 1), "outside its registers"),
    (lambda fn: fn.mmio_read(DEVICE_AT + 10, 4), "outside its registers"),
    (lambda fn: fn.mmio_write(DEVICE_AT, 4, 1), "read-only device config"),
    (lambda fn: fn.mmio_write(ISR_AT, 1, 1), "read-only ISR"),
    (lambda fn: fn.mmio_write(NOTIFY_AT, 2, 0), "not enabled"),
    (lambda fn: fn.mmio_write(NOTIFY_AT, 2, 7), "queue 7"),
    (lambda fn: (fn.mmio_write(22, 2, 9), fn.mmio_write(24, 2, 8)), "does not exist"),
    (lambda fn: fn.mmio_write(24, 2, 300), "power of two"),
    (lambda fn: fn.mmio_write(36, 4, 1), "32-bit"),
    (lambda fn: fn.mmio_write(28, 2, 2), "queue_enable"),
])
def test_hostile_bar_accesses(rig: Rig, action, words: str) -> None:
    kind = kill_of(lambda: action(rig.function))
    assert isinstance(kind, BadVirtioPci) and words in kind.text()
    assert kind.text().startswith("virtio-pci console: ")


def test_rings_outside_memory_are_refused(rig: Rig) -> None:
    fn = rig.function
    fn.mmio_write(24, 2, 16)
    fn.mmio_write(32, 4, 0xFFFF0000)  # descriptor table beyond RAM
    kind = kill_of(lambda: fn.mmio_write(28, 2, 1))
    assert isinstance(kind, BrokenVring) and "descriptor table" in kind.text()
    fn.mmio_write(20, 1, 0)
    fn.mmio_write(32, 4, 0x10008)  # misaligned
    assert "16-byte aligned" in kill_of(lambda: fn.mmio_write(28, 2, 1)).text()


# -- through the Host: a guest's own in/out and loads/stores ----------------------------------

def run_pci_guest(tmp_path, body: str) -> tuple[object, bytes]:
    """Boot a test guest (tests/guestasm.py) with a console on PCI bus 0 instead of the
    device page; returns (how the run ended, console bytes)."""
    from guestasm import build_guest

    from lgemu.host.clock import Clock
    from lgemu.host.guest import Guest
    from lgemu.launcher import launch, load_kernel

    elf = build_guest(tmp_path, body, PCI_GUEST_DATA)
    memory = GuestMemory(64 * MIB)
    stdout = io.BytesIO()
    output = ConsoleOutput(stdout)
    info = launch(memory, load_kernel(elf), "", None, [])
    guest = Guest(memory, info, [], output, Clock(1))
    guest.attach_pci([Console(output)])
    return guest.run(2_000_000), stdout.getvalue()


# conf1 read of slot 1's register \reg into %eax (the guest's own port I/O).
CONF1_MACRO = """
	.macro CONF1_READ reg
	movl $(0x80000800 | \\reg), %eax
	movw $0xcf8, %dx
	outl %eax, %dx
	movw $0xcfc, %dx
	inl %dx, %eax
	.endm
"""
PCI_GUEST_DATA = """
	.balign 4096
bar_pt: .fill 1024, 4, 0
"""
# lguest emulates port I/O only for kernel code (EIP at or above kernel_address): this
# guest's kernel is at 1 MiB.  Then map slot 1's BAR0 (in %esi) at the same virtual
# address with a page table of the guest's own.
MAP_BAR = CONF1_MACRO + """
	movl $0x100000, lguest_data+LD_KERNEL_ADDRESS
	INIT
	CONF1_READ 0x10
	andl $0xfffffff0, %eax
	movl %eax, %esi
	movl %esi, %ecx
	shrl $12, %ecx
	andl $0x3ff, %ecx
	movl %esi, %eax
	orl $3, %eax
	movl %eax, bar_pt(,%ecx,4)
	movl %esi, %ecx
	shrl $22, %ecx
	movl lguest_data+LD_PGDIR, %edi
	movl $bar_pt, %eax
	orl $7, %eax
	movl %eax, (%edi,%ecx,4)
"""


def test_guest_port_io_and_mmio_reach_the_functions(tmp_path) -> None:
    outcome, out = run_pci_guest(tmp_path, MAP_BAR + """
	CONF1_READ 0
	PUTHEX %eax
	NEWLINE
	movzwl 18(%esi), %eax
	PUTHEX %eax
	NEWLINE
	movl $0x4b4f, %ebx
	movl %ebx, 68(%esi)
	shrl $8, %ebx
	movl %ebx, 68(%esi)
	POWER_DOWN
""")
    assert isinstance(outcome, PowerDown), outcome
    # The ID read through conf1, num_queues loaded from BAR0, then emerg_wr stores "OK".
    assert out == b"10431af4\n00000002\nOK"


def test_a_guest_reading_between_registers_is_killed(tmp_path) -> None:
    outcome, _ = run_pci_guest(tmp_path, MAP_BAR + """
	movb 59(%esi), %al
	POWER_DOWN
""")
    assert isinstance(outcome, GuestKilled), outcome
    assert outcome.kill == BadVirtioPci("console", "1-byte access at BAR0 offset 0x3b is "
                                        "outside its registers")


def test_virtio_1_0_frames_may_share_the_header_buffer(tmp_path) -> None:
    """4.4's driver puts the 12-byte header in front of the frame when it can: the frame
    is what follows it; a chain shorter than the header is refused."""
    from lgemu.abi_eras import era_named
    from lgemu.devices.net import Net
    from lgemu.devices.netback import parse_net_option

    pcap = tmp_path / "net.pcap"
    net = Net(parse_net_option(f"pcap:{pcap}"), 0)
    net.era = era_named("4.1")
    memory = GuestMemory(16 * MIB)
    fn = VirtioPciFunction(net, memory, 2, BAR, lambda line: None)
    try:
        fn.mmio_write(20, 1, 3)
        fn.mmio_write(8, 4, 1)
        fn.mmio_write(12, 4, 1)  # VERSION_1
        fn.mmio_write(20, 1, 3 | 8)
        setup_queue(fn, 0, 0x10000)
        setup_queue(fn, 1, 0x20000)
        fn.mmio_write(20, 1, 3 | 4 | 8)
        ram = memory.ram
        frame = bytes(range(42))
        ram[0x30000:0x30000 + 54] = bytes(12) + frame
        struct.pack_into("<QIHH", ram, 0x20000, 0x30000, 54, 0, 0)
        struct.pack_into("<QIHH", ram, 0x20010, 0x30000, 8, 0, 0)
        struct.pack_into("<HHHH", ram, 0x20000 + 16 * 16, 0, 1, 0, 1)
        fn.mmio_write(NOTIFY_AT, 2, 1)
        net.close()
        assert pcap.read_bytes()[24 + 16:] == frame  # after the file and record headers
        struct.pack_into("<H", ram, 0x20000 + 16 * 16 + 2, 2)  # the 8-byte chain
        kind = kill_of(lambda: fn.mmio_write(NOTIFY_AT, 2, 1))
        assert kind.text() == ("vring eth0.1: request at head 1: 8 bytes, shorter than the "
                               "12-byte virtio_net_hdr")
    finally:
        net.close()


# -- any sequence of register accesses ------------------------------------------------------------

def _fuzz_ops():
    from hypothesis import strategies as st
    sizes = st.sampled_from([1, 2, 4])
    value = st.integers(0, 0xFFFFFFFF)
    interesting = st.sampled_from([0, 1, 0x10, 0x40, 0x84, 0x88, 0x8C, 0x90, 0x94, 20, 22, 24,
                                   28, 32, 36, 56, 58, 59, 60, 68, 72, 0xFFC])
    offset = st.one_of(interesting, st.integers(0, 0x1FFF))
    return st.lists(st.one_of(
        st.tuples(st.just("out"), st.integers(0xCF8, 0xCFF), sizes, value),
        st.tuples(st.just("in"), st.integers(0xCF8, 0xCFF), sizes, st.just(0)),
        st.tuples(st.just("load"), offset, sizes, st.just(0)),
        st.tuples(st.just("store"), offset, sizes, value),
    ), max_size=40)


def test_any_access_sequence_is_answered_or_killed() -> None:
    """Whatever a guest does with the ports and the BAR window, each access is answered
    with a value of its width or kills the guest with a PCI, virtio-PCI, MMIO or vring
    reason: never another exception, never a value wider than the access."""
    from fuzzguest import fuzz_settings
    from hypothesis import given

    from lgemu.kills import BadMmio

    @fuzz_settings(150)
    @given(_fuzz_ops())
    def run(ops) -> None:
        rig = Rig()
        base = rig.function.bar
        for kind, where, size, value in ops:
            try:
                if kind == "out":
                    rig.bus.port_out(where, size, value)
                elif kind == "in":
                    assert 0 <= rig.bus.port_in(where, size) < 1 << 8 * size
                elif kind == "load":
                    assert 0 <= rig.bus.mmio_read(base + where, size) < 1 << 8 * size
                else:
                    rig.bus.mmio_write(base + where, size, value)
            except GuestKilled as killed:
                assert isinstance(killed.kill, (BadPciAccess, BadVirtioPci, BadMmio,
                                                BrokenVring))
                return
    run()
