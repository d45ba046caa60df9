"""The Host for the eras after 2.6.24 (`lgemu.abi_eras`), on small hostile guests.

Each guest is assembled in its era's ABI (`build_guest(..., era=...)`: that era's call numbers,
argument registers, ``lguest_data`` layout and ring entries) and run with ``--abi``.  What is
judged is what the guest sees: console bytes, its own code bytes after a ``vmcall`` was
rewritten, when an interrupt arrives, and how a run ends.
"""

from __future__ import annotations

import re

import pytest
from guestasm import assert_killed, assert_powered_down, descriptor, quads

from lgemu.abi_eras import era_named
from lgemu.kills import BadHypercall, TooManyGdtEntries, UnhandledTrap

VMCALL_ERA = era_named("2.6.32")  # vmcall, five arguments, irq_pending, SET_PGD
ERA_2_6_30 = era_named("2.6.30")  # vmcall, four arguments, 16-byte ring entries
ERA_2_6_34 = era_named("3.0")  # int $0x1f, but 3.0's send_interrupts still has a vmcall
ERA_3 = era_named("3.13")  # int $0x1f in the new register order, no lguest_data.pgdir


def hexwords(*values: int) -> bytes:
    """What a run of PUTHEX prints."""
    return b"".join(f"{v & 0xFFFFFFFF:08x}".encode() for v in values)


STRINGS = """
hi:     .asciz "hi "
ok:     .asciz "ok "
"""
# 'vmcall' then the first byte of `movl site, %esi` (8b) as one little-endian word: before
# and after the Host rewrote it to `int $0x1f; nop`.
VMCALL_WORD = 0x8BC1010F
PATCHED_WORD = 0x8B901FCD


# -- vmcall (2.6.30-2.6.33, and the one left in 2.6.34-3.0) ----------------------------------------
@pytest.mark.parametrize("era", [ERA_2_6_30, VMCALL_ERA, ERA_2_6_34], ids=lambda e: e.name)
def test_a_vmcall_is_rewritten_in_guest_memory_and_runs_as_a_hypercall(asm_guest, era):
    """2.6.34-3.0 guests call with `int $0x1f`, but 3.0's send_interrupts (lg_restore_fl's
    way to ask for a pending interrupt) still makes a vmcall, which that Host rewrote too."""
    run = asm_guest("""
        INIT
        movl	$LHCALL_NOTIFY, %eax
        movl	$hi, %ebx
    site:
        vmcall
        movl	site, %esi
        PUTHEX	%esi
        POWER_DOWN
    """, STRINGS, era=era)
    assert_powered_down(run, b"hi " + hexwords(PATCHED_WORD))


def test_a_vmcall_across_a_page_boundary_is_rewritten_byte_by_byte(asm_guest):
    run = asm_guest("""
        INIT
        jmp	go
        .balign	4096
        .skip	4094
    site:
        vmcall				/* 0f 01 | c1 */
        movl	site, %esi
        PUTHEX	%esi
        POWER_DOWN
    go:
        movl	$LHCALL_NOTIFY, %eax
        movl	$hi, %ebx
        jmp	site
    """, STRINGS, era=VMCALL_ERA)
    assert run.symbol("site") % 4096 == 4094
    assert_powered_down(run, b"hi " + hexwords(PATCHED_WORD))


def test_a_vmcall_in_a_page_the_guest_mapped_read_only_is_rewritten_too(asm_guest):
    """lguest wrote the patch through guest-physical memory, whatever the PTE allows."""
    run = asm_guest("""
        INIT
        movl	lguest_data + LD_PGDIR, %edi	/* the Host's initial page directory */
        movl	$site, %eax
        shrl	$22, %eax
        movl	(%edi, %eax, 4), %edi
        andl	$0xFFFFF000, %edi		/* its page table */
        movl	$site, %eax
        shrl	$12, %eax
        andl	$0x3FF, %eax
        andl	$~2, (%edi, %eax, 4)		/* clear RW of the page holding `site` */
        HCALL	$LHCALL_FLUSH_TLB, $1
        movl	$LHCALL_NOTIFY, %eax
        movl	$hi, %ebx
        jmp	site
        .balign	4096
    site:
        vmcall
        movl	site, %esi
        PUTHEX	%esi
        movl	$1, site + 4096			/* the page after is writable... */
        movl	$1, site			/* ...this one is not: #PF */
        POWER_DOWN
    """, STRINGS, era=VMCALL_ERA)
    assert_killed(run, lambda k: isinstance(k, UnhandledTrap) and k.vector == 14)
    assert run.out == b"hi " + hexwords(PATCHED_WORD)


