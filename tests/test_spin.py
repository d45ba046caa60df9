"""Waiting loops counted without being run (lgemu.host.spin): same guest, same instruction.

Every comparison here runs the same guest twice, once with skipping and once with
LGEMU_NO_SKIP=1, and wants the same console bytes, the same instruction count and the same
guest time, while -v says how much was skipped (so a skip that silently stops happening fails
too).
"""

from __future__ import annotations

import re

import pytest
from conftest import boot_args, lgemu_main_in_process
from guestasm import build_guest
from linuxkernel import shell_boot_args

from lgemu.host.spin import RECENT, WORTH, Loop, Mem, Spins, find_loop
from lgemu.machine.cpu import Reg

HEAD = 0xC01006AA
JIFFIES = 0xC02483B8
# 2.6.24's calibrate_delay: `mov jiffies, %ecx; cmp %edx, %ecx; je` back to the mov.
SPIN = bytes.fromhex("8b0d") + JIFFIES.to_bytes(4, "little") + bytes.fromhex("39d174f6")
COUNTDOWN = bytes.fromhex("4879fd")  # delay_loop: dec %eax; jns back to the dec
SKIPPED = re.compile(r"of which (\d+) counted in waiting loops")
EXECUTED = re.compile(r"executed \d+ instructions in \d+ slices; guest time [0-9.]+ s")


def reader(code: bytes, at: int):
    """A guest whose only mapped bytes are `code` at `at`."""
    def read(va: int, n: int) -> bytes | None:
        if not at <= va < at + len(code):
            return None
        return code[va - at:va - at + n]
    return read


def test_calibrate_delays_spin_is_found_from_any_instruction_in_it():
    for eip in (HEAD, HEAD + 6, HEAD + 8):
        loop = find_loop(reader(SPIN, HEAD), eip)
        assert loop == Loop(HEAD, SPIN, 3, (Mem(None, None, 0, JIFFIES, 4),))


def test_countdowns_are_found_with_their_register_and_branch():
    assert find_loop(reader(COUNTDOWN, 0xC0175200), 0xC0175201) == \
        Loop(0xC0175200, COUNTDOWN, 2, (), 0, False)
    assert find_loop(reader(bytes.fromhex("4975fd"), 0xC0001000), 0xC0001000) == \
        Loop(0xC0001000, bytes.fromhex("4975fd"), 2, (), 1, True)


@pytest.mark.parametrize("body", [
    "890db88324c039d174f6",  # a store (mov %ecx, jiffies) instead of a load
    "8b038b0085c074f8",  # a load through a register the body itself loaded
    "8b0db88324c0ff15000000c074f0",  # a call in the body
    "8b0db88324c0e80000000074f1",  # another call
    "8b0db88324c04139d174f5",  # inc %ecx: not a pure wait
    "8b0db88324c039d1cd1f74f4",  # a hypercall
    "0f31" "39d174fa",  # rdtsc: reads time
])
def test_loops_that_do_more_than_wait_are_refused(body):
    code = bytes.fromhex(body)
    assert find_loop(reader(code, HEAD), HEAD) is None


class FakeCpu:
    """What Spins sees of a guest: registers, one mapped code range, RAM everywhere."""

    def __init__(self, code: bytes, head: int, regs: dict[int, int]) -> None:
        self.code, self.head, self.regs = code, head, regs
        self.armed: frozenset[int] = frozenset()

    def spins(self) -> Spins:
        order = (Reg.EAX, Reg.ECX, Reg.EDX, Reg.EBX, Reg.ESP, Reg.EBP, Reg.ESI, Reg.EDI,
                 Reg.EFLAGS)
        return Spins(reader(self.code, self.head), lambda va, n: True,
                     lambda: [self.regs.get(r, 0) for r in order], self.regs.__setitem__,
                     self._arm, 0xC0000000)

    def _arm(self, heads: frozenset[int]) -> None:
        self.armed = heads


def test_a_countdown_skips_whole_iterations_and_leaves_the_last_to_the_cpu():
    cpu = FakeCpu(COUNTDOWN, 0xC0175200, {Reg.EAX: 1000})
    spins = cpu.spins()
    spins.after_run(0xC0175201, at_head=False, exhausted=True, kernel_mode=True)  # learned
    assert spins.before_run(0xC0175100, 500) == (0, 500)  # elsewhere: the head is armed
    assert cpu.armed == {0xC0175200}
    spins.after_run(0xC0175200, at_head=True, exhausted=False, kernel_mode=True)  # arrival
    assert cpu.armed == frozenset()  # a run cannot start at an exit
    assert spins.before_run(0xC0175200, 100) == (98, 2)  # 49 iterations, one left to run
    assert cpu.regs[Reg.EAX] == 1000 - 49
    # Near its end the countdown leaves its last iteration to the CPU: 3 left, 2 skipped.
    cpu.regs[Reg.EAX] = 2
    spins.after_run(0xC0175200, at_head=True, exhausted=False, kernel_mode=True)
    assert spins.before_run(0xC0175200, 1000) == (4, 996)
    assert cpu.regs[Reg.EAX] == 0


