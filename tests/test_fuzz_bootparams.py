"""Property: what the guest reads before it ever talks to the Host — the zero page and the
command line — cannot hurt the Host, however wrong it is.

The Host never reads the zero page; the guest does (version, loadflags, cmd_line_ptr,
hardware_subarch, the initrd fields, e820 entry 0), so random values there can only make the
guest misbehave, and a misbehaving guest must end cleanly.  The zero page is corrupted
through a test-only hook (`lgemu.launcher.build_zero_page` wrapped in-process) and the
bundled guest, which really reads those fields, is booted on it.  Command lines come through
the command line itself (`--append`, in-process `lgemu.cli.main`): anything is either booted
or refused as one line with exit status 2.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from fuzzguest import assert_clean_end, fuzz_settings
from guestasm import assert_one_line
from hypothesis import given
from hypothesis import strategies as st

import lgemu.launcher

MAX_INSNS = "8000000"  # the banner run takes ~340 000; mapping the largest RAM the
# e820 entry may claim (up to the switcher) takes ~5.0 M
# The zero page fields the bundled guest reads (guest_kernel/include/bootparam.h), with the
# struct format of each.
FIELDS = {0x206: "<H", 0x211: "<B", 0x228: "<I", 0x23C: "<I", 0x210: "<B", 0x218: "<I",
          0x21C: "<I", 0x1E8: "<B", 0x2D0: "<Q", 0x2D8: "<Q", 0x2E0: "<I"}
FIELD_VALUES = {
    0x206: [0x0206, 0x0207, 0x0208, 0xFFFF, 0],
    0x211: [0, 0x40, 0xFF, 0xBF],
    0x228: [0, 0x1000, 0xFFF, 0x3FFF800, 0x4000000, 0xFFFFFFFF, 0x100000],
    0x23C: [0, 1, 2, 3, 0xFFFFFFFF],
    0x210: [0, 0xFF],
    0x218: [0, 0x1000, 0x3FFF000, 0x4000000, 0xFFFFF000],
    0x21C: [0, 0x1000, 0x4000000, 0xFFFFFFFF],
    0x1E8: [0, 1, 128, 255],
    0x2D0: [0, 0x1000, 0x4000000, 2**63],
    0x2D8: [0, 0x1000, 0x100000, 0x3FFF000, 0x4000000, 0x8000000, 2**32, 2**64 - 1],
    0x2E0: [1, 0, 2, 0xFFFFFFFF],
}


def boot_with_zero_page_changes(lgemu_main, monkeypatch, changes,
                                seen: list[bool] | None = None) -> tuple[int, bytes, str]:
    """Boot the bundled guest with `changes` ((offset, value) pairs) written into the zero
    page the Launcher builds; (status, out, err).  `seen` gets whether the page changed."""
    original = lgemu.launcher.bootparams.build_zero_page  # never patched: no pile-up

    def corrupted(*args, **kwargs) -> bytes:
        pristine = original(*args, **kwargs)
        page = bytearray(pristine)
        for offset, value in changes:
            struct.pack_into(FIELDS[offset], page, offset, value)
        if seen is not None:
            seen.append(page != pristine)
        return bytes(page)

    monkeypatch.setattr(lgemu.launcher, "build_zero_page", corrupted)
    return lgemu_main(["boot", "--max-insns", MAX_INSNS])


def field_changes():
    def value(offset: int):
        bits = 8 * struct.calcsize(FIELDS[offset])
        return st.one_of(st.sampled_from(FIELD_VALUES[offset]), st.integers(0, 2**bits - 1))
    return st.lists(st.sampled_from(sorted(FIELDS)).flatmap(
        lambda off: st.tuples(st.just(off), value(off))), min_size=1, max_size=5)


@fuzz_settings(40)
@given(changes=field_changes())
def test_a_corrupt_zero_page_ends_cleanly(lgemu_main, monkeypatch, changes) -> None:
    """A zero page written back as the Launcher made it boots exactly as an untouched one;
    a changed one boots, panics (the guest's own checks) or is killed, in one line — the
    banner program neither waits forever nor runs on."""
    seen: list[bool] = []
    status, out, err = boot_with_zero_page_changes(lgemu_main, monkeypatch, changes, seen)
    assert_clean_end(status, err, out)
    if seen == [False]:
        assert (status, out, err) == _untouched(lgemu_main)
        return
    assert seen == [True] and status in (0, 1, 3), (status, err)
    if status == 0:
        assert out.startswith(b"lgemu guest: Linux 2.6.24 lguest ABI") and \
            out.endswith(b"lgemu guest: power down\r\n"), out


_UNTOUCHED: list[tuple[int, bytes, str]] = []


def _untouched(lgemu_main) -> tuple[int, bytes, str]:
    """The outcome of the banner program with the zero page as the Launcher built it."""
    if not _UNTOUCHED:
        _UNTOUCHED.append(lgemu_main(["boot", "--max-insns", MAX_INSNS]))
    assert _UNTOUCHED[0][0] == 0
    return _UNTOUCHED[0]


@pytest.mark.parametrize(("offset", "value", "status"), [
    (0x23C, 0, 3),  # hardware_subarch 0: the PC path's lgdt faults in ring 1
    (0x206, 0x0206, 3),  # boot protocol 2.06: no KEEP_SEGMENTS, the same lgdt
    (0x228, 0xFFFFFFFF, 3),  # a command line beyond memory: the copy faults
    (0x2E0, 2, 1),  # e820 entry 0 is not RAM: the guest panics
])
def test_zero_page_fields_the_guest_relies_on(lgemu_main, monkeypatch, offset, value, status):
    got, out, err = boot_with_zero_page_changes(lgemu_main, monkeypatch, [(offset, value)])
    assert_clean_end(got, err, out)
    assert got == status, err


text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80)
cmdlines = st.one_of(
    text,
    st.builds(lambda s: "lgemu.test=" + s, text),
    st.builds(lambda n, c: c * n, st.sampled_from([2046, 2047, 2048, 4000]),
              st.sampled_from(["a", "é", " "])),
    st.sampled_from(["crash", "crash crash", "\0", "a\0b", "lgemu.test=banner crash",
                     "\n\r\x1b[2J", "lgemu.test"]),
)


@fuzz_settings(25)
@given(cmdline=cmdlines)
def test_any_command_line_boots_or_is_refused(lgemu_main, cmdline) -> None:
    status, out, err = lgemu_main(["boot", "--max-insns", MAX_INSNS, f"--append={cmdline}"])
    if status == 2:
        line = assert_one_line(err)
        assert line.startswith("lgemu: kernel command line "), line
        assert len(cmdline.encode()) >= 2047 or "\0" in cmdline
        return
    assert_clean_end(status, err, out)
    # What the bundled guest does with it (guest_kernel/main.c and cmdline.c): words are
    # separated by spaces, the last lgemu.test= picks the program, the word "crash" crashes
    # after it.
    words = [w for w in cmdline.encode().split(b" ") if w]
    chosen = [w[len(b"lgemu.test="):] for w in words if w.startswith(b"lgemu.test=")]
    if chosen and chosen[-1] not in PROGRAMS:
        assert status == 1 and err.startswith("lgemu: guest crashed: unknown lgemu.test="), err
    elif chosen and chosen[-1] != b"banner":
        assert status in (0, 1), err  # another program: its own outcome
    elif b"crash" in words:
        assert (status, err) == (1, "lgemu: guest crashed: guest requested crash\n")
    else:
        assert (status, err) == (0, ""), err
        assert out.endswith(b"lgemu guest: power down\r\n"), out
        if "\n" not in cmdline and "\r" not in cmdline:
            assert b'command line: "' + cmdline.encode() + b'"' in out, out


PROGRAMS = frozenset(re.findall(rb'^\t\{ "(\w+)",', (Path(__file__).resolve().parent.parent /
                                                    "guest_kernel" / "main.c").read_bytes(),
                                re.MULTILINE))
