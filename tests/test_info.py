"""`lgemu info VMLINUX`: what lgemu sees in a kernel image, and one line for a bad one.

Small guests assembled here carry exactly the symbols each era verdict is about (a 2.6.23
DMA-bus call, a resized lguest_data); tests/test_eras.py runs `info` on real kernels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from elfimage import bzimage, elf_image
from elftools.elf.elffile import ELFFile
from guestasm import build_guest

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED = REPO_ROOT / "firmware" / "lgemu-guest.elf"

LGUEST_SYMBOLS = """
	.globl	lguest_init, lguest_entry
lguest_init:
lguest_entry:
	POWER_DOWN
"""


def info(lgemu_main, path: Path | str) -> tuple[int, str, str]:
    status, out, err = lgemu_main(["info", str(path)])
    return status, out.decode(), err


def guest_info(lgemu_main, tmp_path: Path, body: str) -> str:
    """`lgemu info` on a small guest assembled from `body`: status 0, nothing on stderr."""
    status, out, err = info(lgemu_main, build_guest(tmp_path, body))
    assert (status, err) == (0, "")
    return out


def test_bundled_guest(lgemu_main):
    status, out, err = info(lgemu_main, BUNDLED)
    assert (status, err) == (0, "")
    with BUNDLED.open("rb") as f:
        elf = ELFFile(f)
        entry = elf["e_entry"]
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        symtab = elf.get_section_by_name(".symtab")
        lguest_init = symtab.get_symbol_by_name("lguest_init")[0]
        data_pa = symtab.get_symbol_by_name("lguest_data")[0]["st_value"] - 0xC0000000
    assert f"entry {entry:#x} (startup_32+0x0)" in out
    for seg in loads:
        assert f"{seg['p_vaddr']:#010x}" in out and f"{seg['p_paddr']:#010x}" in out
    assert "lguest guest: yes; ABI era: 2.6.24 (virtio over the lguest bus" in out
    assert "  DWARF: struct lguest_data is 1136 bytes, pgdir at 1116\n" in out
    assert "  symbol lguest_data is 1136 bytes\n" in out
    assert (f"  code: LGUEST_INIT(lguest_data at {data_pa:#x}) by int $0x1f with the argument "
            "in edx\n") in out
    assert "\nlgemu: boots it with the 2.6.24 ABI\n" in out
    assert "DWARF line table" in out and "no DWARF" not in out
    line = next(line for line in out.splitlines() if " lguest_init " in line)
    assert f"{lguest_init['st_value']:#010x}" in line and "function" in line


def test_a_guest_without_lguest_symbols(lgemu_main, tmp_path):
    out = guest_info(lgemu_main, tmp_path, "\tPOWER_DOWN\n")
    assert "lguest guest: no; ABI era: 2.6.24 (" in out
    assert "assumed: nothing in the image names an era)" in out
    assert "  no lguest_init or lguest_entry symbol\n" in out
    assert "\nlgemu: boots it with the 2.6.24 ABI\n" in out


def test_a_2_6_23_guest_is_named(lgemu_main, tmp_path):
    out = guest_info(lgemu_main, tmp_path,
                     LGUEST_SYMBOLS + "\t.globl lguest_send_dma\nlguest_send_dma:\n")
    assert "lguest guest: yes; ABI era: 2.6.23 (the first lguest" in out
    assert "  symbols: lguest_send_dma (the DMA lguest bus)\n" in out
    assert "\nlgemu: boots it with the 2.6.23 ABI\n" in out


def test_a_resized_lguest_data_is_not_2_6_24(lgemu_main, tmp_path):
    out = guest_info(lgemu_main, tmp_path, LGUEST_SYMBOLS + "\t.size lguest_data, 1200\n")
    assert "ABI era: unknown (the image fits no lguest ABI lgemu knows)" in out
    assert "  symbol lguest_data is 1200 bytes — no lguest era has that\n" in out
    assert "\nlgemu: will not boot it: its ABI era is unknown" in out


def test_a_bzimage_has_no_symbols(lgemu_main, tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(bzimage(b"\x90" * 64))
    status, out, err = info(lgemu_main, path)
    assert (status, err) == (0, "")
    assert "bzImage" in out and "lguest guest: cannot tell; ABI era: 2.6.24 (" in out
    assert "  bzImage: no compressed kernel found to look into\n" in out


def test_an_elf_without_sections(lgemu_main, tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(elf_image([(0x100000, b"\xf4" * 16, 16)], entry=0x100000))
    status, out, err = info(lgemu_main, path)
    assert (status, err) == (0, "")
    assert "0 symbols, no DWARF line table" in out
    assert "note: no symbol table" in out


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing", "no such file"),
    (lambda d: d, "is a directory"),
    (lambda d: (d / "t.txt", (d / "t.txt").write_text("hello\n"))[0],
     "not an ELF kernel or bzImage"),
])
def test_bad_input_is_one_line_and_status_2(lgemu_main, tmp_path, make, message):
    status, out, err = info(lgemu_main, make(tmp_path))
    assert (status, out) == (2, "")
    assert err.startswith("lgemu: ") and message in err and err.count("\n") == 1


def test_info_needs_a_file(lgemu_main):
    status, out, err = lgemu_main(["info"])
    assert (status, out) == (2, b"")
    assert err.startswith("lgemu: ") and err.count("\n") == 1
