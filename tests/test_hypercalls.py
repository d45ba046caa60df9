"""Hypercalls (ABI §3) as a guest sees them, one call at a time, with tiny assembler guests.

Every test boots a guest built by `guestasm` and judges lgemu only by what a user or the guest
can observe: the console bytes the guest prints (often hex dumps of memory the Host wrote),
the exit status, and the one line on stderr.  Kill reasons are the strings of ABI §3.6 with the
values lgemu formats into them.
"""

from __future__ import annotations

import re

import pytest
from guestasm import (
    assert_crashed,
    assert_killed,
    assert_powered_down,
    descriptor,
    quads,
)
from virtioasm import DEVPT_BSS, map_device_pages

from lgemu.kills import (
    AlreadyInitialized,
    BadGuestAddress,
    BadHypercall,
    BadIdtType,
    BadKernelAddress,
    BadLguestData,
    BadNotifyAddress,
    BadPageTableEntry,
    BadStackPage,
    BadStackPages,
    BadStackSegment,
    BadSyscallVector,
    HypercallBeforeInit,
    TooManyGdtEntries,
    UnhandledTrap,
)

MIB = 1 << 20
MEM = 64 * MIB
# pfn_limit with only the console (ABI §1.4): device page, then two 2-page vrings.
LIMIT = MEM + 0x1000 + 2 * 0x2000
EPOCH = 1_201_132_800  # lgemu's virtual wall clock at boot (2008-01-24)

NOTIFY_STRINGS = """
s_zero:	.asciz	"zero "
s_one:	.asciz	"one "
s_two:	.asciz	"two "
s_sync:	.asciz	"sync"
"""


def hexwords(*values: int) -> bytes:
    """What a run of PUTHEX prints."""
    return b"".join(f"{v & 0xFFFFFFFF:08x}".encode() for v in values)


# -- LHCALL_LGUEST_INIT (ABI §3.4) ----------------------------------------------------------------

@pytest.mark.parametrize("nr", [0, 2, 5, 10, 17, 18])
def test_any_hypercall_before_init_is_killed(asm_guest, nr):
    run = asm_guest(f"HCALL ${nr}, $s_zero\n PUTS s_one", NOTIFY_STRINGS)
    assert_killed(run, HypercallBeforeInit(nr))
    assert run.out == b""


def test_init_then_notify_works(asm_guest):
    run = asm_guest("INIT\n PUTS s_zero\n PUTS s_one\n POWER_DOWN", NOTIFY_STRINGS)
    assert_powered_down(run, b"zero one ")


@pytest.mark.parametrize(("mem", "initrd_size", "pgdir"), [
    (64, 0, 0x03FFF000),
    (32, 0, 0x01FFF000),
    (8, 0, 0x007FF000),
    (64, 5000, 0x03FFD000),  # the initrd (rounded to 8 KiB) sits above the directory
])
def test_init_fills_in_the_host_fields(asm_guest, tmp_path, mem, initrd_size, pgdir):
    extra = []
    if initrd_size:
        initrd = tmp_path / "initrd"
        initrd.write_bytes(b"\x5a" * initrd_size)
        extra = ["--initrd", str(initrd)]
    # Garbage first, so every field printed below must have been written by the Host.
    run = asm_guest("""
        movl	$0x11111111, lguest_data+LD_RESERVE_MEM
        movl	$0x22222222, lguest_data+LD_TSC_KHZ
        movl	$0x33333333, lguest_data+LD_PGDIR
        movl	$0x44444444, lguest_data+LD_TIME
        movl	$0x55555555, lguest_data+LD_TIME_NSEC
        INIT
        PUTHEX	lguest_data+LD_RESERVE_MEM
        PUTHEX	lguest_data+LD_TSC_KHZ
        PUTHEX	lguest_data+LD_PGDIR
        PUTHEX	lguest_data+LD_TIME
        PUTHEX	lguest_data+LD_TIME_NSEC
        PUTHEX	lguest_data+LD_BLOCKED
        PUTHEX	lguest_data+LD_IRQ_ENABLED
        POWER_DOWN
    """, mem=mem, extra=extra)
    assert_powered_down(run)
    assert run.out[:32] == hexwords(0x400000, 0, pgdir, EPOCH)
    assert 0 <= int(run.out[32:40], 16) < 1_000_000_000  # a valid tv_nsec
    assert run.out[40:] == hexwords(1, 0)  # the guest's own fields are left alone


def test_launcher_pgdir_given_at_init_is_the_live_directory(asm_guest):
    """The pgdir the Host reports is the directory the guest is running on: its PDE 0 maps
    the code we are executing (the PTE for 0x100000 maps 0x100000)."""
    run = asm_guest("""
        INIT
        movl	lguest_data+LD_PGDIR, %esi
        movl	(%esi), %eax
        andl	$0xFFFFF000, %eax
        movl	0x400(%eax), %eax		/* PTE 256: virtual 0x100000 */
        PUTHEX	%eax
        POWER_DOWN
    """)
    # Present, writable, user; Accessed (0x20) too, since we are executing from it.
    assert_powered_down(run, hexwords(0x100027))


def test_second_init_is_killed(asm_guest):
    run = asm_guest("INIT\n PUTS s_zero\n INIT\n PUTS s_one", NOTIFY_STRINGS)
    assert_killed(run, AlreadyInitialized())
    assert run.out == b"zero "


@pytest.mark.parametrize("addr", [
    0xFFFFFFFF,
    0xFFFFF000,
    LIMIT - 1136,  # would end exactly at pfn_limit: lguest's check needs (addr+len) below it
    LIMIT,
    MEM + 0x100000,
    0x80000000,
])
def test_init_with_a_bad_address_is_killed(asm_guest, addr):
    run = asm_guest(f"HCALL $LHCALL_LGUEST_INIT, ${addr:#x}\n PUTS s_zero", NOTIFY_STRINGS)
    assert_killed(run, BadLguestData(addr))


def test_init_just_inside_memory_is_accepted_but_reads_zero_syscall_vec(asm_guest):
    """[LIMIT-1137, LIMIT-1) is valid guest memory (zeros), so the range check passes and
    the zero syscall_vec is what gets the guest killed."""
    run = asm_guest(f"HCALL $LHCALL_LGUEST_INIT, ${LIMIT - 1137:#x}")
    assert_killed(run, BadSyscallVector())


@pytest.mark.parametrize("vec", [0x81, 0, 0x180, 0xFFFFFFFF])
def test_init_rejects_a_syscall_vector_other_than_0x80(asm_guest, vec):
    run = asm_guest(f"movl ${vec:#x}, lguest_data+LD_SYSCALL_VEC\n INIT\n PUTS s_zero",
                    NOTIFY_STRINGS)
    assert_killed(run, BadSyscallVector())
    assert run.out == b""


