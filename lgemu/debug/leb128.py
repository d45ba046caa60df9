"""DWARF's LEB128 numbers: the variable-length integers of line programs and call-frame
information (`symbols.py` and `unwind.py` read both).  Seven bits a byte, low first; the top
bit says another byte follows; a signed number takes its sign from bit 6 of its last byte."""

from __future__ import annotations


def uleb128(data: bytes, pos: int) -> tuple[int, int]:
    """The unsigned number at `pos` and the position after it."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def sleb128(data: bytes, pos: int) -> tuple[int, int]:
    """The signed number at `pos` and the position after it."""
    value, end = uleb128(data, pos)
    if data[end - 1] & 0x40:  # the last byte's sign bit: extend it
        value -= 1 << 7 * (end - pos)
    return value, end
