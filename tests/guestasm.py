"""Tiny probe and hostile guest kernels, assembled from GNU as source at test time.

`build_guest(tmp_path, body, data)` wraps `body` (AT&T syntax, 32-bit) in a prelude and links
it at 0x100000 with the entry `_start`.  The Launcher starts it in ring 1 on its identity map
(virtual = physical for all of RAM), CS 0x61, DS/SS 0x69, ESP 0, no IDT; `_start` loads a
16 KiB stack from .bss and falls into `body`.  Nothing is registered with the Host: a body
that wants to make hypercalls starts with `INIT`.

What the prelude gives a body:

* ``lguest_data``: 1136 bytes initialised like the 2.6.24 guest's (ABI §4): ``blocked_interrupts``
  1 (IRQ 0 blocked), every ``hcall_status`` 0xFF, ``kernel_address`` 0xC0000000,
  ``syscall_vec`` 0x80, everything else 0 (so ``noirq_start``/``noirq_end`` are 0).
  ``LD_*`` are its field offsets (``lguest_data+LD_PGDIR``).
* ``LHCALL_*``: the hypercall numbers.
* ``HCALL nr, a1, a2, a3``: EAX=nr, EDX=a1, EBX=a2, ECX=a3, then ``int $0x1f``.  Operands are
  AT&T operands (``$5``, ``%esi``, ``some_label``), default ``$0``; they go through the stack,
  so any operand works, registers included.  Clobbers EAX, EBX, ECX, EDX.
* ``INIT``: LHCALL_LGUEST_INIT with ``$lguest_data``.
* ``PUTS label``: LHCALL_NOTIFY with the address of the NUL-terminated string at ``label``
  (the early console prints it as is).
* ``PUTHEX operand``: print the operand as 8 lower-case hex digits (no newline); ``NEWLINE``
  prints ``\\n``.  Both keep every register.
* ``POWER_DOWN``: LHCALL_CRASH("Power down"), lgemu's exit status 0.
* ``CRASH label``: LHCALL_CRASH with the string at ``label``.
* ``ASYNC slot, nr, a1, a2, a3``: fill async ring slot ``slot`` (immediates or registers)
  and mark it ready (status 0); nothing is run until the next synchronous hypercall.
* ``SET_GATE vector, handler, flags``: LHCALL_LOAD_IDT_ENTRY for a gate to ``handler`` with
  selector 0x60; ``flags`` is the high word's low half (``GATE_TRAP`` 0x8F00, ``GATE_INT``
  0x8E00, ``| GATE_DPL3`` 0x6000).  Keeps every register.

If the body ever falls off its end, the guest crashes with "fell off the end of the test
body" (or, before INIT, is killed for a hypercall before INIT), so a Host that wrongly returns
from a call that should have ended the run shows up as a failure, never as a hang.

Builds are cached by source text, so a test that builds the same guest again costs nothing.

`build_guest(..., era=ERA)` speaks a later era's ABI instead (`lgemu.abi_eras`), to be run
with ``--abi``: that era's ``LHCALL_*`` numbers and ``LD_*`` offsets, its ``lguest_data``
layout, ``HCALL`` with its argument registers and instruction (``vmcall`` in 2.6.30-2.6.33),
``ASYNC`` with its ring entries, and ``CRASH``/``POWER_DOWN`` as SHUTDOWN with POWEROFF
where call 2 is SHUTDOWN.  2.6.23 (`era` with SEND_DMA) also puts the "GenuineLguest"
marker right before `_start`, where its Launcher enters (at the PAGE_OFFSET alias: the
prelude's code jumps only relative and its absolute addresses reach the identity map), and
makes PUTS a SEND_DMA of the string to the console's key 0 (there is no NOTIFY).  Without
`era` the source is 2.6.24's, byte for byte.

Python helpers for the tests: `descriptor` and `quads` write GDT entries, `symbol_address` and
`symbol_file_offset` find a symbol in the built image (to name an EIP in an expected kill
reason, or to patch data in the file), and `GuestRun` with `assert_killed`, `assert_crashed`,
`assert_powered_down` and `assert_one_line` states how a run must end.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from lgemu import abi
from lgemu.abi_eras import Era
from lgemu.errors import GuestKilled
from lgemu.kills import Kill

LOAD_ADDRESS = abi.KERNEL_LOAD_ADDR
STACK_SIZE = 16384
LGUEST_DATA_SIZE = abi.LGUEST_DATA_SIZE

# The guest's view of the ABI comes from lgemu.abi, where every layout is defined once.
HCALLS = {call.name: int(call) for call in abi.Hcall}
LGUEST_DATA_FIELDS = {
    "IRQ_ENABLED": abi.LD_IRQ_ENABLED, "BLOCKED": abi.LD_BLOCKED, "CR2": abi.LD_CR2,
    "TIME": abi.LD_TIME, "TIME_NSEC": abi.LD_TIME + abi.Timespec.tv_nsec.offset,
    "HCALL_STATUS": abi.LD_HCALL_STATUS, "HCALLS": abi.LD_HCALLS,
    "RESERVE_MEM": abi.LD_RESERVE_MEM, "TSC_KHZ": abi.LD_TSC_KHZ, "PGDIR": abi.LD_PGDIR,
    "NOIRQ_START": abi.LD_NOIRQ_START, "NOIRQ_END": abi.LD_NOIRQ_END,
    "KERNEL_ADDRESS": abi.LD_KERNEL_ADDRESS, "SYSCALL_VEC": abi.LD_SYSCALL_VEC,
}

_CONSTANTS = "\n".join(
    [f"\t.set LHCALL_{name}, {nr}" for name, nr in HCALLS.items()]
    + [f"\t.set LD_{name}, {off}" for name, off in LGUEST_DATA_FIELDS.items()]
    + [f"\t.set STACK_SIZE, {STACK_SIZE}", f"\t.set LGUEST_DATA_SIZE, {LGUEST_DATA_SIZE}"])

PRELUDE = _CONSTANTS + r"""

	.macro HCALL nr, a1=$0, a2=$0, a3=$0
	pushl	\a3
	pushl	\a2
	pushl	\a1
	pushl	\nr
	popl	%eax
	popl	%edx
	popl	%ebx
	popl	%ecx
	int	$0x1f
	.endm

	.macro INIT
	HCALL	$LHCALL_LGUEST_INIT, $lguest_data
	.endm

	.macro PUTS label
	HCALL	$LHCALL_NOTIFY, $\label
	.endm

	.macro PUTHEX src
	pushl	\src
	call	__puthex
	addl	$4, %esp
	.endm

	.macro NEWLINE
	pushal
	PUTS	__newline
	popal
	.endm

	.macro CRASH label
	HCALL	$LHCALL_CRASH, $\label
	ud2
	.endm

	.macro POWER_DOWN
	CRASH	__power_down
	.endm

	.set	GATE_TRAP, 0x8F00
	.set	GATE_INT, 0x8E00
	.set	GATE_DPL3, 0x6000

	.macro SET_GATE vector, handler, flags
	pushal
	movl	$\handler, %esi
	movl	%esi, %edi
	andl	$0xFFFF, %esi
	orl	$0x00600000, %esi
	andl	$0xFFFF0000, %edi
	orl	$(\flags), %edi
	HCALL	$LHCALL_LOAD_IDT_ENTRY, $(\vector), %esi, %edi
	popal
	.endm

	.macro ASYNC slot, nr, a1=$0, a2=$0, a3=$0
	movl	\nr, lguest_data + LD_HCALLS + 16 * \slot
	movl	\a2, lguest_data + LD_HCALLS + 16 * \slot + 4
	movl	\a3, lguest_data + LD_HCALLS + 16 * \slot + 8
	movl	\a1, lguest_data + LD_HCALLS + 16 * \slot + 12
	movb	$0, lguest_data + LD_HCALL_STATUS + \slot
	.endm

	.text
	.code32
	.globl	_start
