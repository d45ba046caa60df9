"""Unit tier: `lgemu.elf.symbols_named`, which finds a few symbols by searching a table's
bytes, gives exactly the entries a walk over every entry would (`iter_symbols`), in the same
order — also when the name offsets it searches for turn up inside other fields, between
entries, or in a partial entry at the end."""

from __future__ import annotations

import struct

from lgemu.elf import ELF32_SYM, iter_symbols, name_offsets, symbols_named


def walk(symtab: bytes, strtab: bytes, names: list[str]) -> list[tuple[str, tuple]]:
    """The obvious way: every entry, in order, kept when its name is one of `names`."""
    return [(name, entry) for entry in iter_symbols(symtab) for name in names
            if entry[0] in name_offsets(strtab, name)]


def test_the_entries_named_are_those_a_walk_finds() -> None:
    strtab = b"\0start_kernel\0lguest_init\0init\0printk\0"
    init, tail = strtab.index(b"lguest_init"), strtab.index(b"init\0")
    printk = strtab.index(b"printk")
    entries = [
        (init, 0xC0100000, 4, 0x12, 0, 1),
        (printk, init, tail, 0x12, 0, 1),  # the offsets as a value and a size: decoys
        (init + 4, 0xC0200000, 0, 0x22, 0, 0),  # "init" as the tail of "lguest_init", undefined
        (tail, init << 8, 0, 0x11, 0, 2),  # an offset straddling two fields
        (init, 0xC0300000, 8, 0x22, 0, 3),  # a second (weak) lguest_init, later in the table
    ]
    symtab = b"".join(ELF32_SYM.pack(*e) for e in entries) + struct.pack("<I", init)[:3]
    for names in (["lguest_init"], ["init", "printk", "absent"], ["init", "lguest_init"],
                  ["printk", "printk"], []):
        assert list(symbols_named(symtab, strtab, names)) == walk(symtab, strtab,
                                                                  list(dict.fromkeys(names)))
    assert [e[1] for _, e in symbols_named(symtab, strtab, ["lguest_init"])] == [0xC0100000,
                                                                                 0xC0300000]


def test_an_offset_only_between_entries_names_nothing() -> None:
    strtab = b"\0abc\0"
    # The offset of "abc" at every fourth byte from byte 1 on: never where an entry starts.
    symtab = b"\0" + struct.pack("<I", 1) * 8 + b"\0" * 15
    assert len(symtab) % ELF32_SYM.size == 0
    assert walk(symtab, strtab, ["abc"]) == []
    assert list(symbols_named(symtab, strtab, ["abc"])) == []
