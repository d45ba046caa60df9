"""Record and replay (lgemu.devices.replay): a live udp session or piped console input,
recorded with the instruction counts it arrived at, replays to the same console bytes and the
same event log with no wire and no input; a replay that sends something else stops at once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, SUBPROCESS_TIMEOUT, lgemu_main_in_process
from gdbrun import needs_gdb, received, run_under_gdb
from test_devices_e2e import MAC_ECHO, MAC_PING, ping_over_udp, results

PING = f"lgemu.test=net_ping net.count=4 net.peer={MAC_ECHO}"


def record_udp_session(tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """An echo guest and a ping guest in two processes over loopback UDP; the ping side is
    recorded and traced (its event log)."""
    recording = tmp_path / "ping.rec"
    ping, _echo, _echo_out = ping_over_udp(
        f",record={recording}", "--append", PING, "--trace", str(tmp_path / "recorded.trace"),
        "--events")
    assert (ping.returncode, ping.stderr) == (0, b"")
    assert results(ping.stdout) == {"net_ping.echoes": "PASS"}
    return recording, ping


def test_a_recorded_udp_session_replays_to_the_same_console_and_event_log(tmp_path):
    recording, live = record_udp_session(tmp_path)
    replay = tmp_path / "replayed.trace"
    status, out, err = lgemu_main_in_process(
        ["boot", "--net", f"replay:{recording}", "--append", PING,  # the recorded MAC
         "--trace", str(replay), "--events"])
    assert (status, err) == (0, "")
    assert out == live.stdout
    assert replay.read_bytes() == (tmp_path / "recorded.trace").read_bytes()
    # Another MAC than the recorded card's cannot replay it: one line, status 2.
    status, out, err = lgemu_main_in_process(
        ["boot", "--net", f"replay:{recording},mac=02:00:00:00:00:0c", "--append", PING])
    assert (status, out) == (2, b"")
    assert err == (f"lgemu: --net replay:{recording}: mac=02:00:00:00:00:0c is not the "
                   f"recorded card's {MAC_PING}\n")


def test_a_replay_that_sends_another_frame_stops_naming_it(tmp_path):
    recording, _ = record_udp_session(tmp_path)
    # Another peer: the very first frame sent has another destination address.
    status, _out, err = lgemu_main_in_process(
        ["boot", "--net", f"replay:{recording}", "--append",
         PING.replace(MAC_ECHO, "02:00:00:00:00:0c")])
    assert status == 8
    assert len(err.splitlines()) == 1
    assert err.startswith("lgemu: replay diverged: frame 1 sent at instruction ")
    assert "differs from the recording (60 bytes; recorded 60 bytes at instruction " in err


CONSOLE_LINES = b"hello\nworld\nquit\n"


def test_piped_console_input_replays_exactly(tmp_path):
    recording = tmp_path / "console.rec"
    live = subprocess.run(
        [sys.executable, "-m", "lgemu", "boot", "--append", "lgemu.test=console_echo",
         "--console-record", str(recording), "--trace", str(tmp_path / "live.trace"),
         "--events"], cwd=REPO_ROOT, input=CONSOLE_LINES, capture_output=True,
        timeout=SUBPROCESS_TIMEOUT, check=False)
    assert (live.returncode, live.stderr) == (0, b"")
    assert b"echo: world\r\n" in live.stdout
    status, out, err = lgemu_main_in_process(
        ["boot", "--append", "lgemu.test=console_echo", "--console-replay", str(recording),
         "--trace", str(tmp_path / "replay.trace"), "--events"])
    assert (status, err) == (0, "")
    assert out == live.stdout
    assert (tmp_path / "replay.trace").read_bytes() == (tmp_path / "live.trace").read_bytes()


def test_a_file_that_is_not_a_recording_is_one_line_and_status_2(tmp_path):
    bogus = tmp_path / "bogus.rec"
    bogus.write_bytes(b"hello")
    for args in (["--net", f"replay:{bogus}"], ["--console-replay", str(bogus)]):
        status, out, err = lgemu_main_in_process(["boot", *args])
        assert (status, out, err) == (2, b"", f"lgemu: {bogus}: not an lgemu recording\n")


def test_a_session_ended_with_ctrl_bracket_replays_to_the_same_end(tmp_path):
    """Ctrl-] on the console terminal ends the live run (130); its replay ends there too,
    with the same line, instead of handing the guest the byte."""
    from test_terminal import ECHO, PtySession

    recording = tmp_path / "tty.rec"
    term = PtySession(["boot", *ECHO, "--console-record", str(recording)])
    try:
        term.read_until(b"console_echo: ready")
        term.type(b"hello\r")
        term.read_until(b"echo: hello\r\n")
        term.type(b"\x1d")
        assert term.finish() == 130
    finally:
        term.close()
    assert b"lgemu: quit from the keyboard (Ctrl-])" in term.screen
    status, out, err = lgemu_main_in_process(
        ["boot", *ECHO, "--console-replay", str(recording)])
    assert (status, err) == (130, "lgemu: quit from the keyboard (Ctrl-])\n")
    assert out.endswith(b"echo: hello\r\n") and b"\\x1d" not in out


@needs_gdb
def test_reverse_execution_goes_back_past_replayed_input(tmp_path):
    """Replayed input is deterministic: gdb's reverse-continue goes back over frames from
    `--net replay:` and console input from `--console-replay` (to earlier breakpoint hits and
    to the start of history), and the run then ends as the recorded one did."""
    recording, live = record_udp_session(tmp_path)
    run = run_under_gdb(
        ["break ping_one", "continue", "continue", "continue", "maint packet qlgemu.icount",
         "reverse-continue", "maint packet qlgemu.icount", "reverse-continue",
         "maint packet qlgemu.icount", "continue", "maint packet qlgemu.icount", "delete",
         "continue"],
        ["--net", f"replay:{recording}", "--append", PING, "--snapshot-every", "50000"])
    third, second, first, again = (int(reply, 16) for reply in received(run.gdb))
    assert first < second < third and again == second, run.gdb
    assert "[Inferior 1 (Remote target) exited normally]" in run.gdb
    assert (run.status, run.out) == (0, live.stdout)  # no divergence, nothing printed twice

    console = tmp_path / "console.rec"
    piped = subprocess.run(
        [sys.executable, "-m", "lgemu", "boot", "--append", "lgemu.test=console_echo",
         "--console-record", str(console)], cwd=REPO_ROOT, input=CONSOLE_LINES,
        capture_output=True, timeout=SUBPROCESS_TIMEOUT, check=False)
    run = run_under_gdb(
        ["break echo_line", "continue", "continue", "maint packet qlgemu.icount",
         "reverse-continue", "reverse-continue", "continue", "continue",
         "maint packet qlgemu.icount", "delete", "continue"],
        ["--append", "lgemu.test=console_echo", "--console-replay", str(console),
         "--snapshot-every", "50000"])
    assert "No more reverse-execution history." in run.gdb, run.gdb  # back to the start
    before, after = received(run.gdb)
    assert before == after
    assert "[Inferior 1 (Remote target) exited normally]" in run.gdb
    assert (run.status, run.out) == (0, piped.stdout)