_start:
	movl	$__stack_top, %esp
	jmp	guest_main

/* __puthex(value on the stack): NOTIFY 8 hex digits; keeps every register. */
__puthex:
	pushal
	movl	36(%esp), %eax
	movl	$__hexbuf, %edi
	movl	$8, %ecx
1:	roll	$4, %eax
	movl	%eax, %edx
	andl	$0xf, %edx
	movb	__hexdigits(%edx), %dl
	movb	%dl, (%edi)
	incl	%edi
	decl	%ecx
	jnz	1b
	movb	$0, (%edi)
	HCALL	$LHCALL_NOTIFY, $__hexbuf
	popal
	ret

	.data
	.balign	4
	.globl	lguest_data
lguest_data:
	.long	0			/* irq_enabled */
	.long	1			/* blocked_interrupts: IRQ 0 */
	.long	0			/* cr2 */
	.long	0, 0			/* time */
	.fill	64, 1, 0xff		/* hcall_status */
	.fill	64 * 16, 1, 0		/* hcalls */
	.long	0			/* reserve_mem */
	.long	0			/* tsc_khz */
	.long	0			/* pgdir */
	.long	0, 0			/* noirq_start, noirq_end */
	.long	0xC0000000		/* kernel_address */
	.long	0x80			/* syscall_vec */
	.if	. - lguest_data - LGUEST_DATA_SIZE
	.error	"lguest_data is not 1136 bytes"
	.endif
