"""`--trace-filter call:NAME`: NAME and everything it calls, each call, until it returns."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from conftest import lgemu_main_in_process
from guestasm import build_guest

LINE = re.compile(r"^ *(?P<icount>\d+) r(?P<ring>\d) (?P<eip>[0-9a-f]{8}) (?P<where>\S+) +"
                  r"(?P<bytes>[0-9a-f]+) +(?P<asm>.*?)(?: {2,}\S+:\d+)?$")

RECURSIVE = """
	INIT
	movl	$5, %eax
	call	fact
after:	nop
	movl	$2, %eax
	call	fact
	POWER_DOWN
fact:	cmpl	$1, %eax
	jle	1f
	pushl	%eax
	decl	%eax
	call	fact
	popl	%ecx
	imull	%ecx, %eax
1:	ret
"""


def traced(args: list[str], tmp_path: Path, spec: str) -> list[re.Match]:
    out = tmp_path / "trace"
    status, _, err = lgemu_main_in_process(["boot", *args, "--trace", str(out),
                                            "--trace-filter", spec])
    assert status == 0, err
    return [m for line in out.read_text().splitlines() if (m := LINE.match(line))]


def test_a_call_is_traced_whole_and_nothing_after_it(tmp_path: Path) -> None:
    lines = traced([], tmp_path, "call:paging_init")
    counts = [int(m["icount"]) for m in lines]
    assert lines[0]["where"] == "paging_init+0x0"
    assert lines[-1]["where"].startswith("paging_init+") and lines[-1]["asm"] == "retl"
    assert counts == list(range(counts[0], counts[-1] + 1))  # every instruction inside
    called = {m["where"].split("+")[0] for m in lines}
    assert called == {"paging_init", "early_alloc_page", "memset"}


def test_a_leaf_call_filter_equals_the_symbol_filter(tmp_path: Path) -> None:
    # memset calls nothing: its calls are exactly its own instructions, every call.
    calls = [m.group(0) for m in traced([], tmp_path, "call:memset")]
    own = [m.group(0) for m in traced([], tmp_path, "sym:memset")]
    assert calls == own and len([c for c in calls if "memset+0x0 " in c]) > 1


def test_recursion_and_each_call(tmp_path: Path) -> None:
    elf = build_guest(tmp_path, RECURSIVE)
    lines = traced([str(elf)], tmp_path, "call:fact")
    wheres = [m["where"] for m in lines]
    assert all(w.startswith("fact+") for w in wheres)
    # fact(5) enters five times and returns five times; then fact(2) twice.
    assert wheres.count("fact+0x0") == 5 + 2
    assert sum(m["asm"] in ("ret", "retl") for m in lines) == 5 + 2
    gap = [int(b["icount"]) - int(a["icount"]) for a, b in itertools.pairwise(lines)]
    # Between the two outer calls only `after: nop`, the `movl` and the `call` go untraced.
    assert sorted(gap)[-1] == 4 and sorted(gap)[-2] == 1


def test_call_filter_needs_a_symbol(tmp_path: Path) -> None:
    status, _, err = lgemu_main_in_process(["boot", "--trace", str(tmp_path / "t"),
                                            "--trace-filter", "call:no_such_function"])
    assert status == 2 and "no symbol 'no_such_function'" in err
