"""SECURITY.md, checked: the Launcher's refusal of non-lguest kernels, the Host's answer to
hostile guests on the paths the fuzz tests found, the run limits, every way a run ends on a
terminal, and the classic attacks on a virtqueue, end to end.

The fuzz tests (tests/test_fuzz_*.py) show that random hostile input ends cleanly; the tests
here pin the exact outcome of the attacks SECURITY.md names.
"""

from __future__ import annotations

import io
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SUBPROCESS_TIMEOUT
from elfimage import bzimage
from guestasm import assert_killed, assert_one_line, build_guest, tools_or_skip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from virtioasm import AVAIL, DEVPT_BSS, MACROS, USED, map_device_pages, ring

from lgemu.errors import UserError
from lgemu.kills import BrokenVring, SegmentLoad
from lgemu.launcher.guestcheck import LGUEST_SYMBOLS, guest_problem
from lgemu.launcher.loader import load_kernel
from lgemu.signals import SIGNALS

REMEDY = "(build the kernel with CONFIG_LGUEST_GUEST=y)"

# -- a vmlinux that is not an lguest guest ------------------------------------------------------


def kernel_with(tmp_path: Path, *symbols: str, weak: tuple[str, ...] = ()) -> Path:
    """A tiny bootable guest (it powers down) that also defines `symbols` (global) and
    `weak` (weak), the way a vmlinux built with or without CONFIG_LGUEST_GUEST would."""
    lines = [f"\t.globl {name}\n{name}:" for name in symbols]
    lines += [f"\t.weak {name}\n{name}:" for name in weak]
    return build_guest(tmp_path, "\tINIT\n\tPOWER_DOWN\n" + "\n".join(lines) + "\n\tud2\n")


def test_a_linux_kernel_without_lguest_is_refused_with_the_remedy(run_lgemu, tmp_path):
    kernel = kernel_with(tmp_path, "start_kernel", "linux_banner")
    proc = run_lgemu(["boot", kernel])
    assert proc.returncode == 2 and proc.stdout == b""
    assert proc.stderr == (f"lgemu: {kernel}: not an lguest guest: no lguest_init symbol "
                           f"{REMEDY}\n")


@pytest.mark.parametrize(("symbols", "weak", "problem"), [
    (("start_kernel",), (), f"no lguest_init symbol {REMEDY}"),
    (("linux_banner", "lguest_entry"), (), f"no lguest_init symbol {REMEDY}"),
    (("start_kernel", "lguest_init"), (), f"no lguest_entry symbol {REMEDY}"),
    # CONFIG_PARAVIRT without lguest: head_32.S's weak lguest_entry is a ud2a
    (("start_kernel", "lguest_init"), ("lguest_entry",),
     f"lguest_entry is only head_32.S's weak placeholder {REMEDY}"),
    # PAE is the era's question (tests/test_pae_guests.py), not whether it is a guest
    (("start_kernel", "__pmd_alloc"), ("lguest_entry",), f"no lguest_init symbol {REMEDY}"),
])
def test_what_is_missing_is_named(lgemu_main, tmp_path, symbols, weak, problem):
    kernel = kernel_with(tmp_path, *symbols, weak=weak)
    status, out, err = lgemu_main(["boot", str(kernel)])
    assert (status, out) == (2, b"")
    assert assert_one_line(err) == f"lgemu: {kernel}: not an lguest guest: {problem}"


@pytest.mark.parametrize("symbols", [
    ("start_kernel", "lguest_init", "lguest_entry"),  # what a 2.6.24 guest has
    ("linux_banner", "lguest_init", "lguest_entry"),
    ("lguest_init",),  # not Linux at all (no start_kernel, no linux_banner): no opinion
    (),
])
def test_lguest_guests_and_non_linux_images_boot(lgemu_main, tmp_path, symbols):
    status, _, err = lgemu_main(["boot", str(kernel_with(tmp_path, *symbols))])
    assert (status, err) == (0, "")


def test_tools_that_only_describe_a_kernel_can_skip_the_check(tmp_path):
    kernel = kernel_with(tmp_path, "start_kernel")
    with pytest.raises(UserError):
        load_kernel(kernel)
    assert load_kernel(kernel, check_guest=False).kind == "elf"
    with kernel.open("rb") as f:
        assert guest_problem(f) == f"no lguest_init symbol {REMEDY}"


