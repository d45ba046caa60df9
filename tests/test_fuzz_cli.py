"""Property: every command line is either a run or one line on stderr with exit status 2.

Options are drawn from `lgemu boot`'s own table with values that are right, wrong or absurd:
sizes, numbers, files that are missing, directories, empty, devices or unwritable, filter
specs and wires that do not parse.  Each run is bounded (`--max-insns`, `--timeout` last, so
they win), uses a tiny guest that powers down at once, and stays off the network (no gdb
port, no udp or tap wire: SECURITY.md's port checks have their own tests).
"""

from __future__ import annotations

import socket

import pytest
from fuzzguest import fuzz_settings
from guestasm import assert_one_line, build_guest
from hypothesis import given
from hypothesis import strategies as st

BOUNDS = ["--max-insns", "2000000", "--timeout", "20"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("cli")
    (base / "empty").write_bytes(b"")
    (base / "disk.img").write_bytes(bytes(4096))
    (base / "odd.img").write_bytes(bytes(1000))
    (base / "text").write_text("hello\n")
    (base / "dir").mkdir()
    guest = build_guest(base, "\tINIT\n\tPUTS\tmsg\n\tPOWER_DOWN\n", 'msg: .asciz "hi"\n')
    return {"guest": str(guest), "empty": str(base / "empty"), "disk": str(base / "disk.img"),
            "odd": str(base / "odd.img"), "text": str(base / "text"), "dir": str(base / "dir"),
            "missing": str(base / "missing"), "null": "/dev/null", "out": str(base / "out"),
            "nodir": str(base / "no" / "such" / "dir"), "blank": ""}


paths = st.sampled_from(["guest", "empty", "disk", "odd", "text", "dir", "missing", "null",
                         "out", "nodir", "blank"])
# Files lgemu writes: never the guest or the images other examples read.
output_paths = st.sampled_from(["out", "nodir", "dir", "null", "blank", "missing"])
numbers = st.one_of(st.sampled_from(["0", "1", "-1", "7", "8", "64", "2048", "2049", "0x10",
                                     "1e3", "nan", "inf", "", " 5", "99999999999999999999"]),
                    st.integers(-5, 5000).map(str))
words = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\0"),
                max_size=20)


def option(name: str, values):
    return st.tuples(st.just(name), values)


def file_value(suffixes=("",), names=paths):
    return st.tuples(names, st.sampled_from(suffixes)).map(lambda t: ("FILE", *t))


options = st.one_of(
    option("-m", numbers),
    option("--append", words),
    option("--initrd", file_value()),
    option("--clock", st.sampled_from(["virtual", "realtime", "wall", ""])),
    option("--insn-ns", numbers),
    option("--block", file_value(("", ",ro", ",rw", ","))),
    option("--net", st.one_of(file_value(names=output_paths).map(lambda v: ("PCAP", *v[1:])),
                              st.sampled_from(["", "pcap:", "udp:", "udp:x:y:z", "tap:",
                                               "bogus:1", "pcap:/dev/null,mac=zz",
                                               "pcap:/dev/null,mac=01:00:00:00:00:00"]))),
    option("--console-input", file_value()),
    option("--trace", file_value(names=output_paths)),
    option("--trace-format", st.sampled_from(["text", "jsonl", "tenet", "xml"])),
    option("--trace-filter", st.one_of(words, st.sampled_from(
        ["sym:start", "addr:1-0", "addr:x", "ring:9", "icount:5-1", "ring:1,sym:", ":"]))),
    option("--coverage", file_value(names=output_paths)),
    option("--stop-at", numbers),
    option("--max-insns", numbers),
    option("--timeout", numbers),
    st.sampled_from([("-v", None), ("--events", None), ("--trace-regs", None),
                     ("--status", None), ("--bogus", None), ("-q", None)]),
)
kernels = st.one_of(st.just(("FILE", "guest", "")), file_value())


def _argv(files: dict[str, str], kernel, chosen) -> list[str]:
    def value(v) -> str:
        if isinstance(v, tuple):
            kind, name, suffix = v
            text = files[name] + suffix
            return "pcap:" + text if kind == "PCAP" else text
        return v
    argv = ["boot", value(kernel)]
    for name, v in chosen:
        argv += [name] if v is None else [f"{name}={value(v)}"]
    return argv + BOUNDS


@fuzz_settings(150)
@given(kernel=kernels, chosen=st.lists(options, max_size=4))
def test_any_command_line_runs_or_is_one_line(lgemu_main, files, kernel, chosen) -> None:
    status, out, err = lgemu_main(_argv(files, kernel, chosen))
    assert "Traceback" not in err and "internal error" not in err, err
    if status == 2:
        assert assert_one_line(err).startswith("lgemu: "), err
        return
    # Accepted: the only kernel that can be accepted is the guest, and no option changes
    # what it does (print "hi", power down) — except --stop-at, which may stop it first.
    names = [c[0] for c in chosen]
    if status == 5 and "--stop-at" in names:
        stop = err.splitlines()[-1]
        assert stop.startswith("lgemu: stopped at "), err
        assert out in (b"", b"hi"), out
        return
    assert (status, out) == (0, b"hi"), err
    if "-v" not in names:
        assert err == "", err


@pytest.mark.parametrize("kind", ["gdb", "udp"])
def test_a_port_already_in_use_is_one_line(run_lgemu, kind):
    family = socket.SOCK_STREAM if kind == "gdb" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, family) as taken:
        taken.bind(("127.0.0.1", 0))
        if kind == "gdb":
            taken.listen()
        port = taken.getsockname()[1]
        wire = ["--gdb", f"tcp::{port}"] if kind == "gdb" else \
            ["--net", f"udp:{port}:127.0.0.1:9"]
        proc = run_lgemu(["boot", *wire])
    assert proc.returncode == 2 and proc.stdout == b""
    line = assert_one_line(proc.stderr)
    assert line.startswith("lgemu: --") and str(port) in line and "in use" in line
