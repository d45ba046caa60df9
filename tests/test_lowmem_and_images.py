"""Two things lguest's Launcher got wrong, checked as a user sees them (issue 9, part 4):

* an initrd at the top of RAM is out of a 2.6.24 guest's reach from about 892 MiB of RAM up,
  so lgemu puts it at the top of the guest's low memory (`lgemu.launcher.lowmem`), and the
  real kernel unpacks it and reaches its init at 1024 and 2048 MiB;
* an i386 ELF that is not a kernel (klibc's ``sh``, a static program) is refused with one
  line and exit status 2 instead of being booted into a trap (`lgemu.launcher.guestcheck`),
  while every kind of guest lgemu runs still loads.

The real-kernel tests need ``shared/kernels`` next to the repository and skip without it.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from elfimage import ElfImage, ElfSegment, bzimage
from guestasm import assert_one_line, build_guest
from linuxkernel import real_kernel, shared_kernel

from lgemu.abi import MIB, PAGE_SIZE
from lgemu.launcher import launch, load_kernel
from lgemu.launcher.lowmem import low_memory, memparse
from lgemu.machine.memory import GuestMemory

SHARED_KERNELS = REPO_ROOT.parent / "shared" / "kernels"
SHELL_CPIO = SHARED_KERNELS / "klibc-shell.cpio"
LOW_MEMORY_2_6_24 = 0x37C00000  # 1 GiB above PAGE_OFFSET less 128 MiB vmalloc, 4 MiB Host


def shared(name: str) -> Path:
    """A file of shared/kernels, or skip the test where that directory is absent."""
    path = SHARED_KERNELS / name
    if not path.exists():
        pytest.skip(f"{path} not present (real kernels live in shared/kernels)")
    return path


@pytest.fixture(scope="module")
def vmlinux_2_6_24(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real 2.6.24 vmlinux (HIGHMEM4G, with symbols), unpacked from its .xz."""
    shared("linux-2.6.24.vmlinux.xz")
    return real_kernel()


def kernel_like(tmp_path: Path, vaddr_offset: int = 0xC0000000) -> Path:
    """A vmlinux-shaped ELF without symbols, linked `vaddr_offset` above where it loads."""
    image = ElfImage(0x100000, [ElfSegment(0x100000, b"\x90" * 64, memsz=0x3000,
                                           vaddr=0x100000 + vaddr_offset)])
    return image.write(tmp_path / "vmlinux")


# -- the low-memory limit ---------------------------------------------------------------------
@pytest.mark.parametrize(("text", "size"), [
    ("512M", 512 * MIB), ("1G", 1 << 30), ("64k", 64 << 10), ("0x2000000", 0x2000000),
    ("010", 8), ("4096", 4096), ("nopentium", None), ("", None), ("12Q", None),
])
def test_memparse_reads_sizes_as_the_kernel_does(text, size):
    assert memparse(text) == size


def test_the_real_kernels_limit_is_read_from_its_symbols(vmlinux_2_6_24):
    low = low_memory(load_kernel(vmlinux_2_6_24), b"console=hvc0")
    assert low.limit == LOW_MEMORY_2_6_24
    assert "PAGE_OFFSET 0xc0000000" in low.how and "__VMALLOC_RESERVE 0x8000000" in low.how


def test_without_symbols_the_defaults_are_assumed_and_said(tmp_path):
    low = low_memory(load_kernel(kernel_like(tmp_path)), b"")
    assert low.limit == LOW_MEMORY_2_6_24
    assert low.how == ("PAGE_OFFSET 0xc0000000, vmalloc reserve 128 MiB assumed, "
                       "4 MiB for the Host")
    path = tmp_path / "bzImage"
    path.write_bytes(bzimage(b"\x90" * 64))
    low = low_memory(load_kernel(path), b"")
    assert low.limit == LOW_MEMORY_2_6_24
    assert low.how.startswith("PAGE_OFFSET 0xc0000000 assumed, vmalloc reserve 128 MiB assumed")


def test_a_lower_page_offset_and_the_command_line_move_the_limit(tmp_path):
    kernel = load_kernel(kernel_like(tmp_path / "", 0x80000000))  # VMSPLIT_2G
    assert low_memory(kernel, b"").limit == (2 << 30) - 132 * MIB
    # vmalloc= counts with the 8 MiB later kernels add; mem= ends RAM early.
    assert low_memory(kernel, b"vmalloc=512M").limit == (2 << 30) - 524 * MIB
    assert low_memory(kernel, b"mem=300M quiet").limit == 300 * MIB
    assert low_memory(kernel, b"mem=300M mem=200M").limit == 200 * MIB


