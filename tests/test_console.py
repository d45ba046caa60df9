"""The virtio console (ABI §12.1): output byte for byte, input from a file, a pipe or a terminal.

Guests drive the console's two queues by hand (`virtioasm`): in a console-only guest the input
queue is queue 0 and the output queue queue 1.  Input reaches a posted buffer at a slice
boundary; the guests spin (or halt) until `used.idx` moves and echo what they got through the
output queue.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import termios

import pytest
from conftest import REPO_ROOT, SUBPROCESS_TIMEOUT
from guestasm import assert_killed, assert_one_line, assert_powered_down, build_guest
from virtioasm import (
    DEVPT_BSS,
    MACROS,
    chain,
    hexwords,
    map_device_pages,
    ring,
    used_flags,
    used_len,
)

from lgemu.abi import VRING_USED_F_NO_NOTIFY
from lgemu.kills import BadRequest

IN, OUT = 0, 1
IN_RING = ring(IN)


def echo_guest(buffers: int, size: int = 4096, halt: bool = False) -> str:
    """Post an input buffer `buffers` times; each time wait for it, then write what came back
    to the output queue.  With `halt`, wait halted for the input queue's IRQ (1)."""
    body = MACROS + "\tINIT\n" + map_device_pages(2)
    if halt:
        body += "\tSET_GATE 0x21, on_input, GATE_INT\n\tmovl\t$0, lguest_data+LD_BLOCKED\n"
    body += "\tPUTS\tready\n"
    for n in range(buffers):
        body += chain(IN, [("$inbuf", f"${size}", True)])
        if halt:
            body += f"""
9:	cmpw	${n + 1}, {IN_RING + 0x1002:#x}
	je	8f
	movl	$0x200, lguest_data+LD_IRQ_ENABLED
	HCALL	$LHCALL_HALT
	jmp	9b
8:
"""
        else:
            body += f"\tWAIT_USED\t{IN_RING:#x}, ${n + 1}\n"
        body += f"\tmovl\t{used_len(IN, n)}, %esi\n" + chain(OUT, [("$inbuf", "%esi", False)])
    return body + "\tPOWER_DOWN\non_input:\tiret\n"


ECHO_DATA = ('ready:\t.asciz "ready\\n"\n\t.bss\n\t.balign 4096\ninbuf:\t.space 8192\n\t.data\n'
             + DEVPT_BSS)


def test_output_reaches_stdout_byte_for_byte(asm_guest):
    """Every byte value, through two buffers of one chain: no translation, no loss."""
    data = bytes(range(256))
    run = asm_guest(MACROS + "\tINIT\n" + map_device_pages(2)
                    + chain(OUT, [("$bytes", "$200", False), ("$bytes+200", "$56", False)])
                    + "\tPOWER_DOWN\n",
                    "bytes:\t.byte " + ", ".join(map(str, data)) + "\n" + DEVPT_BSS)
    assert_powered_down(run, data)


def test_console_input_file_is_fed_into_posted_buffers(asm_guest, tmp_path):
    script = tmp_path / "input.txt"
    script.write_bytes(b"0123456789abcdef" b"ghijklmnopqrstuv" b"wxyz\r\n\x03\x00")
    run = asm_guest(echo_guest(3, size=16), ECHO_DATA,
                    extra=["--console-input", str(script)])
    assert_powered_down(run, b"ready\n" + script.read_bytes())


def test_a_scripted_session_is_reproducible(boot_guest, tmp_path):
    script = tmp_path / "input.txt"
    script.write_bytes(b"ls /\nexit\n" * 100)
    elf = build_guest(tmp_path, echo_guest(2, size=600), ECHO_DATA)
    runs = []
    for _ in range(2):
        status, out, err = boot_guest(elf, extra=["--console-input", str(script), "-v"])
        runs.append((status, out, [line for line in err.splitlines()
                                   if line.startswith("executed")]))
    assert runs[0] == runs[1]
    assert runs[0][0] == 0 and runs[0][1] == b"ready\n" + script.read_bytes()[:1200]


def test_the_input_queue_asks_for_no_kicks(asm_guest):
    run = asm_guest(MACROS + "\tINIT\n" + map_device_pages(2) + f"""
	movzwl	{used_flags(IN)}, %eax
	PUTHEX	%eax
	movzwl	{used_flags(OUT)}, %eax
	PUTHEX	%eax
	POWER_DOWN
""", DEVPT_BSS)
    assert_powered_down(run, hexwords(VRING_USED_F_NO_NOTIFY, 0))