def test_a_spin_is_skipped_only_once_an_iteration_changed_nothing():
    cpu = FakeCpu(SPIN, HEAD, {Reg.ECX: 5, Reg.EDX: 7, Reg.EFLAGS: 0x202})
    spins = cpu.spins()
    spins.after_run(HEAD + 6, at_head=False, exhausted=True, kernel_mode=True)
    spins.after_run(HEAD, at_head=True, exhausted=False, kernel_mode=True)
    assert spins.before_run(HEAD, 1000) == (0, 3)  # run one iteration and look again
    cpu.regs[Reg.ECX] = 7  # the iteration loaded jiffies
    cpu.regs[Reg.EFLAGS] = 0x246
    spins.after_run(HEAD, at_head=False, exhausted=True, kernel_mode=True)
    assert spins.before_run(HEAD, 1000) == (0, 3)  # changed: once more
    spins.after_run(HEAD, at_head=False, exhausted=True, kernel_mode=True)
    assert spins.before_run(HEAD, 1000) == (996, 4)  # unchanged: 332 iterations counted


# Sets up the timer, maps the first 4 MiB again at 0xC0000000 (loops are looked for in the
# kernel half) and jumps there, to `high:`.
KERNEL_HALF_PRELUDE = """
	INIT
	SET_GATE 0x20, tick, GATE_INT
	movl	$0, lguest_data+LD_BLOCKED
	movl	$0x200, lguest_data+LD_IRQ_ENABLED
	movl	lguest_data+LD_PGDIR, %esi	/* a directory that also maps the first */
	movl	$newdir, %edi			/* 4 MiB at 0xC0000000 */
	movl	$1024, %ecx
	rep movsl
	movl	newdir, %eax
	movl	%eax, newdir + 0x300 * 4
	HCALL	$LHCALL_NEW_PGTABLE, $newdir
	HCALL	$LHCALL_SET_CLOCKEVENT, $777000
	mov	$(high + 0xC0000000), %eax
	jmp	*%eax
"""
TIMED_LOOPS = KERNEL_HALF_PRELUDE + """\
high:	mov	$4, %esi
1:	mov	ticks, %edx
2:	mov	ticks, %ecx			/* wait for the tick */
	cmp	%edx, %ecx
	je	2b
	mov	$3000000, %eax			/* a countdown the next ticks interrupt */
3:	dec	%eax
	jns	3b
	dec	%esi
	jnz	1b
	POWER_DOWN
tick:	pushl	%eax
	PUTHEX	4(%esp)				/* where it was interrupted, EAX, EFLAGS */
	PUTHEX	(%esp)
	PUTHEX	12(%esp)
	NEWLINE
	incl	ticks
	HCALL	$LHCALL_SET_CLOCKEVENT, $777000
	movl	$0x200, lguest_data+LD_IRQ_ENABLED
	popl	%eax
	iret
"""


def run_both(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[tuple, tuple]:
    """(status, stdout, the -v instruction line) with and without skipping, and what was
    skipped."""
    results = []
    for no_skip in ("1", ""):
        monkeypatch.setenv("LGEMU_NO_SKIP", no_skip)
        status, out, err = lgemu_main_in_process([*args, "-v"])
        executed = EXECUTED.search(err)
        assert executed, err
        skipped = SKIPPED.search(err)
        results.append(((status, out, executed.group()), skipped and int(skipped.group(1))))
    (plain, none), (skipping, skipped) = results
    assert none is None
    return plain, skipping, skipped


def test_a_guest_interrupted_in_its_loops_sees_the_same_thing(tmp_path, monkeypatch):
    elf = build_guest(tmp_path, TIMED_LOOPS, "ticks:\t.long 0\n"
                      "\t.bss\n\t.balign 4096\nnewdir:\t.space 4096\n")
    plain, skipping, skipped = run_both(boot_args(elf), monkeypatch)
    assert plain == skipping
    assert plain[0] == 0 and plain[1].count(b"\n") >= 8, plain
    assert skipped > 1_000_000


def test_a_real_kernel_boots_to_the_same_instruction(tmp_path, monkeypatch):
    """2.6.24's calibrate_delay and the shell: the same console, count and time."""
    args = ["boot", *shell_boot_args(tmp_path, "echo spun $((6*7))\nexit\n")]
    plain, skipping, skipped = run_both(args, monkeypatch)
    assert plain == skipping
    assert b"spun 42" in plain[1]
    assert skipped > 5_000_000  # most of calibrate_delay


def test_a_loop_whose_arrivals_skip_little_is_no_longer_stopped_at():
    """4.4's i8042 probe: udelay(50) ten thousand times through the delay loop."""
    cpu = FakeCpu(COUNTDOWN, 0xC0175200, {})
    spins = cpu.spins()
    spins.after_run(0xC0175200, at_head=False, exhausted=True, kernel_mode=True)
    for arrival in range(RECENT):
        assert spins.before_run(0xC0175100, 10**6) == (0, 10**6)
        assert cpu.armed == {0xC0175200}, arrival
        spins.after_run(0xC0175200, at_head=True, exhausted=False, kernel_mode=True)
        cpu.regs[Reg.EAX] = 2500  # 5 000 instructions, fewer than a stop is worth
        assert spins.before_run(0xC0175200, 10**6) == (5000, 10**6 - 5000)
    assert spins.before_run(0xC0175100, 10**6) == (0, 10**6)
    assert cpu.armed == frozenset()
    assert 2500 * 2 < WORTH
