"""An interpreter guest for property-based tests: built once, fed a new program per example.

Assembling a guest per hypothesis example would cost more than running it, so the fuzz tests
share one small guest (`build_interpreter`) that executes a *program*: a table of fixed-size
operations in its data section.  Each example writes its operations into a copy of the ELF
file (`run_program`) and boots it in-process, a few milliseconds per run.

The guest starts like every tests/guestasm.py guest (ring 1, the Launcher's identity map of
RAM), then:

* registers `lguest_data` (INIT), loads `gdt_table` (kernel code/data at entries 12/13, user
  code/data at 14/15, the rest zero), sets its ring-1 stack with SET_STACK, and points every
  IDT vector at a stub: trap gates (DPL 3) for exceptions and software interrupts, interrupt
  gates for the IRQ vectors 0x20–0x3f;
* runs the operations in order.  Before each one it reloads DS/ES/SS with 0x69, FS/GS with
  0, and its own stack, so one operation's damage does not decide the next one's fate;
* a trap or fault (vector outside 0x20–0x3f) abandons the current operation and goes on with
  the next; an IRQ is counted, `irq_enabled` is set again, and the interrupted code resumes;
* after the last operation it prints ``done t=<traps> i=<irqs>`` (hex) and powers down.

Operations are six 32-bit words ``(op, a, b, c, d, e)`` (see `Op`); addresses are guest-
virtual, and until a program switches page tables virtual = physical for all of RAM.  Runs
are bounded by ``--max-insns`` (`MAX_INSNS`), so a program that makes the guest loop, trap
forever or single-step itself ends with exit status 5 instead of a hung test.

`assert_clean_end` states what every run of a hostile program must end in: a documented exit
status, exactly one line on stderr (none for a power-down) with the prefix of that status, no
traceback and no internal error.  `assert_deserved` (with `run_program`, which also reads back
the operation under way at the end) states which of those ends a given program deserves.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import SimpleNamespace

from guestasm import assert_one_line, build_guest, symbol_address, symbol_file_offset

from lgemu import abi

MAX_OPS = 48
OP_WORDS = 6
MAX_INSNS = 40_000
MEM_MIB = 64
MEM = MEM_MIB << 20
SCRATCH = 0x1000000  # 16 MiB: free RAM for page tables and buffers built by programs
GUEST_DS = abi.GUEST_DS
USER_CS, USER_DS = abi.USER_CS, abi.USER_DS
PREFIXES = {1: "lgemu: guest crashed: ", 3: "lgemu: guest killed: ", 4: "lgemu: guest stuck: ",
            5: "lgemu: instruction limit of "}


class Op(IntEnum):
    """Interpreter operations; the table in `INTERPRETER` follows this order."""

    END = 0  # print the counters and power down
    HCALL = 1  # EAX=a EDX=b EBX=c ECX=d, int $0x1f (NEW_PGTABLE also moves the PDE base)
    ASYNC = 2  # async ring slot a%64 := (call b, arg1 c, arg2 d, arg3 e), status 0
    POKE32 = 3  # *(u32 *)a = b
    POKE8 = 4  # *(u8 *)a = b
    PEEK = 5  # read *(u32 *)a
    LD = 6  # lguest_data field at offset a (rounded to 4, below 1136) = b
    PDE = 7  # entry a%1024 of the current page directory = b
    FILL = 8  # for i < c%1025: *(u32 *)(a + 4i) = b + i*d
    COPY = 9  # copy c%1025 words from b to a
    SPIN = 10  # loop a%65536 times (lets timers fire)
    TRAP = 11  # run trap variant a%NVARIANTS in ring 1, EBX=c ECX=d EDX=e
    USER = 12  # the same in ring 3 (CS 0x73, SS 0x7b, ESP b)


# Trap variants: small instruction sequences run by TRAP and USER, with EBX, ECX and EDX from
# the operation.  Each ends by going on with the next operation (in ring 3 that reload
# itself faults back into ring 1, which is fine).
TRAP_VARIANTS: list[tuple[str, str]] = [
    ("nothing", ""),
    ("ud2", "ud2"),
    ("int3", "int3"),
    ("int $0x80", "int $0x80"),
    ("int $0x20", "int $0x20"),
    ("divide by zero", "xorl %ecx, %ecx\n divl %ecx"),
    ("into", "movb $0x7f, %al\n addb $1, %al\n into"),
    ("hlt", "hlt"),
    ("cli", "cli"),
    ("load", "movl (%ebx), %eax"),
    ("store", "movl %ecx, (%ebx)"),
    ("push/pop", "pushl %ecx\n popl %eax"),
    ("ds load", "movw %bx, %ds\n movl (%edx), %eax"),
    ("fs load", "movw %bx, %fs\n movl %fs:(%edx), %eax"),
    ("gs store", "movw %bx, %gs\n movl %ecx, %gs:(%edx)"),
    ("ss load", "movw %bx, %ss\n pushl %ecx\n popl %eax"),
    ("far jmp", "movl $far_landing, farptr\n movw %bx, farptr+4\n ljmp *farptr"),
    ("far call", "movl $far_landing, farptr\n movw %bx, farptr+4\n lcall *farptr"),
    ("lret", "pushl %ebx\n pushl $far_landing\n lret"),
    ("iret", "pushl %ecx\n pushl %ebx\n pushl $far_landing\n iret"),
    ("hypercall", "movl %ecx, %eax\n int $0x1f"),
    ("sysenter", "sysenter"),
    ("mov cr3", "movl %cr3, %eax"),
    ("in/out", "inb $0x60, %al\n outb %al, $0x80\n movw %bx, %dx\n inl %dx, %eax"),
    ("rep insb", "movl %ebx, %edi\n andl $7, %ecx\n movw $0x60, %dx\n rep insb"),
    ("int n", "movb %bl, 1f+1\n 1: int $0"),
    ("popf", "pushl %ecx\n popfl\n nop\n nop\n pushl $0x202\n popfl"),
    ("sgdt/sidt/str", "sgdt (%ebx)\n sidt 8(%ebx)\n str %ax\n sldt %ax"),
    ("lgdt", "lgdt (%ebx)"),
    ("fpu", "fninit\n fld1\n fstp %st(0)"),
    ("esp", "movl %ebx, %esp\n pushl %ecx"),
    ("lldt/ltr", "lldt %bx\n ltr %bx"),
    ("jmp *", "jmp *%ebx"),
    ("rdmsr/rdpmc", "rdtsc\n rdmsr\n rdpmc"),
    ("cpuid", "movl %ebx, %eax\n cpuid"),
    ("syscall", "syscall"),
    ("icebp", ".byte 0xf1"),
    ("lock nop", ".byte 0xf0, 0x90"),
    ("bound", "boundl %eax, (%ebx)"),
    ("descriptor probes", "lsl %ebx, %eax\n lar %ebx, %eax\n verr %bx\n verw %bx"),
    ("mov cr0", "movl %ebx, %cr0"),
    ("rdtscp", "rdtscp"),
]
NVARIANTS = len(TRAP_VARIANTS)


def _variants_source() -> str:
    lines = []
    for index, (_, code) in enumerate(TRAP_VARIANTS):
        lines.append(f"tv_{index}:\n {code}\n jmp next_op")
    table = "\n".join(f"\t.long tv_{i}" for i in range(NVARIANTS))
    return "\n".join(lines) + "\n\t.data\n\t.balign 4\ntrap_variants:\n" + table + "\n\t.text\n"


INTERPRETER = rf"""
	movl	lguest_data+LD_PGDIR, %eax
	movl	%eax, cur_pgdir
	xorl	%edi, %edi			/* every vector -> its stub */
