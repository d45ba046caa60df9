"""Spin loops: counting the iterations of a guest's tight waiting loop without running them.

A booting kernel spends most of its instructions waiting.  2.6.24's calibrate_delay spins on
`jiffies` until the timer ticks, then runs `__delay`'s `dec %eax; jns` countdown, over and over:
20 M of the 34 M instructions of a boot to init (with `lpj=` preset the boot is 14 M).  Under
the virtual clock those iterations are pure cost, and nothing about them is uncertain: within
one run of the CPU only the CPU itself touches guest memory (the Host acts between runs and in
exits, devices between slices), so a loop that stores nothing and leaves the CPU for nothing
has a future that can be computed.

Two shapes are recognised, in kernel text only, and nothing else:

* a **spin**: a straight-line body of loads into registers, compares, tests and `pause`,
  branching back to its head (an exit branch in the middle is fine).  Once two arrivals at the
  head in a row find the same registers, every later iteration finds them too (same registers,
  same memory, same code, so the same next state): those iterations are counted, not run.
* a **countdown**: `dec r32` then `jns`/`jnz` back to it.  Skipping k iterations subtracts k
  from the register.

Skips never change what the guest sees, only how fast it gets there: they stay inside the
current run's budget (so every timer, slice end and `--stop-at` lands on the same instruction)
and always leave the last iteration to the CPU, so its flags and registers at the run's end are
the ones it computed.  The console, the instruction count and the guest time are byte for byte
those of a run without skips (`LGEMU_NO_SKIP=1`; tests/test_spin.py compares them on real
kernels).  Loads must hit RAM, never a device's MMIO window, and the body's bytes are checked at
every arrival.

How loops are found: when a run ends because its budget ran out and the CPU stands inside such
a loop, its head is armed as a Unicorn exit (`Cpu.set_loop_heads`, shared by every address space
like any kernel-text exit), so later arrivals stop the CPU at the head.  At an arrival the head
is disarmed until the next slice (a run cannot start at an exit), and one or two iterations
run to confirm a spin, with the targets of its exit branches armed meanwhile (an iteration
that leaves and comes back in as many instructions is not the body's).  Skips are made only
while nothing watches instructions one by one (traces, gdb, profiles and timelines see every
instruction run) and never with the realtime clock, whose calibration would measure the
skipping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ..machine.cpu import Reg

# x86 register numbers as ModRM encodes them.
GPR = (Reg.EAX, Reg.ECX, Reg.EDX, Reg.EBX, Reg.ESP, Reg.EBP, Reg.ESI, Reg.EDI)
STATE = (*GPR, Reg.EFLAGS)  # what an iteration of an allowed body can change
MAX_INSNS = 8  # longest body recognised
MAX_BODY = 40  # bytes
# A stop at a head costs some 30-50 µs of Python and Unicorn, as much as running several
# thousand instructions of a tight loop.  A loop none of whose last `RECENT` arrivals skipped
# `WORTH` instructions is disarmed for good: 4.4's i8042 probe calls udelay(50) ten thousand
# times through the delay loop calibrate_delay used (5 000 instructions each), while
# calibrate_delay's own arrivals alternate between nothing (the tick just came) and up to a
# whole tick.
RECENT = 16
WORTH = 50_000
JNS, JNZ = 0x79, 0x75


# Named tuples rather than dataclasses: these load with every boot, where a dataclass costs
# five times as much to define (start-up is an issue-12 target).
class Mem(NamedTuple):
    """A memory operand: `disp + base + index << scale`, `size` bytes read."""

    base: int | None
    index: int | None
    scale: int
    disp: int
    size: int

    def address(self, regs: list[int]) -> int:
        """Its linear address for these register values, in ModRM's numbering (`GPR`'s
        order: base and index are such numbers, not `Reg` ids); guest segments are flat."""
        ea = self.disp
        if self.base is not None:
            ea += regs[self.base]
        if self.index is not None:
            ea += regs[self.index] << self.scale
        return ea & 0xFFFFFFFF


class Insn(NamedTuple):
    """One decoded instruction of an allowed body."""

    length: int
    kind: str  # "read" (loads, moves to a register, compares, tests, pause), "jcc", "jmp", "dec"
    mem: Mem | None = None
    writes: int | None = None  # the register (0-7) it writes, if any
    target: int | None = None  # a branch's target (absolute)
    opcode: int = 0


class Loop(NamedTuple):
    """A recognised loop: where it starts, its bytes as learned, and how to skip it."""

    head: int
    code: bytes
    length: int  # instructions per iteration
    reads: tuple[Mem, ...]  # a spin's memory operands
    counter: int | None = None  # a countdown's register (0-7); None for a spin
    until_zero: bool = False  # a countdown's branch: jnz (until zero) or jns (until negative)
    exits: frozenset[int] = frozenset()  # a spin's exit branches' targets (see `Spins._watch`)


def _modrm(code: bytes, at: int, size: int) -> tuple[int, int, Mem | None, int] | None:
    """ModRM (and SIB, displacement) at `at`: (bytes used, reg field, memory operand or None,
    rm register when there is no memory operand)."""
    if at >= len(code):
        return None
    modrm = code[at]
    mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
    if mod == 3:
        return 1, reg, None, rm
    used, base, index, scale = 1, rm, None, 0
    disp_len = {0: 0, 1: 1, 2: 4}[mod]
    if rm == 4:
        if at + 1 >= len(code):
            return None
        sib = code[at + 1]
        used, scale, base = 2, sib >> 6, sib & 7
        index = None if (sib >> 3) & 7 == 4 else (sib >> 3) & 7
        if base == 5 and mod == 0:
            base, disp_len = None, 4
    elif rm == 5 and mod == 0:
        base, disp_len = None, 4
    if at + used + disp_len > len(code):
        return None
    raw = code[at + used:at + used + disp_len]
    disp = int.from_bytes(raw, "little", signed=True) & 0xFFFFFFFF if raw else 0
    return used + disp_len, reg, Mem(base, index, scale, disp, size), rm


# Opcodes that only read: (operand size, immediate bytes, required ModRM reg field or None).
_READ_MODRM = {
    0x8B: (4, 0, None), 0x8A: (1, 0, None),  # mov r, r/m (writes reg)
    0x3B: (4, 0, None), 0x39: (4, 0, None), 0x3A: (1, 0, None), 0x38: (1, 0, None),  # cmp
    0x85: (4, 0, None), 0x84: (1, 0, None),  # test
    0x83: (4, 1, 7), 0x81: (4, 4, 7), 0x80: (1, 1, 7),  # cmp r/m, imm
    0xF7: (4, 4, 0), 0xF6: (1, 1, 0),  # test r/m, imm
}
_READ_IMM = {0x3D: 4, 0xA9: 4, 0x3C: 1, 0xA8: 1}  # cmp/test eax|al, imm
_MOVX = {0xB6: 1, 0xBE: 1, 0xB7: 2, 0xBF: 2}  # movzx/movsx r32, r/m8|16


def decode(code: bytes, at: int, address: int) -> Insn | None:
    """The instruction at `code[at:]` (linear `address`) if it is one a loop body may hold."""
    if at >= len(code):
        return None
    op = code[at]
    if op == 0x90:
        return Insn(1, "read")
    if op == 0xF3 and at + 1 < len(code) and code[at + 1] == 0x90:
        return Insn(2, "read")  # pause
    if op in _READ_MODRM:
        size, imm, need = _READ_MODRM[op]
        m = _modrm(code, at + 1, size)
        if m is None or (need is not None and m[1] != need):
            return None
        used, reg, mem, _ = m
        writes = (reg if size == 4 else reg & 3) if op in (0x8B, 0x8A) else None
        length = 1 + used + imm
        return Insn(length, "read", mem, writes) if at + length <= len(code) else None
    if op in _READ_IMM:
        length = 1 + _READ_IMM[op]
        return Insn(length, "read") if at + length <= len(code) else None
    if op in (0xA1, 0xA0):  # mov eax|al, [moffs32]
        if at + 5 > len(code):
            return None
        disp = int.from_bytes(code[at + 1:at + 5], "little")
        return Insn(5, "read", Mem(None, None, 0, disp, 4 if op == 0xA1 else 1), 0)
    if 0x70 <= op <= 0x7F or op == 0xEB:
        if at + 2 > len(code):
            return None
        rel = int.from_bytes(code[at + 1:at + 2], "little", signed=True)
        kind = "jmp" if op == 0xEB else "jcc"
        return Insn(2, kind, target=(address + 2 + rel) & 0xFFFFFFFF, opcode=op)
    if op == 0xE9:
        if at + 5 > len(code):
            return None
        rel = int.from_bytes(code[at + 1:at + 5], "little", signed=True)
        return Insn(5, "jmp", target=(address + 5 + rel) & 0xFFFFFFFF, opcode=op)
    if 0x48 <= op <= 0x4F:
        return Insn(1, "dec", writes=op - 0x48)
    if op == 0xFF and at + 1 < len(code) and code[at + 1] >> 3 == 0x19:  # ff /1, mod 3
        return Insn(2, "dec", writes=code[at + 1] & 7)
    if op == 0x0F and at + 1 < len(code):
        second = code[at + 1]
        if 0x80 <= second <= 0x8F and at + 6 <= len(code):
            rel = int.from_bytes(code[at + 2:at + 6], "little", signed=True)
            return Insn(6, "jcc", target=(address + 6 + rel) & 0xFFFFFFFF, opcode=second - 0x10)
        if second in _MOVX:
            m = _modrm(code, at + 2, _MOVX[second])
            if m is None:
                return None
            return Insn(2 + m[0], "read", m[2], m[1])
    return None


def _body(code: bytes, head: int) -> tuple[list[tuple[int, Insn]], int] | None:
    """Decode from `head` to the first branch back to it: [(address, insn)], body bytes."""
    insns: list[tuple[int, Insn]] = []
    at = 0
    while len(insns) < MAX_INSNS:
        insn = decode(code, at, head + at)
        if insn is None:
            return None
        insns.append((head + at, insn))
        at += insn.length
        if insn.kind in ("jcc", "jmp") and insn.target == head:
            return insns, at
        if insn.kind == "jmp":
            return None
        if insn.kind == "jcc" and head <= insn.target < head + MAX_BODY:
            return None  # a branch inside the body: not straight-line
    return None


def find_loop(read: Callable[[int, int], bytes | None], eip: int) -> Loop | None:
    """The recognised loop `eip` stands in (at an instruction boundary), or None.  `read(va,
    n)` gives guest code bytes (None where unmapped)."""
    ahead = read(eip, MAX_BODY)
    if ahead is None:
        return None
    at = 0
    head = None
    for _ in range(MAX_INSNS):
        insn = decode(ahead, at, eip + at)
        if insn is None:
            return None
        at += insn.length
        if insn.kind in ("jcc", "jmp") and eip - MAX_BODY < insn.target <= eip:
            head = insn.target
            break
        if insn.kind == "jmp":
            return None
    if head is None:
        return None
    code = read(head, MAX_BODY)
    if code is None:
        return None
    found = _body(code, head)
    if found is None:
        return None
    insns, size = found
    if eip not in {address for address, _ in insns}:
        return None
    return classify(head, code[:size], [insn for _, insn in insns])


def classify(head: int, code: bytes, insns: list[Insn]) -> Loop | None:
    """A `Loop` if the body is a countdown or a spin whose loads use no register the body
    itself writes; None otherwise."""
    if len(insns) == 2 and insns[0].kind == "dec" and insns[1].kind == "jcc" \
            and insns[1].opcode in (JNS, JNZ):
        return Loop(head, code, 2, (), insns[0].writes, insns[1].opcode == JNZ)
    written: set[int] = set()
    reads: list[Mem] = []
    for insn in insns:
        if insn.kind == "dec":
            return None
        if insn.mem is not None:
            used = {insn.mem.base, insn.mem.index} - {None}
            if used & written:
                return None
            reads.append(insn.mem)
        if insn.writes is not None:
            if insn.writes == 4:  # ESP: never a spin's business
                return None
            written.add(insn.writes)
    exits = frozenset(insn.target for insn in insns
                      if insn.kind == "jcc" and insn.target is not None and insn.target != head)
    return Loop(head, code, len(insns), tuple(reads), exits=exits)


class Spins:
    """The loops one guest has been seen waiting in, and the skip in progress.

    The run loop (`Guest._step`) calls `slice_starts` at each slice start, `before_run` with
    each run's budget and `after_run` with what the run did; nothing else touches it."""

    def __init__(self, read: Callable[[int, int], bytes | None],
                 in_ram: Callable[[int, int], bool], regs: Callable[[], list[int]],
                 set_reg: Callable[[int, int], None], arm: Callable[[frozenset[int]], None],
                 kernel_start: int) -> None:
        self._read, self._in_ram, self._regs, self._set_reg = read, in_ram, regs, set_reg
        self._arm = arm
        self._kernel = kernel_start
        self.loops: dict[int, Loop] = {}
        self._armed: frozenset[int] = frozenset()
        self._refused: set[int] = set()  # EIPs that stood in no loop we know how to skip
        self._recent: dict[int, list[int]] = {}  # head → instructions skipped per arrival
        self.retired: set[int] = set()  # heads not worth stopping at (see WORTH)
        self._loop: Loop | None = None  # the loop being watched at its head
        self._seen: list[int] | None = None  # registers at the last arrival at its head
        self.skipped = 0  # instructions counted without being run (for -v)

    def slice_starts(self) -> None:
        """A slice starts (the Host may have changed anything): forget the loop being
        watched."""
        self._loop = self._seen = None

    def _set_armed(self, heads: frozenset[int]) -> None:
        if heads != self._armed:
            self._armed = heads
            self._arm(heads)

    def stop(self) -> None:
        """Skipping is off from now on (something started watching instructions)."""
        self._loop = self._seen = None
        self._set_armed(frozenset())

    def _watch(self, eip: int) -> None:
        """The CPU stands at the head of a known loop: watch it (a run cannot start at an
        exit, so the head is disarmed while it is watched and until the loop is left).

        The targets of its exit branches are armed meanwhile: an iteration that took one and
        came back to the head in as many instructions as the body has (through code that
        may store, or do anything) must not pass for one that ran the body, and stopping
        where the exit lands ends the watch instead."""
        loop = self._loop = self.loops[eip]
        self._seen = None
        self._set_armed(frozenset(self.loops) - self.retired - {eip} | loop.exits)

    def before_run(self, eip: int, budget: int) -> tuple[int, int]:
        """Before a run of at most `budget` instructions from `eip`: (instructions skipped,
        the run's budget).  Skipped instructions are the caller's to count as executed."""
        if self._loop is None:
            if eip not in self.loops or eip in self.retired:
                self._set_armed(frozenset(self.loops) - self.retired)
                return 0, budget
            self._watch(eip)
        loop = self._loop
        assert loop is not None
        if eip != loop.head or self._read(loop.head, len(loop.code)) != loop.code:
            return self._done(0, budget)
        regs = self._regs()
        left = budget - loop.length  # the last iteration is always the CPU's
        if loop.counter is not None:
            value = regs[loop.counter]
            # Iterations before the loop exits: jns stops once the register goes negative
            # (value + 1 of them from a non-negative value), jnz once it reaches zero.
            if loop.until_zero:
                total = value or 1 << 32
            else:
                total = value + 1 if value < 0x80000000 else 1
            k = max(0, min(total - 1, left // loop.length))
            if k:
                self._set_reg(GPR[loop.counter], (value - k) & 0xFFFFFFFF)
            return self._done(k * loop.length, budget)
        if any(not self._in_ram(m.address(regs), m.size) for m in loop.reads):
            return self._done(0, budget)
        if self._seen == regs and left >= loop.length:
            # A fixed point: every further iteration of this run finds these registers.
            return self._done(left // loop.length * loop.length, budget)
        if budget < loop.length:
            return self._done(0, budget)
        self._seen = regs
        return 0, loop.length  # one iteration, then look again

    def _done(self, skipped: int, budget: int) -> tuple[int, int]:
        """The watch ends having skipped `skipped` instructions of a run of `budget`: note
        it, and retire the loop when its recent arrivals were not worth their stops."""
        loop = self._loop
        assert loop is not None
        self._loop = self._seen = None
        self.skipped += skipped
        recent = self._recent.setdefault(loop.head, [])
        recent.append(skipped)
        del recent[:-RECENT]
        if len(recent) == RECENT and max(recent) < WORTH:
            self.retired.add(loop.head)
        return skipped, budget - skipped

    def after_run(self, eip: int, at_head: bool, exhausted: bool, kernel_mode: bool) -> None:
        """After a run: `at_head` if it stopped at an armed head, `exhausted` if it ran its
        whole budget (a place worth learning a loop from)."""
        if at_head and eip in self.loops:
            if self._loop is not None and self._loop.head != eip:
                # Another head stopped the watched loop: its arrival skipped nothing.  Two
                # loops whose paths run through each other's heads (one's exit branch is the
                # other's way back) would otherwise stop the CPU every instruction or two,
                # for ever, with neither ever counted as not worth its stops.
                self._done(0, 0)
            self._watch(eip)
            return
        if self._loop is not None:
            if eip == self._loop.head:
                return  # a watched iteration came round
            self._done(0, 0)  # the loop was left while it was watched
        if exhausted and kernel_mode and eip >= self._kernel and eip not in self._refused:
            loop = find_loop(self._read, eip)
            # Heads and exit targets are armed in every address space: kernel text only, and
            # mapped (arming an address nothing maps drops all translated code, Cpu.set_loop_heads).
            if loop is None or loop.head in self.loops or any(
                    target < self._kernel or self._read(target, 1) is None
                    for target in loop.exits):
                self._refused.add(eip)
                return
            self.loops[loop.head] = loop
