"""Hostile waiting loops: whatever a guest's loop does, counting its iterations without
running them (lgemu.host.spin) must change nothing the guest or the user sees.

Each guest here runs the loop under test at the kernel-half alias 0xC0000000 (where loops are
learned) while a timer interrupts it every 777 µs of guest time; the tick handler prints
where it interrupted, every register and `word`, and powers down after a few ticks.  Every run is
made twice, once with LGEMU_NO_SKIP=1, and must give the same exit status, console, stderr
and instruction count.
"""

from __future__ import annotations

import pytest
from conftest import boot_args, lgemu_main_in_process
from guestasm import build_guest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_spin import EXECUTED, KERNEL_HALF_PRELUDE, SKIPPED, FakeCpu

from lgemu.host.spin import RECENT

PRELUDE = KERNEL_HALF_PRELUDE + "high:\n"

TICK = """
tick:	pushal
	PUTHEX	32(%esp)			/* where it was interrupted */
	PUTHEX	40(%esp)			/* EFLAGS */
	PUTHEX	28(%esp)			/* EAX ECX EDX EBX ESP EBP ESI EDI */
	PUTHEX	24(%esp)
	PUTHEX	20(%esp)
	PUTHEX	16(%esp)
	PUTHEX	12(%esp)
	PUTHEX	8(%esp)
	PUTHEX	4(%esp)
	PUTHEX	(%esp)
	PUTHEX	word				/* and the word loops may change */
	NEWLINE
	incl	ticks
	cmpl	$TICKS, ticks
	jb	1f
	POWER_DOWN
1:	HCALL	$LHCALL_SET_CLOCKEVENT, $777000
	movl	$0x200, lguest_data+LD_IRQ_ENABLED
	popal
	iret
"""

DATA = """
ticks:	.long 0
flag:	.long 0
word:	.long 0x12345678
table:	.long 0, 0, 0, 0, 0, 0, 0, 0
\t.bss
\t.balign 4096
newdir:	.space 4096
"""


def run_loop(tmp_path, monkeypatch, loop: str, ticks: int = 4, data: str = "",
             extra: tuple[str, ...] = ()) -> tuple[tuple, int | None]:
    """Run `loop` (code after the switch to 0xC0000000) both ways; the skipping run's
    (status, console, stderr) and how many instructions it skipped."""
    body = PRELUDE + loop + f"\n.set TICKS, {ticks}\n" + TICK
    elf = build_guest(tmp_path, body, DATA + data)
    results = []
    for no_skip in ("1", ""):
        monkeypatch.setenv("LGEMU_NO_SKIP", no_skip)
        status, out, err = lgemu_main_in_process([*boot_args(elf), *extra, "-v"])
        executed = EXECUTED.search(err)
        skipped = SKIPPED.search(err)
        results.append(((status, out, executed and executed.group(),
                          SKIPPED.sub("", err) if executed is None else None),
                         skipped and int(skipped.group(1))))
    (plain, none), (skipping, skipped) = results
    assert none is None
    assert plain == skipping
    return skipping, skipped