1:	movl	%edi, %esi
	shll	$4, %esi
	addl	$vector_stubs, %esi
	movl	%esi, %ebx
	andl	$0xFFFF, %ebx
	orl	$0x00600000, %ebx
	movl	%esi, %ecx
	andl	$0xFFFF0000, %ecx
	orl	$0xEF00, %ecx			/* trap gate, DPL 3 */
	cmpl	$0x20, %edi
	jb	2f
	cmpl	$0x40, %edi
	jae	2f
	xorl	$0x6100, %ecx			/* IRQs: interrupt gate, DPL 0 */
2:	movl	%edi, %edx
	movl	$LHCALL_LOAD_IDT_ENTRY, %eax
	int	$0x1f
	incl	%edi
	cmpl	$256, %edi
	jb	1b
	HCALL	$LHCALL_LOAD_GDT, $gdt_table, $32
	HCALL	$LHCALL_SET_STACK, ${GUEST_DS:#x}, $__stack_top, $1
	movl	$program, pc

next_op:
	movl	${GUEST_DS:#x}, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	$__stack_top, %esp
	xorl	%eax, %eax
	movl	%eax, %fs
	movl	%eax, %gs
	movl	pc, %esi
	cmpl	$program_end, %esi
	jae	op_end
	addl	${4 * OP_WORDS}, pc		/* a fault skips the rest of this operation */
	movl	(%esi), %eax
	cmpl	${len(Op)}, %eax
	jae	next_op
	jmp	*op_table(,%eax,4)

op_end:
	PUTS	msg_done
	PUTHEX	trap_count
	PUTS	msg_irqs
	PUTHEX	irq_count
	POWER_DOWN

op_hcall:
	movl	4(%esi), %eax
	movl	8(%esi), %edx
	movl	12(%esi), %ebx
	movl	16(%esi), %ecx
	cmpl	$LHCALL_NEW_PGTABLE, %eax
	jne	1f
	movl	%edx, cur_pgdir
1:	int	$0x1f
	jmp	next_op

op_async:
	movl	4(%esi), %edi
	andl	$63, %edi
	movl	%edi, %ebp
	shll	$4, %edi
	movl	8(%esi), %eax
	movl	%eax, lguest_data+LD_HCALLS(%edi)
	movl	16(%esi), %eax
	movl	%eax, lguest_data+LD_HCALLS+4(%edi)
	movl	20(%esi), %eax
	movl	%eax, lguest_data+LD_HCALLS+8(%edi)
	movl	12(%esi), %eax
	movl	%eax, lguest_data+LD_HCALLS+12(%edi)
	movb	$0, lguest_data+LD_HCALL_STATUS(%ebp)
	jmp	next_op

op_poke32:
	movl	4(%esi), %edi
	movl	8(%esi), %eax
	movl	%eax, (%edi)
	jmp	next_op

op_poke8:
	movl	4(%esi), %edi
	movl	8(%esi), %eax
	movb	%al, (%edi)
	jmp	next_op

op_peek:
	movl	4(%esi), %edi
	movl	(%edi), %eax
	jmp	next_op

op_ld:
	movl	4(%esi), %edi
	andl	$0x7FC, %edi
	cmpl	$LGUEST_DATA_SIZE, %edi
	jae	next_op
	movl	8(%esi), %eax
	movl	%eax, lguest_data(%edi)
	jmp	next_op

op_pde:
	movl	4(%esi), %edi
	andl	$1023, %edi
	shll	$2, %edi
	addl	cur_pgdir, %edi
	movl	8(%esi), %eax
	movl	%eax, (%edi)
	jmp	next_op

	.macro	WORD_COUNT			/* ECX := the word count c, 0 to 1024 */
	movl	12(%esi), %ecx
	andl	$2047, %ecx
	cmpl	$1024, %ecx
	jbe	1f
	subl	$1024, %ecx
1:
	.endm

op_fill:
	movl	4(%esi), %edi
	movl	8(%esi), %eax
	WORD_COUNT
	movl	16(%esi), %edx
	jecxz	3f
2:	movl	%eax, (%edi)
	addl	$4, %edi
	addl	%edx, %eax
	decl	%ecx
	jnz	2b
3:	jmp	next_op

op_copy:
	movl	4(%esi), %edi
	WORD_COUNT
	movl	8(%esi), %esi
	rep movsl
	jmp	next_op

op_spin:
	movl	4(%esi), %ecx
	andl	$0xFFFF, %ecx
	jecxz	2f
1:	decl	%ecx
	jnz	1b
2:	jmp	next_op

op_trap:
	movl	4(%esi), %eax
	xorl	%edx, %edx
	movl	${NVARIANTS}, %ecx
	divl	%ecx
	movl	trap_variants(,%edx,4), %eax
	movl	12(%esi), %ebx
	movl	16(%esi), %ecx
	movl	20(%esi), %edx
	jmp	*%eax

op_user:
	movl	4(%esi), %eax
	xorl	%edx, %edx
	movl	${NVARIANTS}, %ecx
	divl	%ecx
	pushl	${USER_DS:#x}
	pushl	8(%esi)
	pushl	$0x202
	pushl	${USER_CS:#x}
	pushl	trap_variants(,%edx,4)
	movl	12(%esi), %ebx
	movl	16(%esi), %ecx
	movl	20(%esi), %edx
	iret

far_landing:
	jmp	next_op

/* Every vector pushes its number; IRQs resume the interrupted code, anything else abandons
 * the current operation. */
trap_entry:
	cmpl	$0x20, (%esp)
	jb	1f
	cmpl	$0x40, (%esp)
	jae	1f
	pushl	%eax
	pushl	%ds
	movl	${GUEST_DS:#x}, %eax
	movl	%eax, %ds
	incl	irq_count
	movl	$0x200, lguest_data+LD_IRQ_ENABLED
	popl	%ds
	popl	%eax
	addl	$4, %esp
	iret
1:	movl	${GUEST_DS:#x}, %eax
	movl	%eax, %ds
	incl	trap_count
	jmp	next_op

	.balign	16
vector_stubs:
	.set	vec, 0
	.rept	256
	.balign	16
	pushl	$vec
	jmp	trap_entry
	.set	vec, vec + 1
	.endr

{_variants_source()}
"""

INTERPRETER_DATA = rf"""
	.balign	4
op_table:
	.long	op_end, op_hcall, op_async, op_poke32, op_poke8, op_peek, op_ld, op_pde
	.long	op_fill, op_copy, op_spin, op_trap, op_user
pc:		.long	0
cur_pgdir:	.long	0
trap_count:	.long	0
irq_count:	.long	0
farptr:		.long	0, 0
msg_done:	.asciz	"done t="
msg_irqs:	.asciz	" i="
	.balign	8
gdt_table:
	.fill	12, 8, 0
	.quad	0x00CF9A000000FFFF	/* 12 kernel code (the Host raises DPL 0 to 1) */
	.quad	0x00CF92000000FFFF	/* 13 kernel data */
	.quad	0x00CFFA000000FFFF	/* 14 user code */
	.quad	0x00CFF2000000FFFF	/* 15 user data */
	.fill	16, 8, 0
	.balign	16
program:
	.fill	{MAX_OPS * OP_WORDS}, 4, 0
program_end:
"""
assert len(Op) == 13


def build_interpreter(tmp_path: Path) -> Path:
    """The interpreter guest (cached per session by guestasm)."""
    return build_guest(tmp_path, "\tINIT\n" + INTERPRETER, INTERPRETER_DATA)


@dataclass
class Interpreter:
    """A built interpreter and a scratch copy of it to patch per example."""

    pristine: bytes
    program_offset: int
    work: Path
    symbols: dict[str, int]

    @classmethod
    def build(cls, directory: Path) -> Interpreter:
        elf = build_interpreter(directory)
        work = directory / "interpreter-run.elf"
        shutil.copyfile(elf, work)
        names = ("lguest_data", "gdt_table", "program", "__stack_top", "vector_stubs",
                 "far_landing", "trap_count", "pc", "program")
        return cls(elf.read_bytes(), symbol_file_offset(elf, "program"), work,
                   {name: symbol_address(elf, name) for name in names})

    def image(self, ops: Sequence[Sequence[int]]) -> Path:
        """Write `ops` (at most MAX_OPS, each up to six words) into the work copy."""
        if len(ops) > MAX_OPS:
            raise ValueError(f"{len(ops)} operations, the interpreter holds {MAX_OPS}")
        words: list[int] = []
        for op in ops:
            padded = [*op, 0, 0, 0, 0, 0, 0][:OP_WORDS]
            words += [w & 0xFFFFFFFF for w in padded]
        words += [0] * (MAX_OPS * OP_WORDS - len(words))  # Op.END
        image = bytearray(self.pristine)
        struct.pack_into(f"<{MAX_OPS * OP_WORDS}I", image, self.program_offset, *words)
        self.work.write_bytes(image)
        return self.work


def boot_argv(image: Path, extra: Iterable[str] = (), max_insns: int = MAX_INSNS) -> list[str]:
    """`lgemu boot` arguments for one bounded run of an interpreter image."""
    return ["boot", str(image), "-m", str(MEM_MIB), "--max-insns", str(max_insns), *extra]


def assert_clean_end(status: int, err: str, out: bytes = b"") -> None:
    """A documented exit status, one line on stderr with its prefix (none for a power-down),
    never a traceback or an internal error."""
    assert "Traceback" not in err and "internal error" not in err, err
    assert status in (0, 1, 3, 4, 5), (status, err)
    if status == 0:
        assert err == "", err
    else:
        assert assert_one_line(err).startswith(PREFIXES[status]), err


def ld(field: str) -> int:
    """Offset of an `lguest_data` field, for Op.LD."""
    return getattr(abi.LguestData, field).offset


# -- one interpreter per test session, and hypothesis strategies over its layout -----------
@functools.cache
def interpreter() -> Interpreter:
    """The interpreter, built once per test session into a private temporary directory."""
    directory = Path(tempfile.mkdtemp(prefix="lgemu-fuzz-"))
    atexit.register(shutil.rmtree, directory, True)
    return Interpreter.build(directory)


def sym(name: str) -> int:
    """Address of an interpreter symbol (builds the interpreter on first use)."""
    return interpreter().symbols[name]


def interesting_addresses(limit: int) -> list[int]:
    """Addresses worth trying for a guest whose memory ends at `limit` (pfn_limit << 12)."""
    return sorted({
        0, 1, 0x1000, 0xFFF, 0x100000, SCRATCH, SCRATCH + 0x1000, MEM - 4, MEM - 1, MEM,
        MEM + 0x1000, limit - 0x1000, limit - 4, limit - 1, limit, limit + 0x1000,
        0x7FFFFFFF, 0x80000000, 0xC0000000, 0xFFC00000, 0xFFC01000, 0xFFFFF000, 0xFFFFFFF0,
        0xFFFFFFFC, 0xFFFFFFFF,
        sym("lguest_data"), sym("gdt_table"), sym("__stack_top") - 64,
    })


def fuzz_settings(max_examples: int):
    """Bounded, reproducible hypothesis settings: the same examples on every machine.

    ``LGEMU_FUZZ_EXAMPLES=N`` in the environment turns this into a soak: N random (not
    derandomized) examples per test, for hunting bugs by hand rather than in CI."""
    from hypothesis import HealthCheck, settings

    soak = int(os.environ.get("LGEMU_FUZZ_EXAMPLES", "0"))
    return settings(max_examples=soak or max_examples, deadline=None, derandomize=not soak,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


FUZZ = fuzz_settings(120)


def strategies(limit: int) -> SimpleNamespace:
    """Strategies for hostile values; those that name interpreter symbols are deferred, so
    the interpreter is only built when the first example is drawn."""
    from hypothesis import strategies as st

    interesting = st.deferred(lambda: st.sampled_from(interesting_addresses(limit)))
    return SimpleNamespace(
        words=st.one_of(interesting, st.integers(0, 0xFFFFFFFF), st.integers(0, 0x1000)),
        addresses=st.one_of(interesting, st.integers(0, limit + 0x2000),
                            st.integers(0, 0xFFFFFFFF)),
        scratch=st.integers(SCRATCH, SCRATCH + 0x20000).map(lambda a: a & ~3),
        calls=st.one_of(st.sampled_from([int(c) for c in abi.Hcall]), st.integers(0, 20),
                        st.integers(0, 0xFFFFFFFF)),
        selectors=st.one_of(st.integers(0, 0x100), st.sampled_from(
            [0, 3, abi.GUEST_CS, abi.GUEST_DS, abi.USER_CS, abi.USER_DS, abi.KERNEL_CS,
             abi.KERNEL_DS, abi.LGUEST_CS, abi.LGUEST_DS, abi.TSS_SELECTOR, 0xF8, 0xFB,
             0xFFFF])),
    )


def run(lgemu_main, ops: Sequence[Sequence[int]], extra: Iterable[str] = (),
        max_insns: int = MAX_INSNS) -> tuple[int, bytes, str]:
    """Boot the interpreter with `ops` through `lgemu_main` (the conftest fixture)."""
    return lgemu_main(boot_argv(interpreter().image(ops), extra, max_insns))


# -- what a program deserves --------------------------------------------------------------
@dataclass
class Outcome:
    """How one interpreter run ended, and which operation it was executing (index into the
    program; None while the interpreter was still setting itself up)."""

    status: int
    out: bytes
    err: str
    at: int | None


def run_program(lgemu_main, ops: Sequence[Sequence[int]], extra: Iterable[str] = (),
                max_insns: int = MAX_INSNS) -> Outcome:
    """`run`, and afterwards the interpreter's `pc` read back from guest RAM: the operation
    under way when the run ended (`pc` moves past an operation before it starts)."""
    from unittest import mock

    from lgemu.machine.memory import GuestMemory

    memories: list[GuestMemory] = []
    original = GuestMemory.__init__

    def init(self: GuestMemory, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        memories.append(self)
    with mock.patch.object(GuestMemory, "__init__", init):
        status, out, err = run(lgemu_main, ops, extra, max_insns)
    at = None
    if memories:
        pc = memories[-1].u32(sym("pc"))
        if pc:
            at = (pc - sym("program")) // (4 * OP_WORDS) - 1
    return Outcome(status, out, err, at)


HVARIANT = next(i for i, (name, _) in enumerate(TRAP_VARIANTS) if name == "hypercall")
H = abi.Hcall
PAGE_TABLE_CALLS = {H.NEW_PGTABLE, H.SET_PTE, H.SET_PMD, H.FLUSH_TLB}
SEGMENT_CALLS = {H.LOAD_GDT, H.LOAD_TLS, H.SET_STACK}
WRITES = {Op.POKE32, Op.POKE8, Op.FILL, Op.COPY, Op.PDE, Op.TRAP, Op.USER}


def calls_made(ops: Sequence[Sequence[int]]) -> set[int]:
    """Hypercall numbers `ops` issue: synchronous, queued on the async ring, or from a trap
    variant that makes one."""
    made = set()
    for op in ops:
        op = [*op, 0, 0, 0, 0, 0, 0]
        if op[0] == Op.HCALL:
            made.add(op[1])
        elif op[0] == Op.ASYNC:
            made.add(op[2])
        elif op[0] in (Op.TRAP, Op.USER) and op[1] % NVARIANTS == HVARIANT:
            made.add(op[4])
    return made


def explains(reason: str, ops: Sequence[Sequence[int]]) -> bool:
    """Could a program made of `ops` (those that ran, up to the one under way) deserve to
    be killed for `reason`?  Each kill reason has its causes in the Host (see
    lgemu/host/hypercalls.py, paging.py, traps.py, guest.py); the interpreter itself, with
    no operations, deserves none of them."""
    calls = calls_made(ops)
    kinds = {op[0] for op in ops}
    tables = bool(kinds & WRITES or calls & PAGE_TABLE_CALLS)
    match = re.match(r"Bad hypercall (\d+)$", reason)
    if match:
        return int(match[1]) in calls and int(match[1]) not in set(H)
    rules = [
        (r"already have lguest_data$", H.LGUEST_INIT in calls),
        (r"too many gdt entries \d+$", H.LOAD_GDT in calls),
        (r"bad stack (segment|pages) \d+$", H.SET_STACK in calls),
        (r"bad stack page 0x[0-9a-f]+$", bool(calls & {H.SET_STACK, H.NEW_PGTABLE}) or tables),
        (r"bad NOTIFY address 0x[0-9a-f]+$", H.NOTIFY in calls),
        (r"bad IDT type \d+$", H.LOAD_IDT_ENTRY in calls),
        (r"bad (read|write) address 0x[0-9a-f]+ len \d+$",
         bool(calls & {H.LOAD_GDT, H.LOAD_TLS, H.NOTIFY, H.CRASH})),
        (r"vring \w+\.\d+: ", H.NOTIFY in calls),
        (r"(bad page (table|directory) entry|attempt to access switcher pages)", tables),
        (r"Bad address 0x[0-9a-f]+$", tables or bool(calls & SEGMENT_CALLS)),
        (r"unhandled trap 256 ", bool(calls & SEGMENT_CALLS) or tables
         or bool(kinds & {Op.TRAP, Op.USER})),
        # Only LOAD_IDT_ENTRY takes a gate away; 2, 8 and 15 never had one.
        (r"unhandled trap (\d+) at 0x", H.LOAD_IDT_ENTRY in calls
         or re.match(r"unhandled trap (2|8|15) ", reason) is not None),
        (r"triple fault at 0x", tables or bool(calls & SEGMENT_CALLS)),
    ]
    return any(re.match(pattern, reason) and cause for pattern, cause in rules)


def assert_deserved(outcome: Outcome, ops: Sequence[Sequence[int]],
                    verbose: bool = False) -> None:
    """Each run ends the way its program deserves, not merely in some documented way:

    * powered down (0): every operation ran, and the interpreter printed its counters;
    * crashed (1): the program made LHCALL_CRASH; stuck (4): it made LHCALL_HALT;
    * killed (3): the reason is one the operations that ran can cause (`explains`) — the
      interpreter's own set-up deserves none, nor does a program of harmless operations;
    * out of instructions (5): the program holds something that can take that long.
    Whatever the status, stderr is the one documented line (`assert_clean_end`); with
    `verbose` (-v) that line is the last one, after the layout and the summary."""
    status, out, err = outcome.status, outcome.out, outcome.err
    if verbose:
        assert "Traceback" not in err and "internal error" not in err, err
        assert err.startswith("kernel "), err[:200]  # the layout comes first
        err = err.splitlines()[-1] + "\n" if status else ""
    assert_clean_end(status, err, out)
    if status == 0:
        assert re.fullmatch(rb"(?s).*done t=[0-9a-f]{8} i=[0-9a-f]{8}\s*", out), out[-200:]
        return
    assert outcome.at is not None, f"ended during the interpreter's set-up: {err!r}"
    ran = list(ops[:outcome.at + 1])
    calls = calls_made(ran)
    if status == 1:
        assert H.CRASH in calls, err
    elif status == 4:
        assert H.HALT in calls, err
    elif status == 3:
        reason = assert_one_line(err).removeprefix(PREFIXES[3])
        assert explains(reason, ran), (reason, ran)
    elif status == 5:
        kinds = {op[0] for op in ran}
        assert kinds - {Op.HCALL, Op.ASYNC, Op.LD, Op.PEEK} or calls - {H.FLUSH_ASYNC}, ran
