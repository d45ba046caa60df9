"""Block mode of the instruction trace, against the per-instruction path it replaces.

Block mode (lgemu.debug.trace) writes a block's lines when the next block starts; the
per-instruction path (``LGEMU_TRACE_EXACT=1``) writes each line from a code hook.  What a
user reads must not depend on which ran: the files are compared byte for byte, on the
bundled guest (whole boots, and runs cut mid-block by an instruction limit), and on the real
2.6.24 kernel, whose boot cuts blocks with page faults, traps and interrupts.  The DWARF line
decoder that feeds the ``file:line`` column is compared with pyelftools' own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from linuxkernel import real_kernel, shell_boot_args

from lgemu.debug.symbols import _line_rows, _unit_line_attributes
from lgemu.debug.trace import Tracer

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED = REPO_ROOT / "firmware" / "lgemu-guest.elf"


def both(run, monkeypatch, tmp_path: Path, *options: str) -> tuple[bytes, bytes]:
    """The trace file written by block mode and by the per-instruction path."""
    fast, exact = tmp_path / "fast.trace", tmp_path / "exact.trace"
    monkeypatch.delenv("LGEMU_TRACE_EXACT", raising=False)
    run(["--trace", str(fast), *options])
    monkeypatch.setenv("LGEMU_TRACE_EXACT", "1")
    run(["--trace", str(exact), *options])
    monkeypatch.delenv("LGEMU_TRACE_EXACT")
    return fast.read_bytes(), exact.read_bytes()


@pytest.mark.parametrize("options", [
    (), ("--trace-format", "jsonl"), ("--max-insns", "54321"), ("--max-insns", "7"),
    ("--events",), ("--trace-format", "jsonl", "--max-insns", "100003"),
], ids=["text", "jsonl", "cut-54321", "cut-7", "events-only", "jsonl-cut"])
def test_block_mode_writes_the_same_bytes_as_the_exact_path(boot_guest, monkeypatch,
                                                              tmp_path, options):
    fast, exact = both(lambda extra: boot_guest(None, extra=extra), monkeypatch, tmp_path,
                       *options)
    assert fast == exact
    assert fast.count(b"\n") > 5


def test_block_mode_on_a_real_kernel_boot(boot_guest, monkeypatch, tmp_path):
    """1.5 M instructions of the 2.6.24 boot: page faults, hypercalls, cpuid, interrupts."""
    args = shell_boot_args(tmp_path)
    fast, exact = both(lambda extra: boot_guest(args[0], extra=[*args[1:], "--max-insns",
                                                                  "1500000", *extra]),
                       monkeypatch, tmp_path)
    assert fast == exact
    assert fast.count(b"\n") > 1_500_000


@pytest.mark.parametrize("options", [
    (), ("--max-insns", "54321"), ("--trace-filter", "icount:100-2000,icount:3000-"),
], ids=["whole", "cut-54321", "windows"])
def test_tenet_mode_writes_the_same_bytes_as_the_exact_path(boot_guest, monkeypatch,
                                                             tmp_path, options):
    """Tenet mode (register snapshots, raw hooks) against the per-instruction state path;
    the windows reopen the hooks with the registers kept from the first window."""
    fast, exact = both(lambda extra: boot_guest(None, extra=extra), monkeypatch, tmp_path,
                       "--trace-format", "tenet", *options)
    assert fast == exact
    assert fast.count(b"\n") > 1000 and b",mw=" in fast and b",mr=" in fast


@pytest.mark.parametrize("options", [
    ("--max-insns", "400000"),
    ("--max-insns", "1200000", "--trace-filter", "sym:strcmp,sym:put_dec"),
], ids=["prefix", "symbols"])
def test_tenet_mode_on_a_real_kernel_boot(boot_guest, monkeypatch, tmp_path, options):
    """The 2.6.24 boot's first instructions (faults, hypercalls, interrupts), and two
    functions with untraced code between their calls, whose accesses are dropped."""
    args = shell_boot_args(tmp_path)
    fast, exact = both(lambda extra: boot_guest(args[0], extra=[*args[1:], *options, *extra]),
                       monkeypatch, tmp_path, "--trace-format", "tenet")
    assert fast == exact
    assert fast.count(b"\n") > 1000


@pytest.mark.parametrize("first", [1, 7, 999_999_990, 9_999_999_995])
def test_count_column_matches_formatting_each_count(first):
    """Block mode pieces the text format's count column together a ten at a time: the
    lines of a long trace, past ten digits too, read as if each count were formatted."""
    lines = [b" r1 line %d\n" % i for i in range(37)]
    end = first + len(lines) - 1
    want = b"".join(b"%10d" % (first + i) + line for i, line in enumerate(lines))
    assert b"".join(Tracer._count_column(lines, first, end)) == want


def test_rewritten_code_shows_anew_in_block_mode(asm_guest, tmp_path):
    """The block cache is keyed by address too: a block the guest rewrites is rendered
    again."""
    path = tmp_path / "smc.out"
    asm_guest("""
	INIT
	call	patchme
	movb	$0x40, patchme		/* nop → inc %eax */
	call	patchme
	POWER_DOWN
patchme:
	nop
	ret
""", extra=["--trace", str(path)])
    text = path.read_text()
    assert [line.split()[5] for line in text.splitlines()
            if " patchme+0x0 " in line] == ["nop", "incl"]


def rows_of(path: Path, limit: int) -> list[tuple[list, list]]:
    out = []
    with path.open("rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        for n, cu in enumerate(dwarf.iter_CUs()):
            if n == limit:
                break
            program = dwarf.line_program_for_CU(cu)
            if program is None:
                continue
            ours = _line_rows(program)
            theirs = [(e.state.address, None if e.state.end_sequence else e.state.file,
                       e.state.line) for e in program.get_entries() if e.state is not None]
            out.append((ours, theirs))
    return out


def test_line_decoder_agrees_with_pyelftools_on_the_bundled_guest():
    pairs = rows_of(BUNDLED, 1000)
    assert pairs
    for ours, theirs in pairs:
        assert ours == theirs


def test_line_decoder_agrees_with_pyelftools_on_a_real_kernel():
    pairs = rows_of(real_kernel(), 40)
    assert len(pairs) == 40
    for ours, theirs in pairs:
        assert ours == theirs


def top_attributes_of(path: Path, limit: int) -> list[tuple[object, object]]:
    out = []
    with path.open("rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        for n, cu in enumerate(dwarf.iter_CUs()):
            if n == limit:
                break
            attributes = cu.get_top_DIE().attributes
            theirs = tuple(attributes[a].value if a in attributes else None
                           for a in ("DW_AT_comp_dir", "DW_AT_stmt_list"))
            out.append((_unit_line_attributes(dwarf, cu), theirs))
    return out


@pytest.mark.parametrize("which", ["bundled", "2.6.24"])
def test_unit_attributes_agree_with_pyelftools(which):
    pairs = top_attributes_of(BUNDLED if which == "bundled" else real_kernel(), 60)
    assert pairs
    for ours, theirs in pairs:
        assert ours == theirs
