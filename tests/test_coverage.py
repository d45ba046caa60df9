"""`--coverage FILE`: drcov version 2, read back by a reader written here from the format's
description (DynamoRIO's drcov log as Lighthouse, Dragon Dance and bncov parse it):

    DRCOV VERSION: 2
    DRCOV FLAVOR: <text>
    Module Table: version 2, count <N>
    Columns: id, base, end, entry, path
    <id>, <hex base>, <hex end>, <hex entry>, <path>        (N lines)
    BB Table: <M> bbs
    M × (uint32 start offset, uint16 size, uint16 module id), little-endian
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED = REPO_ROOT / "firmware" / "lgemu-guest.elf"


@dataclass
class Drcov:
    flavor: str
    modules: list[dict]
    blocks: list[tuple[int, int, int]]  # (offset, size, module id)


def read_drcov(data: bytes) -> Drcov:
    """Parse a drcov v2 file with a binary block table; raise AssertionError if malformed."""
    lines = []
    rest = data
    while not (lines and lines[-1].startswith("BB Table:")):
        line, sep, rest = rest.partition(b"\n")
        assert sep, "header ended before the BB Table line"
        lines.append(line.decode())
    assert lines[0] == "DRCOV VERSION: 2"
    assert lines[1].startswith("DRCOV FLAVOR: ")
    table, version_count = lines[2].split(": ")
    assert table == "Module Table"
    version, count = version_count.split(", ")
    assert version == "version 2" and count.startswith("count ")
    count = int(count.split()[1])
    columns = lines[3].split(": ")[1].split(", ")
    assert columns == ["id", "base", "end", "entry", "path"]
    modules = []
    for line in lines[4:4 + count]:
        fields = line.split(", ")
        assert len(fields) == len(columns), line
        modules.append({"id": int(fields[0]), "base": int(fields[1], 16),
                        "end": int(fields[2], 16), "entry": int(fields[3], 16),
                        "path": fields[4]})
    assert len(lines) == 4 + count + 1
    bbs, word = lines[-1].split(": ")[1].split()
    assert word == "bbs"
    n = int(bbs)
    assert len(rest) == 8 * n, "the block table must be exactly the announced entries"
    blocks = [struct.unpack_from("<IHH", rest, 8 * i) for i in range(n)]
    return Drcov(lines[1].split(": ")[1], modules, blocks)


def text_range() -> tuple[int, int]:
    """Link-address range of the bundled guest's executable segments."""
    with BUNDLED.open("rb") as f:
        segs = [s for s in ELFFile(f).iter_segments()
                if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1]
        return min(s["p_vaddr"] for s in segs), max(s["p_vaddr"] + s["p_memsz"] for s in segs)


def symbol(name: str) -> int:
    with BUNDLED.open("rb") as f:
        return ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]["st_value"]


def test_coverage_file_is_drcov_with_the_kernel_as_a_module(boot_guest, tmp_path):
    path = tmp_path / "boot.drcov"
    plain = boot_guest(None)
    assert boot_guest(None, extra=["--coverage", str(path)]) == plain
    cov = read_drcov(path.read_bytes())
    kernel = cov.modules[0]
    assert kernel["id"] == 0 and Path(kernel["path"]) == BUNDLED.resolve()
    assert kernel["entry"] == symbol("startup_32")
    low, high = text_range()
    assert kernel["base"] <= low and high <= kernel["end"]
    in_kernel = [b for b in cov.blocks if b[2] == 0]
    assert in_kernel and all(size > 0 for _, size, _ in cov.blocks)
    assert len(set(cov.blocks)) == len(cov.blocks)  # each block once
    starts = {kernel["base"] + offset for offset, _, _ in in_kernel}
    # The boot ran startup_32 (at its physical alias) and start_kernel (in the kernel
    # window): both are counted at their link addresses.
    assert symbol("startup_32") in starts
    assert symbol("start_kernel") in starts
    assert all(low <= a < high for a in starts)


def test_user_code_goes_to_the_second_module(boot_guest, tmp_path):
    path = tmp_path / "user.drcov"
    status, _, _ = boot_guest(None, cmdline="lgemu.test=usermode",
                              extra=["--coverage", str(path)])
    cov = read_drcov(path.read_bytes())
    assert status == 0
    other = cov.modules[1]
    assert (other["id"], other["base"], other["end"]) == (1, 0, 0xFFFFFFFF)
    user = [offset for offset, _, module in cov.blocks if module == 1]
    assert user and all(offset < 0xC0000000 for offset in user)


def test_coverage_is_byte_identical_across_runs(boot_guest, tmp_path):
    files = [tmp_path / "a.drcov", tmp_path / "b.drcov"]
    for f in files:
        assert boot_guest(None, cmdline="lgemu.test=timer", extra=["--coverage", str(f)])[0] == 0
    assert files[0].read_bytes() == files[1].read_bytes()


def test_unwritable_coverage_file_is_one_line(boot_guest, tmp_path):
    status, out, err = boot_guest(None, extra=["--coverage", str(tmp_path / "no" / "x")])
    assert (status, out) == (2, b"")
    assert err.startswith("lgemu: ") and "cannot write coverage" in err
    assert err.count("\n") == 1