def test_an_image_linked_where_it_loads_has_no_limit(tmp_path):
    low = low_memory(load_kernel(kernel_like(tmp_path, 0)), b"")
    assert low.limit >= 1 << 32


def test_the_initrd_goes_to_the_top_of_low_memory_when_ram_is_beyond_it(tmp_path):
    kernel = load_kernel(kernel_like(tmp_path))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\x07" * 5000)
    memory = GuestMemory(1024 * MIB)
    try:
        info = launch(memory, kernel, "", initrd, [])
        assert (info.initrd_addr, info.initrd_size) == (LOW_MEMORY_2_6_24 - 2 * PAGE_SIZE,
                                                        2 * PAGE_SIZE)
        ram = memory.ram
        assert bytes(ram[info.initrd_addr:info.initrd_addr + 5000]) == b"\x07" * 5000
        assert bytes(ram[info.initrd_addr + 5000:LOW_MEMORY_2_6_24]) == bytes(2 * PAGE_SIZE
                                                                              - 5000)
        # The zero page says so (ramdisk_image, ramdisk_size), and the page directory sits
        # just below the initrd, as the Launcher lays it out.
        assert struct.unpack_from("<II", ram, 0x218) == (info.initrd_addr, info.initrd_size)
        assert info.pgdir == info.initrd_addr - PAGE_SIZE
        assert info.initrd_where.startswith("at the top of low memory 0x37c00000 (")
    finally:
        memory.close()


def test_below_the_limit_the_initrd_stays_at_the_top_of_ram(tmp_path):
    kernel = load_kernel(kernel_like(tmp_path))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\x07" * PAGE_SIZE)
    memory = GuestMemory(64 * MIB)
    try:
        info = launch(memory, kernel, "", initrd, [])
        assert info.initrd_addr == 64 * MIB - PAGE_SIZE
        assert info.initrd_where == "at the top of RAM"
    finally:
        memory.close()


@pytest.mark.parametrize("mib", [1024, 2048])
def test_a_real_kernel_with_more_than_low_memory_reaches_its_init(run_lgemu, vmlinux_2_6_24,
                                                                   tmp_path, mib):
    script = tmp_path / "input"
    script.write_bytes(b"exit\n")
    proc = run_lgemu(["boot", vmlinux_2_6_24, "-m", mib, "-v", "--initrd", shared(SHELL_CPIO.name),
                      "--append", "console=hvc0 rdinit=/init", "--console-input", script])
    console = proc.stdout.decode("utf-8", "replace")
    assert "initrd extends beyond end of memory" not in console
    assert "Freeing initrd memory" in console
    assert "lgemu-shell: ready (Linux version 2.6.24" in console
    assert proc.returncode == 0, proc.stderr
    # The limit lgemu read is the one the kernel computed for itself.
    lowmem = re.search(r"lowmem\s*: 0x([0-9a-f]+) - 0x([0-9a-f]+)", console)
    assert lowmem is not None
    assert int(lowmem[2], 16) - int(lowmem[1], 16) == LOW_MEMORY_2_6_24
    assert (f"initrd {LOW_MEMORY_2_6_24 - 0xBF000:#x} + 0xbf000, at the top of low memory "
            f"{LOW_MEMORY_2_6_24:#x} (PAGE_OFFSET 0xc0000000, __VMALLOC_RESERVE 0x8000000, "
            f"4 MiB for the Host): the guest cannot reach an initrd at the top of {mib} MiB "
            "of RAM") in proc.stderr


def test_a_kernel_without_highmem_gets_the_ram_it_maps_and_finds_its_devices(run_lgemu,
                                                                            tmp_path):
    """2.6.26 (NOHIGHMEM) at 2048 MiB: it maps only 892 MiB and looks for the device page at
    its own max_pfn, so lgemu gives it that much RAM (said with -v); the shell and its console
    come up, the initrd at the top of that RAM."""
    vmlinux = shared_kernel("linux-2.6.26")
    script = tmp_path / "input"
    script.write_bytes(b"exit\n")
    proc = run_lgemu(["boot", vmlinux, "-m", "2048", "-v", "--initrd", shared(SHELL_CPIO.name),
                      "--append", "console=hvc0 rdinit=/init", "--console-input", script])
    console = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, proc.stderr
    assert "lgemu-shell: ready (Linux version 2.6.26" in console
    assert "Freeing initrd memory" in console
    assert ("RAM 892 MiB of the 2048 MiB asked for: the kernel has no HIGHMEM and maps RAM "
            "only up to 0x37c00000 (PAGE_OFFSET 0xc0000000, __VMALLOC_RESERVE 0x8000000, "
            "4 MiB for the Host), where it looks for the device page") in proc.stderr
    assert "initrd 0x37b41000 + 0xbf000, at the top of RAM" in proc.stderr


