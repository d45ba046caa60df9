"""Linux-aware views of a guest: `--dmesg`, the control registers gdb sees, and gdb's
`monitor` commands, on the bundled guest and (where present) the real 2.6.24 kernel."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import lgemu_main_in_process
from gdbrun import bundled_guest, needs_gdb, run_under_gdb, symbol
from linuxkernel import real_kernel, shell_boot_args


def boot(args: list[str]) -> tuple[int, bytes, str]:
    return lgemu_main_in_process(["boot", *args])


# -- --dmesg -----------------------------------------------------------------------------------
def test_dmesg_holds_what_the_console_printed(tmp_path: Path) -> None:
    log = tmp_path / "dmesg"
    status, out, err = boot(["--dmesg", str(log)])
    assert status == 0, err
    # The bundled guest logs exactly what it prints (its console writes CR LF).
    assert log.read_bytes() == out.replace(b"\r\n", b"\n")


def test_dmesg_is_written_at_every_exit(tmp_path: Path) -> None:
    log = tmp_path / "dmesg"
    status, _, _ = boot(["--append", "crash", "--dmesg", str(log)])
    assert status == 1
    assert log.read_bytes().endswith(b"lgemu guest: crash requested\n")
    status, out, _ = boot(["--max-insns", "20000", "--dmesg", str(log)])
    assert status == 5
    assert log.read_bytes() == out.replace(b"\r\n", b"\n")
    assert out.startswith(b"lgemu guest: Linux 2.6.24")


def test_dmesg_bad_path_is_bad_input(tmp_path: Path) -> None:
    status, out, err = boot(["--dmesg", str(tmp_path / "no" / "such" / "dir")])
    assert status == 2 and out == b""
    assert err.startswith("lgemu: --dmesg") and len(err.splitlines()) == 1


def test_dmesg_of_a_kernel_without_a_log_says_why(tmp_path: Path) -> None:
    from guestasm import build_guest
    elf = build_guest(tmp_path, "\tINIT\n\tPOWER_DOWN\n")
    log = tmp_path / "dmesg"
    status, _, err = boot([str(elf), "--dmesg", str(log)])
    assert status == 0
    assert log.read_bytes() == b""
    assert "lgemu: --dmesg: no kernel log: the kernel has no log_buf" in err


# A 3.5+ kernel's structured log: two records, the older at offset 40, then the writer's
# wrap marker (a zero length) at 80, the newer at 0; log_next_idx is where the next goes.
RECORD_LOG = """
log_buf:	.long	__log_buf
log_buf_len:	.long	128
log_first_idx:	.long	40
log_next_idx:	.long	36
	.balign	4
__log_buf:
	.quad	2000000123
	.short	36, 18, 0
	.byte	0, 0xc0
	.ascii	"Calibrating delay!"
	.skip	2 + 4
	.quad	1500000
	.short	40, 22, 0
	.byte	3, 0xa0
	.ascii	"virtio_console: loaded"
	.skip	2
	.skip	48