@pytest.mark.parametrize("kernel_address", [0xFFC00000, 0xFFFFFFFF, 0xFFD00000])
def test_init_rejects_a_kernel_address_in_the_switcher_slot(asm_guest, kernel_address):
    run = asm_guest(f"movl ${kernel_address:#x}, lguest_data+LD_KERNEL_ADDRESS\n INIT\n"
                    " PUTS s_zero", NOTIFY_STRINGS)
    assert_killed(run, BadKernelAddress(kernel_address))


@pytest.mark.parametrize("kernel_address", [0xFFBFFFFF, 0x80000000, 0x400000])
def test_init_accepts_other_kernel_addresses(asm_guest, kernel_address):
    run = asm_guest(f"movl ${kernel_address:#x}, lguest_data+LD_KERNEL_ADDRESS\n INIT\n"
                    " PUTS s_zero\n POWER_DOWN", NOTIFY_STRINGS)
    assert_powered_down(run, b"zero ")


def test_registers_come_back_unchanged(asm_guest):
    """ABI §3.1: nothing is returned; EAX still holds the call number."""
    run = asm_guest("""
        INIT
        movl	$0x51515151, %esi
        movl	$0xd1d1d1d1, %edi
        movl	$0xb0b0b0b0, %ebp
        movl	%esp, saved_esp
        movl	$LHCALL_FLUSH_TLB, %eax
        movl	$0, %edx
        movl	$0x12345678, %ebx
        movl	$0x9abcdef0, %ecx
        int	$0x1f
        PUTHEX	%eax
        PUTHEX	%ebx
        PUTHEX	%ecx
        PUTHEX	%edx
        PUTHEX	%esi
        PUTHEX	%edi
        PUTHEX	%ebp
        movl	%esp, %eax
        subl	saved_esp, %eax
        PUTHEX	%eax
        POWER_DOWN
    """, "saved_esp: .long 0")
    assert_powered_down(run, hexwords(5, 0x12345678, 0x9ABCDEF0, 0, 0x51515151, 0xD1D1D1D1,
                                      0xB0B0B0B0, 0))


# -- unknown calls --------------------------------------------------------------------------------

@pytest.mark.parametrize("nr", [11, 12, 13, 18, 19, 0x100, 0x7FFFFFFF, 0xFFFFFFFF])
def test_unknown_hypercall_is_killed(asm_guest, nr):
    run = asm_guest(f"INIT\n PUTS s_zero\n HCALL ${nr:#x}\n PUTS s_one", NOTIFY_STRINGS)
    assert_killed(run, BadHypercall(nr))
    assert run.out == b"zero "


# -- LHCALL_CRASH (ABI §9.2) ----------------------------------------------------------------------

def test_crash_reports_the_message(asm_guest):
    run = asm_guest("INIT\n PUTS s_zero\n CRASH msg\n",
                    NOTIFY_STRINGS + 'msg: .asciz "Kernel panic: attempted to kill init!"')
    assert_crashed(run, "Kernel panic: attempted to kill init!")
    assert run.out == b"zero "


def test_power_down_is_exit_zero_with_nothing_on_stderr(asm_guest):
    run = asm_guest("INIT\n PUTS s_zero\n POWER_DOWN", NOTIFY_STRINGS)
    assert_powered_down(run, b"zero ")


@pytest.mark.parametrize("message", ["Power down!", "Power dow", "power down", " Power down"])
def test_only_the_exact_power_down_string_powers_down(asm_guest, message):
    run = asm_guest("INIT\n CRASH msg", f'msg: .asciz "{message}"')
    assert_crashed(run, message)


def test_crash_message_without_nul_is_cut_to_127_characters(asm_guest):
    run = asm_guest("INIT\n CRASH msg", "msg: .ascii \"0123456789\"\n .fill 190, 1, 0x41\n"
                    " .byte 0")
    assert_crashed(run, "0123456789" + "A" * 117)


def test_crash_message_of_exactly_127_characters_is_complete(asm_guest):
    run = asm_guest("INIT\n CRASH msg", "msg: .fill 127, 1, 0x42\n .byte 0")
    assert_crashed(run, "B" * 127)


def test_crash_message_stops_at_the_first_nul(asm_guest):
    run = asm_guest("INIT\n CRASH msg", 'msg: .asciz "first"\n .asciz "second"')
    assert_crashed(run, "first")


@pytest.mark.parametrize(("source", "shown"), [
    (r"line one\nline two", r"line one\x0aline two"),
    (r"trailing newline\n", "trailing newline"),
    (r"\033[2J\033[31mred", r"\x1b[2J\x1b[31mred"),  # terminal escapes
    (r"\233" "31m", r"\x9b" "31m"),  # the one-byte CSI
    (r"tab\there\r", r"tab\x09here\x0d"),
    (r"caf\351 [ok]", "caf\xe9 [ok]"),  # printable Latin-1 stays
])
def test_crash_message_is_one_printable_line(asm_guest, source, shown):
    """The reason is lgemu's one line on stderr: the guest cannot add lines or send
    escape sequences to the user's terminal through it."""
    run = asm_guest("INIT\n CRASH msg", f'msg: .asciz "{source}"')
    assert_crashed(run, shown)


@pytest.mark.parametrize("addr", [0xFFFFFFFF, 0xFFFFFF90, LIMIT - 128, LIMIT, 0x80000000])
def test_crash_at_a_bad_address_is_killed(asm_guest, addr):
    run = asm_guest(f"INIT\n HCALL $LHCALL_CRASH, ${addr:#x}\n PUTS s_zero", NOTIFY_STRINGS)
    assert_killed(run, BadGuestAddress("read", addr, 128))
    assert run.out == b""


def test_crash_reading_the_last_valid_128_bytes(asm_guest):
    """[LIMIT-129, LIMIT-1) is inside the last vring page, which is all zeros there."""
    run = asm_guest(f"INIT\n HCALL $LHCALL_CRASH, ${LIMIT - 129:#x}")
    assert_crashed(run, "")


# -- LHCALL_NOTIFY as an early-console string (ABI §10.5) -----------------------------------------

def test_notify_prints_the_string_exactly(asm_guest):
    run = asm_guest("INIT\n PUTS a\n PUTS b\n PUTS empty\n PUTS c\n POWER_DOWN", r"""
        a:	.asciz	"line one\r\n"
        b:	.asciz	"\ttab, bell \007, high \377\200, no newline"
        empty:	.asciz	""
        c:	.asciz	"|\n|"
    """)
    assert_powered_down(run, b"line one\r\n\ttab, bell \a, high \xff\x80, no newline|\n|")


def test_notify_of_a_long_string_prints_all_of_it(asm_guest):
    """The 16-byte chunks are the guest's business; the Host prints up to the NUL."""
    run = asm_guest("INIT\n PUTS long\n POWER_DOWN", "long: .fill 5000, 1, 0x78\n .byte 0")
    assert_powered_down(run, b"x" * 5000)