USER_MODE = """
        INIT
        HCALL	$LHCALL_LOAD_GDT_ENTRY, $14, $USER_CS_LO, $USER_CS_HI
        HCALL	$LHCALL_LOAD_GDT_ENTRY, $15, $USER_DS_LO, $USER_DS_HI
        HCALL	$LHCALL_SET_STACK, $0x69, $kstack_top, $1
        SET_GATE 6, ud_handler, GATE_TRAP
        pushl	$0x7B
        pushl	$ustack_top
        pushl	$0x202
        pushl	$0x73
        pushl	$user
        iret
    user:
    site:
        vmcall
        movl	site, %esi
    ud_handler:
        movw	$0x69, %ax
        movw	%ax, %ds
        PUTHEX	(%esp)				/* where the #UD was */
        PUTHEX	site
        POWER_DOWN
"""
USER_DATA = """
        .set	USER_CS_LO, {cs_lo:#x}
        .set	USER_CS_HI, {cs_hi:#x}
        .set	USER_DS_LO, {ds_lo:#x}
        .set	USER_DS_HI, {ds_hi:#x}
        .bss
        .balign	4096
        .space	4096
kstack_top:
        .space	4096
ustack_top:
"""


def test_a_vmcall_from_ring_3_is_not_a_hypercall_but_the_guests_ud(asm_guest):
    code, data = descriptor(0, access=0xFB), descriptor(0, access=0xF3)
    run = asm_guest(USER_MODE, USER_DATA.format(
        cs_lo=code & 0xFFFFFFFF, cs_hi=code >> 32, ds_lo=data & 0xFFFFFFFF, ds_hi=data >> 32),
        era=VMCALL_ERA)
    assert_powered_down(run, hexwords(run.symbol("site"), VMCALL_WORD))


def test_the_trace_shows_the_rewritten_instruction(asm_guest, tmp_path):
    trace = tmp_path / "trace"
    run = asm_guest("""
        INIT
        movl	$LHCALL_NOTIFY, %eax
        movl	$hi, %ebx
    site:
        vmcall
        POWER_DOWN
    """, STRINGS, era=VMCALL_ERA, extra=["--trace", str(trace)])
    assert_powered_down(run, b"hi ")
    site = run.symbol("site")
    lines = [line for line in trace.read_text().splitlines() if f"{site:08x}" in line
             or f"eip={site:#x}" in line]
    assert "vmcall" in lines[0] and lines[1].endswith(f"trap #UD eip={site:#x} vmcall → int $0x1f")
    assert "int $0x1f" in lines[2]


def test_int_0x1f_in_the_new_register_order(asm_guest):
    """3.x: eax = call, ebx, ecx, edx (a 2.6.24 Host would read them permuted)."""
    run = asm_guest("INIT\n PUTS hi\n POWER_DOWN", STRINGS, era=ERA_3)
    assert_powered_down(run, b"hi ")


# -- a ring-1 cli (2.6.34 on) ---------------------------------------------------------------------
CLI_GUEST = """
        INIT
        SET_GATE 13, on_gp, GATE_TRAP
        %s
        cli
        %s
    on_gp:
        %s
"""


@pytest.mark.parametrize(("era", "seen"), [(VMCALL_ERA, b"hi gp "), (ERA_2_6_34, b"hi ok "),
                                           (ERA_3, b"hi ok ")], ids=("2.6.32", "3.0", "3.13"))
def test_a_kernel_cli_is_the_guests_gp_until_2_6_34_then_stepped_over(asm_guest, era, seen):
    """2.6.34's Host (and every later one) answered the #GP of a ring-1 `cli` by moving past
    it (kernels built without cmpxchg8b emulate it with interrupts off natively); 2.6.33's
    reflected it to the guest."""
    run = asm_guest(CLI_GUEST % ("PUTS hi", "PUTS ok\n POWER_DOWN", "PUTS gp\n POWER_DOWN"),
                    STRINGS + 'gp: .asciz "gp "\n', era=era)
    assert_powered_down(run, seen)