# Loops a guest may wait in, each with what it exercises.  Every one is skipped (a loop that
# silently stops being skipped fails too).
LOOPS = {
    # A load through a base register (the usual `while (!*p) cpu_relax();`): its address is
    # computed from the registers at the head, in ModRM's numbering.
    "load through a base register": """
	mov	$(flag + 0xC0000000), %ebx
1:	mov	(%ebx), %eax
	test	%eax, %eax
	je	1b
	POWER_DOWN
""",
    # SIB with ESP as base and with an index, and pause.
    "stack and indexed operands": """
	pushl	$0
	mov	$3, %esi
1:	cmpl	$0, (%esp)
	pause
	jne	2f
	cmpl	$0, table(,%esi,4)
	je	1b
	.fill	40, 1, 0x90			/* exits leave the loop's 40 bytes */
2:	POWER_DOWN
""",
    # AH..BH are the second bytes of EAX..EBX.
    "8-bit high registers": """
	mov	$0x1234, %eax
	mov	$0x99, %bh
1:	movb	word+1, %ah
	cmpb	$0x56, %ah
	jne	2f
	movzbl	word, %edx
	movsbl	word+3, %ecx
	cmp	%bh, %dl
	jne	1b
	.fill	40, 1, 0x90
2:	POWER_DOWN
""",
    # A jnz countdown from 0 runs 2**32 iterations.
    "jnz countdown from 0": """
	xor	%ecx, %ecx
1:	dec	%ecx
	jnz	1b
	POWER_DOWN
""",
    # jns from 0x80000000: the first dec makes it 0x7fffffff, and it runs on.
    "jns countdown from 0x80000000": """
	mov	$0x80000000, %ecx
1:	dec	%ecx
	jns	1b
	POWER_DOWN
""",
    # ff /1 and a rel32 branch back.
    "dec r/m and jcc rel32": """
	mov	$0xFFFFFFFF, %edi
	mov	$0x7FFFFFFF, %edx
1:	.byte	0xFF, 0xCA			/* dec %edx, the ff /1 form */
	.byte	0x0F, 0x89			/* jns rel32 */
	.long	1b - (. + 4)
	POWER_DOWN
""",
    # An exit in the middle that comes back to the head through a store, in as many
    # instructions as the body has: such iterations are not the body's.
    "an exit that comes back": """
1:	cmpl	$2, ticks			/* learned and skipped for two ticks, */
	jae	2f				/* then the exit is always taken */
	pause
	pause
	jmp	1b
	.fill	40, 1, 0x90
2:	addl	$1, word
	cmp	%eax, %eax
	jmp	1b
""",
    # Two loops whose paths run through each other's heads: the first's back branch is the
    # second's exit, on every other tick.
    "loops through each other's heads": """
	jmp	2f
1:	nop
2:	testb	$1, ticks
	je	1b
	pause
	pause
	pause
	pause
	cmpl	$0, word
	jne	2b
""",
}


@pytest.mark.parametrize("loop", LOOPS)
def test_a_guest_waiting_in_this_loop_sees_the_same_thing(loop, tmp_path, monkeypatch):
    (status, out, _, _), skipped = run_loop(tmp_path, monkeypatch, LOOPS[loop], ticks=6)
    assert status == 0 and out.count(b"\n") == 6, (status, out)
    assert skipped, "nothing was skipped"


def test_two_loops_stopping_each_other_are_retired():
    """The run loop's view of "loops through each other's heads": each watched iteration
    stops at the other loop's head after an instruction or two.  Both loops must soon be
    left alone (before, they took turns stopping the CPU every instruction or two, for ever:
    a hundred times slower than not skipping at all)."""
    h1, h2 = 0xC0001000, 0xC0001001
    code = bytes.fromhex("90" "f605002000c001" "74f6" "f390f390f390f390" "833d042000c000"
                         "75e6")
    cpu = FakeCpu(code, h1, {})
    spins = cpu.spins()
    spins.after_run(h1 + 8, at_head=False, exhausted=True, kernel_mode=True)  # at `je h1`
    spins.after_run(h1 + 0x12, at_head=False, exhausted=True, kernel_mode=True)  # at `cmp`
    assert set(spins.loops) == {h1, h2}
    eip = h1
    for _ in range(2 * RECENT + 1):
        spins.after_run(eip, at_head=True, exhausted=False, kernel_mode=True)
        assert spins.before_run(eip, 10**6)[0] == 0
        eip = h2 if eip == h1 else h1
    assert spins.retired == {h1, h2}
    assert spins.before_run(h1 + 8, 10**6) == (0, 10**6)
    assert cpu.armed == frozenset()