"""


def test_dmesg_of_a_structured_log(tmp_path: Path) -> None:
    from guestasm import build_guest
    elf = build_guest(tmp_path, "\tINIT\n\tPOWER_DOWN\n", RECORD_LOG)
    log = tmp_path / "dmesg"
    status, _, err = boot([str(elf), "--dmesg", str(log)])
    assert status == 0, err
    assert log.read_text() == ("<29>[    0.001500] virtio_console: loaded\n"
                               "<6>[    2.000000] Calibrating delay!\n")


def test_real_kernel_dmesg_has_what_the_console_never_showed(tmp_path: Path) -> None:
    log = tmp_path / "dmesg"
    status, out, err = boot([*shell_boot_args(tmp_path), "--dmesg", str(log)])
    assert status == 0, err
    text = log.read_text()
    assert re.search(r"^<\d>Calibrating delay loop\.\.\. \d+\.\d+ BogoMIPS", text, re.M)
    assert b"Calibrating delay" not in out  # below the console loglevel
    assert text.startswith("<6>Reserving virtual address space above 0xffc00000\n")


# -- control registers -------------------------------------------------------------------------
@needs_gdb
def test_control_registers_in_gdb() -> None:
    elf = bundled_guest()
    run = run_under_gdb(["p/x $cr3", "break start_kernel", "continue", "p/x $cr0",
                         "p/x $cr3", "p/x $shadow_cr3", "p/x $cr4", "p/x $cr2",
                         "set $cr3 = 5", "p/x $cr3", "kill"])
    values = [int(v, 16) for v in re.findall(r"^\$\d+ = (0x[0-9a-f]+)$", run.gdb, re.M)]
    boot_cr3, cr0, cr3, shadow, cr4, cr2, after = values
    assert cr0 & 0x80000001 == 0x80000001  # paging and protection on
    assert cr3 == after == boot_cr3 != shadow  # the guest's directory; writes refused
    assert shadow >= 0xF0000000  # the Host's shadow, outside guest RAM
    assert cr2 == 0
    assert cr4 & 0x10 == 0  # no PSE: lguest 2.6.24 guests run on 4 KiB pages
    assert 'Could not write register "cr3"' in run.gdb
    assert symbol(elf, "start_kernel") and run.status == 130


@needs_gdb
def test_real_kernel_cr3_is_the_guests_page_directory() -> None:
    kernel = real_kernel()
    swapper = symbol(kernel, "swapper_pg_dir")
    # At kernel_init, paging_init has long switched to swapper_pg_dir (in start_kernel the
    # guest still runs on the Launcher's directory).
    run = run_under_gdb(["break kernel_init", "continue", "p/x $cr3", "kill"], kernel=kernel)
    cr3 = int(re.findall(r"^\$\d+ = (0x[0-9a-f]+)$", run.gdb, re.M)[-1], 16)
    assert cr3 == swapper - 0xC0000000


# -- monitor commands ----------------------------------------------------------------------------
@needs_gdb
def test_monitor_commands_on_the_bundled_guest() -> None:
    run = run_under_gdb(["monitor lguest", "break start_kernel", "continue", "monitor help",
                         "monitor lguest", "monitor devices", "monitor hcalls",
                         "monitor dmesg", "monitor ps", "monitor frobnicate", "break paging_init",
                         "continue", "monitor dmesg 1", "kill"])
    text = run.gdb
    assert "lguest_data: not yet registered (no LGUEST_INIT so far)" in text
    assert "  ps            the kernel's task list" in text
    assert re.search(r"lguest_data at 0x[0-9a-f]+ \(guest-physical\):\n  irq_enabled", text)
    assert "blocked_interrupts 0x00000001 (irq 0)" in text
    assert re.search(r"page directory     0x[0-9a-f]{8} \(the guest's\), shadow slot 0", text)
    assert "queue console.1: irq 2, pfn 0x4003, 128 entries; avail 0" in text
    assert "    no chains yet" in text
    assert re.search(r"^LGUEST_INIT +1 +0$", text, re.M)
    assert "(the log is empty)" in text  # start_kernel has not printed yet
    assert "no task list: the kernel has no init_task" in text
    assert "unknown monitor command 'frobnicate'; try 'monitor help'" in text
    # By paging_init the banner and two more lines are logged; `dmesg 1` shows the last.
    assert re.search(r"^lgemu guest: command line: \"\"$", text, re.M)
    assert "lgemu guest: Linux 2.6.24 lguest ABI" not in text  # (the console is lgemu's)
    assert run.status == 130


@needs_gdb
def test_monitor_on_the_real_kernel_in_start_kernel_and_in_user_space(tmp_path: Path) -> None:
    args = shell_boot_args(tmp_path, "echo hi\nexit\n")
    kernel = Path(args[0])
    run = run_under_gdb(["break start_kernel", "continue", "monitor ps", "monitor dmesg 1",
                         "delete", "break sys_exit", "continue", "monitor ps",
                         "monitor lguest", "monitor hcalls", "monitor devices", "kill"],
                        args[1:], kernel=kernel)
    # gdb prints `monitor` answers on its stderr, apart from its other output: split the
    # answers at the second `ps` table.
    assert "Breakpoint 2, sys_exit (" in run.gdb
    header = "    PID STATE TASK       COMM\n"
    _, first, later = run.gdb.split(header)
    assert re.search(r"^\*     0 R     0xc0242360 swapper$", first, re.M)
    assert "<6>Reserving virtual address space above 0xffc00000" in first
    # The shell (pid 1, exec'd as init) ran `mount`, which is exiting.
    assert re.search(r"^      1 [RS] +0x[0-9a-f]{8} init$", later, re.M)
    assert re.search(r"^      2 S     0x[0-9a-f]{8} kthreadd$", later, re.M)
    assert re.search(r"^\* +\d+ R     0x[0-9a-f]{8} \S+$", later, re.M)
    assert "irq_enabled        0x282 (on)" in later or "irq_enabled        0x200 (on)" in later
    assert re.search(r"^SET_PMD +\d+ +0$", later, re.M)
    # The shell has written its prompt through the console's output queue.
    assert "status 0x07 ack|driver|ok\n  queue console.0: " in later
    assert re.search(r"  queue console.1: irq 2, pfn 0x4003, 128 entries; avail [1-9]\d*, "
                     r"host at [1-9].*\n    last offered: head \d+; last returned: head \d+, "
                     r"len \d+\n", later)
    assert run.status == 130
