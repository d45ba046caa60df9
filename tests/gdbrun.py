"""Run lgemu under the real gdb, as a user would: `lgemu boot --gdb tcp::0 -S` in one process
(its stub announces the port it got on stderr), `gdb -batch` with a list of commands in
another.  Every wait has a timeout, so a broken stub fails the test instead of hanging it.

* `needs_gdb` skips a test where gdb is not installed (`.ci/run` installs it).
* `run_under_gdb(commands, lgemu_args, kernel)` → `GdbRun` (gdb's output, lgemu's status,
  stdout bytes and stderr).
* `Lgemu` is the lgemu side on its own, for tests that speak the protocol themselves
  (`rspclient.RspClient`).
* `registers(text)`, `words(text)`, `received(text)` read gdb's answers back.
* `instruction_at(elf, addr)` and `instruction_before(elf, addr)` decode the guest's code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
GDB = shutil.which("gdb")
TIMEOUT = 60
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed (.ci/run installs it)")
LISTENING = re.compile(r"gdb stub listening on 127\.0\.0\.1:(\d+)")


def bundled_guest() -> Path:
    from lgemu.firmware_path import bundled_guest as path
    return Path(path())


class Lgemu:
    """`lgemu boot ARGS --gdb tcp::0` in a subprocess; `port` is the stub's.  With `piped`,
    its stdin (the console's input) is a pipe the test writes to (`stdin`); `preload` is
    written into that pipe before lgemu starts."""

    def __init__(self, args: Sequence[str], wait: bool = True, piped: bool = False,
                 preload: bytes = b"") -> None:
        argv = [sys.executable, "-m", "lgemu", "boot", *map(str, args), "--gdb", "tcp::0"]
        self.stdin: BinaryIO | None = None
        stdin: int = subprocess.DEVNULL
        if piped:
            stdin, write_end = os.pipe()
            os.write(write_end, preload)  # a pipe holds far more than a test writes
            self.stdin = os.fdopen(write_end, "wb")
        self.proc = subprocess.Popen([*argv, *(["-S"] if wait else [])], cwd=REPO_ROOT,
                                     stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        if piped:
            os.close(stdin)
        self._out = bytearray()
        self._err: list[str] = []
        self._port_known = threading.Event()
        self.port = 0
        self._readers = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for reader in self._readers:
            reader.start()
        if not self._port_known.wait(TIMEOUT) or not self.port:
            self.proc.kill()
            raise AssertionError(f"lgemu announced no gdb port: {''.join(self._err)!r}")

    def _read_out(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            self._out += chunk

    def _read_err(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", errors="replace")
            self._err.append(line)
            match = LISTENING.search(line)
            if match and not self.port:
                self.port = int(match.group(1))
                self._port_known.set()
        self._port_known.set()

    def wait_for(self, text: str) -> None:
        """Wait until lgemu has written `text` on stderr."""
        deadline = time.monotonic() + TIMEOUT
        while text not in "".join(self._err):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"lgemu never said {text!r}: {''.join(self._err)!r}")
            time.sleep(0.01)

    def finish(self) -> tuple[int, bytes, str]:
        """Wait for lgemu to end: (exit status, stdout, stderr)."""
        try:
            status = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"lgemu did not end: {''.join(self._err)!r}") from None
        for reader in self._readers:
            reader.join(TIMEOUT)
        return status, bytes(self._out), "".join(self._err)


@dataclass
class GdbRun:
    """What gdb printed, and how lgemu ended."""

    gdb: str
    status: int
    out: bytes
    err: str


def gdb_batch(port: int, commands: Sequence[str], elf: Path) -> str:
    """`gdb -batch` connected to the stub, with the guest's symbols; its whole output."""
    argv = [GDB, "-batch", "-nx", "-ex", "set architecture i386", "-ex", "set pagination off",
            "-ex", "set confirm off", "-ex", f"target remote :{port}",
            "-ex", f"symbol-file {elf}"]
    for command in commands:
        argv += ["-ex", command]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False)
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def run_under_gdb(commands: Sequence[str], lgemu_args: Sequence[str] = (),
                  kernel: Path | None = None) -> GdbRun:
    """Boot `kernel` (default: the bundled guest) waiting for gdb, run `commands` in gdb."""
    elf = kernel or bundled_guest()
    lgemu = Lgemu([str(elf), *lgemu_args])
    try:
        text = gdb_batch(lgemu.port, commands, elf)
    except BaseException:
        lgemu.proc.kill()
        raise
    status, out, err = lgemu.finish()
    return GdbRun(text, status, out, err)


# -- reading gdb's answers ---------------------------------------------------------------------
def registers(text: str) -> list[dict[str, int]]:
    """Every `info registers` block in gdb's output, in order, as {name: value}."""
    blocks: list[dict[str, int]] = []
    current: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)\s+0x([0-9a-f]+)\s", line)
        if current and (not match or match.group(1) in current):
            blocks.append(current)
            current = {}
        if match:
            current[match.group(1)] = int(match.group(2), 16)
    if current:
        blocks.append(current)
    return blocks


def words(text: str, symbol: str) -> list[int]:
    """The words of an `x/Nxw &symbol` line."""
    match = re.search(rf"<{symbol}>:[ \t]+((?:0x[0-9a-f]+[ \t]*)+)", text)
    assert match, f"no x/xw output for {symbol} in:\n{text}"
    return [int(w, 16) for w in match.group(1).split()]


def received(text: str) -> list[str]:
    """The replies of `maint packet` commands, in order."""
    return re.findall(r'received: "([^"]*)"', text)


# -- the guest's code ----------------------------------------------------------------------------
def _code(elf: Path, addr: int, size: int) -> bytes:
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as f:
        image = ELFFile(f)
        for segment in image.iter_segments():
            start = segment["p_vaddr"]
            if segment["p_type"] == "PT_LOAD" and start <= addr < start + segment["p_filesz"]:
                return segment.data()[addr - start:addr - start + size]
    raise AssertionError(f"{addr:#x} is not in {elf}")


def symbol(elf: Path, name: str) -> int:
    """A symbol's address in an ELF image."""
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as f:
        found = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
    assert found, f"no symbol {name} in {elf}"
    return found[0]["st_value"]


def instruction_at(elf: Path, addr: int) -> tuple[int, str, str]:
    """(length, mnemonic, operands) of the instruction at `addr`."""
    from capstone import CS_ARCH_X86, CS_MODE_32, Cs

    insn = next(Cs(CS_ARCH_X86, CS_MODE_32).disasm(_code(elf, addr, 16), addr))
    return insn.size, insn.mnemonic, insn.op_str


def instruction_before(elf: Path, addr: int) -> tuple[int, str, str]:
    """The instruction that ends at `addr`, decoding from the function containing it."""
    from capstone import CS_ARCH_X86, CS_MODE_32, Cs
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as f:
        symbols = ELFFile(f).get_section_by_name(".symtab").iter_symbols()
        start = max(s["st_value"] for s in symbols
                    if s["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE")
                    and s["st_value"] < addr)
    for insn in Cs(CS_ARCH_X86, CS_MODE_32).disasm(_code(elf, start, addr - start), start):
        if insn.address + insn.size == addr:
            return insn.address, insn.mnemonic, insn.op_str
    raise AssertionError(f"no instruction ends at {addr:#x}")
