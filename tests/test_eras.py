"""lguest ABI eras: detection from the image, `lgemu info`, `lgemu boot` refusing what it cannot
run yet, `--abi`, and the era table (`lgemu.abi_eras`) checked against real kernels' DWARF.

The real kernels are the prebuilt guests of shared/kernels (one per era that changed the
guest ABI most); each test that needs one skips, saying so, where that directory is absent.
Every kernel is tried three ways: the vmlinux with symbols and DWARF, a copy stripped with
`strip` (only code and strings left), and the bzImage (compressed code, a setup header).
Tests that need no real kernel build images that say exactly one thing each.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elfimage import bzimage, elf_image
from elftools.elf.elffile import ELFFile
from guestasm import build_guest
from linuxkernel import shared_kernel

from lgemu import abi
from lgemu.abi_eras import ERA_2_6_24, ERAS, era_named
from lgemu.launcher import load_kernel
from lgemu.launcher.era import detect_era, supported_names

REPO_ROOT = Path(__file__).resolve().parent.parent
KERNELS = REPO_ROOT.parent / "shared" / "kernels"
BUNDLED = REPO_ROOT / "firmware" / "lgemu-guest.elf"
# kernel file prefix → the era it must be detected as
EXPECTED = {
    "linux-2.6.24": "2.6.24",
    "linux-2.6.25": "2.6.25",  # 2.6.25 and 2.6.29: not in CI's kernels (skipped there)
    "linux-2.6.26": "2.6.26",
    "linux-2.6.28": "2.6.27-2.6.28",  # not in CI's kernels either
    "linux-2.6.29": "2.6.29",
    "linux-2.6.32": "2.6.31-2.6.33",
    "linux-3.13": "3.1-4.0",
    "linux-4.4": "4.1-4.9",
    # built by hand (docs/eras.md), absent from shared/kernels: skipped there
    "linux-2.6.30": "2.6.30",
    "linux-3.0": "2.6.34-3.0",
    "linux-3.4": "3.1-4.0",
    "linux-4.9": "4.1-4.9",
    "linux-4.13": "4.10-4.13",
}
FORMS = ("vmlinux", "stripped", "bzImage")
LGUEST_STRUCTS = ("lguest_data", "hcall_args", "lguest_device_desc")


def _kernel_file(name: str, suffix: str) -> Path:
    path = KERNELS / f"{name}{suffix}"
    if not path.is_file():
        pytest.skip(f"{path} is absent (the prebuilt lguest kernels live in shared/kernels)")
    return path


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    return {}


@pytest.fixture
def kernel(kernel_cache, tmp_path_factory):
    """kernel(name, form) → the path of that kernel in that form, made once per session."""
    def get(name: str, form: str) -> Path:
        if form == "bzImage":
            return _kernel_file(name, ".bzImage")
        if (name, form) in kernel_cache:
            return kernel_cache[name, form]
        _kernel_file(name, ".vmlinux.xz")  # skips, naming the file, where it is absent
        vmlinux = shared_kernel(name)
        if form == "stripped":
            strip = shutil.which("strip") or pytest.skip("binutils' strip is not installed")
            stripped = vmlinux.with_suffix(".stripped")
            subprocess.run([strip, "-o", str(stripped), str(vmlinux)], check=True)
            kernel_cache[name, form] = stripped
            return stripped
        return vmlinux
    return get


def one_line(err: str) -> str:
    assert err.startswith("lgemu: ") and err.count("\n") == 1, err
    return err


# -- real kernels -------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", EXPECTED)
def test_each_real_kernel_is_detected_in_each_form(kernel, name, form):
    detection = detect_era(load_kernel(kernel(name, form)))
    assert detection.era is not None and detection.era.name == EXPECTED[name]
    assert detection.certain and detection.is_guest
    assert detection.release is not None and detection.release.startswith(name[6:])
    kinds = {line.split(":")[0].split(" ")[0] for line in detection.evidence}
    # What each form has to go on: the stripped copy and the bzImage only code and strings.
    assert "code" in kinds and "release" in kinds
    if form == "vmlinux":
        assert {"DWARF", "symbol"} <= kinds
    else:
        assert not {"DWARF", "symbol", "symbols"} & kinds


def _dwarf_structs(path: Path) -> dict[str, tuple[int, dict[str, int]]]:
    """The lguest structures as the kernel's DWARF has them, read here with pyelftools
    independently of lgemu.launcher.era: boot.c's unit (found by lguest_init's address) and
    lguest_device.c's (lguest_devices_init's), when the kernel has them."""
    found: dict[str, tuple[int, dict[str, int]]] = {}
    with path.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
        aranges = dwarf.get_aranges()
        for function in ("lguest_init", "lguest_devices_init"):
            symbol = symtab.get_symbol_by_name(function)
            if not symbol:
                continue
            cu = dwarf.get_CU_at(aranges.cu_offset_at_addr(symbol[0]["st_value"]))
            for die in cu.iter_DIEs():
                name = die.attributes.get("DW_AT_name")
                if (die.tag == "DW_TAG_structure_type" and name and "DW_AT_byte_size"
                        in die.attributes and name.value.decode() in LGUEST_STRUCTS
                        and name.value.decode() not in found):
                    found[name.value.decode()] = (die.attributes["DW_AT_byte_size"].value, {
                        c.attributes["DW_AT_name"].value.decode():
                            c.attributes["DW_AT_data_member_location"].value
                        for c in die.iter_children() if c.tag == "DW_TAG_member"})
    return found


@pytest.mark.parametrize("name", EXPECTED)
def test_era_table_matches_the_kernels_dwarf(kernel, name):
    """lgemu.abi_eras records each era's struct layouts; the kernel built for it agrees."""
    era = era_named(EXPECTED[name])
    structs = _dwarf_structs(kernel(name, "vmlinux"))
    size, members = structs["lguest_data"]
    assert (size, members) == (era.lguest_data_size, dict(era.lguest_data))
    size, members = structs["hcall_args"]
    assert size == era.hcall_args_size
    assert tuple(sorted(members, key=members.get)) == era.hcall_ring
    if era.device_desc:
        size, members = structs["lguest_device_desc"]
        assert tuple(sorted(members, key=members.get)) == (*era.device_desc, "config")
        assert size == len(era.device_desc) == members["config"]
    else:  # 4.x: devices are PCI functions, there is no lguest device descriptor
        assert "lguest_device_desc" not in structs


