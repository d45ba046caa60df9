"""`--trace`, `--trace-format`, `--trace-regs`, `--trace-filter` and `--events`, end to end.

What is checked is what a user reads in the files: each instruction line's count, ring, EIP,
``symbol+offset``, bytes, disassembly and ``file:line``, checked against the ELF and the
source (not against lgemu's own symbolizer); the lguest events between them; the filters
keeping exactly what they select; the three formats parsing as their consumers parse them;
and two runs writing the same bytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from guestasm import assert_powered_down

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED = REPO_ROOT / "firmware" / "lgemu-guest.elf"
BOOT_S = REPO_ROOT / "guest_kernel" / "boot.S"

# <icount> r<ring> <eip> <symbol+off|?> <hex bytes> <asm ...> [<file:line>] [ | regs]
INSN = re.compile(r"^ *(?P<icount>\d+) r(?P<ring>[0-3]) (?P<eip>[0-9a-f]{8}) (?P<where>\S+) +"
                  r"(?P<bytes>[0-9a-f]+|\?\?) +(?P<rest>.*)$")
EVENT = re.compile(r"^ *(?P<icount>\d+) -- (?P<text>.*)$")
SOURCE = re.compile(r"\s(?P<file>[\w./-]+\.[chS]):(?P<line>\d+)$")
TENET_NAMES = {"eax", "ebx", "ecx", "edx", "ebp", "esp", "esi", "edi", "eip"}


def symbol(name: str) -> tuple[int, int]:
    """(address, size) of a symbol of the bundled guest, read with pyelftools."""
    with BUNDLED.open("rb") as f:
        sym = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]
        return sym["st_value"], sym["st_size"]


def entry_bytes(count: int) -> bytes:
    """The first `count` bytes at the ELF entry point (a physical address)."""
    with BUNDLED.open("rb") as f:
        elf = ELFFile(f)
        entry = elf["e_entry"]
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_paddr"] <= entry < seg["p_paddr"] + \
                    seg["p_filesz"]:
                return seg.data()[entry - seg["p_paddr"]:][:count]
    raise AssertionError("entry point not in a segment")


def source_line(path: Path, after_label: str, text: str) -> int:
    """Line number of the first line containing `text` after the line `after_label`."""
    lines = path.read_text().splitlines()
    start = lines.index(after_label)
    return next(i for i, line in enumerate(lines[start:], start + 1) if text in line)


def trace(boot_guest, tmp_path: Path, *options: str, cmdline: str = "",
          name: str = "trace.out") -> tuple[int, bytes, str, str]:
    """Boot the bundled guest with a trace file; (status, console, stderr, trace text)."""
    path = tmp_path / name
    status, out, err = boot_guest(None, cmdline=cmdline, extra=["--trace", str(path), *options])
    return status, out, err, path.read_text() if path.exists() else ""


def instructions(text: str) -> list[re.Match]:
    return [m for line in text.splitlines() if (m := INSN.match(line))]


def events(text: str) -> list[tuple[int, str]]:
    return [(int(m["icount"]), m["text"]) for line in text.splitlines()
            if (m := EVENT.match(line))]


# -- the text format ---------------------------------------------------------------------
def test_first_instructions_of_startup_32_are_symbolized(boot_guest, tmp_path):
    plain = boot_guest(None)
    status, out, err, text = trace(boot_guest, tmp_path)
    assert (status, out, err) == plain  # tracing changes nothing the guest does or prints
    first, second = instructions(text)[:2]
    start, _ = symbol("startup_32")
    code = entry_bytes(16)
    assert (first["icount"], first["ring"], first["eip"]) == ("1", "1", "00100000")
    assert first["where"] == "startup_32+0x0"  # linked at 0xc0100000, running at 0x100000
    assert start == 0xC0100000
    assert first["bytes"] == code[:1].hex() == "fc"
    assert first["rest"].startswith("cld ")
    cld = source_line(BOOT_S, "startup_32:", "cld")
    assert first["rest"].endswith(f"guest_kernel/boot.S:{cld}")
    # The second instruction follows the first byte, with its own bytes, offset and line.
    assert (second["icount"], second["eip"], second["where"]) == ("2", "00100001",
                                                                  "startup_32+0x1")
    assert code[1:].hex().startswith(second["bytes"])
    assert second["rest"].startswith("cmpw $0x207, 0x206(%esi)")
    cmpw = source_line(BOOT_S, "startup_32:", "cmpw")
    assert second["rest"].endswith(f"guest_kernel/boot.S:{cmpw}")


def test_every_executed_instruction_has_one_line(boot_guest, tmp_path):
    status, _, err, text = trace(boot_guest, tmp_path, "-v")
    executed = int(re.search(r"executed (\d+) instructions", err)[1])
    counts = [int(m["icount"]) for m in instructions(text)]
    assert status == 0
    assert counts == list(range(1, executed + 1))


def test_events_interleave_with_instructions(boot_guest, tmp_path):
    _, _, _, text = trace(boot_guest, tmp_path, cmdline="lgemu.test=traps")
    lines = text.splitlines()
    init = next(i for i, line in enumerate(lines) if "-- hcall LGUEST_INIT" in line)
    before = INSN.match(lines[init - 1])
    assert before["rest"].startswith("int $0x1f")  # the hypercall's own instruction
    assert int(before["icount"]) == events(lines[init])[0][0]
    texts = [t for _, t in events(text)]
    assert re.search(r"^hcall LOAD_IDT_ENTRY vec=0x[0-9a-f]+ handler=0x[0-9a-f]+ sel=0x60 "
                     r"type=(trap|intr) dpl=[0-3]", "\n".join(texts), re.MULTILINE)
    assert any(t.startswith("trap ") for t in texts)


def test_symbol_filter_keeps_only_that_function(boot_guest, tmp_path):
    start, size = symbol("lguest_init")
    _, _, _, text = trace(boot_guest, tmp_path, "--trace-filter", "sym:lguest_init")
    found = instructions(text)
    assert found
    assert all(m["where"].startswith("lguest_init+") for m in found)
    assert all(start <= int(m["eip"], 16) < start + size for m in found)
    assert found[0]["where"] == "lguest_init+0x0"


def test_address_and_window_filters(boot_guest, tmp_path):
    _, _, _, text = trace(boot_guest, tmp_path, "--trace-filter", "icount:100-200")
    assert [int(m["icount"]) for m in instructions(text)] == list(range(100, 200))
    _, _, _, text = trace(boot_guest, tmp_path, "--trace-filter",
                          "addr:0x100000-0x100010,icount:1-50", name="addr.out")
    found = instructions(text)
    assert found and all(0x100000 <= int(m["eip"], 16) < 0x100010 for m in found)
    assert all(int(m["icount"]) < 50 for m in found)


def test_ring_filter(boot_guest, tmp_path):
    _, _, _, text = trace(boot_guest, tmp_path, "--trace-filter", "ring:3",
                          cmdline="lgemu.test=usermode")
    found = instructions(text)
    assert found and {m["ring"] for m in found} == {"3"}
    _, _, _, text = trace(boot_guest, tmp_path, "--trace-filter", "ring:1,icount:1-2000000",
                          cmdline="lgemu.test=usermode", name="ring1.out")
    assert {m["ring"] for m in instructions(text)} == {"1"}


def test_trace_regs_shows_what_each_instruction_changed(boot_guest, tmp_path):
    _, _, _, text = trace(boot_guest, tmp_path, "--trace-regs", "--trace-filter", "icount:1-40")
    checked = 0
    for m in instructions(text):
        move = re.match(r"movl \$(0x[0-9a-f]+), %(e[a-z]{2})", m["rest"])
        if move:
            assert f"| {move[2]}={move[1]}" in m["rest"]
            checked += 1
        if m["rest"].startswith("xorl %eax, %eax"):
            assert "eflags=" in m["rest"]
    assert checked >= 2


# -- the event log -----------------------------------------------------------------------
def test_events_alone_go_to_stderr(boot_guest):
    plain = boot_guest(None, cmdline="lgemu.test=timer")
    status, out, err = boot_guest(None, cmdline="lgemu.test=timer", extra=["--events"])
    assert (status, out) == plain[:2]
    lines = err.splitlines()
    assert lines and all(EVENT.match(line) for line in lines)
    texts = [EVENT.match(line)["text"] for line in lines]
    assert texts[0].startswith("hcall LGUEST_INIT lguest_data=0x")
    assert "hcall LGUEST_INIT" in texts[0]
    assert any(re.fullmatch(r"irq 0 → vec 0x20 eip=0x[0-9a-f]+", t) for t in texts)
    assert any(t.startswith("hcall SET_CLOCKEVENT delta_ns=") for t in texts)
    assert texts[-1].startswith("hcall CRASH message=0x")
    counts = [int(EVENT.match(line)["icount"]) for line in lines]
    assert counts == sorted(counts)


def test_async_hypercalls_are_marked(boot_guest):
    _, _, err = boot_guest(None, cmdline="lgemu.test=async_ring", extra=["--events"])
    ring = [EVENT.match(line) for line in err.splitlines() if line.endswith(" [async]")]
    assert ring and all(m["text"].startswith("hcall ") for m in ring)
    # Drained when the guest next makes a synchronous call: that call's count, and then the
    # synchronous call itself follows under the same count.
    first = int(ring[0]["icount"])
    same = [EVENT.match(line)["text"] for line in err.splitlines()
            if int(EVENT.match(line)["icount"]) == first]
    assert not same[-1].endswith("[async]")


def test_events_with_trace_file_hold_no_instructions(boot_guest, tmp_path):
    status, _, err, text = trace(boot_guest, tmp_path, "--events")
    assert (status, err) == (0, "")
    assert text and not instructions(text)
    assert all(EVENT.match(line) for line in text.splitlines())


def test_vring_events(boot_guest, tmp_path):
    script = tmp_path / "input.txt"
    script.write_bytes(b"hello\nquit\n")
    status, out, err = boot_guest(None, cmdline="lgemu.test=console_echo",
                                  extra=["--events", "--console-input", str(script)])
    assert status == 0
    pushes = [t for t in (EVENT.match(line)["text"] for line in err.splitlines())
              if t.startswith("vring ")]
    assert pushes
    # Output chains: as many as the guest printed through the virtio console, with lengths
    # that add up to those bytes.
    output = [re.fullmatch(r"vring console\.1 head=\d+ len=(\d+) avail (\d+) → used (\d+)", t)
              for t in pushes if t.startswith("vring console.1")]
    assert output and all(output)
    assert [int(m[3]) for m in output] == list(range(1, len(output) + 1))
    assert b"echo: hello" in out


# -- the other formats -------------------------------------------------------------------
def test_jsonl_lines_parse(boot_guest, tmp_path):
    _, _, _, text = trace(boot_guest, tmp_path, "--trace-format", "jsonl",
                          cmdline="lgemu.test=traps")
    records = [json.loads(line) for line in text.splitlines()]
    insns = [r for r in records if "eip" in r]
    evs = [r for r in records if "event" in r]
    assert set(insns[0]) == {"icount", "ring", "eip", "sym", "off", "bytes", "asm", "src"}
    assert (insns[0]["icount"], insns[0]["eip"], insns[0]["sym"], insns[0]["off"],
            insns[0]["bytes"], insns[0]["asm"]) == (1, 0x100000, "startup_32", 0, "fc", "cld")
    assert insns[0]["src"].startswith("guest_kernel/boot.S:")
    assert {r["event"] for r in evs} >= {"hcall", "trap"}
    assert all(set(r) == {"icount", "event", "text"} for r in evs)


def test_jsonl_regs(boot_guest, tmp_path):
    _, _, _, text = trace(boot_guest, tmp_path, "--trace-format", "jsonl", "--trace-regs",
                          "--trace-filter", "icount:6-8")
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["icount"] for r in records] == [6, 7]
    assert records[0]["asm"] == "xorl %eax, %eax" and "eflags" in records[0]["regs"]
    assert records[1]["regs"] == {"edi": int(records[1]["asm"].split("$")[1].split(",")[0],
                                             16)}


def test_tenet_lines_are_well_formed(boot_guest, tmp_path):
    _, _, _, text = trace(boot_guest, tmp_path, "--trace-format", "tenet",
                          "--trace-filter", "icount:1-3000")
    lines = text.splitlines()
    assert len(lines) == 2999
    first = dict(item.split("=") for item in lines[0].split(","))
    assert set(first) == TENET_NAMES and first["eip"] == "0x100000"
    memory = 0
    for line in lines:  # as Tenet's parser reads a line
        items = [item.split("=") for item in line.split(",")]
        names = [name.lower() for name, _ in items]
        assert "eip" in names
        for name, value in items:
            if name in ("mr", "mw"):
                address, data = value.split(":")
                int(address, 16)
                assert data and len(data) % 2 == 0
                bytes.fromhex(data)
                memory += 1
            else:
                assert name in TENET_NAMES
                int(value, 16)
    assert memory  # the boot path reads and writes memory


# -- determinism, stdout, errors ---------------------------------------------------------
def test_two_traced_runs_are_byte_identical(boot_guest, tmp_path):
    # The timer program: interrupts arrive at instruction counts set by the virtual clock.
    first = trace(boot_guest, tmp_path, cmdline="lgemu.test=timer", name="a.out")
    second = trace(boot_guest, tmp_path, cmdline="lgemu.test=timer", name="b.out")
    assert first == second
    assert "-- irq 0 → vec 0x20" in first[3]
    regs = [trace(boot_guest, tmp_path, "--trace-regs", "--trace-format", "jsonl",
                  "--trace-filter", "icount:340000-350000", cmdline="lgemu.test=timer",
                  name=f"r{i}.out") for i in (1, 2)]
    assert regs[0] == regs[1] and '"regs":{' in regs[0][3]


def test_trace_to_stdout_interleaves_with_the_console(boot_guest):
    status, out, err = boot_guest(None, extra=["--trace", "-", "--trace-filter",
                                               "icount:1-20000"])
    lines = out.decode().splitlines()
    assert status == 0 and err == ""
    assert INSN.match(lines[0])
    banner = next(i for i, line in enumerate(lines) if line.startswith("lgemu guest: Lin"))
    assert EVENT.match(lines[banner - 1])[2].startswith("hcall NOTIFY")
    assert INSN.match(lines[banner + 1])  # the trace resumes on a line of its own


@pytest.mark.parametrize(("options", "message"), [
    (["--trace", "T", "--trace-filter", "bogus"], "--trace-filter: 'bogus': want one of"),
    (["--trace", "T", "--trace-filter", "sym:no_such_function"],
     "--trace-filter: no symbol 'no_such_function'"),
    (["--trace", "T", "--trace-filter", "addr:0x2000-0x1000"], "the end must come after"),
    (["--trace", "T", "--trace-filter", "ring:5"], "rings are 0 to 3"),
    (["--trace", "T", "--trace-filter", "icount:0-10"], "instructions count from 1"),
    (["--trace-regs"], "--trace-regs needs --trace FILE or --events"),
    (["--events", "--trace", "T", "--trace-format", "tenet"], "cannot carry events"),
    (["--trace", "/nonexistent/dir/trace.out"], "cannot write the trace"),
    (["--events", "--trace-filter", "sym:lguest_init"], "only icount: terms apply"),
])
def test_bad_trace_options_are_one_line(boot_guest, tmp_path, options, message):
    options = [str(tmp_path / "t.out") if o == "T" else o for o in options]
    status, out, err = boot_guest(None, extra=options)
    assert status == 2 and out == b""
    assert err.count("\n") == 1 and err.startswith("lgemu: ") and message in err


# -- the terminal: status line and -v summary ---------------------------------------------
STATUS = re.compile(r"^lgemu: ([\d,]+) instructions, [\d.]+ M/s, ([\d,]+) hypercalls, "
                    r"guest time [\d.]+ s$")


def test_status_line_when_asked(boot_guest):
    plain = boot_guest(None, extra=["-v"])
    status, out, err = boot_guest(None, extra=["--status", "-v"])
    assert (status, out) == plain[:2]
    executed = int(re.search(r"executed (\d+) instructions", err)[1])
    lines = [m for line in err.splitlines() if (m := STATUS.match(line))]
    assert lines  # forced onto a non-terminal: whole lines, the last one at the end
    assert int(lines[-1][1].replace(",", "")) == executed
    assert int(lines[-1][2].replace(",", "")) == 20  # the default boot's hypercalls


def test_no_status_line_unless_a_terminal(boot_guest):
    assert boot_guest(None)[2] == ""


def test_verbose_summary_counts_what_the_host_did(boot_guest):
    _, _, err = boot_guest(None, cmdline="lgemu.test=timer", extra=["-v"])
    assert re.search(r"│ LOAD_IDT_ENTRY +│ +\d+ │ +0 │", err)
    assert re.search(r"│ interrupt +│ irq 0 → vector 0x20 +│ +\d+ │", err)
    assert "wall time" not in err  # not a terminal: two runs print the same summary
    _, _, err = boot_guest(None, cmdline="lgemu.test=traps", extra=["-vv"])
    assert re.search(r"│ trap +│ #\w\w \(vector \d+\) +│ +\d+ │", err)
    assert re.search(r"│ page fill +│ #PF absorbed by the Host +│ +\d+ │", err)
    assert re.search(r"wall time [\d.]+ s \([\d.]+ M instructions/s\)", err)


def test_verbose_summary_counts_vring_chains(boot_guest, tmp_path):
    script = tmp_path / "input.txt"
    script.write_bytes(b"hello\nquit\n")
    _, _, err = boot_guest(None, cmdline="lgemu.test=console_echo",
                           extra=["-v", "--console-input", str(script)])
    assert re.search(r"│ vring +│ console\.1 chains returned +│ +\d+ │", err)


def test_rewritten_code_is_disassembled_again(asm_guest, tmp_path):
    """The decode cache is keyed by address: code the guest rewrites must show anew."""
    path = tmp_path / "smc.out"
    run = asm_guest("""
	INIT
	call	patchme
	movb	$0x40, patchme		/* nop → inc %eax */
	call	patchme
	POWER_DOWN
patchme:
	nop
	ret
""", extra=["--trace", str(path)])
    assert_powered_down(run)
    at_patchme = [m["rest"].split()[0] for m in instructions(path.read_text())
                  if m["where"] == "patchme+0x0"]
    assert at_patchme == ["nop", "incl"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_ends_the_run_with_one_line(boot_guest):
    status, _, err = boot_guest(None, extra=["--trace", "/dev/full"])
    assert status == 2
    assert err == "lgemu: /dev/full: cannot write the trace (No space left on device)\n"
