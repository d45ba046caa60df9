"""Where later lguest Hosts parted from 2.6.24's, on small guests assembled in each era's ABI
(`build_guest(..., era=...)`, run with ``--abi``): what the guest sees, or how its run ends.

2.6.25 accepts write-through page-table entries; 2.6.27 gives its own trap gates the DPL of
the guest's, so an `int3` to an interrupt gate is delivered instead of a #GP.  Both were found
reading each release's drivers/lguest/ while booting the real 2.6.25 and 2.6.29 kernels
(docs/eras.md), which are exercised where shared/kernels has them
(tests/test_era_real_kernels.py).  lgemu's own virtual CPU names the era in its brand string.
"""

from __future__ import annotations

import pytest
from guestasm import assert_killed, assert_powered_down
from test_hostile import PORT_INS, PRINT_GOT

from lgemu.abi_eras import era_named
from lgemu.kills import BadHypercall, BadPageTableEntry

# A fresh directory entry (index 20, virtual 0x5000000) over a page table at 0x2000000 whose
# first entry maps `marker`'s page Present|RW|User|Accessed|Dirty and write-through (PWT),
# then a read of `marker` through it.
PWT_PTE = """
        INIT
        movl	lguest_data+LD_PGDIR, %esi
        movl	$0x2000067, 20*4(%esi)
        movl	$marker, %eax
        andl	$0xFFFFF000, %eax
        orl	$0x6F, %eax
        movl	%eax, 0x2000000
        movl	$marker, %ebx
        andl	$0xFFF, %ebx
        movl	0x5000000(%ebx), %eax
        PUTHEX	%eax
        POWER_DOWN
"""
MARKER = "marker: .long 0x600d5eed\n"


def test_a_write_through_pte_kills_a_2_6_24_guest(asm_guest):
    """2.6.24's check_gpte refused _PAGE_PWT along with _PAGE_PSE."""
    assert_killed(asm_guest(PWT_PTE, MARKER), BadPageTableEntry())


@pytest.mark.parametrize("name", ["2.6.25", "2.6.29", "2.6.32"])
def test_a_write_through_pte_is_accepted_from_2_6_25(asm_guest, name):
    """From 2.6.25 only _PAGE_PSE kills (ioremap_nocache had begun to set PWT): the guest
    reads its word through the entry."""
    run = asm_guest(PWT_PTE, MARKER, era=era_named(name))
    assert_powered_down(run, b"600d5eed")


# `int3` in ring 1 to the guest's interrupt gate for vector 3 (DPL 3, as Linux sets it for
# int3 and into): a #GP with error code 3*8+2 goes to gp_handler, a delivery to bp_handler.
INT3 = """
        INIT
        SET_GATE 13, gp_handler, GATE_TRAP
        SET_GATE 3, bp_handler, GATE_INT | DPL
        movl	$0x200, lguest_data+LD_IRQ_ENABLED
    site:
        int3
    after:
        POWER_DOWN
    bp_handler:
        PUTS	bp
        PUTHEX	(%esp)				/* EIP: after the int3 */
        PUTHEX	lguest_data+LD_IRQ_ENABLED	/* an interrupt gate turned them off */
        POWER_DOWN
    gp_handler:
        PUTS	gp
        PUTHEX	(%esp)				/* the error code */
        PUTHEX	4(%esp)				/* EIP: the int3 itself */
        POWER_DOWN
"""
INT3_DATA = 'bp: .asciz "bp "\ngp: .asciz "gp "\n'


def _hex(*values: int) -> bytes:
    return b"".join(f"{v:08x}".encode() for v in values)


@pytest.mark.parametrize("name", ["2.6.24", "2.6.25", "2.6.26"])
def test_int3_to_an_interrupt_gate_is_a_gp_until_2_6_26(asm_guest, name):
    """The Host's own gate for vector 3 was DPL 0 whatever the guest's said."""
    era = era_named(name) if name != "2.6.24" else None
    run = asm_guest(INT3.replace("DPL", "GATE_DPL3"), INT3_DATA, era=era)
    assert_powered_down(run, b"gp " + _hex(3 * 8 + 2, run.symbol("site")))


@pytest.mark.parametrize("name", ["2.6.27", "2.6.28", "2.6.29", "2.6.32", "3.13"])
def test_int3_to_an_interrupt_gate_reaches_the_guest_from_2_6_27(asm_guest, name):
    """2.6.27's Host gave its gate the guest gate's DPL and delivered the trap itself (so a
    user-mode int3 is the SIGTRAP it is natively, not a SIGSEGV)."""
    run = asm_guest(INT3.replace("DPL", "GATE_DPL3"), INT3_DATA, era=era_named(name))
    assert_powered_down(run, b"bp " + _hex(run.symbol("after"), 0))


def test_the_guests_dpl_0_still_refuses_int3_from_ring_1(asm_guest):
    run = asm_guest(INT3.replace("DPL", "0"), INT3_DATA, era=era_named("2.6.29"))
    assert_powered_down(run, b"gp " + _hex(3 * 8 + 2, run.symbol("site")))


