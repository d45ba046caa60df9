"""The real 2.6.32 and 3.13 lguest kernels under lgemu: the klibc shell with a virtio disk read
and written and a network card that sends, then power-off (status 0).  2.6.25, 2.6.28,
2.6.29, 2.6.30, 3.0, 3.4, 4.9 and 4.13 too, where they were built (shared/kernels does not
ship them: docs/eras.md says how).

2.6.32 makes its hypercalls with `vmcall` (rewritten by the Host to `int $0x1f; nop`), keeps
irq_pending and 20-byte ring entries, and starts on page tables the Host built; 3.13 is back
to `int $0x1f` in the new register order and loads its own page tables with NEW_PGTABLE in
lguest_entry.  Skipped, saying why, where the prebuilt kernels in shared/kernels beside the
repository are absent.

The 3.13 kernel was configured without CONFIG_BINFMT_SCRIPT, so it cannot run the shell
initramfs's ``/init`` script: it boots ``rdinit=/bin/sh`` and powers off with klibc's
``poweroff``.  klibc's own network tools make the ``socket`` system call these kernels do not
have (i386 had only ``socketcall`` before 4.3), so a 30-line static program assembled here,
``netup``, brings eth0 up and sends a datagram: its ARP request is what the pcap shows.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from gdbrun import needs_gdb, run_under_gdb
from linuxkernel import arp_who_has, pcap_frames, shared_kernel, shell_with_netup, with_program

from lgemu.debug.symbols import Symbols

SECTORS = 64
MARK = b"lgemu-disk-mark-0123456789abcdef"  # 32 bytes at the start of the disk
MAC = "52:54:00:12:34:56"
ARP_WHO_HAS = arp_who_has(MAC)

# kernel → (the command line, the last shell line, what the shell's prompt is)
KERNEL_SHELLS = {
    "linux-2.6.25": ("console=hvc0 rdinit=/init", "exit", b"lg# "),  # not in CI's kernels
    "linux-2.6.28": ("console=hvc0 rdinit=/init", "exit", b"lg# "),  # not in CI's kernels
    "linux-2.6.29": ("console=hvc0 rdinit=/init", "exit", b"lg# "),  # not in CI's kernels
    "linux-2.6.30": ("console=hvc0 rdinit=/init", "exit", b"lg# "),  # vmcall, 4 arguments
    "linux-2.6.32": ("console=hvc0 rdinit=/init", "exit", b"lg# "),
    "linux-3.0": ("console=hvc0 rdinit=/init", "exit", b"lg# "),  # int $0x1f, 1 vmcall left
    "linux-3.4": ("console=hvc0 rdinit=/init", "exit", b"lg# "),  # not in CI's kernels
    "linux-3.13": ("console=hvc0 rdinit=/bin/sh", "poweroff", b"# "),
    "linux-4.4": ("console=hvc0 rdinit=/bin/sh", "poweroff", b"# "),  # devices on PCI
    "linux-4.9": ("console=hvc0 rdinit=/init", "exit", b"lg# "),  # not in CI's kernels
    "linux-4.13": ("console=hvc0 rdinit=/init", "exit", b"lg# "),  # not in CI's kernels
}


def _kernel(name: str, form: str = "bzImage") -> Path:
    return shared_kernel(name, form)


# /bin/int3: a breakpoint, then exit(0).  From 2.6.27 the Host's gate for vector 3 let it
# through (SIGTRAP, status 133); 2.6.25's was DPL 0: a #GP, so SIGSEGV (139).
INT3 = "\t.globl _start\n_start:\n\tint3\n\tmovl $1, %eax\n\txorl %ebx, %ebx\n\tint $0x80\n"




@pytest.mark.parametrize("name", KERNEL_SHELLS)
def test_shell_disk_and_network_then_power_off(boot_guest, tmp_path, name):
    kernel = _kernel(name)
    cmdline, last, prompt = KERNEL_SHELLS[name]
    disk = tmp_path / "disk.img"
    disk.write_bytes(MARK + bytes(SECTORS * 512 - len(MARK)))
    pcap = tmp_path / "net.pcap"
    script = tmp_path / "console-input"
    script.write_text("mount -t proc proc /proc\n"
                      "mount -t sysfs sysfs /sys\n"
                      "cat /proc/partitions\n"
                      "dd if=/dev/vda bs=32 count=1\n"
                      "echo\n"
                      f"echo written-by-{name} > /tmp/w\n"
                      "dd if=/tmp/w of=/dev/vda bs=512 seek=1\n"
                      "sync\n"
                      "cat /sys/class/net/eth0/address\n"
                      "netup\n"
                      "echo netup=$?\n"
                      "sleep 1\n"
                      "int3\n"
                      "echo int3=$?\n"
                      f"{last}\n")
    status, out, err = boot_guest(kernel, cmdline, extra=[
        "--initrd", str(with_program(tmp_path, "int3", INT3, shell_with_netup(tmp_path))),
        "--console-input", str(script),
        "--block", str(disk), "--net", f"pcap:{pcap},mac={MAC}"])
    assert (status, err) == (0, ""), (status, err, out[-3000:])
    version = name.removeprefix("linux-")
    assert f"Linux version {version}".encode() in out
    assert f"Kernel command line: {cmdline}\r\n".encode() in out  # no trailing space
    assert not re.search(rb"[\0-\x08\x0e-\x1f]", out)  # 2.6.25's device resets print nothing
    assert re.search(rb" 254 +0 +32 vda\r\n", out)  # 2.6.25 pads the minor less
    assert prompt + MARK in out  # the disk's first bytes, read by the guest
    written = f"written-by-{name}\n".encode()
    assert disk.read_bytes()[512:512 + len(written) + 1] == written + b"\0"
    assert f"{prompt.decode()}{MAC}\r\n".encode() in out
    assert prompt + b"netup=0\r\n" in out
    assert any(frame.startswith(ARP_WHO_HAS) for frame in pcap_frames(pcap))
    int3 = 139 if name == "linux-2.6.25" else 133
    assert prompt + f"int3={int3}\r\n".encode() in out
    assert out.endswith(b"Power down.\r\n") or out.endswith(b"reboot: Power down\r\n")


def test_2_6_32_trace_names_its_code_and_shows_the_vmcall_rewritten(boot_guest, tmp_path):
    kernel = _kernel("linux-2.6.32", "vmlinux")
    trace = tmp_path / "trace"
    status, _out, err = boot_guest(kernel, "console=hvc0", extra=[
        "--max-insns", "60000", "--trace", str(trace), "--trace-filter", "sym:lguest_entry"])
    assert status == 5, err
    lines = trace.read_text().splitlines()
    assert "lguest_entry+0x0 " in lines[0] and "movl $1, %eax" in lines[0]
    assert "i386_head.S:33" in lines[0]  # DWARF lines, too
    assert "lguest_entry+0xa " in lines[2] and "0f01c1" in lines[2] and "vmcall" in lines[2]
    assert lines[3].endswith("-- trap #UD eip=0x118d776 vmcall → int $0x1f")
    assert "lguest_entry+0xa " in lines[4] and "cd1f" in lines[4] and "int $0x1f" in lines[4]
    assert lines[5].endswith("-- hcall LGUEST_INIT lguest_data=0x1179b00")
    assert "lguest_entry+0xc " in lines[6] and "nop" in lines[6]



def test_3_0_send_interrupts_vmcall_is_rewritten(boot_guest, tmp_path):
    """3.0 calls with `int $0x1f`, but its send_interrupts (how lg_restore_fl asks for a
    pending interrupt) still makes a vmcall, which its Host rewrote; the interrupt follows."""
    kernel = _kernel("linux-3.0", "vmlinux")
    events = tmp_path / "events"
    status, _out, err = boot_guest(kernel, "console=hvc0", extra=[
        "--max-insns", "15000000", "--events", "--trace", str(events)])
    assert status == 5, err
    lines = [line.split(" -- ", 1)[1] for line in events.read_text().splitlines()]
    site = next(i for i, line in enumerate(lines) if line.endswith("vmcall → int $0x1f"))
    eip = int(lines[site].split("eip=")[1].split()[0], 16)
    assert Symbols.load(kernel).symbolize(eip) == ("send_interrupts", 6)
    assert lines[site + 1] == "hcall SEND_INTERRUPTS"
    assert lines[site + 2].startswith("irq 0 → vec 0x20 ")

@pytest.mark.parametrize("name", ["linux-2.6.26", "linux-2.6.32", "linux-3.13", "linux-4.4"])
def test_coverage_of_each_eras_boot_names_its_lguest_code(boot_guest, tmp_path, name):
    """--coverage on a later era's boot: a drcov file whose module 0 is the vmlinux, holding
    blocks of the era's own lguest_init; two runs write the same bytes."""
    kernel = _kernel(name, "vmlinux")
    files = []
    for run in range(2):
        coverage = tmp_path / f"cov{run}"
        status, _out, err = boot_guest(kernel, "console=hvc0", extra=[
            "--max-insns", "3000000", "--coverage", str(coverage)])
        assert status == 5, err
        files.append(coverage.read_bytes())
    assert files[0] == files[1]
    text, _, table = files[0].partition(b"BB Table: ")
    assert text.startswith(b"DRCOV VERSION: 2\n") and f", {kernel}\n".encode() in text
    base = int(text.split(b"\n")[4].split(b",")[1], 16)  # module 0's base
    count = int(table.split(b" ")[0])
    blocks = table.split(b"\n", 1)[1]
    assert count > 1000 and len(blocks) == 8 * count
    starts = {base + struct.unpack_from("<I", blocks, i)[0]
              for i in range(0, len(blocks), 8) if blocks[i + 6] == 0}
    symbols = Symbols.load(kernel)
    assert "lguest_init" in {(symbols.symbolize(start) or ("", 0))[0] for start in starts}


