"""Hostile guests: bad addresses, bad lengths, faults with no IDT, reaching for the Switcher or
for memory that isn't there, and random hypercalls.

Whatever a guest does, a run must end quickly with one of lgemu's exit statuses and exactly
one line on stderr (none for a power-down), never a Python traceback.  Where the ABI says
what the outcome is, the test says it exactly.
"""

from __future__ import annotations

import shutil
import struct

import pytest
from fuzzguest import Op, explains
from guestasm import (
    assert_killed,
    assert_one_line,
    assert_powered_down,
    build_guest,
    symbol_address,
    symbol_file_offset,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lgemu import abi
from lgemu.kills import (
    AlreadyInitialized,
    BadGuestAddress,
    BadHypercall,
    BadLguestData,
    BadNotifyAddress,
    BadPageDirectoryEntry,
    BadPageTableEntry,
    BadStackPage,
    BadStackSegment,
    BadSyscallVector,
    BadVirtualAddress,
    NotMemory,
    SwitcherAccess,
    TooManyGdtEntries,
    UnhandledTrap,
)

MIB = 1 << 20
MEM = 64 * MIB
LIMIT = MEM + 0x5000  # pfn_limit with only the console (ABI §1.4)
STUCK = "lgemu: guest stuck: halted with no timer set and no interrupt that can wake it\n"
PREFIXES = {1: "lgemu: guest crashed: ", 3: "lgemu: guest killed: ", 4: "lgemu: guest stuck: "}


def valid(addr: int, length: int) -> bool:
    """lguest's rule for a guest-supplied physical range (ABI §1.4)."""
    return addr + length < LIMIT


def assert_clean_end(status: int, err: str) -> None:
    """One of lgemu's statuses, one line on stderr unless it powered down, no traceback."""
    assert "Traceback" not in err
    assert status in (0, 1, 3, 4), (status, err)
    if status == 0:
        assert err == ""
    else:
        assert assert_one_line(err).startswith(PREFIXES[status]), err


# -- every hypercall that takes an address, given bad ones ----------------------------------------

ADDRESSES = [0xFFFFFFFF, 0xFFFFFFF0, MEM, LIMIT, LIMIT - 1, 0xFFC00000, 0x80000000, 0]


def expect_crash(addr):
    if valid(addr, 128):
        return (1, None)  # whatever bytes are there become the message
    return (3, BadGuestAddress("read", addr, 128))


def expect_read(length):
    def expect(addr):
        return (0, None) if valid(addr, length) else (3, BadGuestAddress("read", addr, length))
    return expect


def expect_notify(addr):
    return (0, None) if addr < LIMIT else (3, BadNotifyAddress(addr))


def expect_init(addr):
    # Inside memory the range check passes and the (zero) syscall_vec fails instead.
    return (3, BadSyscallVector()) if valid(addr, 1136) else (3, BadLguestData(addr))


def expect_pgtable(addr):
    # The next instruction fetch (PDE 0 of the new directory) reads 4 bytes at addr.
    if not valid(addr, 4):
        return (3, BadGuestAddress("read", addr, 4))
    if addr == MEM:  # the device page: "03 14 00 02" is a PDE with flag 0x400 set
        return (3, BadPageDirectoryEntry())
    # zeros: not present, and the fault is the instruction fetch itself (CR2 = EIP)
    return (3, lambda kill: isinstance(kill, UnhandledTrap) and kill.vector == 14
            and kill.detail == kill.eip)


def expect_stack(addr):
    # SET_STACK pins the page below ESP: mapped only inside the Launcher's map of RAM.
    below = (addr - 1) & 0xFFFFFFFF
    return (0, None) if below < MEM else (3, BadStackPage(below))


ADDRESS_CALLS = {
    "CRASH": ("INIT\n HCALL $LHCALL_CRASH, $ADDR", expect_crash),
    "LOAD_GDT": ("INIT\n HCALL $LHCALL_LOAD_GDT, $ADDR, $1", expect_read(8)),
    "LOAD_TLS": ("INIT\n HCALL $LHCALL_LOAD_TLS, $ADDR, $0", expect_read(24)),
    "NOTIFY": ("INIT\n HCALL $LHCALL_NOTIFY, $ADDR", expect_notify),
    "LGUEST_INIT": ("HCALL $LHCALL_LGUEST_INIT, $ADDR", expect_init),
    "NEW_PGTABLE": ("INIT\n HCALL $LHCALL_NEW_PGTABLE, $ADDR\n movl 0x100000, %eax",
                    expect_pgtable),
    "SET_STACK": ("INIT\n HCALL $LHCALL_SET_STACK, $0x69, $ADDR, $1", expect_stack),
}


@pytest.mark.parametrize("addr", ADDRESSES, ids=[f"{a:#x}" for a in ADDRESSES])
@pytest.mark.parametrize("call", ADDRESS_CALLS)
def test_bad_address_to_each_call(asm_guest, call, addr):
    body, expect = ADDRESS_CALLS[call]
    run = asm_guest(body.replace("ADDR", f"{addr:#x}") + "\n POWER_DOWN")
    status, reason = expect(addr)
    if status == 3:
        assert_killed(run, reason)
    elif status == 1:
        assert run.status == 1
        assert assert_one_line(run.err).startswith("lgemu: guest crashed: ")
    else:
        assert_powered_down(run)


M1 = "0xFFFFFFFF"
ALL_MINUS_ONE = [
    (0, 0, None),
    (1, 3, AlreadyInitialized()),
    (2, 3, BadGuestAddress("read", 0xFFFFFFFF, 128)),
    (3, 3, TooManyGdtEntries(4294967295)),
    (4, 3, BadGuestAddress("read", 0xFFFFFFFF, 4)),
    (5, 0, None),
    (6, 0, None),  # vectors past lguest's 64-entry IDT are ignored
    (7, 3, BadStackSegment(4294967295)),
    (8, 0, None),  # TS set: harmless without FPU use
    (9, 0, None),  # a timer 4.29 s away
    (10, 4, None),
    (11, 3, BadHypercall(11)),
    (14, 3, BadPageTableEntry()),
    (15, 0, None),  # PDE index >= 1023 is ignored
    (16, 3, BadGuestAddress("read", 0xFFFFFFFF, 24)),
    (17, 3, BadNotifyAddress(0xFFFFFFFF)),
]


@pytest.mark.parametrize(("nr", "status", "reason"), ALL_MINUS_ONE)
def test_every_call_with_all_arguments_minus_one(asm_guest, nr, status, reason):
    run = asm_guest(f"INIT\n HCALL ${nr}, ${M1}, ${M1}, ${M1}\n POWER_DOWN")
    if status == 3:
        assert_killed(run, reason)
    elif status == 4:
        assert (run.status, run.err) == (4, STUCK)
    else:
        assert_powered_down(run, b"")


# -- faults with nobody to take them --------------------------------------------------------------

TRAPS = [
    ("ud2", 6, 0),
    ("int3", 13, 3 * 8 + 2),  # the Host's gate for 3 has DPL 0 (ABI §5.6)
    ("int $3", 13, 3 * 8 + 2),
    ("int $0x80", 13, 0x80 * 8 + 2),
    ("int $0x20", 13, 0x20 * 8 + 2),
    ("divl %ecx", 0, 0),  # ECX is 0 after INIT's HCALL
    ("into", 13, 4 * 8 + 2),  # after an overflow, see below
    ("cli", 13, 0),
    ("hlt", 13, 0),
    ("lgdt 0x1000", 13, 0),
    ("movl %cr3, %eax", 13, 0),
    ("wbinvd", 13, 0),
    ("rdmsr", 13, 0),
    ("rep insb", 13, 0),
    ("movw %bx, %ds", 13, 0x1230),  # GDT entry 582 is past the limit
    ("ljmp $0x80, $0", 13, 0x80),  # the Host's TSS (DPL 0)
    ("lret", 13, 0x60),  # to ring 0: the stack holds 0x60 as CS
    ("movl 0x5000000, %eax", 14, 0x5000000),  # not mapped: cr2
    ("movl %eax, 0xFFC00000", 14, 0xFFC00000),  # switcher slot, guest PDE not present
]


@pytest.mark.parametrize("init", [True, False], ids=["after-init", "before-init"])
@pytest.mark.parametrize(("insn", "vector", "detail"), TRAPS, ids=[t[0] for t in TRAPS])
def test_trap_without_a_guest_idt_kills(asm_guest, insn, vector, detail, init):
    setup = """
        movl	$0x1230, %ebx
        xorl	%edi, %edi
        movl	$1, %ecx
        pushl	$0x60
        pushl	$0x100000
        movb	$0x7f, %al
        addb	$1, %al				/* OF for into */
    """
    if insn == "divl %ecx":
        setup += "xorl %ecx, %ecx\n"
    run = asm_guest(("INIT\n" if init else "") + setup + f"fault: {insn}\n POWER_DOWN")
    assert_killed(run, UnhandledTrap(vector, run.symbol('fault'), detail))


def test_trap_frame_on_an_unmapped_stack_kills(asm_guest):
    run = asm_guest("""
        INIT
        SET_GATE 6, handler, GATE_TRAP
        movl	$0x5000000, %esp
        ud2
    handler:
        POWER_DOWN
    """)
    assert_killed(run, BadVirtualAddress(0x5000000 - 12))


# Four emulated `in`s from ports nothing answers, EAX 0x12345678 before each: inl, inw from
# the PS/2 status port 0x64, inb, and a 0x66-prefixed inb.  Before LGUEST_INIT lguest's
# page_offset is 0, so this ring-1 code counts as kernel code.
PORT_INS = """
        movl	$0x12345678, %eax
        inl	$0x60, %eax
        movl	%eax, got
        movl	$0x12345678, %eax
        inw	$0x64, %ax
        movl	%eax, got+4
        movl	$0x12345678, %eax
        movw	$0x3f8, %dx
        inb	%dx, %al
        movl	%eax, got+8
        movl	$0x12345678, %eax
        .byte	0x66				/* prefixed even opcode: the high half */
        inb	%dx, %al
        movl	%eax, got+12
        INIT
"""
PRINT_GOT = "PUTHEX got\n PUTHEX got+4\n PUTHEX got+8\n PUTHEX got+12\n POWER_DOWN\n"


def test_port_io_in_ring_1_is_emulated(asm_guest):
    """ABI §5.7: `out` does nothing; `in` reads all ones (16 bits for an even opcode).  Before
    LGUEST_INIT lguest's page_offset is 0, so every ring-1 instruction counts as kernel code
    (this guest runs at its physical addresses); the results are printed after INIT."""
    run = asm_guest(PORT_INS.replace("INIT", "outb %al, $0x80\n outl %eax, %dx\n INIT")
                    + PRINT_GOT, "got: .fill 4, 4, 0\n")
    # The odd opcode (inw is 66 E5) gives all ones whatever the width: lguest's quirk.
    assert_powered_down(run, b"ffffffff" b"ffffffff" b"1234ffff" b"ffff5678")


def test_port_io_below_page_offset_is_not_emulated(asm_guest):
    """lguest emulated `in`/`out` only for kernel addresses (EIP >= kernel_address): here
    the same ring-1 instruction, below 0xC0000000 after LGUEST_INIT, is a #GP(0)."""
    run = asm_guest("INIT\n fault: inb $0x60, %al\n POWER_DOWN")
    assert_killed(run, UnhandledTrap(13, run.symbol('fault'), 0x0))


@pytest.mark.parametrize(("insn", "vector"), [("sysenter", 13), ("syscall", 6)])
def test_fast_system_calls_fault(asm_guest, insn, vector):
    """lguest zeroes SYSENTER_CS while the guest runs, so sysenter is #GP(0); syscall does
    not exist in 32-bit mode on the Intel CPU lgemu advertises (#UD).  Unicorn itself would
    run both as no-ops."""
    run = asm_guest(f"INIT\n fault: {insn}\n POWER_DOWN")
    assert_killed(run, UnhandledTrap(vector, run.symbol('fault'), 0x0))


def test_rdtscp_is_not_an_instruction_of_the_virtual_cpu(asm_guest):
    run = asm_guest("INIT\n fault: rdtscp\n POWER_DOWN")
    assert_killed(run, UnhandledTrap(6, run.symbol('fault'), 0x0))


def test_crash_message_is_not_markup_for_the_verbose_summary(asm_guest):
    run = asm_guest("INIT\n CRASH msg", 'msg: .asciz "[/bold] [red]x[/]"', extra=["-v"])
    assert run.status == 1
    assert "Traceback" not in run.err and "internal error" not in run.err
    assert run.err.endswith("\nlgemu: guest crashed: [/bold] [red]x[/]\n")
    assert run.err.count("guest crashed") == 1  # the summary does not say it again
    assert "run ended with exit status 1" in run.err


def test_halt_forever_is_stuck(asm_guest):
    run = asm_guest("INIT\n HCALL $LHCALL_HALT\n POWER_DOWN")
    assert (run.status, run.err, run.out) == (4, STUCK, b"")


# -- reaching for the Switcher and for memory that isn't there ------------------------------------

# Point PDE 1023 of the live directory somewhere present, so the guest can name the Switcher.
SWITCHER_PDE_PRESENT = """
        INIT
        movl	lguest_data+LD_PGDIR, %esi
        movl	(%esi), %eax
        movl	%eax, 0xFFC(%esi)
"""


@pytest.mark.parametrize("access", ["movl $1, 0xFFC00000", "movl 0xFFC00000, %eax",
                                    "movl $1, 0xFFC01000", "movl $1, 0xFFFFFFF0",
                                    "jmp 0xFFC00000"])
def test_touching_the_switcher_through_a_present_pde_kills(asm_guest, access):
    run = asm_guest(SWITCHER_PDE_PRESENT + access + "\n POWER_DOWN")
    assert_killed(run, SwitcherAccess())


@pytest.mark.parametrize("target", [0x5000000, MEM, LIMIT, 0xC0000000, 0xFFFFFFF0])
def test_jump_outside_ram_kills(asm_guest, target):
    run = asm_guest(f"INIT\n movl ${target:#x}, %eax\n jmp *%eax")
    assert_killed(run, UnhandledTrap(14, target, target))


# Map virtual 0x3FF000 (PTE 1023 of PDE 0, which is already in use) to FRAME.
MAP_IN_USE_PDE = """
        INIT
        movl	lguest_data+LD_PGDIR, %esi
        movl	(%esi), %edi
        andl	$0xFFFFF000, %edi
        movl	$FRAME, 0xFFC(%edi)
        movl	$0x12345678, 0x3FF000
        PUTHEX	0x3FF000
        POWER_DOWN
"""


@pytest.mark.parametrize("frame", [0x8000000, 0x40000000, 0xFFFFF000])
def test_page_outside_all_memory_kills(asm_guest, frame):
    run = asm_guest(MAP_IN_USE_PDE.replace("FRAME", f"{frame | 0x67:#x}"))
    assert_killed(run, NotMemory(frame))
    assert run.out == b""


@pytest.mark.parametrize("frame", [LIMIT, LIMIT + 0x1000, MEM + 0xFF000])
def test_page_between_pfn_limit_and_the_device_reserve_kills(asm_guest, frame):
    """Frames at or above pfn_limit are not guest memory (ABI §1.4, §7.1 step 4), even though
    the Launcher reserved 256 pages above RAM for devices."""
    run = asm_guest(MAP_IN_USE_PDE.replace("FRAME", f"{frame | 0x67:#x}"))
    assert_killed(run, NotMemory(frame))
    assert run.out == b""


def test_page_on_the_device_page_is_guest_memory(asm_guest):
    run = asm_guest(MAP_IN_USE_PDE.replace("FRAME", f"{MEM | 0x67:#x}"))
    assert_powered_down(run, b"12345678")


# A fresh PDE (index 20, virtual 0x5000000) pointing at a page table we control.
FRESH_PDE = """
        INIT
        movl	lguest_data+LD_PGDIR, %esi
        movl	$PDE, 20*4(%esi)
        movl	$PTE, 0x2000000
        movl	0x5000000, %eax
        POWER_DOWN
"""


@pytest.mark.parametrize(("pde", "pte", "reason"), [
    (0x2000000 | 0xE7, 0x100067, BadPageDirectoryEntry()),  # PSE (4 MiB page)
    (0x2000000 | 0x17, 0x100067, BadPageDirectoryEntry()),  # PCD
    (0x2000000 | 0x167, 0x100067, BadPageDirectoryEntry()),  # Global
    (LIMIT | 0x67, 0x100067, BadPageDirectoryEntry()),  # table beyond memory
    (0x2000000 | 0x67, LIMIT | 0x67, BadPageTableEntry()),
    (0x2000000 | 0x67, 0x100067 | 0x08, BadPageTableEntry()),  # PWT
    (0x2000000 | 0x67, 0x100067 | 0x80, BadPageTableEntry()),  # bit 7
])
def test_bad_fresh_page_table_entries_kill(asm_guest, pde, pte, reason):
    run = asm_guest(FRESH_PDE.replace("$PDE", f"${pde:#x}").replace("$PTE", f"${pte:#x}"))
    assert_killed(run, reason)


def test_good_fresh_page_table_entries_work(asm_guest):
    run = asm_guest(FRESH_PDE.replace("$PDE", "$0x2000067").replace("$PTE", "$0x100067")
                    .replace("POWER_DOWN", "PUTHEX %eax\n POWER_DOWN"))
    assert_powered_down(run)
    start = symbol_file_offset(run.elf, "_start")  # physical 0x100000
    first_word = struct.unpack_from("<I", run.elf.read_bytes(), start)[0]
    assert run.out == f"{first_word:08x}".encode()


def test_zeroed_ring_status_is_harmless(asm_guest):
    """All-zero ring slots decode as FLUSH_ASYNC: a guest that wipes its status bytes only
    causes no-ops (ABI §3.5)."""
    run = asm_guest("""
        INIT
        movl	$lguest_data+LD_HCALL_STATUS, %edi
        xorl	%eax, %eax
        movl	$16, %ecx
        rep stosl
        PUTS	msg
        PUTS	msg
        POWER_DOWN
    """, 'msg: .asciz "still here "')
    assert_powered_down(run, b"still here still here ")


def test_ring_entry_halts_the_guest(asm_guest):
    run = asm_guest("INIT\n ASYNC 0, $LHCALL_HALT\n HCALL $LHCALL_FLUSH_ASYNC\n POWER_DOWN")
    assert (run.status, run.err) == (4, STUCK)


# -- the same through the real command ------------------------------------------------------------

@pytest.mark.parametrize(("body", "status", "err"), [
    ("INIT\n HCALL $LHCALL_NOTIFY, $0xFFFFFFFF", 3,
     "lgemu: guest killed: bad NOTIFY address 0xffffffff\n"),
    ("INIT\n CRASH msg", 1, "lgemu: guest crashed: oops\n"),
    ("INIT\n HCALL $LHCALL_HALT", 4, STUCK),
    ("INIT\n PUTS msg\n POWER_DOWN", 0, ""),
])
def test_outcomes_through_the_lgemu_command(run_lgemu, tmp_path, body, status, err):
    elf = build_guest(tmp_path, body, 'msg: .asciz "oops"')
    proc = run_lgemu(["boot", str(elf)])
    assert (proc.returncode, proc.stderr) == (status, err)
    assert proc.stdout == (b"oops" if status == 0 else b"")


# -- random hypercalls ----------------------------------------------------------------------------

FUZZ_CALLS = 3
FUZZ_BODY = f"""
        INIT
        movl	$calls, %esi
        movl	${FUZZ_CALLS}, %edi
    next:
        movl	(%esi), %eax
        movl	4(%esi), %edx
        movl	8(%esi), %ebx
        movl	12(%esi), %ecx
        int	$0x1f
        addl	$16, %esi
        decl	%edi
        jnz	next
        PUTS	done
        POWER_DOWN
"""
FUZZ_DATA = f"""
        .balign	16
calls:	.fill	{FUZZ_CALLS * 4}, 4, 0
done:	.asciz	"done"
"""


@pytest.fixture(scope="module")
def fuzz_image(tmp_path_factory):
    """The fuzz guest, built once: (pristine ELF bytes, file offset of `calls`, work path)."""
    base = tmp_path_factory.mktemp("fuzz")
    elf = build_guest(base, FUZZ_BODY, FUZZ_DATA)
    work = base / "fuzz.elf"
    shutil.copyfile(elf, work)
    return elf.read_bytes(), symbol_file_offset(elf, "calls"), symbol_address(elf, "calls"), \
        work


INTERESTING = [0, 1, 2, 3, 8, 0x20, 0x68, 0x69, 0x80, 0xFF, 0x100, 0x1000, 0x100000,
               MEM - 1, MEM, LIMIT - 1, LIMIT, MEM + 0x1000, MEM + 0x3000, 0x7FFFFFFF,
               0x80000000, 0xC0000000, 0xFFC00000, 0xFFFFF000, 0xFFFFFFF0, 0xFFFFFFFF]
words = st.one_of(st.sampled_from(INTERESTING), st.integers(0, 0xFFFFFFFF))
numbers = st.one_of(st.integers(0, 18), st.integers(0, 0xFFFFFFFF))
calls = st.lists(st.tuples(numbers, words, words, words), min_size=1, max_size=FUZZ_CALLS)


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(calls=calls)
def test_random_hypercalls_end_cleanly(lgemu_main, fuzz_image, calls):
    pristine, offset, _, work = fuzz_image
    image = bytearray(pristine)
    padded = calls + [(0, 0, 0, 0)] * (FUZZ_CALLS - len(calls))  # FLUSH_ASYNC no-ops
    struct.pack_into(f"<{4 * FUZZ_CALLS}I", image, offset, *(w for c in padded for w in c))
    work.write_bytes(image)
    status, out, err = lgemu_main(["boot", str(work)])
    assert_clean_end(status, err)
    # The outcome these calls deserve: all of them made (then "done"), or an end one of
    # them can cause.
    made = {nr for nr, *_ in calls}
    if status == 0:
        assert out.endswith(b"done")
    elif status == 1:
        assert abi.Hcall.CRASH in made, err
    elif status == 4:
        assert abi.Hcall.HALT in made, err
    else:
        reason = assert_one_line(err).removeprefix(PREFIXES[3])
        assert explains(reason, [(Op.HCALL, *call) for call in calls]), (reason, calls)