# Random loop bodies for the fuzz below: loads, compares and tests of registers and memory
# (absolute, through a base, base + index, the stack), 8-bit registers, pause; a final branch
# back (any condition) and maybe an exit in the middle, to the end or back round through a
# store; or a countdown from an edge value.
_MEMS = ("word", "ticks", "table+8", "(%ebx)", "4(%ebx,%esi,4)", "(%esp)", "table(,%esi,2)")
_REGS = ("%eax", "%ecx", "%edx", "%edi")
_REGS8 = ("%al", "%ah", "%cl", "%dh", "%bh")
_CONDS = ("je", "jne", "jb", "jae", "js", "jns", "jle", "jmp")


def _insn(draw) -> str:
    mem, reg, reg8 = (draw(st.sampled_from(pool)) for pool in (_MEMS, _REGS, _REGS8))
    imm = draw(st.sampled_from((0, 1, 0x56, 0x78, 0x12345678)))
    return draw(st.sampled_from((
        f"mov {mem}, {reg}", f"movb {mem}, {reg8}", f"movzbl {mem}, {reg}",
        f"movsbl {mem}, {reg}", f"movzwl {mem}, {reg}", f"cmp {reg}, {mem}",
        f"cmp {mem}, {reg}", f"cmpl ${imm}, {mem}", f"cmpb ${imm & 0xFF}, {mem}",
        f"test {reg}, {reg}", f"testb ${imm & 0xFF}, {mem}", f"testl ${imm}, {mem}",
        f"cmp ${imm}, %eax", f"test {reg8}, {reg8}", f"cmpb {mem}, {reg8}", "pause", "nop",
        f"mov {reg}, {draw(st.sampled_from(_REGS))}")))


@st.composite
def loops(draw) -> str:
    """A loop for the template of `run_loop`, with random registers on the way in."""
    values = st.sampled_from((0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x12345678))
    setup = "".join(f"\tmov ${draw(values)}, {reg}\n" for reg in _REGS)
    setup += "\tmov $table, %ebx\n\tmov $3, %esi\n\tpushl $0x12345678\n"
    if draw(st.booleans()):
        counter = draw(st.sampled_from(_REGS))
        branch = draw(st.sampled_from(("jns", "jnz")))
        return setup + f"1:\tdec {counter}\n\t{branch} 1b\n\tPOWER_DOWN\n"
    body = [f"\t{_insn(draw)}\n" for _ in range(draw(st.integers(1, 5)))]
    if draw(st.booleans()):
        body.insert(draw(st.integers(1, len(body))),
                    f"\t{draw(st.sampled_from(_CONDS[:-1]))} 2f\n")
    # Where an exit lands: the end, or a store and a way back to the head that may take as
    # many instructions as the body.
    away = draw(st.sampled_from(("\tPOWER_DOWN\n", *(
        "\taddl $1, word\n" + "\tcmp %eax, %eax\n" * n + "\tjmp 1b\n" for n in range(4)))))
    return (setup + "1:" + "".join(body) + f"\t{draw(st.sampled_from(_CONDS))} 1b\n"
            "\t.fill 40, 1, 0x90\n2:" + away)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(loop=loops())
def test_random_loops_are_skipped_exactly(loop, tmp_path, monkeypatch):
    """Whatever the body, skipping changes nothing (run_loop compares both ways)."""
    run_loop(tmp_path, monkeypatch, loop, ticks=3)


def test_a_loop_is_learned_only_if_its_exits_land_in_mapped_kernel_text():
    """Exit targets are armed while a loop is watched (see "an exit that comes back"): one
    nothing maps would make each arming drop every translated block."""
    head = 0xC0001000
    # cmpl $0, 0xC0002000; jne head+0x100; pause; jmp head
    code = bytes.fromhex("833d0020" "00c000" "0f85f3000000" "f390" "ebef")
    for mapped, learned in ((len(code), False), (0x200, True)):
        cpu = FakeCpu(code.ljust(mapped, b"\x90"), head, {})
        spins = cpu.spins()
        spins.after_run(head + 7, at_head=False, exhausted=True, kernel_mode=True)
        assert (head in spins.loops) is learned
        if learned:
            assert spins.loops[head].exits == {head + 0x100}