@pytest.mark.parametrize("source", ["empty", "/dev/null"])
def test_a_guest_halted_for_input_that_cannot_come_is_stuck(asm_guest, tmp_path, source):
    if source == "empty":
        source = tmp_path / "empty"
        source.write_bytes(b"")
    run = asm_guest(echo_guest(1, halt=True), ECHO_DATA, extra=["--console-input", str(source)])
    assert run.status == 4 and run.out == b"ready\n"
    assert assert_one_line(run.err) == ("lgemu: guest stuck: halted with no timer set and no "
                                        "interrupt that can wake it")


def test_a_guest_halted_for_input_from_a_pipe_wakes(run_lgemu, tmp_path):
    elf = build_guest(tmp_path, echo_guest(1, halt=True), ECHO_DATA)
    proc = run_lgemu(["boot", elf], input=b"typed ahead")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == b"ready\ntyped ahead"


@pytest.mark.parametrize(("queue", "buffers", "reason"), [
    (IN, [("$inbuf", "$16", False)],
     BadRequest("console.0", 0, "device-readable buffer in the input queue")),
    (OUT, [("$inbuf", "$16", True)],
     BadRequest("console.1", 0, "device-writable buffer in the output queue")),
])
def test_buffers_of_the_wrong_direction_kill(asm_guest, tmp_path, queue, buffers, reason):
    script = tmp_path / "input.txt"
    script.write_bytes(b"some input")
    body = (MACROS + "\tINIT\n" + map_device_pages(2) + chain(queue, buffers)
            + "\tmovl\t$3000000, %ecx\n1:\tloop\t1b\n\tPOWER_DOWN\n")
    run = asm_guest(body, ECHO_DATA, extra=["--console-input", str(script)])
    assert_killed(run, reason)


def test_a_missing_console_input_file_is_exit_2(lgemu_main, tmp_path):
    status, _, err = lgemu_main(["boot", "--console-input", str(tmp_path / "nope")])
    assert status == 2
    assert assert_one_line(err) == f"lgemu: {tmp_path / 'nope'}: no such file"


# -- a terminal -----------------------------------------------------------------------------

class Terminal:
    """lgemu on a pseudo-terminal's slave as stdin; the test types on the master."""

    def __init__(self, tmp_path, body: str) -> None:
        self.master, self.slave = pty.openpty()
        self.before = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lgemu", "boot", str(build_guest(tmp_path, body, ECHO_DATA))],
            cwd=REPO_ROOT, stdin=self.slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_ready(self) -> None:
        seen = b""
        while not seen.endswith(b"ready\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], SUBPROCESS_TIMEOUT)
            chunk = os.read(self.proc.stdout.fileno(), 1) if ready else b""
            assert chunk, (seen, self.proc.poll())
            seen += chunk

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self) -> tuple[int, bytes, str, list]:
        try:
            out, err = self.proc.communicate(timeout=SUBPROCESS_TIMEOUT)
            return self.proc.returncode, out, err.decode(), termios.tcgetattr(self.slave)
        finally:
            os.close(self.master)
            os.close(self.slave)


def test_a_terminal_is_raw_while_the_guest_runs_and_restored_after(tmp_path):
    """No line editing (bytes arrive before Enter), no echo, Ctrl-C is a byte for the guest."""
    term = Terminal(tmp_path, echo_guest(1))
    term.wait_ready()
    during = termios.tcgetattr(term.slave)
    term.type(b"ab\x03")
    status, out, err, after = term.finish()
    assert (status, err) == (0, "")
    assert out == b"ab\x03"
    lflag = during[3]
    assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
    assert after == term.before


def test_ctrl_close_bracket_on_a_terminal_quits(tmp_path):
    term = Terminal(tmp_path, "\tINIT\n\tPUTS\tready\n1:\tjmp\t1b\n")
    term.wait_ready()
    term.type(b"\x1d")
    status, out, err, after = term.finish()
    assert status == 130 and out == b""
    assert assert_one_line(err) == "lgemu: quit from the keyboard (Ctrl-])"
    assert after == term.before