@pytest.mark.parametrize("addr", [LIMIT, LIMIT + 1, MEM + 0x100000, 0xFFFFFFFF, 0x80000000])
def test_notify_beyond_memory_is_killed(asm_guest, addr):
    run = asm_guest(f"INIT\n PUTS s_zero\n HCALL $LHCALL_NOTIFY, ${addr:#x}\n PUTS s_one",
                    NOTIFY_STRINGS)
    assert_killed(run, BadNotifyAddress(addr))
    assert run.out == b"zero "


# The device page and the console's two vrings, which the Launcher's identity map leaves out
# (ABI §1.3), mapped virtual = physical.
MAP_DEVICE_PAGES = map_device_pages(2)


def test_notify_of_the_console_output_queue_prints_its_buffer(asm_guest):
    """ABI §10.5 step 1: a NOTIFY of a queue's page is a kick, not a string.  The console's
    output queue is the second vring (pfn MEM/4K + 3); we post one buffer and kick."""
    out_ring = MEM + 0x3000
    run = asm_guest(f"""
        INIT
        {MAP_DEVICE_PAGES}
        movl	$msg, {out_ring:#x}		/* desc[0].addr (low half) */
        movl	$0, {out_ring + 4:#x}
        movl	$msg_len, {out_ring + 8:#x}	/* desc[0].len, flags 0, next 0 */
        movl	$0, {out_ring + 12:#x}
        movw	$0, {out_ring + 0x804:#x}		/* avail.ring[0] = head 0 */
        movw	$1, {out_ring + 0x802:#x}		/* avail.idx = 1 */
        HCALL	$LHCALL_NOTIFY, ${out_ring:#x}
        NEWLINE
        movzwl	{out_ring + 0x1002:#x}, %eax	/* used.idx */
        PUTHEX	%eax
        PUTHEX	{out_ring + 0x1004:#x}		/* used.ring[0].id */
        PUTHEX	{out_ring + 0x1008:#x}		/* used.ring[0].len */
        POWER_DOWN
    """, 'msg: .ascii "via the vring"\n .set msg_len, . - msg\n' + DEVPT_BSS)
    assert_powered_down(run, b"via the vring\n" + hexwords(1, 0, 13))


def test_notify_string_without_nul_stops_at_the_end_of_memory(asm_guest):
    """The Launcher never reads past guest_limit: a string in the last bytes of the last
    vring page with no NUL after it is printed up to the limit."""
    run = asm_guest(f"""
        INIT
        {MAP_DEVICE_PAGES}
        movl	$0x2179656b, {LIMIT - 4:#x}		/* "key!" */
        HCALL	$LHCALL_NOTIFY, ${LIMIT - 4:#x}
        POWER_DOWN
    """, DEVPT_BSS)
    assert_powered_down(run, b"key!")


# -- the async ring (ABI §3.5) --------------------------------------------------------------------

def test_ring_runs_in_slot_order_before_the_synchronous_call(asm_guest):
    run = asm_guest("""
        INIT
        ASYNC	0, $LHCALL_NOTIFY, $s_zero
        ASYNC	1, $LHCALL_NOTIFY, $s_one
        ASYNC	2, $LHCALL_NOTIFY, $s_two
        PUTS	s_sync
        NEWLINE
        PUTHEX	lguest_data+LD_HCALL_STATUS		/* slots 0-3 */
        POWER_DOWN
    """, NOTIFY_STRINGS)
    assert_powered_down(run, b"zero one two sync\n" + hexwords(0xFFFFFFFF))


def test_ring_is_only_looked_at_on_a_synchronous_call(asm_guest):
    run = asm_guest("""
        INIT
        ASYNC	0, $LHCALL_NOTIFY, $s_zero
        movl	$100000, %ecx
1:	loop	1b				/* plenty of time, no hypercall */
        movzbl	lguest_data+LD_HCALL_STATUS, %eax
        movl	%eax, before
        HCALL	$LHCALL_FLUSH_ASYNC
        NEWLINE
        PUTHEX	before
        PUTHEX	lguest_data+LD_HCALL_STATUS
        POWER_DOWN
    """, NOTIFY_STRINGS + "before: .long 0x77")
    assert_powered_down(run, b"zero \n" + hexwords(0, 0xFFFFFFFF))


def test_ring_stops_at_the_first_empty_slot(asm_guest):
    run = asm_guest("""
        INIT
        ASYNC	0, $LHCALL_NOTIFY, $s_zero
        ASYNC	2, $LHCALL_NOTIFY, $s_two		/* slot 1 stays 0xFF */
        PUTS	s_sync
        NEWLINE
        PUTHEX	lguest_data+LD_HCALL_STATUS
        POWER_DOWN
    """, NOTIFY_STRINGS)
    # Slot 2 was not run: its status byte is still 0 (bytes ff ff 00 ff, little-endian).
    assert_powered_down(run, b"zero sync\n" + hexwords(0xFF00FFFF))


def test_ring_cursor_is_kept_across_calls_and_wraps(asm_guest):
    """62 no-op entries, a drain, then NOTIFYs in slots 62, 63, 0, 1: a Host that always
    started at slot 0 would print "c" and "d" only."""
    run = asm_guest("""
        INIT
        xorl	%esi, %esi
1:	movl	%esi, %edi
        shll	$4, %edi
        movl	$LHCALL_FLUSH_ASYNC, lguest_data+LD_HCALLS(%edi)
        movb	$0, lguest_data+LD_HCALL_STATUS(%esi)
        incl	%esi
        cmpl	$62, %esi
        jne	1b
        HCALL	$LHCALL_FLUSH_ASYNC
        ASYNC	62, $LHCALL_NOTIFY, $a
        ASYNC	63, $LHCALL_NOTIFY, $b
        ASYNC	0, $LHCALL_NOTIFY, $c
        ASYNC	1, $LHCALL_NOTIFY, $d
        PUTS	bang
        POWER_DOWN
    """, 'a: .asciz "a"\nb: .asciz "b"\nc: .asciz "c"\nd: .asciz "d"\nbang: .asciz "!"')
    assert_powered_down(run, b"abcd!")


def test_ring_treats_any_status_but_0xff_as_ready(asm_guest):
    run = asm_guest("""
        INIT
        ASYNC	0, $LHCALL_NOTIFY, $s_zero
        movb	$0x7F, lguest_data+LD_HCALL_STATUS
        ASYNC	1, $LHCALL_NOTIFY, $s_one
        movb	$0xFE, lguest_data+LD_HCALL_STATUS+1
        PUTS	s_sync
        POWER_DOWN
    """, NOTIFY_STRINGS)
    assert_powered_down(run, b"zero one sync")


def test_ring_arguments_are_in_hcall_args_order(asm_guest):
    """hcalls[n] is arg0 (EAX), arg2 (EBX), arg3 (ECX), arg1 (EDX): a LOAD_IDT_ENTRY in the
    ring with vector 3 in arg1 and a present task gate (type 5) in arg3 must be reported as
    a bad type 5 (with any other order the vector would be out of range and ignored)."""
    run = asm_guest("""
        INIT
        ASYNC	0, $LHCALL_LOAD_IDT_ENTRY, $3, $0x11, $0x8500
        HCALL	$LHCALL_FLUSH_ASYNC
    """)
    assert_killed(run, BadIdtType(5))