def test_a_stripped_kernel_is_not_judged(lgemu_main, tmp_path):
    tools_or_skip()
    strip = shutil.which("strip")
    if strip is None:
        pytest.skip("strip not installed")
    kernel = tmp_path / "stripped.elf"
    shutil.copyfile(kernel_with(tmp_path, "start_kernel"), kernel)
    subprocess.run([strip, "--strip-all", str(kernel)], check=True)
    status, _, err = lgemu_main(["boot", str(kernel)])
    assert (status, err) == (0, "")


def test_the_bundled_guest_passes_the_check():
    from lgemu.firmware_path import bundled_guest

    with bundled_guest().open("rb") as f:
        assert guest_problem(f) is None


@pytest.mark.parametrize(("version", "problem"), [
    (0x0205, "bzImage speaks boot protocol 2.05; lguest guests need 2.06 (Linux 2.6.23) or "
             "later"),
    (0x0200, "bzImage speaks boot protocol 2.00; lguest guests need 2.06 (Linux 2.6.23) or "
             "later"),
    (0x0206, None),  # 2.6.23's, entered after its "GenuineLguest" marker
    (0x0207, None),
    (0x020A, None),
])
def test_a_bzimage_older_than_boot_protocol_2_06_is_refused(tmp_path, version, problem):
    path = tmp_path / "bzImage"
    path.write_bytes(bzimage(b"\x90" * 64, version=version))
    if problem is None:
        assert load_kernel(path).kind == "bzImage"
        return
    with pytest.raises(UserError) as refused:
        load_kernel(path)
    assert refused.value.line() == f"lgemu: {path}: not an lguest guest: {problem}"


@pytest.fixture(scope="module")
def linux_like_elf(tmp_path_factory) -> bytes:
    """A non-lguest 'vmlinux' with a symbol table: the check has something to read."""
    return kernel_with(tmp_path_factory.mktemp("guestcheck"), "start_kernel").read_bytes()


def _table_extents(image: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Read independently of the check (with pyelftools): the end of the loadable segments'
    file bytes, and the byte ranges the check's answer rests on — the ELF header's section
    fields, the section header table, .symtab and its string table."""
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(image))
    loaded_end = max(seg["p_offset"] + seg["p_filesz"] for seg in elf.iter_segments()
                     if seg["p_type"] == "PT_LOAD")
    symtab = elf.get_section_by_name(".symtab")
    strtab = elf.get_section(symtab["sh_link"])
    shoff = elf["e_shoff"]
    return loaded_end, [(32, 36), (46, 50), (shoff, shoff + elf["e_shnum"] * 40),
                        (symtab["sh_offset"], symtab["sh_offset"] + symtab["sh_size"]),
                        (strtab["sh_offset"], strtab["sh_offset"] + strtab["sh_size"])]


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_section_tables_are_read_safely(tmp_path, linux_like_elf, data):
    """Corrupt section headers, symbol and string tables.  While what the check reads is
    intact, its answer is exactly the unmutated file's; once it is damaged, the check says
    that, nothing (it cannot tell), or — when start_kernel's entry is lost too — that the
    symbols show no sign of lguest at all.  Loading agrees with the check: a refusal about
    lguest is the check's very line (any other is one line about the file's structure), and
    it loads only when the check said nothing and no loaded byte was cut off."""
    image = bytearray(linux_like_elf)
    loaded_end, needed = _table_extents(linux_like_elf)
    shoff, = struct.unpack_from("<I", image, 32)
    regions = [(shoff, len(image)), (0x1000, len(image)), (32, 52)]
    written: list[tuple[int, int]] = []
    for _ in range(data.draw(st.integers(1, 8))):
        start, end = data.draw(st.sampled_from(regions))
        at = data.draw(st.integers(start, max(start, end - 4)))
        value = data.draw(st.one_of(st.integers(0, 0xFFFFFFFF),
                                    st.sampled_from([0, 0xFFFFFFFF, len(image), 40, 2])))
        at = min(at, len(image) - 4)
        if struct.unpack_from("<I", image, at)[0] != value:
            written.append((at, at + 4))
        struct.pack_into("<I", image, at, value)
    cut = data.draw(st.one_of(st.none(), st.integers(52, len(image))))
    path = tmp_path / "mutated.elf"
    path.write_bytes(bytes(image[:cut]))
    intact = (cut is None or cut >= max(end for _, end in needed)) and not any(
        a < end and begin < b for a, b in written for begin, end in needed)
    certain = f"no lguest_init symbol {REMEDY}"
    # A damaged table can lose start_kernel too: then it is an ELF with symbols and no sign of
    # lguest at all, which the check refuses as not a kernel (see guestcheck's docstring).
    unmarked = f"it has none of the lguest symbols {', '.join(LGUEST_SYMBOLS)}"
    with path.open("rb") as f:
        problem = guest_problem(f)
    if intact:
        assert problem == certain
    else:
        assert problem in (None, certain, unmarked)
    try:
        kernel = load_kernel(path)
    except UserError as e:
        line = e.line()
        assert line.startswith(f"lgemu: {path}: ") and "\n" not in line, line
        if "lguest" in line:  # the check's verdict, word for word
            assert line == f"lgemu: {path}: not an lguest guest: {problem}", line
    else:
        assert problem is None
        assert kernel.kind == "elf"
        assert cut is None or cut >= loaded_end


# -- the Host on paths the fuzz tests found --------------------------------------------------------

# Guest entry 12 (the kernel code segment every trap enters through) replaced by nothing: the
# Host cannot enter the guest's handler any more, whether it delivers from a hook (a trap) or
# between slices (a timer interrupt, or a fault found by an instruction hook such as
# sysenter's).  Each is lguest's "unhandled trap 256", never an internal error.
BROKEN_KERNEL_CS = r"""
	INIT
	SET_GATE 0x20, handler, GATE_INT
	SET_GATE 13, handler, GATE_TRAP
	SET_GATE 6, handler, GATE_TRAP
	movl	$0, lguest_data+LD_BLOCKED
	movl	$0x200, lguest_data+LD_IRQ_ENABLED
	HCALL	$LHCALL_LOAD_GDT, $gdt, $13
	TRIGGER
