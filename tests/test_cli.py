"""The `lgemu` command line: bad user input is one line on stderr and exit status 2.

These run the real command (`python -m lgemu`) in a subprocess, as a user would.  Nothing may
reach stdout (that is the guest's console), and no input may produce a traceback.  Loader
internals (malformed ELF headers and the like) are tested with the Launcher; here it is the
command's surface.
"""

from __future__ import annotations

import re

import pytest

USAGE = 2


def assert_user_error(proc, line: str | re.Pattern) -> None:
    assert "Traceback" not in proc.stderr
    assert proc.returncode == USAGE, (proc.returncode, proc.stderr)
    assert proc.stdout == b""
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, repr(proc.stderr)
    if isinstance(line, re.Pattern):
        assert re.fullmatch(line, proc.stderr[:-1]), proc.stderr
    else:
        assert proc.stderr == line + "\n"


def test_missing_kernel_file(run_lgemu, tmp_path):
    missing = tmp_path / "no" / "vmlinux"
    assert_user_error(run_lgemu(["boot", missing]), f"lgemu: {missing}: no such file")


def test_kernel_is_a_directory(run_lgemu, tmp_path):
    assert_user_error(run_lgemu(["boot", tmp_path]), f"lgemu: {tmp_path}: is a directory")


@pytest.mark.parametrize("content", [b"this is not a kernel\n" * 40, b"", b"\x7fEL"])
def test_kernel_is_not_a_kernel(run_lgemu, tmp_path, content):
    text = tmp_path / "notes.txt"
    text.write_bytes(content)
    assert_user_error(run_lgemu(["boot", text]), f"lgemu: {text}: not an ELF kernel or bzImage")


def test_kernel_is_a_device(run_lgemu):
    assert_user_error(run_lgemu(["boot", "/dev/null"]), "lgemu: /dev/null: not a regular file")


@pytest.mark.parametrize("args", [["--bogus"], ["-x"], ["--mem"]])
def test_bad_option(run_lgemu, args):
    assert_user_error(run_lgemu(["boot", *args]),
                      re.compile(r"lgemu: .*(--bogus|-x|--mem).* \(try 'lgemu( boot)? --help'\)"))


def test_extra_argument(run_lgemu, tmp_path):
    assert_user_error(run_lgemu(["boot", "a", "b"]),
                      re.compile(r"lgemu: unrecognized arguments: b \(try 'lgemu --help'\)"))


@pytest.mark.parametrize(("mem", "line"), [
    ("0", re.compile(r"lgemu: argument -m/--mem: must be positive: '0' \(try .*\)")),
    ("-5", re.compile(r"lgemu: argument -m/--mem: .*-5.*")),
    ("abc", re.compile(r"lgemu: argument -m/--mem: not a number: 'abc' \(try .*\)")),
    ("3", "lgemu: too little memory: 3 MiB (lgemu needs at least 8 MiB)"),
    ("7", "lgemu: too little memory: 7 MiB (lgemu needs at least 8 MiB)"),
    ("2049", "lgemu: too much memory: lgemu supports up to 2048 MiB"),
    ("999999", "lgemu: too much memory: lgemu supports up to 2048 MiB"),
])
def test_bad_memory_size(run_lgemu, mem, line):
    assert_user_error(run_lgemu(["boot", "-m", mem]), line)


def test_initrd_missing(run_lgemu, tmp_path):
    missing = tmp_path / "initrd.img"
    assert_user_error(run_lgemu(["boot", "--initrd", missing]), f"lgemu: {missing}: no such file")


def test_initrd_is_a_directory(run_lgemu, tmp_path):
    assert_user_error(run_lgemu(["boot", "--initrd", tmp_path]),
                      f"lgemu: {tmp_path}: is a directory")


def test_initrd_empty(run_lgemu, tmp_path):
    empty = tmp_path / "initrd.img"
    empty.write_bytes(b"")
    assert_user_error(run_lgemu(["boot", "--initrd", empty]), f"lgemu: {empty}: initrd is empty")


def test_command_line_too_long(run_lgemu):
    assert_user_error(run_lgemu(["boot", "--append", "x" * 3000]),
                      re.compile(r"lgemu: kernel command line .*3001.*2047.*"))


@pytest.mark.parametrize(("args", "word"), [
    (["--clock", "sundial"], "sundial"),
    (["--insn-ns", "0"], "--insn-ns"),
])
def test_bad_option_value(run_lgemu, args, word):
    proc = run_lgemu(["boot", *args])
    assert_user_error(proc, re.compile(r"lgemu: .*"))
    assert word in proc.stderr


def test_unknown_subcommand(run_lgemu):
    proc = run_lgemu(["frob"])
    assert_user_error(proc, re.compile(r"lgemu: argument command: invalid choice: 'frob'.*"))


def test_no_subcommand(run_lgemu):
    assert_user_error(run_lgemu([]), re.compile(r"lgemu: the following arguments are required: "
                                                r"command \(try 'lgemu --help'\)"))


def test_version(run_lgemu):
    from lgemu import __version__

    proc = run_lgemu(["--version"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"lgemu {__version__}\n".encode(),
                                                           "")


def test_help_lists_the_boot_options(run_lgemu):
    proc = run_lgemu(["boot", "--help"])
    assert proc.returncode == 0
    assert proc.stderr == ""
    for option in (b"--mem", b"--append", b"--initrd", b"--clock", b"--verbose"):
        assert option in proc.stdout


@pytest.mark.parametrize(("args", "line"), [
    (["-S"], "lgemu: -S needs --gdb (or -s)"),
    (["--trace-regs"], "lgemu: --trace-regs needs --trace FILE or --events"),
    (["--events", "--trace-regs"], "lgemu: --trace-regs: --events writes no instructions"),
    (["--gdb", "tcp::http"], "lgemu: --gdb tcp::http: bad port 'http'"),
    (["--events", "--trace-filter", "ring:1"],
     "lgemu: --trace-filter: with --events only icount: terms apply (sym:, addr: and ring: "
     "select instructions)"),
    (["--block", ",ro"], "lgemu: --block ,ro: no file named"),
    (["--net", "udp:1"], "lgemu: --net udp:1: want udp:LOCALPORT:HOST:PORT"),
    (["-m", "1"], "lgemu: too little memory: 1 MiB (lgemu needs at least 8 MiB)"),
])
def test_options_are_checked_before_the_kernel_is_read(run_lgemu, tmp_path, args, line):
    """A command line that cannot work is refused as such, before any file is opened: here
    the kernel does not even exist, and the complaint is still about the options."""
    assert_user_error(run_lgemu(["boot", str(tmp_path / "missing"), *args]), line)