@pytest.mark.parametrize(("call", "reason"), [
    ("$12", BadHypercall(12)),
    ("$LHCALL_LGUEST_INIT, $lguest_data", AlreadyInitialized()),
    (f"$LHCALL_NOTIFY, ${LIMIT:#x}", BadNotifyAddress(LIMIT)),
    ("$LHCALL_LOAD_GDT, $0, $33", TooManyGdtEntries(33)),
    ("$LHCALL_SET_STACK, $0x68, $0, $1", BadStackSegment(104)),
])
def test_ring_entries_are_checked_like_synchronous_calls(asm_guest, call, reason):
    run = asm_guest(f"""
        INIT
        ASYNC	0, $LHCALL_NOTIFY, $s_zero
        ASYNC	1, {call}
        ASYNC	2, $LHCALL_NOTIFY, $s_two
        PUTS	s_sync
    """, NOTIFY_STRINGS)
    assert_killed(run, reason)
    assert run.out == b"zero "


def test_ring_crash_ends_the_run_before_the_synchronous_call(asm_guest):
    run = asm_guest("""
        INIT
        ASYNC	0, $LHCALL_CRASH, $msg
        PUTS	s_sync
    """, NOTIFY_STRINGS + 'msg: .asciz "from the ring"')
    assert_crashed(run, "from the ring")
    assert run.out == b""


def test_ring_filled_before_init_runs_on_the_first_call_after_it(asm_guest):
    """INIT itself does not drain the ring (ABI §3.2 step 1); the next synchronous call does."""
    run = asm_guest("""
        ASYNC	0, $LHCALL_NOTIFY, $s_zero
        INIT
        PUTHEX	lguest_data+LD_HCALL_STATUS
        NEWLINE
        POWER_DOWN
    """, NOTIFY_STRINGS)
    # PUTHEX is a NOTIFY: the ring entry runs first, then the dump it made before the call
    # shows status 0 (bytes 00 ff ff ff).
    assert_powered_down(run, b"zero " + hexwords(0xFFFFFF00) + b"\n")


# -- LHCALL_LOAD_GDT and LHCALL_LOAD_TLS (ABI §6) -------------------------------------------------

FLAT_CODE = descriptor(0, access=0x9B)
FLAT_DATA = descriptor(0, access=0x93)
MARKERS = """
        movl	$0xcafef00d, 0x200000
        movl	$0x600dbeef, 0x200004
        movl	$0x0badcafe, 0x200008
"""


def gdt_table(entries: dict[int, int], count: int) -> str:
    """A descriptor table of `count` entries with kernel CS/DS (12, 13) in place."""
    table = {12: FLAT_CODE, 13: FLAT_DATA, **entries}
    return "\t.balign 8\ngdt:\n" + quads(*(table.get(i, 0) for i in range(count)))


@pytest.mark.parametrize("count", [33, 64, 0xFFFFFFFF])
def test_load_gdt_with_too_many_entries_is_killed(asm_guest, count):
    run = asm_guest(f"INIT\n HCALL $LHCALL_LOAD_GDT, $gdt, ${count:#x}", gdt_table({}, 32))
    assert_killed(run, TooManyGdtEntries(count))


@pytest.mark.parametrize(("addr", "count"), [
    (0xFFFFFFFF, 1),
    (0xFFFFFFF8, 32),
    (LIMIT - 256, 32),
    (LIMIT - 8, 1),
    (0x80000000, 2),
])
def test_load_gdt_at_a_bad_address_is_killed(asm_guest, addr, count):
    run = asm_guest(f"INIT\n HCALL $LHCALL_LOAD_GDT, ${addr:#x}, ${count}\n PUTS s_zero",
                    NOTIFY_STRINGS)
    assert_killed(run, BadGuestAddress("read", addr, 8 * count))
    assert run.out == b""


def test_load_gdt_installs_descriptors_with_dpl_raised_to_1(asm_guest):
    """Entry 20 is a DPL 0 data segment based at 2 MiB.  Loading selector 0xA1 (RPL 1) at
    CPL 1 only works if the Host raised its DPL to 1, and reads through the new base."""
    run = asm_guest(MARKERS + """
        INIT
        HCALL	$LHCALL_LOAD_GDT, $gdt, $21
        movw	$0xA1, %ax
        movw	%ax, %fs
        PUTHEX	%fs:0
        PUTHEX	%fs:4
        POWER_DOWN
    """, gdt_table({20: descriptor(0x200000)}, 21))
    assert_powered_down(run, hexwords(0xCAFEF00D, 0x600DBEEF))


def test_load_gdt_keeps_entries_past_count(asm_guest):
    run = asm_guest(MARKERS + """
        INIT
        HCALL	$LHCALL_LOAD_GDT, $gdt, $21
        HCALL	$LHCALL_LOAD_GDT, $gdt2, $2	/* replaces entries 0 and 1 only */
        movw	$0xA1, %ax
        movw	%ax, %fs
        PUTHEX	%fs:8
        POWER_DOWN
    """, gdt_table({20: descriptor(0x200000)}, 21) + "\ngdt2: .long 0, 0, 0, 0")
    assert_powered_down(run, hexwords(0x0BADCAFE))


def test_load_gdt_cannot_replace_host_entries(asm_guest):
    """Entry 10 (0x50) is the Host's DPL 0 code segment whatever the guest supplies, so
    loading 0x51 into a data register faults (#GP with the selector as error code)."""
    run = asm_guest("""
        INIT
        HCALL	$LHCALL_LOAD_GDT, $gdt, $32
        movw	$0x51, %ax
    load:
        movw	%ax, %ds
        POWER_DOWN
    """, gdt_table({10: descriptor(0, access=0xB3), 11: descriptor(0, access=0xB3)}, 32))
    assert_killed(run, UnhandledTrap(13, run.symbol('load'), 0x50))


def test_load_gdt_stores_system_descriptors_not_present(asm_guest):
    """A guest call gate (system descriptor) must never be reachable: the far call faults
    with #NP on the selector instead of entering ring 0 or aborting the emulator."""
    gate = 0x60 << 16 | 0x100000 & 0xFFFF | (0xAC00 | 0x100000 & 0xFFFF0000) << 32
    run = asm_guest("""
        INIT
        HCALL	$LHCALL_LOAD_GDT, $gdt, $21
    call:
        lcall	$0xA1, $0
        POWER_DOWN
    """, gdt_table({20: gate}, 21))
    assert_killed(run, UnhandledTrap(11, run.symbol('call'), 0xa0))


