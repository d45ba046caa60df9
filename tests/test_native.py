"""Native hook callbacks (lgemu/machine/native.py) and the coverage they record.

The stub's bytes are checked against its assembly source, its behaviour by calling the same
machine code as Unicorn calls it, and the user-visible result (the drcov file) against the
Python block hook that ``LGEMU_NATIVE=0`` selects, on the bundled guest and a real kernel."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import lgemu_main_in_process
from linuxkernel import shell_boot_args

from lgemu.machine import cpu, native

needs_native = pytest.mark.skipif(native.executable(native.BLOCK_SET_CODE) is None,
                                  reason="native code does not run on this host "
                                         "(not x86-64 Linux/macOS, or no executable pages)")


def test_block_set_source_assembles_to_the_embedded_bytes(tmp_path: Path) -> None:
    if shutil.which("as") is None or shutil.which("objcopy") is None:
        pytest.skip("GNU binutils (as, objcopy) are not installed")
    (tmp_path / "stub.s").write_text(native.BLOCK_SET_SOURCE)
    subprocess.run(["as", "--64", "-o", "stub.o", "stub.s"], cwd=tmp_path, check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", "stub.o", "stub.bin"],
                   cwd=tmp_path, check=True)
    built = (tmp_path / "stub.bin").read_bytes()
    assert built == native.BLOCK_SET_CODE, f"BLOCK_SET_CODE should be {built.hex()}"


def colliding_addresses(count: int) -> list[int]:
    """Addresses of one page that the stub's hash puts in the same slot."""
    def slot(address: int) -> int:
        return ((address * 0x61C88647) & 0xFFFFFFFF) >> 16
    by_slot: dict[int, list[int]] = {}
    for address in range(0xC0100000, 0xC0200000):
        group = by_slot.setdefault(slot(address), [])
        group.append(address)
        if len(group) == count:
            return group
    raise AssertionError("no collision found")


@needs_native
def test_block_set_records_every_pair_once_whatever_collides() -> None:
    rng = random.Random(12)
    blocks: set[tuple[int, int]] = set()
    recorder = native.BlockSet.create(blocks, capacity=5)
    assert recorder is not None
    call = recorder.caller()
    same_slot = colliding_addresses(3)
    sizes = [0, 1, 7, 0xFFFF, 0x10000, 0xFFFFFFFF]
    pairs = ([(a, s) for a in same_slot for s in sizes]
             + [(rng.randrange(1 << 64), rng.choice(sizes)) for _ in range(300)]
             + [(0, 0), (1 << 63, 5)])
    # Pairs seen again and again, then pairs seen once each (one of them may be the one
    # that finds the log full).
    sequence = [rng.choice(pairs) for _ in range(20_000)]
    sequence += [(0xD0000000 + 3 * i, i) for i in range(50)]
    for address, size in sequence:
        call(address, size)
    assert recorder.drains > 0  # the log filled, and Python emptied it, during the calls
    recorder.drain()
    assert blocks == set(sequence)


class FailingOnce(set):
    """A set whose first `update` raises, as a drain cut short by an exception would."""

    failed = False

    def update(self, *others: object) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("cut short")
        super().update(*others)


@needs_native
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # ctypes's report
def test_a_drain_cut_short_loses_nothing() -> None:
    blocks = FailingOnce()
    recorder = native.BlockSet.create(blocks, capacity=2)
    assert recorder is not None
    call = recorder.caller()
    pairs = [(0x1000 + 16 * i, 4) for i in range(10)]
    for address, size in pairs:  # each once: a lost pair would not come back
        call(address, size)
    recorder.drain()
    assert blocks.failed and blocks == set(pairs)


def test_native_code_is_refused_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_mapped", {})
    monkeypatch.setattr(native, "host_supported", lambda: False)
    assert native.executable(b"\xc3") is None
    assert native.BlockSet.create(set()) is None


class NoExecLibc:
    """A C library whose mprotect refuses PROT_EXEC (as hardened systems do)."""

    def __init__(self) -> None:
        self.unmapped = 0
        self.real = native._load_libc()

    def mmap(self, *args: object) -> int:
        return self.real.mmap(*args)

    def mprotect(self, *args: object) -> int:
        return -1

    def munmap(self, *args: object) -> int:
        self.unmapped += 1
        return self.real.munmap(*args)


@needs_native
def test_refused_executable_pages_mean_no_native_code(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = NoExecLibc()
    monkeypatch.setattr(native, "_mapped", {})
    monkeypatch.setattr(native, "_libc", libc)
    assert native.executable(b"\xc3") is None
    assert libc.unmapped == 1


def test_lgemu_native_0_selects_the_python_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGEMU_NATIVE", "0")
    assert native.executable(native.BLOCK_SET_CODE) is None
    assert not cpu.native_block_hook_ok()


@needs_native
def test_unicorn_calls_the_native_block_hook_as_expected() -> None:
    # The check record_blocks relies on, on this Unicorn build: it must pass here, or
    # coverage quietly runs at the Python hook's speed.
    assert cpu._check_native_blocks()


def coverage_both_ways(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                       args: list[str]) -> tuple[bytes, bytes]:
    """The drcov files of one boot recorded natively and through the Python hook (the
    consoles must match as well: recording must not change what the guest does)."""
    results = []
    for name, setting in (("native", "1"), ("python", "0")):
        monkeypatch.setenv("LGEMU_NATIVE", setting)
        path = tmp_path / f"{name}.drcov"
        status, out, err = lgemu_main_in_process([*args, "--coverage", str(path)])
        assert status == 0, err
        results.append((out, path.read_bytes()))
    (out_native, native_file), (out_python, python_file) = results
    assert out_native == out_python
    return native_file, python_file


@needs_native
def test_bundled_guest_coverage_is_the_same_natively(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    native_file, python_file = coverage_both_ways(
        monkeypatch, tmp_path, ["boot", "-m", "64", "--append=lgemu.test=usermode"])
    assert native_file == python_file
    assert native_file.count(b"\n") >= 6 and len(native_file) > 1000


@needs_native
def test_real_kernel_coverage_is_the_same_natively(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    native_file, python_file = coverage_both_ways(
        monkeypatch, tmp_path, ["boot", *shell_boot_args(tmp_path, "echo covered\nexit\n")])
    assert native_file == python_file
    # More blocks than the stub's log holds: it filled and was drained during the boot.
    assert int(native_file.split(b"BB Table: ")[1].split()[0]) > 5000