__power_down:	.asciz	"Power down"
__fell_off:	.asciz	"fell off the end of the test body"
__newline:	.asciz	"\n"
__hexdigits:	.ascii	"0123456789abcdef"

	.bss
	.balign	16
__hexbuf:	.space	16
__stack:	.space	STACK_SIZE
__stack_top:

	.text
guest_main:
"""

EPILOGUE = r"""
	.text
	HCALL	$LHCALL_CRASH, $__fell_off
	ud2
"""

_built: dict[str, Path] = {}


def tools_or_skip() -> tuple[str, str]:
    """Paths of `as` and `ld`, or skip the test when binutils are not installed."""
    assembler, linker = shutil.which("as"), shutil.which("ld")
    if assembler is None or linker is None:
        pytest.skip("GNU binutils (as, ld) not installed")
    return assembler, linker


def _era_prelude(era: Era) -> str:
    """PRELUDE rewritten for `era`'s ABI (see the module docstring)."""
    ld = dict(era.lguest_data or {})
    size = era.lguest_data_size or 0
    consts = [f"\t.set LHCALL_{name}, {nr}" for name, nr in era.hypercalls.items()]
    if "SHUTDOWN" in era.hypercalls:
        consts.append(f"\t.set LHCALL_CRASH, {era.hypercalls['SHUTDOWN']}")
    consts += [f"\t.set LD_{name.upper()}, {off}" for name, off in ld.items()]
    consts += [f"\t.set LD_IRQ_ENABLED, {ld['irq_enabled']}",
               f"\t.set LD_BLOCKED, {ld['blocked_interrupts']}",
               f"\t.set LD_TIME_NSEC, {ld['time'] + abi.Timespec.tv_nsec.offset}",
               f"\t.set STACK_SIZE, {STACK_SIZE}", f"\t.set LGUEST_DATA_SIZE, {size}"]
    text = "\n".join(consts) + PRELUDE[len(_CONSTANTS):]
    regs = ["%" + r for r in era.hcall_regs[:3]]
    insn = "vmcall" if era.hcall_insn.name == "VMCALL" else "int\t$0x1f"
    text = text.replace("\tpopl\t%eax\n\tpopl\t%edx\n\tpopl\t%ebx\n\tpopl\t%ecx\n\tint\t$0x1f\n",
                        f"\tpopl\t%eax\n\tpopl\t{regs[0]}\n\tpopl\t{regs[1]}\n"
                        f"\tpopl\t{regs[2]}\n\t{insn}\n")
    if "SHUTDOWN" in era.hypercalls:  # SHUTDOWN(reason, POWEROFF): a crash unless "Power down"
        text = text.replace("\tHCALL\t$LHCALL_CRASH, $\\label\n",
                            "\tHCALL\t$LHCALL_CRASH, $\\label, $1\n")
    entry = 4 * len(era.hcall_ring)
    args = {"arg0": "\\nr", "arg1": "\\a1", "arg2": "\\a2", "arg3": "\\a3"}
    stores = "".join(f"\tmovl\t{args[m]}, lguest_data + LD_HCALLS + {entry} * \\slot + {4 * i}\n"
                     for i, m in enumerate(era.hcall_ring) if m in args)
    start = text.index("\t.macro ASYNC")
    end = text.index("\tmovb\t$0, lguest_data + LD_HCALL_STATUS", start)
    text = text[:start] + "\t.macro ASYNC slot, nr, a1=$0, a2=$0, a3=$0\n" + stores + text[end:]
    # lguest_data: every field zero but those a guest initialises (as the 2.6.24 one).
    start = text.index("lguest_data:\n") + len("lguest_data:\n")
    end = text.index("__power_down:")
    init = (f"\t.org\tlguest_data + {ld['blocked_interrupts']}\n\t.long\t1\n"
            f"\t.org\tlguest_data + {ld['hcall_status']}\n\t.fill\t64, 1, 0xff\n"
            + (f"\t.org\tlguest_data + {ld['kernel_address']}\n\t.long\t0xC0000000\n"
               f"\t.org\tlguest_data + {ld['syscall_vec']}\n\t.long\t0x80\n"
               if "kernel_address" in ld else "")
            + f"\t.org\tlguest_data + {size}\n")
    text = text[:start] + init + text[end:]
    return _dma_bus_prelude(text) if "SEND_DMA" in era.hypercalls else text