handler:
	POWER_DOWN
"""


@pytest.mark.parametrize("trigger", [
    "HCALL $LHCALL_SET_CLOCKEVENT, $1000\n1: jmp 1b",  # timer, delivered between slices
    "sysenter",  # #GP found by an instruction hook, delivered at the slice's end
    "ud2",  # #UD, delivered from the hook
])
def test_delivery_through_a_broken_kernel_code_segment_kills(asm_guest, trigger):
    run = asm_guest(BROKEN_KERNEL_CS.replace("TRIGGER", trigger), "gdt: .fill 26, 4, 0\n")
    assert_killed(run, SegmentLoad("cannot load CS with 0x61 in ring 1"))


# -- limits while the guest is halted ------------------------------------------------------------

HALT_FOREVER = r"""
	INIT
	SET_GATE 0x20, tick, GATE_INT
	movl	$0, lguest_data+LD_BLOCKED
1:	HCALL	$LHCALL_SET_CLOCKEVENT, $0xFFFFFFFF	/* 4.29 s */
	HCALL	$LHCALL_HALT
	PUTS	woke
	jmp	1b
tick:
	iret
"""


class FakeTime:
    """time.monotonic/monotonic_ns/sleep on a clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def monotonic_ns(self) -> int:
        return int(self.now * 1e9)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)


def test_timeout_ends_a_realtime_guest_halted_on_a_long_timer(asm_guest, monkeypatch):
    """A realtime halt sleeps on the host's clock; it must not sleep through --timeout (the
    timer is 4.29 s away, the timeout 0.5 s).  Time is faked, so the test waits for nothing."""
    fake = FakeTime()
    for name in ("monotonic", "monotonic_ns", "sleep"):
        monkeypatch.setattr(time, name, getattr(fake, name))
    monkeypatch.setattr(SIGNALS, "sleep", fake.sleep)  # lgemu's signal-aware sleep
    start = fake.now
    run = asm_guest(HALT_FOREVER, 'woke: .asciz "woke "',
                    extra=["--clock", "realtime", "--timeout", "0.5"])
    assert run.status == 6 and run.out == b""
    assert assert_one_line(run.err) == "lgemu: timeout: 0.5 s of wall-clock time"
    assert fake.now - start <= 0.5 + 1e-6, fake.slept