def test_load_tls_installs_entries_6_to_8(asm_guest):
    run = asm_guest(MARKERS + """
        INIT
        HCALL	$LHCALL_LOAD_TLS, $tls, $0
        movw	$0x31, %ax
        movw	%ax, %gs
        PUTHEX	%gs:0
        movw	$0x39, %ax
        movw	%ax, %gs
        PUTHEX	%gs:0
        movw	$0x43, %ax			/* RPL 3 needs DPL 3 */
        movw	%ax, %gs
        PUTHEX	%gs:0
        POWER_DOWN
    """, "\t.balign 8\ntls:\n" + quads(descriptor(0x200000), descriptor(0x200004),
                                       descriptor(0x200008, access=0xF3)))
    assert_powered_down(run, hexwords(0xCAFEF00D, 0x600DBEEF, 0x0BADCAFE))


@pytest.mark.parametrize("addr", [0xFFFFFFFF, 0xFFFFFFF0, LIMIT - 24, LIMIT, 0x80000000])
def test_load_tls_at_a_bad_address_is_killed(asm_guest, addr):
    run = asm_guest(f"INIT\n HCALL $LHCALL_LOAD_TLS, ${addr:#x}\n PUTS s_zero", NOTIFY_STRINGS)
    assert_killed(run, BadGuestAddress("read", addr, 24))


# -- LHCALL_LOAD_IDT_ENTRY (ABI §5.1) -------------------------------------------------------------

@pytest.mark.parametrize("vector", [0x40, 0x7F, 0x81, 0xFF, 256, 0x10000, 0xFFFFFFFF])
def test_idt_vectors_lguest_does_not_keep_are_ignored(asm_guest, vector):
    """2.6.24 kept vectors 0-63 and 0x80 and ignored the rest, even with a bad gate type."""
    run = asm_guest(f"INIT\n HCALL $LHCALL_LOAD_IDT_ENTRY, ${vector:#x}, $0, $0x8500\n"
                    "POWER_DOWN")
    assert (run.status, run.err) == (0, "")


@pytest.mark.parametrize(("vector", "gate_type"), [(3, 5), (0x80, 0xC), (6, 6), (0x20, 7),
                                                   (0x3F, 0), (14, 0xD)])
def test_present_gate_of_a_bad_type_is_killed(asm_guest, vector, gate_type):
    hi = 0x8000 | gate_type << 8
    run = asm_guest(f"INIT\n HCALL $LHCALL_LOAD_IDT_ENTRY, ${vector:#x}, $0x600000, ${hi:#x}")
    assert_killed(run, BadIdtType(gate_type))


@pytest.mark.parametrize("vector", [2, 8, 15, 31])
def test_host_owned_vectors_are_silently_ignored(asm_guest, vector):
    run = asm_guest(f"""
        INIT
        HCALL	$LHCALL_LOAD_IDT_ENTRY, ${vector}, $0x600000, $0x8500	/* task gate */
        SET_GATE {vector}, handler, GATE_TRAP | GATE_DPL3
        PUTS	s_zero				/* still a hypercall, not the guest's gate */
        POWER_DOWN
    handler:
        PUTS	s_one
        POWER_DOWN
    """, NOTIFY_STRINGS)
    assert_powered_down(run, b"zero ")


def test_not_present_gate_of_any_type_clears_the_entry(asm_guest):
    run = asm_guest("""
        INIT
        SET_GATE 6, handler, GATE_TRAP
        HCALL	$LHCALL_LOAD_IDT_ENTRY, $6, $0x600000, $0x0500	/* not present, type 5 */
    fault:
        ud2
    handler:
        POWER_DOWN
    """)
    assert_killed(run, UnhandledTrap(6, run.symbol('fault'), 0x0))


@pytest.mark.parametrize(("insn", "vector", "flags", "delivered"), [
    ("int $0x80", 0x80, "GATE_TRAP | GATE_DPL3", True),
    ("int $0x80", 0x80, "GATE_TRAP", False),  # DPL 0 < CPL 1
    ("int $0x80", 0x80, "GATE_INT | GATE_DPL3", False),  # not direct: the Host's DPL 0 gate
    ("int $0x40", 0x40, "GATE_TRAP | GATE_DPL3", False),  # only 0-31 and 0x80 are direct
    ("int3", 3, "GATE_TRAP | GATE_DPL3", True),
    ("int3", 3, "GATE_INT | GATE_DPL3", False),  # as 2.6.24 installs it (ABI §5.1)
])
def test_software_interrupts_follow_direct_gate_rules(asm_guest, insn, vector, flags,
                                                      delivered):
    """ABI §5.6: `int n` reaches the guest only through a copied (direct) trap gate whose DPL
    allows ring 1; otherwise it is #GP with error code n*8+2."""
    run = asm_guest(f"""
        INIT
        SET_GATE {vector}, handler, {flags}
    fault:
        {insn}
        POWER_DOWN
    handler:
        PUTS	s_one
        POWER_DOWN
    """, NOTIFY_STRINGS)
    if delivered:
        assert_powered_down(run, b"one ")
    else:
        assert_killed(run, UnhandledTrap(13, run.symbol("fault"), vector * 8 + 2))


def test_general_protection_fault_reaches_the_guest_handler(asm_guest):
    run = asm_guest("""
        INIT
        SET_GATE 13, handler, GATE_TRAP
    fault:
        int	$0x40				/* no gate: #GP(0x202) */
    handler:
        PUTHEX	(%esp)				/* error code */
        PUTHEX	4(%esp)				/* EIP of the int */
        POWER_DOWN
    """)
    assert_powered_down(run, hexwords(0x40 * 8 + 2, run.symbol("fault")))


# Handler printing the frame the Host built: EIP, CS, EFLAGS & IF, then irq_enabled and CS.
FRAME_HANDLER = """
    handler:
        PUTHEX	(%esp)
        PUTHEX	4(%esp)
        movl	8(%esp), %eax
        andl	$0x200, %eax
        PUTHEX	%eax
        PUTHEX	lguest_data+LD_IRQ_ENABLED
        movl	%cs, %eax
        PUTHEX	%eax
        POWER_DOWN
"""


@pytest.mark.parametrize(("flags", "irq_enabled", "pushed_if", "irq_enabled_after"), [
    ("GATE_TRAP", 0x200, 0x200, 0x200),
    ("GATE_TRAP", 0, 0x200, 0),  # direct trap: the real EFLAGS, irq_enabled untouched (ABI §5.6)
    ("GATE_INT", 0x200, 0x200, 0),  # interrupt gate: irq_enabled cleared (ABI §5.2 step 6)
    ("GATE_INT", 0, 0, 0),  # IF in the frame comes from irq_enabled (ABI §5.2 step 2)
])
def test_trap_is_delivered_through_the_guest_gate(asm_guest, flags, irq_enabled, pushed_if,
                                                  irq_enabled_after):
    # The gate's selector is forced to the guest's kernel CS whatever it says (0x73 here).
    run = asm_guest(f"""
        INIT
        movl	$handler, %esi
        movl	%esi, %edi
        andl	$0xFFFF, %esi
        orl	$0x00730000, %esi
        andl	$0xFFFF0000, %edi
        orl	$({flags}), %edi
        HCALL	$LHCALL_LOAD_IDT_ENTRY, $6, %esi, %edi
        movl	${irq_enabled:#x}, lguest_data+LD_IRQ_ENABLED
    fault:
        ud2
    """ + FRAME_HANDLER)
    assert_powered_down(run, hexwords(run.symbol("fault"), 0x61, pushed_if, irq_enabled_after,
                                      0x61))