# The command line as the Launcher left it, between brackets (cmd_line_ptr is at 0x228 of the
# zero page, which the first page tables map at its physical address).
CMDLINE = """
        INIT
        PUTS	lb
        HCALL	$LHCALL_NOTIFY, 0x228
        PUTS	rb
        POWER_DOWN
"""
BRACKETS = 'lb: .asciz "["\nrb: .asciz "]"\n'


@pytest.mark.parametrize(("name", "line"), [
    ("2.6.24", b"[console=hvc0 quiet ]"),
    ("2.6.25", b"[console=hvc0 quiet]"),
    ("2.6.29", b"[console=hvc0 quiet]"),
])
def test_the_command_line_ends_with_a_space_until_2_6_24(asm_guest, name, line):
    """2.6.24's Launcher wrote every argument followed by a space; 2.6.25's joins them."""
    era = era_named(name) if name != "2.6.24" else None
    run = asm_guest(CMDLINE, BRACKETS, cmdline="console=hvc0 quiet", era=era)
    assert_powered_down(run, line)


BRAND = "".join(f"""
        movl	${leaf:#x}, %eax
        cpuid
        movl	%eax, brand+{16 * i}
        movl	%ebx, brand+{16 * i + 4}
        movl	%ecx, brand+{16 * i + 8}
        movl	%edx, brand+{16 * i + 12}
""" for i, leaf in enumerate((0x80000002, 0x80000003, 0x80000004)))


@pytest.mark.parametrize("name", ["2.6.25", "2.6.32", "3.13"])
def test_the_cpu_brand_names_the_guests_era(asm_guest, name):
    """/proc/cpuinfo's model name says which lguest ABI lgemu gave the guest."""
    era = era_named(name)
    run = asm_guest("INIT\n" + BRAND + "PUTS brand\nPOWER_DOWN", "brand: .space 49", era=era)
    assert_powered_down(run, f"lgemu virtual CPU (lguest {era.name} ABI)".encode())


# The TS hypercall (8) with TS set, then an FPU instruction: the #NM goes to nm_handler, which
# powers off; past the fninit the guest asks to restart (status 7).
TS_THEN_FPU = """
        INIT
        SET_GATE 7, nm_handler, GATE_TRAP
        HCALL	$8, $8
        fninit
        HCALL	$LHCALL_SHUTDOWN, $why, $2
    nm_handler:
        POWER_DOWN
"""
TS_DATA = '.set LHCALL_NOTIFY, 17\nwhy: .asciz "no #NM"\n'  # 4.x has no NOTIFY (no PUTS)


def test_the_ts_hypercall_sets_ts_until_4_9(asm_guest):
    """4.4's Host kept the guest's TS bit and passed it the #NM its FPU use then raised."""
    run = asm_guest(TS_THEN_FPU, TS_DATA, era=era_named("4.9"))
    assert_powered_down(run)


@pytest.mark.parametrize("name", ["4.10", "4.13"])
def test_the_ts_hypercall_is_a_bad_hypercall_from_4_10(asm_guest, name):
    """4.10's guest stopped keeping a TS bit and its Host dropped the call: 8 kills."""
    run = asm_guest(TS_THEN_FPU, TS_DATA, era=era_named(name))
    assert_killed(run, BadHypercall(8))




@pytest.mark.parametrize(("name", "seen"), [
    ("2.6.32", b"ffffffff" b"ffffffff" b"1234ffff" b"ffff5678"),
    ("3.0", b"ffffffff" b"ffffffff" b"1234ffff" b"ffff5678"),
    ("3.1", b"ffffffff" b"1234ffff" b"123456ff" b"123456ff"),
    ("3.13", b"ffffffff" b"1234ffff" b"123456ff" b"123456ff"),
])
def test_an_unanswered_in_fills_the_bytes_it_reads_from_3_1(asm_guest, name, seen):
    """Until 3.0 lguest's emulate_insn set all of EAX for any odd opcode and 16 bits for an
    even one; 3.1's sets exactly the byte, word or dword the instruction reads."""
    run = asm_guest(PORT_INS + PRINT_GOT, "got: .fill 4, 4, 0\n", era=era_named(name))
    assert_powered_down(run, seen)


@pytest.mark.parametrize("name", ["4.4", "4.13"])
def test_a_4_x_launcher_reads_1_from_the_ps2_status_port(asm_guest, name):
    """4.x's Launcher fills the bytes read as 3.1's Host did, but answers port 0x64 with 1
    (the PS/2 controller ready): the guest compares and powers off, or asks to restart."""
    run = asm_guest(PORT_INS + """
        movl	$got, %esi
        movl	$want, %edi
        movl	$4, %ecx
        repe cmpsl
        jne	wrong
        POWER_DOWN
    wrong:
        HCALL	$LHCALL_SHUTDOWN, $why, $2
    """, TS_DATA + "got: .fill 4, 4, 0\n"
         "want: .long 0xffffffff, 0x12340001, 0x123456ff, 0x123456ff\n", era=era_named(name))
    assert_powered_down(run)