@pytest.mark.parametrize(("sig", "status", "line"), [
    (signal.SIGTERM, 143, "lgemu: terminated by SIGTERM"),
    (signal.SIGINT, 130, "lgemu: interrupted"),
])
def test_a_signal_ends_a_realtime_halt_at_once(tmp_path, sig, status, line):
    elf = build_guest(tmp_path, HALT_FOREVER.replace("1:\tHCALL", "PUTS ready\n1:\tHCALL"),
                      'woke: .asciz "woke "\nready: .asciz "ready"\n')
    proc = subprocess.Popen([sys.executable, "-m", "lgemu", "boot", str(elf), "--clock",
                             "realtime"], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(5) == b"ready"  # halted on its 4.29 s timer from now on
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == status
    assert out == b""  # no "woke": the signal ended the 4.29 s halt
    assert err.decode() == line + "\n"


# -- a terminal is restored however the run ends ------------------------------------------------

@pytest.mark.parametrize(("body", "extra", "status", "line"), [
    ("1: HCALL $LHCALL_NOTIFY, $0xFFFFFFFF", [], 3,
     "lgemu: guest killed: bad NOTIFY address 0xffffffff"),
    ("CRASH boom", [], 1, "lgemu: guest crashed: boom"),
    ("1: jmp 1b", ["--max-insns", "3000000"], 5, "lgemu: instruction limit of 3000000 reached"),
    ("1: jmp 1b", ["--timeout", "0.5"], 6, "lgemu: timeout: 0.5 s of wall-clock time"),
    ("1: jmp 1b", ["SIGTERM"], 143, "lgemu: terminated by SIGTERM"),
])
def test_the_terminal_is_restored_however_the_run_ends(tmp_path, body, extra, status, line):
    elf = build_guest(tmp_path, "\tINIT\n\tPUTS ready\n\t" + body + "\n",
                      'ready: .asciz "ready\\n"\nboom: .asciz "boom"\n')
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        signal_it = extra == ["SIGTERM"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "lgemu", "boot", str(elf), *([] if signal_it else extra)],
            cwd=REPO_ROOT, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen = b""
        while b"ready" not in seen and len(seen) < 100:
            ready, _, _ = select.select([proc.stdout], [], [], SUBPROCESS_TIMEOUT)
            chunk = os.read(proc.stdout.fileno(), 64) if ready else b""
            if not chunk:
                break
            seen += chunk
        if signal_it:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
        assert proc.returncode == status
        assert err.decode() == line + "\n"
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


# -- the classic attacks on a virtqueue, end to end ----------------------------------------------

OUT = ring(1)  # the console's output queue (console-only guest: input queue 0, output 1)
DESC_ADDR_HI = 4


def desc(index: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> str:
    """Descriptor `index` of the output queue, with a full 64-bit address."""
    base = OUT + 16 * index
    return (f"\tmovl\t${addr & 0xFFFFFFFF:#x}, {base:#x}\n"
            f"\tmovl\t${addr >> 32:#x}, {base + DESC_ADDR_HI:#x}\n"
            f"\tmovl\t${length:#x}, {base + 8:#x}\n"
            f"\tmovw\t${flags:#x}, {base + 12:#x}\n"
            f"\tmovw\t${nxt:#x}, {base + 14:#x}\n")


def offer(head: int) -> str:
    return f"\tPOST\t{OUT:#x}, ${head}\n"


KICK = f"\tKICK\t{OUT:#x}\n"
MSG = 0x100000  # any byte of the guest image will do as a buffer


def attack(asm_guest, setup: str):
    return asm_guest(MACROS + "\tINIT\n" + map_device_pages(2) + setup + "\tPOWER_DOWN\n",
                     DEVPT_BSS)


@pytest.mark.parametrize(("setup", "reason"), [
    # descriptor loops: on itself, and through a cycle of three
    (desc(0, MSG, 4, 1, 0) + offer(0) + KICK,
     "chain from head 0 is longer than 128 (a loop)"),
    (desc(5, MSG, 4, 1, 6) + desc(6, MSG, 4, 1, 7) + desc(7, MSG, 4, 1, 5) + offer(5) + KICK,
     "chain from head 5 is longer than 128 (a loop)"),
    # huge lengths
    (desc(0, MSG, 0xFFFFFFFF) + offer(0) + KICK,
     "descriptor 0 buffer 0x100000+4294967295 is outside guest memory"),
    (desc(0, MSG, 0x4000000) + offer(0) + KICK,
     "descriptor 0 buffer 0x100000+67108864 is outside guest memory"),
    # wrapping addresses: past 4 GiB in 32 bits, and the 64-bit address's high half
    (desc(0, 0xFFFFF000, 0x2000) + offer(0) + KICK,
     "descriptor 0 buffer 0xfffff000+8192 is outside guest memory"),
    (desc(0, 0x1_0010_0000, 4) + offer(0) + KICK,
     "descriptor 0 buffer 0x100100000+4 is outside guest memory"),
    (desc(0, 0xFFFFFFFF_FFFFF000, 0x1001) + offer(0) + KICK,
     "descriptor 0 buffer 0xfffffffffffff000+4097 is outside guest memory"),
    # index jumps: avail.idx far ahead, a head and a link beyond the ring
    (f"\tmovw\t$200, {OUT + AVAIL + 2:#x}\n" + KICK,
     "avail index moved from 0 to 200, more than the ring size 128"),
    (f"\tmovw\t$0xFFFF, {OUT + AVAIL + 2:#x}\n" + KICK,
     "avail index moved from 0 to 65535, more than the ring size 128"),
    (desc(0, MSG, 4) + offer(0xFFFF) + KICK, "head index 65535 at avail slot 0 is not below 128"),
    (desc(0, MSG, 4, 1, 128) + offer(0) + KICK, "descriptor 0 links to 128, not below 128"),
])
def test_classic_vring_attacks_kill_with_the_check_named(asm_guest, setup, reason):
    run = attack(asm_guest, setup)
    assert_killed(run, BrokenVring("console.1", reason))
    assert run.out == b""


FLOOD = rf"""
	movl	$ROUNDS, %edi
2:	movl	$128, %esi			/* fill the whole ring, never look at used */
1:	movl	%esi, %ebp
	decl	%ebp				/* descriptor esi-1 */
	movl	%ebp, %ebx
	shll	$4, %ebx
	movl	$x, {OUT:#x}(%ebx)
	movl	$0, {OUT + 4:#x}(%ebx)
	movl	$1, {OUT + 8:#x}(%ebx)
	movl	$0, {OUT + 12:#x}(%ebx)
	POST	{OUT:#x}, %bp
	KICK_EACH
	decl	%esi
	jnz	1b
	KICK_ROUND
	decl	%edi
	jnz	2b
	movzwl	{OUT + USED + 2:#x}, %eax
	PUTHEX	%eax
"""


@pytest.mark.parametrize(("rounds", "each"), [(8, True), (520, False)])
def test_a_guest_flooding_the_ring_without_waiting_is_served(asm_guest, rounds, each):
    """Buffers offered as fast as the guest can, kicked one by one or a full ring at a time,
    never waiting for the used ring: every byte comes out once, in order, and the used index
    wraps at 65536 like the avail index (520 rounds of 128 is 66560 buffers)."""
    body = (FLOOD.replace("ROUNDS", str(rounds))
            .replace("KICK_EACH", KICK if each else "")
            .replace("KICK_ROUND", "" if each else KICK))
    run = asm_guest(MACROS + "\tINIT\n" + map_device_pages(2) + body + "\tPOWER_DOWN\n",
                    'x: .ascii "x"\n' + DEVPT_BSS)
    assert (run.status, run.err) == (0, "")
    total = 128 * rounds
    assert run.out == b"x" * total + f"{total & 0xFFFF:08x}".encode()


def test_a_guest_offering_more_than_the_ring_between_kicks_is_killed(asm_guest):
    """129 buffers offered before a kick: avail.idx ran past what the ring can hold."""
    body = desc(0, MSG, 1) + "".join(offer(0) for _ in range(129)) + KICK
    run = attack(asm_guest, body)
    assert_killed(run, BrokenVring("console.1", "avail index moved from 0 to 129, more than "
                                                "the ring size 128"))


@pytest.mark.parametrize(("where", "insn"), [(OUT + USED, "movl"), (OUT + USED + 4, "movl"),
                                            (OUT + USED + 0x400, "movl"), (OUT + AVAIL, "movw")])
def test_scribbling_on_host_owned_ring_fields_only_confuses_the_guest(asm_guest, where, insn):
    """The used ring (flags, index, entries) and avail.flags are written or read by the Host
    but never trusted: a guest that scribbles on them gets its bytes printed all the same."""
    body = (f"\t{insn}\t$0xFFFFFFFF, {where:#x}\n" + desc(0, MSG + 0x10, 0) + desc(1, MSG, 2)
            + offer(1) + KICK + f"\t{insn}\t$0x5A5A5A5A, {where:#x}\n" + offer(1) + KICK)
    run = attack(asm_guest, body)
    assert (run.status, run.err) == (0, "")
    assert len(run.out) == 4


def test_a_notify_of_the_second_ring_page_is_an_early_console_string(asm_guest):
    """Only the ring's own page is a kick (ABI §10.5); its second page is just memory."""
    run = attack(asm_guest, f"\tHCALL\t$LHCALL_NOTIFY, ${OUT + 0x1000:#x}\n")
    assert (run.status, run.err, run.out) == (0, "", b"")

