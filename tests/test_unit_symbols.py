"""Unit tier: the DWARF line table behind trace lines keeps a bounded number of rows and
still gives every address the same ``file:line``."""

from __future__ import annotations

from pathlib import Path

import pytest

from lgemu.debug.symbols import LineTable, Symbols
from lgemu.firmware_path import bundled_guest


def test_a_line_table_bounded_to_one_unit_answers_as_a_whole_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(bundled_guest())
    addresses = sorted({s.address + delta for s in Symbols.load(path).symbols
                        if s.kind == "function" for delta in (0, 1, 5)})
    whole = Symbols.load(path)
    expected = [whole.source(a) for a in addresses]
    assert sum(1 for s in expected if s and s.startswith("guest_kernel/")) > 50
    monkeypatch.setattr(LineTable, "MAX_ROWS", 1)  # every new unit evicts the last one
    bounded = Symbols.load(path)
    # Twice over, in an order that keeps switching units: evicted units come back the same.
    for _ in range(2):
        assert [bounded.source(a) for a in addresses[::-1]] == expected[::-1]
        assert [bounded.source(a) for a in addresses] == expected
    assert len(bounded.lines._units) == 1