def test_3_13_event_log_names_its_calls(boot_guest, tmp_path):
    events = tmp_path / "events"
    status, _out, err = boot_guest(_kernel("linux-3.13", "vmlinux"), "console=hvc0", extra=[
        "--max-insns", "3000000", "--events", "--trace", str(events)])
    assert status == 5, err
    text = events.read_text()
    first = [line.split(" -- ", 1)[1] for line in text.splitlines()[:3]]
    assert first == ["hcall LGUEST_INIT lguest_data=0x11f00a0",
                     "hcall NEW_PGTABLE pgdir=0x123f000",
                     "hcall LOAD_GDT_ENTRY index=0 desc=0x0000000000000000"]
    assert "hcall SET_PGD " in text and "vmcall" not in text


@needs_gdb
def test_gdb_on_2_6_32_sees_the_rewritten_code_and_the_eras_call_names():
    kernel = _kernel("linux-2.6.32", "vmlinux")
    run = run_under_gdb(["break lguest_init", "continue", "x/4i lguest_entry",
                         "monitor hcalls", "kill"],
                        ["--append", "console=hvc0", "--max-insns", "5000000"], kernel)
    assert "Breakpoint 1, lguest_init () at " in run.gdb
    assert "<lguest_entry+10>:\tint    $0x1f" in run.gdb
    assert "<lguest_entry+12>:\tnop" in run.gdb
    assert re.search(r"LGUEST_INIT +1 +0", run.gdb)


def test_4_9_makes_the_ts_call_that_4_10s_host_dropped(boot_guest, tmp_path):
    """A 4.9 kernel keeps its TS bit with LHCALL_TS (its event log shows the calls) and
    boots; run as a 4.10-4.13 guest it is killed at the first one, as 4.10's Host did."""
    kernel = _kernel("linux-4.9", "vmlinux")
    events = tmp_path / "events"
    status, _out, err = boot_guest(kernel, "console=hvc0", extra=[
        "--max-insns", "30000000", "--events", "--trace", str(events)])
    assert status == 5, err
    assert "-- hcall TS ts=" in events.read_text()
    status, _out, err = boot_guest(kernel, "console=hvc0", extra=[
        "--abi", "4.10", "--max-insns", "30000000"])
    assert (status, err) == (3, "lgemu: guest killed: Bad hypercall 8\n")