# guest function → the hypercall it makes (first name the era has), loaded into eax by
# `mov $nr, %eax` somewhere in the function's bytes
HCALL_SITES = [
    ("lguest_power_off", ("SHUTDOWN", "CRASH")),
    ("lguest_write_gdt_entry", ("LOAD_GDT_ENTRY", "LOAD_GDT")),
    ("lguest_write_idt_entry", ("LOAD_IDT_ENTRY",)),
    ("lguest_load_tls", ("LOAD_TLS",)),
    ("lguest_set_pmd", ("SET_PGD", "SET_PMD")),  # a non-PAE kernel's top level
    ("lguest_safe_halt", ("HALT",)),
    ("lguest_flush_tlb_kernel", ("FLUSH_TLB",)),
    ("early_put_chars", ("NOTIFY",)),
    ("send_interrupts", ("SEND_INTERRUPTS",)),
]
LABEL_WINDOW = 16  # bytes looked at after an assembler label (a symbol of size 0)


def _function_code(path: Path) -> dict[str, bytes]:
    """name → the bytes of every function the hypercall checks look at."""
    wanted = {site for site, _ in HCALL_SITES} | {"lg_set_status", "status_notify"}
    code = {}
    with path.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        loads = [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
        for function in wanted:
            symbol = symtab.get_symbol_by_name(function)
            if not symbol:
                continue
            value, size = symbol[0]["st_value"], symbol[0]["st_size"] or LABEL_WINDOW
            seg = next(s for s in loads if s["p_vaddr"] <= value < s["p_vaddr"] + s["p_filesz"])
            f.seek(seg["p_offset"] + value - seg["p_vaddr"])
            code[function] = f.read(size)
    return code


def _mov_eax(number: int) -> bytes:
    return b"\xb8" + struct.pack("<I", number)


def _loads_eax(number: int, code: bytes) -> bool:
    """Does `code` put `number` in eax: `mov $n, %eax`, or (4.13's gcc, for a small n)
    `push $n` and, a few instructions on, `pop %eax`?"""
    if _mov_eax(number) in code:
        return True
    return number < 0x80 and re.search(re.escape(bytes((0x6A, number))) + rb".{0,12}?\x58",
                                       code, re.DOTALL) is not None


@pytest.mark.parametrize("name", EXPECTED)
def test_era_hypercall_numbers_are_the_ones_the_kernel_uses(kernel, name):
    era = era_named(EXPECTED[name])
    code = _function_code(kernel(name, "vmlinux"))
    checked = []
    for function, candidates in HCALL_SITES:
        call = next((c for c in candidates if c in era.hypercalls), None)
        if call is None or function not in code:
            continue
        assert _loads_eax(era.hypercalls[call], code[function]), \
            f"{function} does not load {call}'s number into eax"
        checked.append(call)
    assert len(checked) >= 7  # most of the table is exercised in every era
    if "NOTIFY" not in era.hypercalls:  # 4.x: its early console writes to a PCI device
        assert "NOTIFY" not in checked
    # status_notify: the lguest bus driver's set_status makes a NOTIFY (itself or through
    # status_notify) exactly in the eras that say so
    if "lg_set_status" in code:
        status_code = code["lg_set_status"] + code.get("status_notify", b"")
        assert (_mov_eax(era.hypercalls["NOTIFY"]) in status_code) == era.status_notify
    else:
        assert era.device_bus.name == "PCI" and not era.status_notify


@pytest.mark.parametrize("name", EXPECTED)
def test_info_names_the_era_and_what_lgemu_will_do(lgemu_main, kernel, name):
    status, out, err = lgemu_main(["info", str(kernel(name, "bzImage"))])
    out = out.decode()
    assert (status, err) == (0, "")
    era = EXPECTED[name]
    assert "lguest guest: yes, Linux " in out and f"; ABI era: {era} (" in out
    if era_named(era).boots:
        assert f"\nlgemu: boots it with the {era} ABI\n" in out
    else:
        assert (f"\nlgemu: booting {era} guests is not yet supported (lgemu boots "
                f"{supported_names()}; --abi 2.6.24 forces the 2.6.24 ABI, for "
                "experiments)\n") in out


def test_a_2_6_23_guest_without_its_entry_marker_stops_before_running(boot_guest, tmp_path):
    """A guest showing 2.6.23's DMA bus (here a small one with `lguest_send_dma`) is booted
    as 2.6.23, whose Launcher enters after the "GenuineLguest" marker: without one, it stops
    before its first instruction, with one line."""
    path = build_guest(tmp_path, "\t.globl lguest_init, lguest_entry, lguest_send_dma\n"
                       "lguest_init:\nlguest_entry:\nlguest_send_dma:\n\tPOWER_DOWN\n")
    status, out, err = boot_guest(path, "console=hvc0")
    assert (status, out) == (2, b"")
    assert one_line(err) == (f"lgemu: {path}: a 2.6.23 guest needs the \"GenuineLguest\" "
                             "marker before its entry point, and this image has none\n")


@pytest.mark.parametrize("form", ["vmlinux", "bzImage"])
def test_the_real_2_6_24_kernel_passes_and_boots_to_its_shell(boot_guest, kernel, tmp_path,
                                                                form):
    script = tmp_path / "input"
    script.write_bytes(b"echo era-$((20+4))\nexit\n")
    shell = _kernel_file("klibc-shell", ".cpio")
    status, out, err = boot_guest(kernel("linux-2.6.24", form), "console=hvc0 rdinit=/init",
                                  extra=["--initrd", str(shell), "--console-input", str(script)])
    assert (status, err) == (0, "")
    assert b"lgemu-shell: ready (Linux version 2.6.24 " in out and b"lg# era-24\r\n" in out


def test_abi_2_6_24_forces_the_old_abi_on_a_later_kernel(boot_guest, kernel):
    """With --abi 2.6.24 a 2.6.26 kernel runs as it did before eras were detected: it prints
    its banner (and is stopped here at an instruction limit)."""
    path = kernel("linux-2.6.26", "vmlinux")
    status, out, err = boot_guest(path, "console=hvc0", extra=["--abi", "2.6.24",
                                                                 "--max-insns", "2000000"])
    assert status == 5, err
    assert one_line(err) == "lgemu: instruction limit of 2000000 reached\n"
    assert b"Linux version 2.6.26 " in out


# -- lgemu's own guests --------------------------------------------------------------------------
def test_the_bundled_guest_is_2_6_24(boot_guest):
    detection = detect_era(load_kernel(BUNDLED))
    assert detection.era is ERA_2_6_24 and detection.certain and detection.is_guest
    status, out, err = boot_guest(None)
    assert (status, err) == (0, "") and out
    # Naming its era changes nothing: the same console bytes.
    assert boot_guest(None, extra=["--abi", "2.6.24"]) == (status, out, err)


def test_test_guests_are_2_6_24_and_boot(tmp_path, asm_guest):
    path = build_guest(tmp_path, "\tINIT\n\tPOWER_DOWN\n")
    detection = detect_era(load_kernel(path))
    assert detection.era is ERA_2_6_24 and detection.is_guest is False
    run = asm_guest("\tINIT\n\tPUTS hi\n\tPOWER_DOWN\n", data='hi: .asciz "hi\\n"\n')
    assert (run.status, run.out, run.err) == (0, b"hi\n", "")
    raw = tmp_path / "raw.elf"
    raw.write_bytes(elf_image([(0x100000, b"\xf4" * 16, 16)], entry=0x100000))
    detection = detect_era(load_kernel(raw))
    assert detection.era is ERA_2_6_24 and not detection.certain


# -- images that say one thing each --------------------------------------------------------------
def _bzimage_naming(release: bytes) -> bytes:
    image = bytearray(bzimage(b"\x90" * 64))
    image[0x300:0x300 + len(release) + 1] = release + b"\0"
    struct.pack_into("<H", image, 0x20E, 0x300 - 0x200)
    return bytes(image)


@pytest.mark.parametrize(("release", "era"), [
    (b"2.6.32 (root@vm) #1", "2.6.31-2.6.33"),
    (b"2.6.27-rc3", "2.6.27-2.6.28"),
    (b"2.6.26.8", "2.6.26"),
    (b"3.0.8", "2.6.34-3.0"),
    (b"3.1.3", "3.1-4.0"),
    (b"3.13.10", "3.1-4.0"),
    (b"4.9.80", "4.1-4.9"),
    (b"4.10.17", "4.10-4.13"),
])
def test_a_bzimage_release_string_alone_names_the_era(boot_guest, lgemu_main, tmp_path,
                                                        release, era):
    path = tmp_path / "bzImage"
    path.write_bytes(_bzimage_naming(release))
    status, out, err = lgemu_main(["info", str(path)])
    assert status == 0 and f"ABI era: {era} (" in out.decode()
    assert f"  release {release.split()[0].decode()}: the {era} era" in out.decode()
    if not era_named(era).boots:  # a booting era would run the fake image's nops
        status, out, err = boot_guest(path)
        assert status == 2 and f"a {era} lguest guest (Linux " in one_line(err)


def test_a_release_outside_lguests_life_is_refused(boot_guest, lgemu_main, tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(_bzimage_naming(b"5.10.0 (root@vm)"))
    status, out, err = lgemu_main(["info", str(path)])
    assert status == 0
    assert ("lguest guest: no, Linux 5.10.0; ABI era: unknown (Linux 5.10.0 has no lguest "
            "guest support)\n") in out.decode()
    assert "  release 5.10.0: outside lguest's life (2.6.23 to 4.13)\n" in out.decode()
    status, out, err = boot_guest(path)
    assert (status, out) == (2, b"")
    assert one_line(err) == (f"lgemu: {path}: lguest ABI era unknown: Linux 5.10.0 has no "
                             "lguest guest support (see 'lgemu info'; --abi 2.6.24 forces the "
                             "2.6.24 ABI)\n")


def test_facts_that_fit_no_era_are_refused(boot_guest, tmp_path):
    body = "\t.globl lguest_init, lguest_entry\nlguest_init:\nlguest_entry:\n\tINIT\n" \
        "\tPOWER_DOWN\n\t.size lguest_data, 1200\n"
    path = build_guest(tmp_path, body)
    status, out, err = boot_guest(path)
    assert (status, out) == (2, b"")
    assert "lguest ABI era unknown: the image fits no lguest ABI lgemu knows" in one_line(err)
    status, out, err = boot_guest(path, extra=["--abi", "2.6.24"])
    assert (status, err) == (0, "")


def test_a_2_6_24_release_string_boots_as_before(tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(_bzimage_naming(b"2.6.24 (root@vm)"))
    detection = detect_era(load_kernel(path))
    assert detection.era is ERA_2_6_24 and detection.release == "2.6.24"


def test_vmcall_in_lguest_entry_code_is_not_2_6_24(boot_guest, tmp_path):
    """A stripped image whose code makes LGUEST_INIT with vmcall, as 2.6.30-2.6.33 did."""
    entry = b"\xb8\x01\x00\x00\x00" + b"\xbb\x00\x20\x10\x00" + b"\x0f\x01\xc1" + b"\xbc" + \
        b"\x00" * 8
    path = tmp_path / "vmlinux"
    path.write_bytes(elf_image([(0x100000, entry, 0x1000)], entry=0x100000))
    detection = detect_era(load_kernel(path))
    assert detection.era is not None and detection.era.name == "2.6.30"
    assert detection.evidence[-1] == "could be any of 2.6.30, 2.6.31-2.6.33"
    # It runs: the vmcall becomes a hypercall with its argument in ebx (lguest_data there
    # is all zeros, so its syscall vector is refused).
    status, out, err = boot_guest(path)
    assert (status, out) == (3, b"")
    assert one_line(err) == "lgemu: guest killed: bad syscall vector\n"


@pytest.mark.parametrize("payload", [
    b"\x1f\x8b\x08" + b"\xff" * 200,  # a gzip header and garbage
    b"\xfd7zXZ\x00" + b"\x00" * 100,
    b"BZh9" + b"\x01" * 100,
])
def test_a_broken_compressed_payload_is_no_fact(lgemu_main, tmp_path, payload):
    path = tmp_path / "bzImage"
    path.write_bytes(bzimage(payload))
    status, out, err = lgemu_main(["info", str(path)])
    assert (status, err) == (0, "")
    assert "  bzImage: no compressed kernel found to look into\n" in out.decode()


def test_hostile_images_are_no_facts_never_a_traceback(lgemu_main, kernel, tmp_path):
    """Cut bzImages and a vmlinux with its DWARF overwritten: `info` still answers."""
    whole = kernel("linux-2.6.32", "bzImage").read_bytes()
    for cut in (0x210, 0x400, 0x3000, len(whole) // 2, len(whole) - 100):
        path = tmp_path / f"cut-{cut}"
        path.write_bytes(whole[:cut])
        status, out, err = lgemu_main(["info", str(path)])
        if status == 0:  # still a bzImage: described, whatever was left of its kernel
            assert err == "" and b"; ABI era: " in out
        else:  # too short to be one: the loader's one line
            assert status == 2 and out == b"" and "truncated bzImage" in one_line(err)
    image = bytearray(BUNDLED.read_bytes())
    with BUNDLED.open("rb") as f:
        debug_info = ELFFile(f).get_section_by_name(".debug_info")
        start, size = debug_info["sh_offset"], debug_info["sh_size"]
    image[start:start + size] = b"\xff\x07" * (size // 2) + b"\xff" * (size % 2)
    path = tmp_path / "bad-dwarf.elf"
    path.write_bytes(bytes(image))
    detection = detect_era(load_kernel(path))
    assert detection.era is ERA_2_6_24
    assert not any(line.startswith("DWARF") for line in detection.evidence)
    assert any(line.startswith("code:") for line in detection.evidence)


# -- --abi ----------------------------------------------------------------------------------------
def test_every_era_boots():
    """No era is detected and refused any more: 2.6.23's DMA bus was the last one."""
    assert all(era.boots for era in ERAS)


def test_abi_forcing_a_later_era_on_the_bundled_guest(boot_guest):
    """The bundled guest speaks 2.6.24: run as a 2.6.26 guest, its CRASH("Power down") is
    read as SHUTDOWN with neither power-off nor restart, and the guest is killed for it."""
    status, out, err = boot_guest(None, extra=["--abi", "2.6.26"])
    assert status == 3 and b"power down" in out
    assert one_line(err) == ("lgemu: guest killed: bad SHUTDOWN request 0x0 (1 powers off, "
                             "2 restarts)\n")


@pytest.mark.parametrize("value", ["2.6.22", "4.14", "3", "latest", ""])
def test_abi_that_is_no_era_is_a_usage_error(boot_guest, value):
    status, out, err = boot_guest(None, extra=[f"--abi={value}"])
    assert (status, out) == (2, b"")
    assert f"argument --abi: not an lguest ABI era: {value!r} (one of 2.6.23, 2.6.24, " in \
        one_line(err)


# -- the era table and lgemu.abi agree on 2.6.24 ---------------------------------------------------
def test_the_2_6_24_era_is_lgemu_abi():
    era = ERA_2_6_24
    assert dict(era.hypercalls) == {h.name: h.value for h in abi.Hcall}
    assert era.lguest_data_size == abi.LGUEST_DATA_SIZE
    assert dict(era.lguest_data) == {name: getattr(abi.LguestData, name).offset
                                     for name, _ in abi.LguestData._fields_}
    assert era.hcall_ring == tuple(name for name, _ in abi.HcallArgs._fields_)
    assert len(era.device_desc) == abi.DEVICE_DESC.size
    assert [e.name for e in ERAS if e.boots][:3] == ["2.6.23", "2.6.24", "2.6.25"]