def test_a_highmem_kernel_keeps_all_its_ram(run_lgemu, vmlinux_2_6_24, tmp_path):
    proc = run_lgemu(["boot", vmlinux_2_6_24, "-m", "1024", "-v", "--max-insns", "1000",
                      "--append", "console=hvc0"])
    assert proc.returncode == 5, proc.stderr
    assert "RAM " not in proc.stderr
    assert "device page at 0x40000000" in proc.stderr  # the top of all 1024 MiB


# -- images that are not kernels ---------------------------------------------------------------
def cpio_member(archive: Path, name: str) -> bytes:
    """One regular file of a newc cpio archive."""
    data, at = archive.read_bytes(), 0
    while data[at:at + 6] == b"070701":
        fields = [int(data[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        size, name_size = fields[6], fields[11]
        member = data[at + 110:at + 110 + name_size - 1].decode()
        start = (at + 110 + name_size + 3) & ~3
        if member == name:
            return data[start:start + size]
        at = (start + size + 3) & ~3
    raise AssertionError(f"{name} not in {archive}")


def refused(lgemu_main, path: Path) -> str:
    """Boot `path`; it must be refused with one line and status 2.  Returns the reason."""
    status, out, err = lgemu_main(["boot", str(path), "-m", "256"])
    assert (status, out) == (2, b"")
    line = assert_one_line(err)
    prefix = f"lgemu: {path}: not an lguest guest: "
    assert line.startswith(prefix)
    return line[len(prefix):]


def test_klibc_sh_is_refused(lgemu_main, tmp_path):
    sh = tmp_path / "sh"
    sh.write_bytes(cpio_member(shared(SHELL_CPIO.name), "bin/sh"))
    assert refused(lgemu_main, sh) == ("a user-space program (PT_INTERP: it names a dynamic "
                                       "loader), not a kernel")


def static_program(tmp_path: Path, strip: bool) -> Path:
    """A static i386 program built with gcc, or skip where gcc cannot build one."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    src, exe = tmp_path / "prog.c", tmp_path / ("stripped" if strip else "prog")
    src.write_text("void _start(void) { for (;;) __asm__ volatile(\"int $0x80\"); }\n")
    cmd = [gcc, "-m32", "-static", "-nostdlib", "-fno-pie", "-no-pie", "-O1", "-o", str(exe),
           str(src), *(["-s"] if strip else [])]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"gcc cannot build a static i386 program here: {result.stderr[:200]}")
    return exe


def test_a_static_program_is_refused(lgemu_main, tmp_path):
    assert refused(lgemu_main, static_program(tmp_path, strip=False)) == (
        "it has none of the lguest symbols lguest_init, lguest_entry, lguest_data")


def test_a_stripped_static_program_is_refused(lgemu_main, tmp_path):
    assert refused(lgemu_main, static_program(tmp_path, strip=True)) == (
        "no symbols, and linked as a user-space program (PT_GNU_STACK, which a kernel's "
        "linker script never asks for)")


def test_a_dynamic_program_header_is_refused_in_any_image(lgemu_main, tmp_path):
    image = ElfImage(0x100000, [ElfSegment(0x100000, b"\x90" * 16),
                                ElfSegment(0x101000, b"/lib/ld.so\0", type=3)])  # PT_INTERP
    assert refused(lgemu_main, image.write(tmp_path / "interp")).startswith(
        "a user-space program (PT_INTERP")


def test_every_kind_of_guest_still_loads(tmp_path):
    from lgemu.firmware_path import bundled_guest

    guests = [bundled_guest(), build_guest(tmp_path, "\tINIT\n\tPOWER_DOWN\n"),
              kernel_like(tmp_path)]
    guests += [SHARED_KERNELS / f"linux-{v}.bzImage" for v in ("2.6.24", "2.6.26", "2.6.32",
                                                               "3.13", "4.4")
               if (SHARED_KERNELS / f"linux-{v}.bzImage").exists()]
    for guest in guests:
        assert load_kernel(guest).segments, guest


def test_the_real_vmlinux_still_loads(vmlinux_2_6_24):
    assert load_kernel(vmlinux_2_6_24).entry == 0x100000