def test_page_fault_writes_cr2_and_pushes_the_error_code(asm_guest):
    run = asm_guest("""
        INIT
        SET_GATE 14, handler, GATE_INT
    fault:
        movl	$1, 0x5000004			/* not mapped: write, not present */
    handler:
        PUTHEX	lguest_data+LD_CR2
        PUTHEX	(%esp)				/* error code */
        PUTHEX	4(%esp)				/* EIP */
        POWER_DOWN
    """)
    assert_powered_down(run, hexwords(0x5000004, 2, run.symbol("fault")))


# -- LHCALL_SET_STACK (ABI §5.5) ------------------------------------------------------------------

@pytest.mark.parametrize("segment", [0x68, 0x6B, 0, 0x7B, 0xFFFFFFFF])
def test_set_stack_with_a_segment_not_of_rpl_1_is_killed(asm_guest, segment):
    run = asm_guest(f"INIT\n HCALL $LHCALL_SET_STACK, ${segment:#x}, $__stack_top, $1")
    assert_killed(run, BadStackSegment(segment))


@pytest.mark.parametrize("pages", [3, 4, 0x100, 0xFFFFFFFF])
def test_set_stack_with_too_many_pages_is_killed(asm_guest, pages):
    run = asm_guest(f"INIT\n HCALL $LHCALL_SET_STACK, $0x69, $__stack_top, ${pages:#x}")
    assert_killed(run, BadStackPages(pages))


@pytest.mark.parametrize("pages", [0, 1, 2])
def test_set_stack_with_a_mapped_stack_is_accepted(asm_guest, pages):
    run = asm_guest(f"INIT\n HCALL $LHCALL_SET_STACK, $0x69, $__stack_top, ${pages}\n"
                    " PUTS s_zero\n POWER_DOWN", NOTIFY_STRINGS)
    assert_powered_down(run, b"zero ")


def test_set_stack_pins_every_page(asm_guest):
    """Two pages below ESP 0x1000: 0xFFF is RAM, 0xFFFFFFFF is not mapped."""
    run = asm_guest("INIT\n HCALL $LHCALL_SET_STACK, $0x69, $0x1000, $2")
    assert_killed(run, BadStackPage(0xffffffff))


# The stack is the page below 0x801000 (PDE 2).  `newdir` maps only PDE 0 (our code).
PIN_DATA = """
        .bss
        .balign	4096
newdir:	.space	4096
"""
NEWDIR = """
        movl	lguest_data+LD_PGDIR, %ebp
        movl	(%ebp), %eax
        movl	%eax, newdir
"""


@pytest.mark.parametrize(("steps", "killed"), [
    # A blank shadow re-pins the stack (ABI §5.5): newdir does not map it.
    ("HCALL $LHCALL_SET_STACK, $0x69, $0x801000, $1\n HCALL $LHCALL_NEW_PGTABLE, $newdir",
     True),
    # A directory the Host already shadows is not re-pinned.
    ("HCALL $LHCALL_NEW_PGTABLE, $newdir\n HCALL $LHCALL_NEW_PGTABLE, %ebp\n"
     " HCALL $LHCALL_SET_STACK, $0x69, $0x801000, $1\n HCALL $LHCALL_NEW_PGTABLE, $newdir",
     False),
    # FLUSH_TLB(1) re-pins; the stack's PDE is gone from the live directory.
    ("HCALL $LHCALL_SET_STACK, $0x69, $0x801000, $1\n movl $0, 2*4(%ebp)\n"
     " HCALL $LHCALL_FLUSH_TLB, $1", True),
    # FLUSH_TLB(0) does not.
    ("HCALL $LHCALL_SET_STACK, $0x69, $0x801000, $1\n movl $0, 2*4(%ebp)\n"
     " HCALL $LHCALL_FLUSH_TLB, $0", False),
])
def test_stack_is_re_pinned(asm_guest, steps, killed):
    run = asm_guest("INIT\n" + NEWDIR + steps + "\n PUTS s_zero\n POWER_DOWN",
                    NOTIFY_STRINGS + PIN_DATA)
    if killed:
        assert_killed(run, BadStackPage(0x800fff))
    else:
        assert_powered_down(run, b"zero ")


USER_MODE = """
        INIT
        HCALL	$LHCALL_LOAD_GDT, $gdt, $16
        HCALL	$LHCALL_SET_STACK, $0x69, $kstack_top, $1
        {gates}
        pushl	$0x7B				/* user SS */
        pushl	$ustack_top			/* user ESP */
        pushl	$0x202
        pushl	$0x73				/* user CS */
        pushl	$user
        iret
    user:
        {user}
"""
USER_DATA = gdt_table({14: descriptor(0, access=0xFB), 15: descriptor(0, access=0xF3)}, 16) + """
        .bss
        .balign	4096
        .space	4096
kstack_top:
        .space	4096
ustack_top:
"""


def test_trap_from_user_mode_lands_on_the_set_stack(asm_guest):
    run = asm_guest(USER_MODE.format(gates="SET_GATE 0x80, handler, GATE_TRAP | GATE_DPL3",
                                     user="movl $0x1234, %esp\nsyscall: int $0x80") + """
    handler:
        movw	$0x69, %ax			/* ring 3 left DS null */
        movw	%ax, %ds
        movl	%esp, %eax
        PUTHEX	%eax
        PUTHEX	(%esp)				/* EIP after int $0x80 */
        PUTHEX	4(%esp)				/* CS */
        PUTHEX	12(%esp)			/* ESP */
        PUTHEX	16(%esp)			/* SS */
        POWER_DOWN
    """, USER_DATA)
    assert_powered_down(run, hexwords(run.symbol("kstack_top") - 20, run.symbol("syscall") + 2,
                                      0x73, 0x1234, 0x7B))


def test_hypercall_from_user_mode_is_a_general_protection_fault(asm_guest):
    """The hypercall gate has DPL 1 (ABI §3.1): int $0x1f from ring 3 is #GP(0xFA), and with no
    guest GP handler the guest is killed."""
    run = asm_guest(USER_MODE.format(gates="", user="hcall: int $0x1f"), USER_DATA)
    assert_killed(run, UnhandledTrap(13, run.symbol('hcall'), 0xfa))


# -- LHCALL_TS (ABI §9.3) -------------------------------------------------------------------------

def test_ts_makes_fpu_use_trap(asm_guest):
    run = asm_guest("INIT\n HCALL $LHCALL_TS, $8\n fpu: fldz\n POWER_DOWN")
    assert_killed(run, UnhandledTrap(7, run.symbol('fpu'), 0x0))


