"""The real 4.4 lguest kernel under lgemu: its early console on its own, then a whole boot.

4.x finds its devices on PCI (docs/eras.md).  First the guest's early console:

lguest 4.x's `early_put_chars` (arch/x86/lguest/boot.c) is the guest's first contact with
its devices: it checks that slot 1 holds a virtio console (ID 0x10431AF4), walks its
capability list for the device-config and configuration-access capabilities, and then
writes each character to `virtio_console_config.emerg_wr` through the access window, all
with `in`/`out` on ports 0xCF8/0xCFC.  The function touches nothing else but `printk`, so
it runs here on its own: the kernel's own code, loaded from the shared 4.4 vmlinux into a
bare flat 32-bit CPU, with every port access going to `lgemu.devices.pci.PciBus` and each
call to `printk` answered by recording its format.  The oracle is the bytes that arrive at
the console and the messages the kernel chose to print.

Then the kernel boots under `lgemu boot` to the klibc shell with a disk and a network card on
PCI bus 0: the console must carry the kernel's own log byte for byte (early console, then
the virtio console), and the shell must reach the disk and the card.  Skipped, saying why,
where the prebuilt kernels in shared/kernels beside the repository are absent.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from linuxkernel import SHELL_CPIO, shared_kernel
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_MODE_32, Uc
from unicorn import x86_const as X

from lgemu.abi import MIB
from lgemu.abi_eras import era_named
from lgemu.devices.console import Console, ConsoleOutput
from lgemu.devices.pci import PciBus
from lgemu.devices.virtio_pci import VirtioPciFunction
from lgemu.elf import program_headers, symbol_value
from lgemu.machine.memory import GuestMemory

PT_LOAD = 1
STACK_TOP = 0x9000_0000
STRINGS = 0x9100_0000
STOP = 0x9200_0000  # early_put_chars returns here


def vmlinux_4_4() -> Path:
    """The decompressed 4.4 vmlinux (skips when the shared kernels are absent)."""
    return shared_kernel("linux-4.4")


class EarlyConsole:
    """The 4.4 kernel image in a flat CPU whose port I/O reaches `bus`."""

    def __init__(self, bus: PciBus) -> None:
        path = vmlinux_4_4()
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_32)
        with open(path, "rb") as f:
            size = path.stat().st_size
            found = program_headers(f, size)
            assert found is not None
            for ph in found[1]:
                if ph.type != PT_LOAD:
                    continue
                start, end = ph.vaddr & ~0xFFF, (ph.vaddr + ph.memsz + 0xFFF) & ~0xFFF
                uc.mem_map(start, end - start)
                f.seek(ph.offset)
                uc.mem_write(ph.vaddr, f.read(ph.filesz))  # the rest (.bss) stays zero
            self.entry = symbol_value(f, size, "early_put_chars")
            self.printk = symbol_value(f, size, "printk")
        assert self.entry is not None and self.printk is not None
        for base in (STACK_TOP - 0x10000, STRINGS, STOP):
            uc.mem_map(base, 0x10000)
        self.messages: list[str] = []
        uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, ud: bus.port_in(port, size),
                    None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN,
                    lambda uc, port, size, value, ud: bus.port_out(port, size, value),
                    None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_CODE, self._printk, None, self.printk, self.printk)

    def _printk(self, uc: Uc, address: int, size: int, ud: object) -> None:
        """printk(fmt, ...): note the format (less its KERN_ level) and return 0."""
        esp = uc.reg_read(X.UC_X86_REG_ESP)
        ret, fmt = (int.from_bytes(uc.mem_read(esp + i, 4), "little") for i in (0, 4))
        text = bytes(uc.mem_read(fmt, 128)).split(b"\0")[0]
        self.messages.append(text.lstrip(b"\x01")[1:].decode())
        uc.reg_write(X.UC_X86_REG_ESP, esp + 4)
        uc.reg_write(X.UC_X86_REG_EAX, 0)
        uc.reg_write(X.UC_X86_REG_EIP, ret)

    def put_chars(self, text: bytes) -> int:
        """early_put_chars(0, text, len(text)) as hvc calls it (regparm: eax, edx, ecx)."""
        uc = self.uc
        uc.mem_write(STRINGS, text)
        esp = STACK_TOP - 4
        uc.mem_write(esp, STOP.to_bytes(4, "little"))
        for reg, value in ((X.UC_X86_REG_ESP, esp), (X.UC_X86_REG_EAX, 0),
                           (X.UC_X86_REG_EDX, STRINGS), (X.UC_X86_REG_ECX, len(text))):
            uc.reg_write(reg, value)
        uc.emu_start(self.entry, STOP, count=1_000_000)
        assert uc.reg_read(X.UC_X86_REG_EIP) == STOP
        return uc.reg_read(X.UC_X86_REG_EAX)


def console_bus() -> tuple[PciBus, bytearray]:
    bus = PciBus()
    early = bytearray()
    console = Console(ConsoleOutput(io.BytesIO()))
    bus.add(VirtioPciFunction(console, GuestMemory(16 * MIB), 1, 0x0110_0000,
                              lambda line: None, emergency=early.append))
    return bus, early


def test_the_4_4_early_console_writes_through_emerg_wr() -> None:
    bus, early = console_bus()
    kernel = EarlyConsole(bus)
    text = b"Linux version 4.4.11 (lguest)\r\n"
    written = 0
    while written < len(text):
        count = kernel.put_chars(text[written:])
        assert count == 1  # one character per call, through the window
        written += count
    assert bytes(early) == text
    assert kernel.messages == ["lguest: Console via virtio-pci emerg_wr\n"]


def test_without_a_console_in_slot_1_the_kernel_says_so_and_drops_its_output() -> None:
    kernel = EarlyConsole(PciBus())  # only the host bridge
    assert kernel.put_chars(b"lost") == 4
    assert kernel.messages == ["lguest: PCI device is %#x!\n"]


# -- the whole boot -----------------------------------------------------------------------------

MARK = b"lgemu-disk-mark-0123456789abcdef"
SECTORS = 64
# The shared 4.4 build has no CONFIG_BINFMT_SCRIPT, so the initramfs's /init script fails
# (error -8) and the kernel falls back to /bin/sh: the session mounts what /init would have.
SESSION = ("mount -t proc proc /proc\n"
           "mount -t sysfs sysfs /sys\n"
           "cat /proc/partitions\n"
           "dd if=/dev/vda bs=32 count=1\n"
           "echo\n"
           "echo written-by-4.4 > /dev/vda\n"
           "sync\n"
           "ls /sys/bus/pci/devices\n"
           "cat /sys/class/net/eth0/address\n"
           "exit\n")


def kernel_log(dmesg: bytes) -> bytes:
    """The text the console shows of a --dmesg file: records below KERN_DEBUG (the default
    console level), without their level and time prefix, continuation lines kept."""
    lines, shown = [], False
    for line in dmesg.split(b"\n"):
        match = re.match(rb"<(\d)>\[ *[\d.]+\] ?(.*)$", line)
        if match:
            shown = int(match[1]) < 7
            line = match[2]
        elif not line:
            continue
        if shown:
            lines.append(line + b"\n")
    return b"".join(lines)


def test_4_4_boots_to_the_shell_with_console_disk_and_network(boot_guest, tmp_path) -> None:
    kernel = vmlinux_4_4()
    if not SHELL_CPIO.exists():
        pytest.skip(f"no shell initramfs at {SHELL_CPIO}")
    disk = tmp_path / "disk.img"
    disk.write_bytes(MARK + bytes(SECTORS * 512 - len(MARK)))
    script = tmp_path / "input"
    script.write_text(SESSION)
    dmesg = tmp_path / "dmesg"
    status, out, err = boot_guest(kernel, "console=hvc0 rdinit=/init", extra=[
        "--initrd", str(SHELL_CPIO), "--console-input", str(script), "--block", str(disk),
        "--net", f"pcap:{tmp_path / 'net.pcap'}", "--dmesg", str(dmesg), "-v"])
    assert "Traceback" not in err
    # Until init, the console is the kernel's log exactly (hvc ends lines with CR LF).
    boot_text = out.split(b"Freeing unused kernel memory")[0]
    assert boot_text.startswith(b"Reserving virtual address space above 0xffc00000")
    assert b"lguest: Console via virtio-pci emerg_wr\r\n" in boot_text
    assert boot_text.replace(b"\r\n", b"\n") == \
        kernel_log(dmesg.read_bytes()).split(b"Freeing unused kernel memory")[0]
    session = out.split(b"Failed to execute /init (error -8)")[1]
    # The disk (vda, 32 KiB) read and written through the 16-byte virtio 1.0 header...
    assert b" 254        0         32 vda\r\n" in session
    assert MARK in session
    image = disk.read_bytes()
    assert image.startswith(b"written-by-4.4\n") and len(image) == SECTORS * 512
    # ...the three functions on bus 0, console first, and the card's MAC from its config.
    assert b"0000:00:01.0 -> ../../../devices/pci0000:00/0000:00:01.0" in session
    assert b"0000:00:03.0 -> ../../../devices/pci0000:00/0000:00:03.0" in session
    assert b"# 02:6c:67:00:00:00\r\n" in session
    # `exit` ends init: the kernel panics, and LHCALL_SHUTDOWN with the panic's reason is
    # a crash.  (tests/test_era_real_kernels.py powers 4.4 off and sends on its network.)
    assert b"Kernel panic - not syncing: Attempted to kill init!" in session
    assert status == 1 and err.endswith("lgemu: guest crashed: Attempted to kill init! "
                                        "exitcode=0x00000000\n"), err
    # -v lists the PCI functions as the guest left them (it once died on a 4.x guest).
    table = err.split("devices at exit (virtio PCI functions on bus 0)")[1]
    assert re.search(r"│ 1 +│ hvc0 +│ 0x0f ack\|driver\|ok", table), table


# -- noirq_iret ---------------------------------------------------------------------------------

ERA_4 = era_named("4.1")
SPIN_ON_THE_TIMER = """
	movl	$%s, lguest_data + LD_NOIRQ_IRET
	INIT
	SET_GATE 0x20, timer, GATE_INT
	movl	$0, lguest_data + LD_BLOCKED
	movl	$0x200, lguest_data + LD_IRQ_ENABLED
	HCALL	$LHCALL_SET_CLOCKEVENT, $1000
spin:	jmp	spin
timer:	POWER_DOWN
"""


@pytest.mark.parametrize(("noirq_iret", "status"), [("0", 0), ("spin", 5)])
def test_no_interrupt_arrives_at_noirq_iret(asm_guest, noirq_iret: str, status: int) -> None:
    """4.x names one instruction, its lguest_iret's `iret`, where the Host must not
    interrupt: a guest spinning there never takes its timer (the run ends at --max-insns),
    one spinning elsewhere takes it at once and powers down."""
    # 4.x has no NOTIFY: the prelude's print helpers, never called here, still name it.
    run = asm_guest(SPIN_ON_THE_TIMER % noirq_iret, ".set LHCALL_NOTIFY, 17", era=ERA_4,
                    extra=["--max-insns", "3000000"])
    assert run.status == status, run.err