def test_a_4_x_kernel_cli_is_stepped_over_too(asm_guest):
    """4.x moved the emulation to the Launcher, which still stepped over `cli`: the guest
    powers off rather than asking, from its #GP handler, to restart (status 7)."""
    run = asm_guest(CLI_GUEST % ("", "POWER_DOWN", "HCALL $LHCALL_SHUTDOWN, $why, $2"),
                    '.set LHCALL_NOTIFY, 17\nwhy: .asciz "gp"\n', era=era_named("4.1"))
    assert_powered_down(run)


def test_a_cli_from_ring_3_stays_the_guests_gp(asm_guest):
    """Only a kernel (ring 1) `cli` was stepped over: user mode's is its #GP, at the cli."""
    code, data = descriptor(0, access=0xFB), descriptor(0, access=0xF3)
    body = (USER_MODE.replace("SET_GATE 6,", "SET_GATE 13,").replace("vmcall", "cli")
            .replace("PUTHEX\t(%esp)", "PUTHEX\t4(%esp)"))  # #GP pushes an error code first
    run = asm_guest(body, USER_DATA.format(
        cs_lo=code & 0xFFFFFFFF, cs_hi=code >> 32, ds_lo=data & 0xFFFFFFFF, ds_hi=data >> 32),
        era=ERA_2_6_34)
    assert_powered_down(run)
    assert run.out.startswith(hexwords(run.symbol("site")))


# -- the async ring's five-argument entries (2.6.31 on) -----------------------------------------
@pytest.mark.parametrize("era", [ERA_2_6_30, VMCALL_ERA, ERA_3], ids=lambda e: e.name)
def test_ring_entries_in_each_eras_layout(asm_guest, era):
    """16 bytes in argument order (2.6.30), 20 with a fifth argument (2.6.31 on)."""
    run = asm_guest("""
        INIT
        ASYNC	0, $LHCALL_NOTIFY, $hi
        ASYNC	1, $LHCALL_NOTIFY, $ok
        HCALL	$LHCALL_FLUSH_ASYNC
        POWER_DOWN
    """, STRINGS, era=era)
    assert_powered_down(run, b"hi ok ")


# -- irq_pending and SEND_INTERRUPTS (2.6.31 on) ---------------------------------------------------
def test_an_interrupt_waiting_on_a_guest_with_interrupts_off_sets_irq_pending(asm_guest):
    """The Host says so in lguest_data.irq_pending; the guest turns interrupts on and asks with
    SEND_INTERRUPTS, and the interrupt arrives on the way back from that call."""
    run = asm_guest("""
        INIT
        SET_GATE 0x20, timer, GATE_INT
        movl	$0, lguest_data + LD_BLOCKED
        HCALL	$LHCALL_SET_CLOCKEVENT, $1000
    wait:
        cmpl	$0, lguest_data + LD_IRQ_PENDING
        je	wait
        PUTS	pending
        movl	$0x200, lguest_data + LD_IRQ_ENABLED
        movl	$0, ticks
        HCALL	$LHCALL_SEND_INTERRUPTS
        PUTHEX	ticks				/* 1: delivered before this instruction */
        PUTHEX	lguest_data + LD_IRQ_PENDING	/* cleared: nothing else waits */
        POWER_DOWN
    timer:
        incl	ticks
        movl	$0x200, lguest_data + LD_IRQ_ENABLED
        iret
    """, STRINGS + 'pending: .asciz "pending "\nticks: .long 0\n', era=VMCALL_ERA)
    assert_powered_down(run, b"pending " + hexwords(1, 0))


# -- LOAD_GDT_ENTRY (2.6.30 on) --------------------------------------------------------------------
@pytest.mark.parametrize("index", [32, 33, 0xFFFFFFFF])
def test_load_gdt_entry_beyond_the_table_is_killed(asm_guest, index):
    run = asm_guest(f"INIT\n HCALL $LHCALL_LOAD_GDT_ENTRY, ${index:#x}, $0, $0", era=VMCALL_ERA)
    assert_killed(run, TooManyGdtEntries(index))