def _dma_bus_prelude(text: str) -> str:
    """2.6.23: the "GenuineLguest" marker right before `_start` (where the Launcher enters,
    at its PAGE_OFFSET alias: the prelude's code only jumps relative, and its absolute
    addresses reach the identity map), and PUTS as SEND_DMA to the console's key 0 with a
    one-section `struct lguest_dma` (there is no NOTIFY)."""
    text = text.replace("\t.globl\t_start\n_start:\n",
                        "\t.ascii\t\"GenuineLguest\"\n\t.globl\t_start\n_start:\n")
    text = text.replace("\tHCALL\t$LHCALL_NOTIFY, $__hexbuf\n", "\tPUTS\t__hexbuf\n")
    text = text.replace("\t.macro PUTS label\n\tHCALL\t$LHCALL_NOTIFY, $\\label\n\t.endm\n",
                        "\t.macro PUTS label\n\tpushal\n\tmovl\t$\\label, %esi\n"
                        "\tcall\t__puts_dma\n\tpopal\n\t.endm\n")
    return text.replace("__power_down:\t.asciz", PUTS_DMA + "__power_down:\t.asciz", 1)


# PUTS for 2.6.23: %esi = a NUL-terminated string; send it to key 0 in `__dma`.
PUTS_DMA = r"""	.balign	4
__dma:	.long	0			/* used_len */
	.fill	16, 4, 0		/* addr[16] */
	.fill	16, 2, 0		/* len[16] */
	.text
__puts_dma:
	xorl	%ecx, %ecx
1:	cmpb	$0, (%esi, %ecx)
	je	2f
	incl	%ecx
	jmp	1b
2:	movl	%esi, __dma + 4
	movw	%cx, __dma + 68
	movw	$0, __dma + 70
	movl	$0, __dma
	HCALL	$LHCALL_SEND_DMA, $0, $__dma
	ret
	.data
"""


def source(body: str, data: str = "", era: Era | None = None) -> str:
    """The complete .S file for a body and its data (in `era`'s ABI if given)."""
    prelude = PRELUDE if era is None else _era_prelude(era)
    return prelude + body + "\n" + EPILOGUE + "\n\t.data\n" + data + "\n"


def build_guest(tmp_path: Path, body: str, data: str = "", era: Era | None = None) -> Path:
    """Assemble and link a guest; returns the ELF path (cached per source text)."""
    text = source(body, data, era)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    cached = _built.get(key)
    if cached is not None and cached.exists():
        return cached
    assembler, linker = tools_or_skip()
    src, obj, elf = (tmp_path / f"guest-{key}{ext}" for ext in (".S", ".o", ".elf"))
    src.write_text(text)
    for cmd in ([assembler, "--32", "-o", str(obj), str(src)],
                [linker, "-m", "elf_i386", f"-Ttext={LOAD_ADDRESS:#x}", "-e", "_start",
                 "--build-id=none", "-o", str(elf), str(obj)]):
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            numbered = "\n".join(f"{n:4} {line}" for n, line in enumerate(text.splitlines(), 1))
            raise AssertionError(f"{Path(cmd[0]).name} failed:\n{result.stderr}\n{numbered}")
    _built[key] = elf
    return elf