def test_ts_cleared_lets_the_fpu_run(asm_guest):
    run = asm_guest("""
        INIT
        HCALL	$LHCALL_TS, $8
        HCALL	$LHCALL_TS, $0
        fld1
        fistpl	one
        PUTHEX	one
        POWER_DOWN
    """, "one: .long 0")
    assert_powered_down(run, hexwords(1))


def test_ts_fault_reaches_the_guest_which_clears_it_and_retries(asm_guest):
    """The 2.6.24 #NM handler ends with clts (LHCALL_TS 0) and returns to the instruction."""
    run = asm_guest("""
        INIT
        SET_GATE 7, handler, GATE_TRAP
        HCALL	$LHCALL_TS, $8
    fpu:
        fld1
        fistpl	one
        PUTHEX	one
        PUTHEX	count
        POWER_DOWN
    handler:
        incl	count
        pushal
        HCALL	$LHCALL_TS, $0
        popal
        iret
    """, "one: .long 0\ncount: .long 0")
    assert_powered_down(run, hexwords(1, 1))


# -- LHCALL_SET_CLOCKEVENT and LHCALL_HALT (ABI §8, §9.1) -----------------------------------------

TIMER_SETUP = """
        INIT
        SET_GATE 0x20, tick, GATE_INT
        movl	$0, lguest_data+LD_BLOCKED	/* unmask IRQ 0 */
"""


def test_halt_with_no_timer_is_stuck(asm_guest):
    run = asm_guest("INIT\n PUTS s_zero\n HCALL $LHCALL_HALT\n PUTS s_one", NOTIFY_STRINGS)
    assert run.status == 4
    assert run.err == ("lgemu: guest stuck: halted with no timer set and no interrupt that "
                       "can wake it\n")
    assert run.out == b"zero "


def test_timer_wakes_a_halted_guest_into_its_irq0_handler(asm_guest):
    run = asm_guest(TIMER_SETUP + """
        movl	lguest_data+LD_TIME_NSEC, %esi
        HCALL	$LHCALL_SET_CLOCKEVENT, $100000
        HCALL	$LHCALL_HALT
    after_halt:
        PUTS	s_zero				/* never: the tick handler powers down */
        POWER_DOWN
    tick:
        PUTHEX	(%esp)				/* EIP */
        movl	8(%esp), %eax
        andl	$0x200, %eax			/* IF in the pushed EFLAGS */
        PUTHEX	%eax
        PUTHEX	lguest_data+LD_IRQ_ENABLED	/* interrupt gate: 0 again */
        movl	lguest_data+LD_TIME_NSEC, %eax	/* time moved by at least the delta */
        subl	%esi, %eax
        cmpl	$100000, %eax
        jb	1f
        PUTS	ok
        POWER_DOWN
    1:	PUTS	late
        POWER_DOWN
    """, NOTIFY_STRINGS + 'ok: .asciz "ok"\nlate: .asciz "too early"')
    assert_powered_down(run, hexwords(run.symbol("after_halt"), 0x200, 0) + b"ok")


def test_rearming_the_timer_replaces_the_deadline(asm_guest):
    """One one-shot timer (ABI §8): a second SET_CLOCKEVENT moves it, even further away."""
    run = asm_guest(TIMER_SETUP + """
        movl	lguest_data+LD_TIME_NSEC, %esi
        HCALL	$LHCALL_SET_CLOCKEVENT, $1000
        HCALL	$LHCALL_SET_CLOCKEVENT, $50000000
        HCALL	$LHCALL_HALT
        POWER_DOWN
    tick:
        movl	lguest_data+LD_TIME_NSEC, %eax
        subl	%esi, %eax
        cmpl	$50000000, %eax
        jb	1f
        PUTS	ok
        POWER_DOWN
    1:	PUTS	early
        POWER_DOWN
    """, 'ok: .asciz "ok"\nearly: .asciz "fired at the old deadline"')
    assert_powered_down(run, b"ok")


def assert_timer_never_fires(asm_guest, arming: str) -> None:
    """After `arming` the guest halts; its tick handler (which would print) must never run,
    so the Host finds it stuck."""
    run = asm_guest(TIMER_SETUP + arming + """
        HCALL	$LHCALL_HALT
        POWER_DOWN
    tick:
        PUTS	s_zero
        POWER_DOWN
    """, NOTIFY_STRINGS)
    assert run.status == 4
    assert run.err.startswith("lgemu: guest stuck: ")
    assert run.out == b""


def test_cancelled_timer_never_fires(asm_guest):
    assert_timer_never_fires(asm_guest, """
        HCALL	$LHCALL_SET_CLOCKEVENT, $1000
        HCALL	$LHCALL_SET_CLOCKEVENT, $0
    """)


def test_timer_blocked_by_the_guest_cannot_wake_it(asm_guest):
    assert_timer_never_fires(asm_guest, """
        movl	$1, lguest_data+LD_BLOCKED
        HCALL	$LHCALL_SET_CLOCKEVENT, $1000
    """)


def test_halted_guest_wakes_even_without_a_gate_for_the_irq(asm_guest):
    """ABI §5.3 steps 4-5: waking sets irq_enabled and clears halted; with no gate for vector
    0x20 the IRQ stays pending and the guest simply runs on after the HALT."""
    run = asm_guest("""
        INIT
        movl	$0, lguest_data+LD_BLOCKED
        HCALL	$LHCALL_SET_CLOCKEVENT, $1000
        HCALL	$LHCALL_HALT
        PUTHEX	lguest_data+LD_IRQ_ENABLED
        POWER_DOWN
    """)
    assert_powered_down(run, hexwords(0x200))


@pytest.mark.parametrize("with_window", [True, False])
def test_no_interrupt_inside_the_noirq_window(asm_guest, with_window):
    """noirq_start/end are read at INIT; the tick waits until the loop inside the window has
    finished (ECX 0), while without the window it arrives mid-loop."""
    window = ("movl $win_start, lguest_data+LD_NOIRQ_START\n"
              "movl $win_end, lguest_data+LD_NOIRQ_END") if with_window else ""
    run = asm_guest(window + TIMER_SETUP + """
        movl	$0x200, lguest_data+LD_IRQ_ENABLED
        movl	$200000, %ecx
        HCALL	$LHCALL_SET_CLOCKEVENT, $1000, $0, %ecx
    win_start:
        decl	%ecx
        jnz	win_start
    win_end:
        movl	$200000, %edi
    1:	decl	%edi
        jnz	1b
        PUTS	s_zero				/* never: the tick came during the loop */
        POWER_DOWN
    tick:
        PUTHEX	%ecx
        POWER_DOWN
    """, NOTIFY_STRINGS)
    assert run.status == 0, run.err
    if with_window:
        assert run.out == hexwords(0)
    else:
        assert re.fullmatch(rb"[0-9a-f]{8}", run.out) and run.out != hexwords(0)


