"""The Launcher against ABI §1, §10 and §13: byte-exact layouts, and clean refusals.

Expected bytes are written out from the document's tables and worked examples, independently
of the ctypes layouts in `lgemu.abi`, so a wrong offset there shows up here too.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lgemu.errors import UserError
from lgemu.launcher import (
    BootInfo,
    DeviceSpec,
    KernelImage,
    Segment,
    block_spec,
    build_initial_page_tables,
    build_zero_page,
    check_memory_size,
    command_line_bytes,
    console_spec,
    launch,
    lay_out_devices,
    load_kernel,
)
from lgemu.machine.memory import MAX_RAM, GuestMemory
from tests.elfimage import (
    EM_AARCH64,
    EM_ARM,
    EM_MIPS,
    EM_X86_64,
    ET_DYN,
    ET_REL,
    PT_NOTE,
    ElfImage,
    ElfSegment,
    bzimage,
)

MIB = 1 << 20
PAGE = 4096
MEM64 = 64 * MIB
DEVICE_AREA = 256 * PAGE


# -- helpers and fixtures -------------------------------------------------------------------
def pattern(length: int, seed: int = 1) -> bytes:
    """Recognisable non-zero bytes."""
    return bytes((i * 7 + seed) % 251 + 1 for i in range(length))


CODE = pattern(0x3000)
DATA = pattern(0x100, seed=5)


def good_image() -> ElfImage:
    """A vmlinux-like ELF: code with BSS, a note (ignored), a small data segment."""
    return ElfImage(
        entry=0x100000,
        segments=[
            ElfSegment(0x100000, CODE, memsz=0x5000, vaddr=0xC0100000),
            ElfSegment(0, b"note", type=PT_NOTE),
            ElfSegment(0x200000, DATA, memsz=0x2000, vaddr=0xC0200000),
        ],
    )


def expected_zero_page(mem: int, initrd_addr: int = 0, initrd_size: int = 0) -> bytes:
    """ABI §1.2, written out field by field at absolute offsets."""
    page = bytearray(PAGE)
    page[0x1E8] = 1  # e820_entries
    struct.pack_into("<H", page, 0x206, 0x0207)  # version
    page[0x210] = 0xFF if initrd_size else 0  # type_of_loader
    page[0x211] = 0x40  # loadflags: KEEP_SEGMENTS
    struct.pack_into("<II", page, 0x218, initrd_addr, initrd_size)
    struct.pack_into("<I", page, 0x228, 0x1000)  # cmd_line_ptr
    struct.pack_into("<I", page, 0x23C, 1)  # hardware_subarch: lguest
    struct.pack_into("<QQI", page, 0x2D0, 0, mem, 1)  # e820_map[0]
    return bytes(page)


def u32(buf: bytes | bytearray, offset: int) -> int:
    return int.from_bytes(buf[offset:offset + 4], "little")


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory(16 * MIB)
    yield mem
    mem.close()


@pytest.fixture
def kernel(tmp_path: Path) -> KernelImage:
    return load_kernel(good_image().write(tmp_path / "vmlinux"))


def raises_user_error(match: str) -> Any:
    """`pytest.raises(UserError)` whose one-line message matches `match`."""
    return pytest.raises(UserError, match=match)


# -- ABI §1.2 zero page and command line ----------------------------------------------------
ZERO_PAGE_FIELDS = [  # (offset, size, value) for mem = 64 MiB, no initrd
    (0x000, 64, 0),  # screen_info
    (0x0A0, 16, 0),  # sys_desc_table
    (0x1E8, 1, 1),  # e820_entries
    (0x1E9, 1, 0),  # eddbuf_entries
    (0x1F1, 1, 0),  # setup_sects
    (0x1F2, 2, 0),  # root_flags
    (0x1F8, 2, 0),  # ram_size
    (0x1FA, 2, 0),  # vid_mode
    (0x1FC, 2, 0),  # root_dev
    (0x202, 4, 0),  # header: no "HdrS"
    (0x206, 2, 0x0207),  # version
    (0x210, 1, 0),  # type_of_loader
    (0x211, 1, 0x40),  # loadflags
    (0x214, 4, 0),  # code32_start
    (0x218, 4, 0),  # ramdisk_image
    (0x21C, 4, 0),  # ramdisk_size
    (0x228, 4, 0x1000),  # cmd_line_ptr
    (0x22C, 4, 0),  # initrd_addr_max
    (0x238, 4, 0),  # cmdline_size
    (0x23C, 4, 1),  # hardware_subarch
    (0x240, 8, 0),  # hardware_subarch_data
    (0x2D0, 8, 0),  # e820_map[0].addr
    (0x2D8, 8, MEM64),  # e820_map[0].size
    (0x2E0, 4, 1),  # e820_map[0].type: RAM
    (0x2E4, 20, 0),  # e820_map[1]
]


@pytest.mark.parametrize(("offset", "size", "value"), ZERO_PAGE_FIELDS)
def test_zero_page_field(offset: int, size: int, value: int) -> None:
    page = build_zero_page(MEM64, 0, 0)
    assert int.from_bytes(page[offset:offset + size], "little") == value


def test_zero_page_without_initrd_is_exact() -> None:
    assert build_zero_page(MEM64, 0, 0) == expected_zero_page(MEM64)


def test_zero_page_with_initrd() -> None:
    page = build_zero_page(MEM64, MEM64 - 0x3000, 0x3000)
    assert page[0x210] == 0xFF
    assert u32(page, 0x218) == 0x03FFD000
    assert u32(page, 0x21C) == 0x3000
    assert page == expected_zero_page(MEM64, MEM64 - 0x3000, 0x3000)


@pytest.mark.parametrize(("args", "expected"), [
    ("root=/dev/vda", b"root=/dev/vda \0"),
    ("console=hvc0 root=/dev/vda", b"console=hvc0 root=/dev/vda \0"),
    (["console=hvc0", "root=/dev/vda"], b"console=hvc0 root=/dev/vda \0"),
    ("", b"\0"),
    ([], b"\0"),
    (["a", ""], b"a  \0"),
])
def test_command_line_is_args_each_followed_by_a_space(args: str | list[str],
                                                      expected: bytes) -> None:
    assert command_line_bytes(args) == expected


def test_command_line_limit_is_2048_bytes_with_nul() -> None:
    assert len(command_line_bytes("x" * 2046)) == 2048
    with raises_user_error("^kernel command line is 2048 bytes long; the guest reads at most "
                           "2047$"):
        command_line_bytes("x" * 2047)


def test_command_line_rejects_nul() -> None:
    with raises_user_error("NUL"):
        command_line_bytes("a\0b")


# -- ABI §1.3 page tables -------------------------------------------------------------------
def test_page_tables_64mib_worked_example() -> None:
    ram = bytearray(b"\xAA") * (MEM64 + DEVICE_AREA)  # garbage: every table byte is written
    pgdir = build_initial_page_tables(ram, MEM64, MEM64)
    assert pgdir == 0x03FFF000
    assert u32(ram, pgdir) == 0x03FEF007
    for k in range(16):
        assert u32(ram, pgdir + 4 * k) == 0x03FEF000 + k * PAGE | 7
    assert ram[pgdir + 64:pgdir + PAGE] == bytes(PAGE - 64)
    ptes = ram[0x03FEF000:0x03FFF000]
    assert list(struct.unpack(f"<{len(ptes) // 4}I", ptes)) == [
        i * PAGE | 7 for i in range(MEM64 // PAGE)]
    assert ram[0x03FEEFFF] == 0xAA and ram[MEM64] == 0xAA  # nothing outside the tables


def test_page_tables_partial_last_pte_page() -> None:
    mem = 10 * MIB  # 2.5 PDEs' worth: P = 3, the last PTE page half used
    ram = bytearray(b"\xAA") * mem
    pgdir = build_initial_page_tables(ram, mem, mem)
    assert pgdir == mem - PAGE
    base = pgdir - 3 * PAGE
    assert [u32(ram, pgdir + 4 * k) for k in range(4)] == [
        base | 7, base + PAGE | 7, base + 2 * PAGE | 7, 0]
    last = base + (mem // PAGE - 1) * 4
    assert u32(ram, last) == (mem - PAGE) | 7
    assert ram[last + 4:pgdir] == bytes(pgdir - last - 4)


def test_page_tables_below_initrd() -> None:
    ram = bytearray(MEM64)
    initrd = 0x5000
    pgdir = build_initial_page_tables(ram, MEM64, MEM64 - initrd)
    assert pgdir == MEM64 - initrd - PAGE == 0x03FFA000
    assert u32(ram, pgdir) == 0x03FEA007
    assert u32(ram, 0x03FEA000 + 4) == PAGE | 7
    assert ram[MEM64 - initrd:] == bytes(initrd)


def test_page_tables_refuse_impossible_arguments() -> None:
    with pytest.raises(ValueError):
        build_initial_page_tables(bytearray(MIB), MIB, MIB + 123)


# -- ABI §10.3 device page ------------------------------------------------------------------
CAPACITY = 0x800  # sectors

BLOCK_DESC = hx("021A00" "02088000010001400000" "4108") + CAPACITY.to_bytes(8, "little") + hx(
    "43047E000000")
CONSOLE_AFTER_BLOCK = hx("031400" "02088000020003400000" "02088000030005400000")
CONSOLE_ALONE = hx("031400" "02088000010001400000" "02088000020003400000")


def test_device_page_block_and_console_worked_example() -> None:
    ram = bytearray(b"\xAA") * (MEM64 + DEVICE_AREA)
    page = lay_out_devices(ram, MEM64, [block_spec(CAPACITY), console_spec()])
    assert len(BLOCK_DESC) == 0x1D and len(CONSOLE_AFTER_BLOCK) == 0x34 - 0x1D
    assert ram[MEM64:MEM64 + PAGE] == (BLOCK_DESC + CONSOLE_AFTER_BLOCK).ljust(PAGE, b"\0")
    assert page.address == MEM64 and page.pfn_limit == 0x4007
    assert [d.offset for d in page.devices] == [0, 0x1D]
    assert [(q.index, q.num, q.irq, q.pfn) for q in page.queues()] == [
        (0, 128, 1, 0x4001), (0, 128, 2, 0x4003), (1, 128, 3, 0x4005)]
    assert [q.address for q in page.devices[1].queues] == [0x4003000, 0x4005000]
    assert ram[0x4001000:0x4007000] == bytes(0x6000)  # rings zeroed
    assert ram[0x4007000] == 0xAA  # nothing past pfn_limit touched


def test_device_page_console_only_worked_example() -> None:
    ram = bytearray(MEM64 + DEVICE_AREA)
    page = lay_out_devices(ram, MEM64, [console_spec()])
    assert ram[MEM64:MEM64 + PAGE] == CONSOLE_ALONE.ljust(PAGE, b"\0")
    assert page.pfn_limit == 0x4005
    assert page.devices[0].status_offset == 2


def test_device_page_descriptor_overflow() -> None:
    big = DeviceSpec(type=9, num_queues=1, config=b"\x50\xF0" + bytes(0xF0))
    assert big.descriptor_size == 255
    ram = bytearray(16 * MIB + DEVICE_AREA)
    lay_out_devices(ram, 16 * MIB, [big] * 16)  # 4080 bytes: fits
    with raises_user_error(r"^Not enough memory for devices: 17 device descriptors need 4335 "):
        lay_out_devices(ram, 16 * MIB, [big] * 17)


def test_device_page_runs_out_of_interrupt_lines() -> None:
    ram = bytearray(16 * MIB + DEVICE_AREA)
    lay_out_devices(ram, 16 * MIB, [block_spec(1)] * 29 + [console_spec()])  # IRQs 1..31
    with raises_user_error("^Too many devices: 32 virtqueues"):
        lay_out_devices(ram, 16 * MIB, [block_spec(1)] * 30 + [console_spec()])


# -- ABI §1.1 loader ------------------------------------------------------------------------
def test_load_good_elf(tmp_path: Path) -> None:
    image = load_kernel(good_image().write(tmp_path / "vmlinux"))
    assert image.kind == "elf"
    assert image.entry == 0x100000
    assert image.segments == (Segment(0x100000, CODE, 0x5000), Segment(0x200000, DATA, 0x2000))
    assert image.end == 0x202000


def test_load_bzimage(tmp_path: Path) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(bzimage(CODE, setup_sects=3, code32_start=0x100000))
    image = load_kernel(str(path))
    assert (image.kind, image.entry, image.path) == ("bzImage", 0x100000, path)
    assert image.segments == (Segment(0x100000, CODE, len(CODE)),)


def test_bzimage_setup_sects_zero_means_four(tmp_path: Path) -> None:
    path = tmp_path / "bzImage"
    path.write_bytes(bzimage(DATA, setup_sects=0))
    assert load_kernel(path).segments[0].data == DATA


def _write(data: bytes, name: str = "vmlinux") -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(data)
        return path
    return make


def _elf(**knobs: Any) -> Callable[[Path], Path]:
    return _write(good_image().but(**knobs).build())


def _cut(offset: int) -> Callable[[Path], Path]:
    return _write(good_image().build(truncate=offset))


def _segment_lie(**lie: int) -> Callable[[Path], Path]:
    image = good_image()
    image.segments[0] = replace(image.segments[0], **lie)
    return _write(image.build())


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "vmlinux")
    return tmp / "vmlinux"


IMG = good_image()
BAD_KERNELS = {
    "missing": (lambda tmp: tmp / "vmlinux", "vmlinux: no such file$"),
    "directory": (lambda tmp: tmp, ": is a directory$"),
    "fifo": (_fifo, "vmlinux: not a regular file$"),
    "empty": (_write(b""), "vmlinux: not an ELF kernel or bzImage$"),
    "text": (_write(b"#!/bin/sh\necho hello\n" * 50), "vmlinux: not an ELF kernel or bzImage$"),
    "x86-64": (_elf(elfclass=64, machine=EM_X86_64),
               r"vmlinux: 64-bit ELF \(x86-64\): lgemu runs 32-bit lguest guests$"),
    "aarch64": (_elf(elfclass=64, machine=EM_AARCH64), "64-bit ELF for AArch64, not i386$"),
    "arm": (_elf(machine=EM_ARM), "vmlinux: ELF for ARM, not i386$"),
    "mips": (_elf(machine=EM_MIPS), "ELF for MIPS, not i386$"),
    "unknown machine": (_elf(machine=0x1234), "ELF for machine 4660, not i386$"),
    "EM_NONE": (_elf(machine=0), "ELF for EM_NONE, not i386$"),
    "big-endian": (_elf(little_endian=False), "big-endian ELF, not i386$"),
    "bad class": (_elf(ident_class=7), "invalid ELF class 07$"),
    "bad data": (_elf(ident_data=0), "invalid ELF data encoding 00$"),
    "ET_REL": (_elf(type=ET_REL), r"vmlinux: not an executable \(ET_REL\)$"),
    "ET_DYN": (_elf(type=ET_DYN), r"not an executable \(ET_DYN\)$"),
    "odd e_type": (_elf(type=0xFE00), r"not an executable \(e_type 0xfe00\)$"),
    "phentsize": (_elf(phentsize=40), r"bad program header size 40 \(expected 32\)$"),
    "no phdrs": (_elf(phnum=0), "no program headers$"),
    "too many phdrs": (_elf(phnum=65), r"65 program headers \(lgemu accepts at most 64\)$"),
    "phoff past end": (_elf(phoff=0x7FFFFFF0), r"truncated ELF \(program header 0 of 3"),
    "cut in file header": (_cut(40), r"truncated ELF \(file header is 40 of 52 bytes\)$"),
    "cut in phdrs": (_cut(IMG.phdr_offset(1) + 10), r"truncated ELF \(program header 1 of 3 "),
    "cut in segment": (_cut(IMG.data_offset(0) + 0x1000),
                       r"truncated ELF \(segment 0 needs file bytes \[0x"),
    "offset lie": (_segment_lie(offset=0xFFFFFF00), r"truncated ELF \(segment 0 needs"),
    "filesz > memsz": (_segment_lie(memsz=0x10),
                       "segment 0: p_filesz 0x3000 is larger than p_memsz 0x10$"),
    "beyond 2 GiB": (_segment_lie(paddr=0x7FFFF000),
                     r"segment \[0x7ffff000, 0x80004000\) does not fit in 2048 MiB"),
    "wraps 4 GiB": (_segment_lie(paddr=0xFFFFF000), "does not fit in 2048 MiB"),
    "no PT_LOAD": (_write(ElfImage(0x100000, [ElfSegment(0, b"n", type=PT_NOTE)]).build()),
                   "ELF has no loadable segments$"),
    "bzImage header cut": (_write(bzimage(CODE)[:0x210]),
                           r"truncated bzImage \(setup header is 528 of 536 bytes\)$"),
    "bzImage no payload": (_write(bzimage(b"", setup_sects=2)),
                           r"truncated bzImage \(2 setup sectors need 1536 bytes"),
}


@pytest.mark.parametrize("case", BAD_KERNELS)
def test_load_kernel_rejects(case: str, tmp_path: Path) -> None:
    make, message = BAD_KERNELS[case]
    path = make(tmp_path)
    with pytest.raises(UserError) as caught:
        load_kernel(path)
    assert re.search(message, caught.value.message), caught.value.message
    assert caught.value.message.startswith(str(path) + ": ")
    assert caught.value.status == 2 and "\n" not in caught.value.line()


def test_unreadable_files_are_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          memory: GuestMemory, kernel: KernelImage) -> None:
    path = good_image().write(tmp_path / "secret")

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    with raises_user_error("secret: permission denied$"):
        load_kernel(path)
    with raises_user_error("secret: permission denied$"):
        launch(memory, kernel, "", path, [console_spec()])


# Fuzzing: whatever happens to the headers, load_kernel returns or raises UserError.
FUZZ_BASE = good_image().build()
FUZZ_HEADERS = IMG.phdr_offset(len(IMG.segments))
INTERESTING = [0, 1, 2, 3, 4, 6, 32, 52, 64, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x100000,
               0x7FFFFFFF, 0x80000000, 0xFFFFF000, 0xFFFFFFFF]
mutations = st.lists(
    st.tuples(st.integers(0, FUZZ_HEADERS - 1), st.sampled_from([1, 2, 4]),
              st.one_of(st.sampled_from(INTERESTING), st.integers(0, 0xFFFFFFFF))),
    max_size=6)


def _mutate(data: bytes, changes: list[tuple[int, int, int]]) -> bytearray:
    out = bytearray(data)
    for offset, width, value in changes:
        chunk = (value & ((1 << 8 * width) - 1)).to_bytes(width, "little")
        out[offset:offset + width] = chunk[:len(out) - offset]
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=mutations, cut=st.one_of(st.none(), st.integers(0, len(FUZZ_BASE))))
def test_mutated_elf_loads_or_is_refused(changes: list[tuple[int, int, int]], cut: int | None,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzzed-vmlinux"
    path.write_bytes(bytes(_mutate(FUZZ_BASE, changes)[:cut]))
    try:
        image = load_kernel(path)
    except UserError as exc:
        assert exc.message.startswith(f"{path}: ") and "\n" not in exc.message
        return
    for segment in image.segments:
        assert len(segment.data) <= segment.memsz and segment.end <= MAX_RAM


@settings(max_examples=100, deadline=None)
@given(setup_sects=st.integers(0, 255), cut=st.integers(0, 0x8000))
def test_any_bzimage_loads_or_is_refused(setup_sects: int, cut: int,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzzed-bzImage"
    path.write_bytes(bzimage(CODE, setup_sects=setup_sects)[:cut])
    try:
        image = load_kernel(path)
    except UserError:
        return
    setup = ((setup_sects or 4) + 1) * 512
    assert image.segments[0].data == bzimage(CODE, setup_sects=setup_sects)[setup:cut]


# -- memory size ----------------------------------------------------------------------------
@pytest.mark.parametrize(("mib", "message"), [
    (0, "^memory size must be a positive number of MiB, not 0$"),
    (-64, "positive"),
    (7, r"^too little memory: 7 MiB \(lgemu needs at least 8 MiB\)$"),
    (2049, "^too much memory: lgemu supports up to 2048 MiB$"),
    (10**12, "^too much memory"),
])
def test_memory_size_refused(mib: int, message: str) -> None:
    with raises_user_error(message):
        check_memory_size(mib)


@pytest.mark.parametrize("mib", [8, 64, 2048])
def test_memory_size_accepted(mib: int) -> None:
    assert check_memory_size(mib) == mib * MIB


# -- launch ---------------------------------------------------------------------------------
def test_launch_lays_out_everything(memory: GuestMemory, kernel: KernelImage,
                                    tmp_path: Path) -> None:
    mem = 16 * MIB
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(pattern(5000, seed=9))
    memory.ram[:] = b"\xAA" * memory.size  # prove that every byte we rely on is written
    info = launch(memory, kernel, "root=/dev/vda", initrd, [block_spec(CAPACITY), console_spec()])

    assert isinstance(info, BootInfo)
    assert (info.initrd_addr, info.initrd_size) == (mem - 0x2000, 0x2000)
    ram = memory.ram
    assert ram[mem - 0x2000:mem - 0x2000 + 5000] == pattern(5000, seed=9)
    assert ram[mem - 0x2000 + 5000:mem] == bytes(0x2000 - 5000)
    assert info.pgdir == mem - 0x2000 - PAGE
    assert u32(ram, info.pgdir) == (info.pgdir - 4 * PAGE) | 7  # P = 4 for 16 MiB
    assert ram[0:PAGE] == expected_zero_page(mem, mem - 0x2000, 0x2000)
    assert ram[0x1000:0x1000 + 15] == b"root=/dev/vda \0"
    assert ram[0x100000:0x103000] == CODE and ram[0x103000:0x105000] == bytes(0x2000)
    assert ram[0x200000:0x200100] == DATA and ram[0x200100:0x202000] == bytes(0x1F00)
    assert ram[mem:mem + 0x35] == (  # ABI §10.3's example moved to 16 MiB: pfns 0x1001 up
        hx("021A00" "02088000010001100000" "4108") + CAPACITY.to_bytes(8, "little")
        + hx("43047E000000" "031400" "02088000020003100000" "02088000030005100000" "00"))
    assert info.pfn_limit == mem // PAGE + 7
    assert memory.limit == mem + PAGE + 3 * 2 * PAGE
    assert (info.entry, info.kernel) == (0x100000, kernel)


def test_launch_without_initrd(memory: GuestMemory, kernel: KernelImage) -> None:
    info = launch(memory, kernel, "", None, [console_spec()])
    assert (info.initrd_addr, info.initrd_size) == (0, 0)
    assert info.pgdir == 16 * MIB - PAGE
    assert memory.ram[0:PAGE] == expected_zero_page(16 * MIB)
    assert memory.ram[0x1000:0x1002] == b"\0\0"
    assert info.pfn_limit == 16 * MIB // PAGE + 5


def _kernel_at(tmp_path: Path, paddr: int, memsz: int) -> KernelImage:
    image = ElfImage(paddr, [ElfSegment(paddr, b"\x90" * 16, memsz=memsz)])
    return load_kernel(image.write(tmp_path / "vmlinux"))


def test_launch_segment_may_end_at_the_page_tables(memory: GuestMemory, tmp_path: Path) -> None:
    top_of_kernel = 16 * MIB - 5 * PAGE  # P = 4 PTE pages + the directory
    launch(memory, _kernel_at(tmp_path, 0x2000, top_of_kernel - 0x2000), "", None, [])


@pytest.mark.parametrize(("paddr", "memsz", "message"), [
    (0x100000, 20 * MIB,
     r"vmlinux: segment \[0x100000, 0x1500000\) does not fit in 16 MiB of RAM$"),
    (0x100000, 16 * MIB - 0x100000 - 4 * PAGE, "does not fit in 16 MiB of RAM$"),  # page tables
    (0x1000, 0x1000, r"segment \[0x1000, 0x2000\) overlaps the zero page and command line"),
    (0, 0x100, "overlaps the zero page"),
])
def test_launch_refuses_misplaced_segments(memory: GuestMemory, tmp_path: Path, paddr: int,
                                           memsz: int, message: str) -> None:
    with raises_user_error(message):
        launch(memory, _kernel_at(tmp_path, paddr, memsz), "", None, [console_spec()])


def test_launch_refuses_initrd_too_big(memory: GuestMemory, kernel: KernelImage,
                                       tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(bytes(14 * MIB))
    with raises_user_error(r"initrd.img: initrd of 14680064 bytes does not fit in 16 MiB of RAM "
                           r"together with the kernel \(which ends at 0x202000\)"):
        launch(memory, kernel, "", initrd, [console_spec()])


def test_launch_initrd_just_fits(memory: GuestMemory, kernel: KernelImage,
                                 tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.img"
    size = 16 * MIB - 0x202000 - 5 * PAGE
    initrd.write_bytes(bytes(size))
    info = launch(memory, kernel, "", initrd, [console_spec()])
    assert info.initrd_addr == 0x202000 + 5 * PAGE


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "nope.img", "nope.img: no such file$"),
    (lambda tmp: tmp, "is a directory$"),
    (_write(b"", "empty.img"), "empty.img: initrd is empty$"),
])
def test_launch_refuses_bad_initrd(memory: GuestMemory, kernel: KernelImage, tmp_path: Path,
                                   make: Callable[[Path], Path], message: str) -> None:
    with raises_user_error(message):
        launch(memory, kernel, "", make(tmp_path), [console_spec()])


def test_launch_refuses_long_command_line(memory: GuestMemory, kernel: KernelImage) -> None:
    with raises_user_error("kernel command line is 3000 bytes long"):
        launch(memory, kernel, "y" * 2999, None, [console_spec()])


def test_launch_refuses_too_many_devices(memory: GuestMemory, kernel: KernelImage) -> None:
    with raises_user_error("^Too many devices"):
        launch(memory, kernel, "", None, [block_spec(8)] * 40 + [console_spec()])


def test_overlapping_segments_are_refused(tmp_path):
    """Two PT_LOADs sharing physical memory: placing the second would zero or overwrite the
    first's bytes, so the image is refused before anything is written."""
    kernel = tmp_path / "overlap.elf"
    ElfImage(0x100000, [ElfSegment(0x100000, b"\x90" * 16, 0x2000),
                        ElfSegment(0x101000, b"\xcc" * 16, 0x1000)]).write(kernel)
    with pytest.raises(UserError, match=r"segments \[0x100000, 0x102000\) and "
                                        r"\[0x101000, 0x102000\) overlap"):
        launch(GuestMemory(64 << 20), load_kernel(kernel), "", None, [console_spec()])