def descriptor(base: int, limit: int = 0xFFFFF, access: int = 0x93, flags: int = 0xC) -> int:
    """A GDT descriptor: `access` is P|DPL|S|type (0x93 data DPL 0, 0x9B code DPL 0,
    0xF3 data DPL 3, 0xFB code DPL 3), `flags` G|D/B|L|AVL (0xC: 4 KiB granularity, 32-bit)."""
    return ((limit & 0xFFFF) | (base & 0xFFFF) << 16 | ((base >> 16) & 0xFF) << 32
            | access << 40 | ((limit >> 16) & 0xF) << 48 | flags << 52
            | ((base >> 24) & 0xFF) << 56)


def quads(*values: int) -> str:
    """`.long` lines for 64-bit values (descriptor tables)."""
    return "\n".join(f"\t.long {v & 0xFFFFFFFF:#x}, {v >> 32:#x}" for v in values)


def symbol_file_offset(elf: Path, name: str) -> int:
    """Where the bytes of symbol `name` (in a PROGBITS section) are in the ELF file."""
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as f:
        image = ELFFile(f)
        symbols = image.get_section_by_name(".symtab").get_symbol_by_name(name)
        if not symbols:
            raise KeyError(name)
        sym = symbols[0]
        section = image.get_section(sym["st_shndx"])
        return sym["st_value"] - section["sh_addr"] + section["sh_offset"]


def symbol_address(elf: Path, name: str) -> int:
    """The (virtual = physical) address of symbol `name`."""
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as f:
        symbols = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
        if not symbols:
            raise KeyError(name)
        return symbols[0]["st_value"]


@dataclass
class GuestRun:
    """How an lgemu run of a test guest ended."""

    status: int
    out: bytes
    err: str
    elf: Path | None = None
    outcome: object = None  # what `lgemu.cli.boot` returned (an `LgemuExit`), if it did

    @property
    def kill(self) -> Kill | None:
        """The kind of kill (with its values) if the Host killed the guest."""
        return self.outcome.kill if isinstance(self.outcome, GuestKilled) else None

    def symbol(self, name: str) -> int:
        """Address of a symbol of the guest that ran."""
        assert self.elf is not None
        return symbol_address(self.elf, name)


def assert_one_line(err: str) -> str:
    """stderr is exactly one line (with its newline) and no traceback; returns the line."""
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    return err[:-1]


def assert_killed(run: GuestRun, reason: Kill | type[Kill] | Callable[[Kill], bool]) -> None:
    """Exit status 3, killed for `reason` — a kind with its values, only a kind, or a test
    of the kill — and exactly `lgemu: guest killed: <its text>` on stderr (the wording of
    each kind is pinned down in test_kills.py)."""
    line = assert_one_line(run.err)
    assert run.status == 3, (run.status, run.err)
    if isinstance(reason, Kill):
        assert run.kill == reason, (run.kill, line)
    elif isinstance(reason, type):
        assert isinstance(run.kill, reason), (run.kill, line)
    else:
        assert run.kill is not None and reason(run.kill), (run.kill, line)
    assert line == f"lgemu: guest killed: {run.kill.text()}"


def assert_crashed(run: GuestRun, message: str) -> None:
    """Exit status 1 and exactly `lgemu: guest crashed: <message>` on stderr."""
    assert assert_one_line(run.err) == f"lgemu: guest crashed: {message}"
    assert run.status == 1


def assert_powered_down(run: GuestRun, out: bytes | None = None) -> None:
    """Exit status 0, nothing on stderr, and (if given) exactly `out` on the console."""
    assert (run.status, run.err) == (0, ""), (run.status, run.err, run.out)
    if out is not None:
        assert run.out == out