# -- paging calls (ABI §7) ------------------------------------------------------------------------

# Physical 0x800000 (PDE 2) holds "AAAA"; `alt` holds "BBBB".  `newpt` is a page table whose
# entry 0 maps `alt`, so pointing PDE 2 at it makes virtual 0x800000 read "BBBB".
PAGING_DATA = """
        .bss
        .balign	4096
newdir:	.space	4096
newpt:	.space	4096
alt:	.space	4096
"""
PAGING_SETUP = """
        INIT
        movl	$0x41414141, 0x800000
        movl	$0x42424242, alt
        movl	$alt, %eax
        orl	$0x67, %eax
        movl	%eax, newpt
        movl	lguest_data+LD_PGDIR, %ebp
"""


def test_new_pgtable_switches_address_space(asm_guest):
    run = asm_guest(PAGING_SETUP + """
        movl	%ebp, %esi			/* newdir = copy of the Launcher's directory */
        movl	$newdir, %edi
        movl	$1024, %ecx
        rep movsl
        movl	$newpt, %eax
        orl	$0x67, %eax
        movl	%eax, newdir + 2*4
        PUTHEX	0x800000
        HCALL	$LHCALL_NEW_PGTABLE, $newdir
        PUTHEX	0x800000
        HCALL	$LHCALL_NEW_PGTABLE, %ebp
        PUTHEX	0x800000
        POWER_DOWN
    """, PAGING_DATA)
    assert_powered_down(run, hexwords(0x41414141, 0x42424242, 0x41414141))


@pytest.mark.parametrize("flush", [
    "HCALL $LHCALL_SET_PMD, %ebp, $2",
    "HCALL $LHCALL_FLUSH_TLB, $0",
    "HCALL $LHCALL_FLUSH_TLB, $1",
])
def test_changed_page_directory_entry_is_seen_after_invalidation(asm_guest, flush):
    run = asm_guest(PAGING_SETUP + f"""
        PUTHEX	0x800000			/* the old mapping is in use */
        movl	$newpt, %eax
        orl	$0x67, %eax
        movl	%eax, 2*4(%ebp)
        {flush}
        PUTHEX	0x800000
        POWER_DOWN
    """, PAGING_DATA)
    assert_powered_down(run, hexwords(0x41414141, 0x42424242))


def test_changed_pte_is_seen_after_set_pte(asm_guest):
    run = asm_guest(PAGING_SETUP + """
        PUTHEX	0x800000
        movl	2*4(%ebp), %esi			/* the Launcher's PTE page for PDE 2 */
        andl	$0xFFFFF000, %esi
        movl	$alt, %eax
        orl	$0x67, %eax
        movl	%eax, (%esi)
        HCALL	$LHCALL_SET_PTE, %ebp, $0x800000, %eax
        PUTHEX	0x800000
        POWER_DOWN
    """, PAGING_DATA)
    assert_powered_down(run, hexwords(0x41414141, 0x42424242))


@pytest.mark.parametrize(("pte", "killed"), [
    (LIMIT | 0x67, True),  # frame at pfn_limit
    (0xFFFFF000 | 0x27, True),
    (0x900000 | 0x27 | 0x08, True),  # PWT
    (0x900000 | 0x27 | 0x80, True),  # bit 7
    (LIMIT | 0x07, False),  # neither Accessed nor Dirty: only a hint, not checked
    (LIMIT - 0x1000 | 0x67, False),
    (0, False),  # flush_tlb_single's "forget this address"
])
def test_set_pte_validates_accessed_or_dirty_entries(asm_guest, pte, killed):
    run = asm_guest(PAGING_SETUP + f"""
        PUTHEX	0x800000			/* shadow PDE 2 in use */
        HCALL	$LHCALL_SET_PTE, %ebp, $0x800000, ${pte:#x}
        PUTHEX	0x800000			/* the guest's PTE never changed */
        POWER_DOWN
    """, PAGING_DATA)
    if killed:
        assert_killed(run, BadPageTableEntry())
    else:
        assert_powered_down(run, hexwords(0x41414141, 0x41414141))


@pytest.mark.parametrize(("pgdir", "vaddr"), [
    ("$0x2000000", "$0x800000"),  # a directory the Host does not cache: ignored
    ("%ebp", "$0x1000000"),  # the current one, but its PDE 4 was never used
    ("%ebp", "$0xC0800000"),  # a kernel address no cached directory has a PDE for
])
def test_set_pte_checks_the_value_only_where_a_shadow_would_take_it(asm_guest, pgdir, vaddr):
    """lguest's do_set_pte validated the value only when the shadow PDE covering `vaddr` was
    present; without one, even a PTE past pfn_limit is only a hint (ABI §7.2)."""
    run = asm_guest(PAGING_SETUP + f"""
        PUTHEX	0x800000
        HCALL	$LHCALL_SET_PTE, {pgdir}, {vaddr}, ${LIMIT | 0x67:#x}
        PUTHEX	0x800000
        POWER_DOWN
    """, PAGING_DATA)
    assert_powered_down(run, hexwords(0x41414141, 0x41414141))


# A fresh PDE (index 20, virtual 0x5000000) whose PTE 0 maps `page` with only P|RW|US.
FRESH_MAPPING = """
        INIT
        movl	lguest_data+LD_PGDIR, %ebp
        movl	$pt, %eax
        orl	$0x67, %eax
        movl	%eax, 20*4(%ebp)
        movl	$page, %eax
        orl	$PTE_FLAGS, %eax
        movl	%eax, pt
"""
FRESH_DATA = """
        .bss
        .balign	4096
pt:	.space	4096
page:	.space	4096
"""


def test_accessed_and_dirty_are_set_in_the_guest_pte(asm_guest):
    """ABI §7.1 step 5: a read sets Accessed, a write sets Dirty, in the guest's own PTE."""
    run = asm_guest(FRESH_MAPPING.replace("PTE_FLAGS", "0x7") + """
        movl	pt, %eax
        andl	$0x60, %eax
        PUTHEX	%eax
        movl	0x5000000, %eax
        movl	pt, %eax
        andl	$0x60, %eax
        PUTHEX	%eax
        movl	$1, 0x5000000
        movl	pt, %eax
        andl	$0x60, %eax
        PUTHEX	%eax
        POWER_DOWN
    """, FRESH_DATA)
    assert_powered_down(run, hexwords(0, 0x20, 0x60))


def test_ring_1_write_to_a_read_only_page_faults(asm_guest):
    """The guest kernel runs with WP semantics (ABI §7.1): test_wp_bit relies on it."""
    run = asm_guest(FRESH_MAPPING.replace("PTE_FLAGS", "0x5") + """
        movl	0x5000000, %eax			/* reading is fine */
    fault:
        movl	$1, 0x5000000
        POWER_DOWN
    """, FRESH_DATA)
    assert_killed(run, UnhandledTrap(14, run.symbol('fault'), 0x5000000))