def test_load_gdt_entry_loads_one_usable_descriptor(asm_guest):
    """A data segment based at lguest_data, loaded into %fs, reads lguest_data's fields."""
    run = asm_guest("""
        INIT
        movl	$lguest_data, %esi
        movl	%esi, %edi
        shll	$16, %esi
        orl	$0xFFFF, %esi			/* base 15..0, limit 15..0 */
        movl	%edi, %eax
        shrl	$16, %eax
        andl	$0xFF, %eax			/* base 23..16 */
        andl	$0xFF000000, %edi		/* base 31..24 */
        orl	%eax, %edi
        orl	$0x00CFB300, %edi		/* present data, DPL 1 */
        HCALL	$LHCALL_LOAD_GDT_ENTRY, $20, %esi, %edi
        movw	$(20 * 8 + 1), %ax
        movw	%ax, %fs
        PUTHEX	%fs:LD_SYSCALL_VEC
        POWER_DOWN
    """, era=VMCALL_ERA)
    assert_powered_down(run, hexwords(0x80))


def test_load_gdt_entry_cannot_replace_the_hosts_tss(asm_guest):
    """Entry 16 stays the Host's TSS: loading it into %fs is a #GP on its selector."""
    run = asm_guest("""
        INIT
        HCALL	$LHCALL_LOAD_GDT_ENTRY, $16, $0x0000FFFF, $0x00CFB300
        movw	$(16 * 8 + 1), %ax
    load:
        movw	%ax, %fs
        POWER_DOWN
    """, era=VMCALL_ERA)
    assert_killed(run, UnhandledTrap(13, run.symbol("load"), 16 * 8))


def test_the_old_load_gdt_is_gone(asm_guest):
    run = asm_guest("INIT\n HCALL $3, $gdt, $1", "gdt: " + quads(0), era=VMCALL_ERA)
    assert_killed(run, BadHypercall(3))


# -- SET_PGD and SET_PMD (2.6.31 on) ---------------------------------------------------------------
def test_set_pgd_is_2_6_24s_set_pmd_under_its_new_number(asm_guest):
    run = asm_guest("""
        INIT
        HCALL	$LHCALL_SET_PGD, lguest_data + LD_PGDIR, $0
        PUTS	ok
        POWER_DOWN
    """, STRINGS, era=VMCALL_ERA)
    assert_powered_down(run, b"ok ")


def test_set_pmd_of_a_pae_guest_is_refused_in_a_two_level_host(asm_guest):
    run = asm_guest("INIT\n HCALL $LHCALL_SET_PMD, lguest_data + LD_PGDIR, $0",
                    era=VMCALL_ERA)
    assert_killed(run, BadHypercall(13))


def test_events_name_each_eras_calls(asm_guest, tmp_path):
    events = tmp_path / "events"
    run = asm_guest("""
        INIT
        HCALL	$LHCALL_LOAD_GDT_ENTRY, $16, $0, $0
        HCALL	$LHCALL_SET_PGD, lguest_data + LD_PGDIR, $0
        HCALL	$LHCALL_SEND_INTERRUPTS
        POWER_DOWN
    """, era=VMCALL_ERA, extra=["--events", "--trace", str(events)])
    assert_powered_down(run, b"")
    text = events.read_text()
    for line in ("hcall LOAD_GDT_ENTRY index=16 desc=0x0000000000000000",
                 "hcall SET_PGD pgdir=", "hcall SEND_INTERRUPTS", "hcall SHUTDOWN reason="):
        assert line in text, line


def test_the_v_summary_names_each_eras_calls(asm_guest):
    run = asm_guest("""
        INIT
        HCALL	$LHCALL_LOAD_GDT_ENTRY, $20, $0, $0
        HCALL	$LHCALL_SEND_INTERRUPTS
        POWER_DOWN
    """, era=VMCALL_ERA, extra=["-v"])
    assert run.status == 0, run.err
    table = run.err[run.err.index("hypercalls"):]
    for name in ("LGUEST_INIT", "LOAD_GDT_ENTRY", "SEND_INTERRUPTS", "SHUTDOWN"):
        assert re.search(rf"│ {name} +│ +1 │ +0 │", table), name
