"""End to end: `lgemu boot` on the bundled guest (firmware/lgemu-guest.elf, from guest_kernel/).

The guest prints a banner through the early console (LHCALL_NOTIFY of ≤16-byte strings with
`\\n` already turned into `\\r\\n`, ABI §12.1) and then powers down with LHCALL_CRASH("Power down").
What a user sees is exactly those bytes on stdout, nothing on stderr and exit status 0.  The
banner reports what the Launcher told the guest (RAM size from e820 entry 0, the command line
at 0x1000) and where the guest's own page directory is, so a Launcher or Host that gets any
of that wrong changes the bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED = REPO_ROOT / "firmware" / "lgemu-guest.elf"
PAGE_OFFSET = 0xC0000000
MIB = 1 << 20


def guest_pgdir(elf: Path = BUNDLED) -> int:
    """Physical address of the bundled guest's swapper_pg_dir (it prints it after switching)."""
    with elf.open("rb") as f:
        symbols = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name("swapper_pg_dir")
    return symbols[0]["st_value"] - PAGE_OFFSET


def banner(mem_mib: int = 64, cmdline: str = "", tail: bytes = b"") -> bytes:
    """The exact console bytes of a default boot (from guest_kernel/main.c)."""
    lines = [
        "lgemu guest: Linux 2.6.24 lguest ABI, running in ring 1",
        f"lgemu guest: RAM {mem_mib} MiB (e820 0: 0x0-{mem_mib * MIB:#x} type 1)",
        f'lgemu guest: command line: "{cmdline}"',
        f"lgemu guest: page tables switched (pgdir {guest_pgdir():#x})",
    ]
    head = b"".join(line.encode() + b"\r\n" for line in lines)
    return head + (tail if tail else b"lgemu guest: power down\r\n")


def test_default_boot_prints_the_banner_and_powers_down(run_lgemu):
    proc = run_lgemu(["boot"])
    assert proc.stdout == (
        b"lgemu guest: Linux 2.6.24 lguest ABI, running in ring 1\r\n"
        b"lgemu guest: RAM 64 MiB (e820 0: 0x0-0x4000000 type 1)\r\n"
        b'lgemu guest: command line: ""\r\n'
        + f"lgemu guest: page tables switched (pgdir {guest_pgdir():#x})\r\n".encode()
        + b"lgemu guest: power down\r\n")
    assert proc.stderr == ""
    assert proc.returncode == 0


def test_explicit_kernel_path_is_the_same_as_the_default(run_lgemu):
    proc = run_lgemu(["boot", str(BUNDLED)])
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, banner(), "")


@pytest.mark.parametrize(("mem", "cmdline"), [
    (32, "console=hvc0 foo=bar"),
    (8, "a"),
    (100, "root=/dev/vda ro quiet"),
    (256, "x" * 200),
])
def test_ram_size_and_command_line_reach_the_guest(boot_guest, mem, cmdline):
    status, out, err = boot_guest(BUNDLED, cmdline=cmdline, mem=mem)
    assert (status, out, err) == (0, banner(mem, cmdline), "")


def test_two_runs_are_byte_identical(run_lgemu):
    args = ["boot", "-v", "-m", "48", "--append=one two three"]
    first, second = run_lgemu(args), run_lgemu(args)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout == banner(48, "one two three")
    # -v includes the instruction count and guest time: the virtual clock makes them repeat.
    assert first.stderr == second.stderr
    assert re.search(r"executed \d+ instructions", first.stderr)


def test_crash_word_ends_in_a_guest_crash(run_lgemu):
    proc = run_lgemu(["boot", "--append=foo crash bar"])
    assert proc.stdout == banner(cmdline="foo crash bar",
                                 tail=b"lgemu guest: crash requested\r\n")
    assert proc.stderr == "lgemu: guest crashed: guest requested crash\n"
    assert proc.returncode == 1


def test_guest_panic_message_is_the_crash_reason(boot_guest):
    status, out, err = boot_guest(BUNDLED, cmdline="lgemu.test=nope")
    assert status == 1
    assert out.endswith(b"Kernel panic - not syncing: unknown lgemu.test=nope\r\n")
    assert err == "lgemu: guest crashed: unknown lgemu.test=nope\n"


def test_guest_async_ring_program_passes(boot_guest):
    """The bundled guest's own check of the Host's async ring (ABI §3.5), full ring included."""
    status, out, err = boot_guest(BUNDLED, cmdline="lgemu.test=async_ring")
    assert (status, err) == (0, "")
    assert b"async_ring: ok\r\n" in out
    assert out.endswith(b"lgemu guest: power down\r\n")


@pytest.mark.parametrize(("mem", "device_page", "pgdir"), [
    (64, 0x4000000, 0x3FFF000),
    (32, 0x2000000, 0x1FFF000),
])
def test_verbose_describes_the_layout_on_stderr(boot_guest, mem, device_page, pgdir):
    status, out, err = boot_guest(BUNDLED, mem=mem, extra=["-v"])
    assert status == 0
    assert out == banner(mem)  # -v never touches the guest's console
    pfn = device_page >> 12
    assert f"pgdir {pgdir:#x}, pfn_limit {pfn + 5:#x}" in err
    assert f"device page at {device_page:#x}" in err
    rows = [line for line in err.splitlines() if "console" in line]
    assert len(rows) == 2
    for queue, (irq, ring_pfn) in enumerate([(1, pfn + 1), (2, pfn + 3)]):
        assert re.search(rf"console\W+{queue}\W+128\W+{irq}\W+{ring_pfn:#x}", rows[queue])
    assert "lgemu: Power down (exit 0)" in err
    assert "NOTIFY" in err and "LGUEST_INIT" in err
    assert "Traceback" not in err


def test_verbose_shows_a_kernel_path_with_brackets_as_is(boot_guest, tmp_path):
    kernel = tmp_path / "[red]" / "[" / "bold]vmlinux"  # the path reads "…[red]/[/bold]…"
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(BUNDLED.read_bytes())
    status, out, err = boot_guest(kernel, extra=["-v"])
    assert (status, out) == (0, banner())
    assert f"kernel {kernel} (elf)" in err


def test_without_verbose_stderr_is_empty(boot_guest):
    assert boot_guest(BUNDLED)[2] == ""
