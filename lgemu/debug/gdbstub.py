"""The gdb remote stub: `lgemu boot --gdb tcp::1234` (`-s` for short), `-S` to wait for gdb.

gdb's remote serial protocol over one TCP connection on 127.0.0.1, with packets dispatched from
a table, as QEMU's stub does.  The stub is a run-loop controller (`lgemu.host.guest`): it gets
control before every run of the CPU, between two instructions, and there it talks to gdb,
polls for Ctrl-C, takes snapshots and decides how long the next run may be.  Cutting runs
short changes nothing the guest can see, so stepping through a guest in gdb executes exactly
what an undebugged run executes.

What gdb gets, and how:

* registers: gdb's i386 core set and read-only control registers (`target_xml.REGISTERS`),
  by `g`/`G`/`p`/`P`;
* `monitor` commands (`qRcmd`): Linux- and lguest-aware views (`lgemu.debug.monitor`);
* memory: `m`/`M`/`X` at guest-virtual addresses through the guest's own page tables (walked
  without setting Accessed or Dirty), or guest-physical after QEMU's
  `maint packet Qqemu.PhysicalMemoryMode:1`; a write drops translated code of the pages it
  touched;
* breakpoints (`Z0`, `Z1`): Unicorn exits (`Cpu.set_breakpoints`) at exactly those
  addresses, so nothing is written into guest memory and an address never reached costs
  nothing.  A run ends before the instruction; resuming steps over it once before it is armed
  again, as QEMU does.  Replays for reverse-continue record hits with code hooks instead, as
  they must not stop at every one;
* watchpoints (`Z2` write, `Z3` read, `Z4` access): memory hooks on exactly the watched bytes,
  installed only while a watchpoint exists (any memory hook slows every load).  Unicorn gives
  memory hooks guest-*physical* addresses, so a watched virtual range is translated when the
  watchpoint is set and again before every run: it follows the guest's page tables (a range
  not mapped yet is armed once it is, as a debug register would be) and sees the same memory
  through any other mapping.  A hit ends the run after the accessing instruction and is
  reported as `watch`/`rwatch`/`awatch`.  Accesses the Host makes on the guest's behalf (trap
  frames, hypercall results) are not seen;
* `s`, `c`, `vCont` (`c`, `s`), Ctrl-C (polled at every run boundary; runs are at most
  `ATTACHED_RUN` instructions while gdb waits; a guest halted with no timer, waiting for
  console input, notices it only when it next runs), `?`, `D` (the guest runs on; another gdb
  may attach later), `k`, and `qlgemu.icount` (the instruction count, in hex);
* reverse execution (`bs`, `bc`) by replay from snapshots (`lgemu.debug.snapshot`), taken
  every `--snapshot-every` instructions while gdb is attached; advertised only when this guest
  can be replayed, refused (`E.` with the reason) where console input from a terminal or pipe
  would have to be read again.

When the run ends while gdb waits for the guest, gdb is told: `W00` for a power down, `X06`
(SIGABRT) for a crash, `X09` (SIGKILL) for anything else; lgemu then exits with its usual
status.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from ..abi import LD_CR2, PAGE_OFFSET, PAGE_SIZE
from ..errors import ExitStatus, LgemuExit, UserError
from ..host.guest import Stage
from ..machine.cpu import Reg
from ..signals import SIGNALS
from .snapshot import Timeline, TimeTravelError
from .stopat import StopAt, stopped_line
from .target_xml import FIRST_CONTROL, REGISTERS, target_xml

if TYPE_CHECKING:
    from ..config import BootConfig
    from ..host.guest import Guest
    from .monitor import Monitor

ATTACHED_RUN = 250_000  # longest CPU run while gdb is attached (Ctrl-C answered in ms)
PACKET_SIZE = 0x4000
SIGINT, SIGTRAP, SIGABRT, SIGKILL = 2, 5, 6, 9
INTERRUPT = b"\x03"
GENERAL = (Reg.EAX, Reg.ECX, Reg.EDX, Reg.EBX, Reg.ESP, Reg.EBP, Reg.ESI, Reg.EDI,
           Reg.EIP, Reg.EFLAGS, Reg.CS, Reg.SS, Reg.DS, Reg.ES, Reg.FS, Reg.GS)
X87_CONTROL = (Reg.FPCW, Reg.FPSW, Reg.FPTAG, Reg.FCS, Reg.FIP, Reg.FDS, Reg.FDP, Reg.FOP)
FIRST_ST, FIRST_X87_CONTROL = len(GENERAL), len(GENERAL) + 8
EIP_INDEX, EFLAGS_INDEX = GENERAL.index(Reg.EIP), GENERAL.index(Reg.EFLAGS)
SELECTORS = frozenset(range(GENERAL.index(Reg.CS), FIRST_ST))
# EFLAGS bits gdb may change: arithmetic flags, TF, IF, DF, AC, ID.  Not IOPL, NT, RF, VM,
# VIF, VIP: those would change what the guest may do, or how Unicorn runs it.
EFLAGS_WRITABLE = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800 \
    | 0x40000 | 0x200000
# The string instructions a `rep` prefix repeats in place.
STRING_OPS = frozenset({0x6C, 0x6D, 0x6E, 0x6F, 0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC,
                        0xAD, 0xAE, 0xAF})
WATCH_KINDS = {2: "watch", 3: "rwatch", 4: "awatch"}
# What ends a guest's run, as gdb hears it: W (exit status) or X (signal).
EXIT_REPLIES = {ExitStatus.POWER_DOWN: b"W00", ExitStatus.CRASHED: b"X%02x" % SIGABRT}
E_BADARG, E_FAULT = b"E16", b"E14"  # EINVAL-ish and EFAULT, as gdbserver spells them

STOPPED, CONTINUE, STEP, REPLAY, SEARCH = "stopped", "continue", "step", "replay", "search"
NAMED_PACKET = re.compile(rb"([^:;,]*)[:;,]?(.*)", re.DOTALL)
Handler = Callable[[bytes], "bytes | None"]


class DebuggerKill(LgemuExit):
    """gdb sent `k`."""

    status = ExitStatus.INTERRUPTED


def parse_endpoint(spec: str) -> int:
    """`tcp::PORT` (or `tcp:127.0.0.1:PORT`, `tcp:localhost:PORT`) → the port.  lgemu only
    listens on the loopback interface: a debugger can rewrite the guest at will."""
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] != "tcp":
        raise UserError(f"--gdb {spec}: expected tcp::PORT")
    if parts[1] not in ("", "127.0.0.1", "localhost"):
        raise UserError(f"--gdb {spec}: the gdb stub listens on 127.0.0.1 only")
    try:
        port = int(parts[2], 10)
    except ValueError:
        raise UserError(f"--gdb {spec}: bad port {parts[2]!r}") from None
    if not 0 <= port <= 65535:
        raise UserError(f"--gdb {spec}: bad port {port}")
    return port


def escape_binary(data: bytes) -> bytes:
    """RSP binary escaping: `#`, `$`, `}` and `*` become `}` + byte ^ 0x20."""
    out = bytearray()
    for byte in data:
        if byte in b"#$}*":
            out += bytes((0x7D, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def unescape_binary(data: bytes) -> bytes:
    """Undo `escape_binary`."""
    out = bytearray()
    it = iter(data)
    for byte in it:
        out.append(next(it, 0) ^ 0x20 if byte == 0x7D else byte)
    return bytes(out)


@dataclass(frozen=True)
class Stop:
    """Why the guest stopped, as a stop reply says it."""

    signal: int
    reason: str = ""  # swbreak, hwbreak, watch, rwatch, awatch, replaylog
    addr: int = 0


class Connection:
    """One gdb connection: packet framing, checksums, acknowledgements and Ctrl-C."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.acks = True
        self.interrupted = False
        self.closed = False

    def _fill(self, timeout: float | None) -> bool:
        """Read what has arrived (waiting up to `timeout`); False once gdb has gone."""
        # A signal to lgemu wakes the wait and ends the run (`SIGNALS.wait` raises it).
        if not SIGNALS.wait([self.sock], timeout):
            return True
        try:
            data = self.sock.recv(65536)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.buffer += data
        return True

    def _take_packet(self) -> bytes | None:
        """The next complete packet's payload from the buffer (acks and Ctrl-C consumed)."""
        buf = self.buffer
        while buf:
            if buf[0] == 0x03:
                self.interrupted = True
                del buf[0]
            elif buf[0] != ord("$"):
                del buf[0]  # '+', '-' (we never resend: TCP does not lose bytes) or noise
            else:
                end = buf.find(b"#")
                if end < 0 or len(buf) < end + 3:
                    return None
                payload, checksum = bytes(buf[1:end]), bytes(buf[end + 1:end + 3])
                del buf[:end + 3]
                if self.acks:
                    good = checksum.lower() == b"%02x" % (sum(payload) & 0xFF)
                    self._send_raw(b"+" if good else b"-")
                    if not good:
                        continue
                return payload
        return None

    def read_packet(self) -> bytes | None:
        """Block until a packet arrives; None when gdb has gone."""
        while True:
            packet = self._take_packet()
            if packet is not None:
                return packet
            if not self._fill(None):
                return None

    def poll_interrupt(self) -> bool:
        """Has Ctrl-C arrived (without waiting)?  While the guest runs, gdb sends nothing
        else that matters; other bytes are kept for later."""
        if not self.closed:
            self._fill(0)
        if 0x03 in self.buffer:
            self.buffer = self.buffer.replace(INTERRUPT, b"")
            self.interrupted = True
        interrupted, self.interrupted = self.interrupted, False
        return interrupted

    def send(self, payload: bytes) -> None:
        """Send one packet (acknowledgements from gdb are not waited for)."""
        self._send_raw(b"$%s#%02x" % (payload, sum(payload) & 0xFF))

    def _send_raw(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.closed = True


class GdbStub:
    """The gdb stub of one guest: a run-loop controller that serves one gdb at a time."""

    def __init__(self, guest: Guest, port: int, wait: bool, stop_at: int | None,
                 snapshot_every: int, stderr: TextIO | None) -> None:
        self.guest = guest
        self.stderr = stderr
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind(("127.0.0.1", port))
        except OSError as e:
            self.listener.close()
            raise UserError(f"--gdb: cannot listen on 127.0.0.1:{port}: {e.strerror}") from None
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.wait = wait
        self.stop_at = stop_at
        self.conn: Connection | None = None
        self.mode = CONTINUE
        self.last_stop = Stop(SIGTRAP)
        self.hit: Stop | None = None  # what a hook saw during the last run
        self.step_from = self.step_eip = self.step_faults = 0
        self.step_over: int | None = None  # a breakpoint address being stepped over
        self.step_over_faults = 0
        self.goal = 0  # REPLAY: stop here; SEARCH: this segment ends here
        self.goal_stop = Stop(SIGTRAP)
        self.search_end = 0  # SEARCH: hits must come before this instruction count
        self.search_index = 0  # SEARCH: the snapshot the segment started from
        self.found: list[tuple[int, Stop]] = []
        self.breakpoints: dict[int, set[int]] = {}  # addr → Z types (0 software, 1 hardware)
        self.search_hooks: list[int] = []  # SEARCH: code hooks recording breakpoint hits
        # (type, addr, len) → (physical ranges, hooks on them)
        self.watchpoints: dict[tuple[int, int, int], tuple[list[tuple[int, int]], list[int]]] \
            = {}
        self.physical = False
        self.gdb_features: set[bytes] = set()
        self.timeline = Timeline(guest, snapshot_every)
        self.snapshot_now = False
        self.named, self.lettered = self._packet_tables()
        self.monitor: Monitor | None = None  # `monitor` commands, made on first use
        self._say(f"gdb stub listening on 127.0.0.1:{self.port}")

    def _say(self, text: str) -> None:
        if self.stderr is not None:
            print(f"lgemu: {text}", file=self.stderr, flush=True)

    # -- the controller ------------------------------------------------------------------------
    def boundary(self, guest: Guest) -> int | None:
        """Between two instructions, before the CPU runs: talk to gdb; returns the cap."""
        if self.conn is None and not self._connect(guest):
            return self._unattached_cap(guest)
        while True:
            stop = self._check(guest)
            if self.conn.closed:  # gdb went away while the guest ran
                self._detach()
            if self.conn is None:
                return self._unattached_cap(guest)
            if stop is not None:
                self._report(stop)
            if self.mode != STOPPED:
                break
            self._serve(guest)
            if self.conn is None:  # detached, or gdb went away
                return self._unattached_cap(guest)
        if self.watchpoints:
            self._refresh_watchpoints()
        self._arm_breakpoints()
        timeline = self.timeline
        if timeline.available:
            forward = self.mode in (CONTINUE, STEP)
            timeline.replaying(not forward)
            if forward and timeline.new_input(guest.icount):
                self.snapshot_now = True
            if self.snapshot_now or (forward and timeline.due(guest.icount)):
                timeline.take()
                self.snapshot_now = False
        return self._cap(guest)

    def _unattached_cap(self, guest: Guest) -> int | None:
        if self.stop_at is not None and self.stop_at > guest.icount:
            return self.stop_at - guest.icount
        return None

    def _connect(self, guest: Guest) -> bool:
        """Accept gdb if it is there; wait for it at the start with -S and at --stop-at."""
        at_stop = self.stop_at is not None and guest.icount >= self.stop_at
        must_wait = (self.wait and guest.icount == 0) or at_stop
        if must_wait:
            if at_stop:
                self._say(f"{stopped_line(guest)}; waiting for gdb on 127.0.0.1:{self.port}")
            self.listener.settimeout(None)
            SIGNALS.wait([self.listener], None)  # woken by gdb, or ended by a signal
        elif not select.select([self.listener], [], [], 0)[0]:
            return False
        sock, _ = self.listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = Connection(sock)
        if at_stop:
            self.stop_at = None
        self.wait = False
        self.mode = STOPPED
        self.last_stop = Stop(SIGTRAP)
        self.gdb_features = set()
        self.physical = False
        self.snapshot_now = self.timeline.available
        self.timeline.new_input(guest.icount)  # input so far is not news
        return True

    def _check(self, guest: Guest) -> Stop | None:
        """Has the guest reached a reason to stop since the last boundary?"""
        mode = self.mode
        if mode == STOPPED:
            return None
        if self.step_over is not None and guest.icount != self.step_from:
            self._end_step_over(guest)
        if mode == SEARCH:
            if guest.icount >= self.goal:
                return self._search_segment_done()
            return Stop(SIGINT) if self.conn.poll_interrupt() else None
        if mode == REPLAY:
            if guest.icount >= self.goal:
                return self.goal_stop
            return Stop(SIGINT) if self.conn.poll_interrupt() else None
        hit, self.hit = self.hit, None
        if hit is not None:
            return hit
        eip = guest.cpu.reg(Reg.EIP)
        if guest.cpu.at_breakpoint and eip in self.breakpoints and eip != self.step_over:
            return self._breakpoint_stop(eip)
        if mode == STEP and guest.icount > self.step_from:
            if eip == self.step_eip and guest.stats.page_fills != self.step_faults:
                # The Host mapped a page and the instruction is retried: not a step yet.
                self.step_from, self.step_faults = guest.icount, guest.stats.page_fills
                return None
            return Stop(SIGTRAP)
        if self.stop_at is not None and guest.icount >= self.stop_at:
            self.stop_at = None
            self._say(stopped_line(guest))
            return Stop(SIGTRAP)
        if self.conn.poll_interrupt():
            return Stop(SIGINT)
        return None

    def _cap(self, guest: Guest) -> int:
        if self.mode == STEP or self.step_over is not None:
            return 1
        icount = guest.icount
        caps = [ATTACHED_RUN]
        if self.mode in (REPLAY, SEARCH):
            caps.append(self.goal - icount)
        elif self.timeline.available:
            caps.append(self.timeline.next_due(icount) - icount)
        if self.stop_at is not None and self.stop_at > icount:
            caps.append(self.stop_at - icount)
        return max(1, min(caps))

    def _report(self, stop: Stop) -> None:
        self.mode = STOPPED
        self.hit = None
        self.last_stop = stop
        self.conn.send(self._stop_reply(stop))

    def _stop_reply(self, stop: Stop) -> bytes:
        reply = b"T%02x" % stop.signal
        if stop.reason in WATCH_KINDS.values():
            reply += b"%s:%x;" % (stop.reason.encode(), stop.addr)
        elif stop.reason in ("swbreak", "hwbreak") and stop.reason.encode() + b"+" \
                in self.gdb_features:
            reply += stop.reason.encode() + b":;"
        elif stop.reason == "replaylog":
            reply += b"replaylog:begin;"
        eip = self.guest.cpu.reg(Reg.EIP).to_bytes(4, "little").hex().encode()
        return reply + b"thread:1;%02x:%s;" % (EIP_INDEX, eip)

    # -- serving gdb while the guest is stopped -------------------------------------------------
    def _serve(self, guest: Guest) -> None:
        """Answer packets until one resumes the guest (or gdb goes)."""
        while self.mode == STOPPED and self.conn is not None:
            packet = self.conn.read_packet()
            if packet is None:
                self._detach()  # gdb went away: the guest runs on, as after `D`
                return
            reply = self._dispatch(packet)
            if reply is not None and self.conn is not None:
                self.conn.send(reply)

    def _dispatch(self, packet: bytes) -> bytes | None:
        """Find the handler: `q`, `Q` and `v` packets by name (up to `:`, `;` or `,`),
        `bs`/`bc` by two letters, the rest by their first letter."""
        if packet[:1] in (b"q", b"Q", b"v"):
            name, args = NAMED_PACKET.match(packet).groups()
            handler = self.named.get(name)
        elif packet[:2] in (b"bs", b"bc"):
            handler, args = self.lettered.get(packet[:2]), packet[2:]
        else:
            handler, args = self.lettered.get(packet[:1]), packet[1:]
        if handler is None:
            return b""  # not supported
        try:
            return handler(args)
        except (ValueError, IndexError):
            return E_BADARG

    def _packet_tables(self) -> tuple[dict[bytes, Handler], dict[bytes, Handler]]:
        """The packets lgemu answers: (by name, by letter)."""
        named: dict[bytes, Handler] = {
            b"qSupported": self._q_supported,
            b"qXfer": self._q_xfer,
            b"QStartNoAckMode": self._no_ack_mode,
            b"qAttached": lambda _: b"1",
            b"qC": lambda _: b"QC1",
            b"qfThreadInfo": lambda _: b"m1",
            b"qsThreadInfo": lambda _: b"l",
            b"qSymbol": lambda _: b"OK",
            b"qqemu.PhysicalMemoryMode": lambda _: b"1" if self.physical else b"0",
            b"Qqemu.PhysicalMemoryMode": self._physical_mode,
            b"qlgemu.icount": lambda _: b"%x" % self.guest.icount,
            b"qRcmd": self._monitor_command,
            b"vCont?": lambda _: b"vCont;c;C;s;S",
            b"vCont": self._v_cont,
        }
        lettered: dict[bytes, Handler] = {
            b"?": lambda _: self._stop_reply(self.last_stop),
            b"H": lambda _: b"OK",
            b"T": lambda _: b"OK",
            b"g": self._read_registers,
            b"G": self._write_registers,
            b"p": self._read_register,
            b"P": self._write_register_packet,
            b"m": self._read_memory,
            b"M": self._write_memory_hex,
            b"X": self._write_memory_binary,
            b"Z": self._insert_point,
            b"z": self._remove_point,
            b"c": lambda args: self._resume(CONTINUE, args),
            b"C": lambda args: self._resume(CONTINUE, args.partition(b";")[2]),
            b"s": lambda args: self._resume(STEP, args),
            b"S": lambda args: self._resume(STEP, args.partition(b";")[2]),
            b"bs": lambda _: self._reverse_step(),
            b"bc": lambda _: self._reverse_continue(),
            b"D": lambda _: self._detach_packet(),
            b"k": lambda _: self._kill(),
        }
        return named, lettered

    # -- queries ---------------------------------------------------------------------------------
    def _q_supported(self, args: bytes) -> bytes:
        self.gdb_features = set(args.lstrip(b":").split(b";"))
        features = [b"PacketSize=%x" % PACKET_SIZE, b"qXfer:features:read+",
                    b"QStartNoAckMode+", b"swbreak+", b"hwbreak+"]
        if self.timeline.available:
            features += [b"ReverseStep+", b"ReverseContinue+"]
        return b";".join(features)

    def _q_xfer(self, args: bytes) -> bytes:
        """qXfer:features:read:target.xml:OFFSET,LENGTH (the only object lgemu offers)."""
        obj, _, rest = args.partition(b":")
        if obj != b"features" or not rest.startswith(b"read:"):
            return b""
        annex, _, span = rest[len(b"read:"):].partition(b":")
        if annex != b"target.xml":
            return b"E00"
        offset, length = (int(x, 16) for x in span.split(b","))
        xml = target_xml()
        chunk = xml[offset:offset + length]
        return (b"l" if offset + length >= len(xml) else b"m") + escape_binary(chunk)

    def _monitor_command(self, args: bytes) -> bytes:
        """`monitor LINE` (qRcmd,HEX): the answer goes out as console-output (`O`) packets,
        then OK (lgemu.debug.monitor)."""
        if self.monitor is None:
            from .monitor import Monitor
            self.monitor = Monitor(self.guest)
        text = self.monitor.run(bytes.fromhex(args.decode()).decode("utf-8", "replace"))
        data = text.encode()
        step = PACKET_SIZE // 2 - 16
        for start in range(0, len(data), step):
            self.conn.send(b"O" + data[start:start + step].hex().encode())
        return b"OK"

    def _no_ack_mode(self, _: bytes) -> bytes:
        self.conn.send(b"OK")  # acknowledged in the old mode, then no more acks
        self.conn.acks = False
        return None

    def _physical_mode(self, args: bytes) -> bytes:
        if args not in (b"0", b"1"):
            return E_BADARG
        self.physical = args == b"1"
        return b"OK"

    # -- registers -------------------------------------------------------------------------------
    def _register_bytes(self) -> list[bytes]:
        """Every register in `REGISTERS` order, as the bytes gdb wants (little-endian)."""
        cpu = self.guest.cpu
        values = [v.to_bytes(4, "little") for v in cpu.regs(GENERAL)]
        top = (cpu.reg(Reg.FPSW) >> 11) & 7
        for i in range(8):  # gdb's st(i) is relative to the top of the x87 stack
            mantissa, exponent = cpu.fp_register((top + i) & 7)
            values.append(mantissa.to_bytes(8, "little") + exponent.to_bytes(2, "little"))
        values += [cpu.reg(reg).to_bytes(4, "little") for reg in X87_CONTROL]
        values += [v.to_bytes(4, "little") for v in control_registers(self.guest)]
        return values

    def _read_registers(self, _: bytes) -> bytes:
        return b"".join(self._register_bytes()).hex().encode()

    def _read_register(self, args: bytes) -> bytes:
        n = int(args, 16)
        if n >= len(REGISTERS):
            return b"E00"
        return self._register_bytes()[n].hex().encode()

    def _write_registers(self, args: bytes) -> bytes:
        raw = bytes.fromhex(args.decode())
        current = self._register_bytes()
        offset, changes = 0, []
        for n, old in enumerate(current):
            new = raw[offset:offset + len(old)]
            offset += len(old)
            if len(new) == len(old) and new != old:
                changes.append((n, new))
        if any(not self._may_write(n, new, current[n]) for n, new in changes):
            return b"E00"
        for n, new in changes:
            self._store_register(n, new)
        return b"OK"

    def _write_register_packet(self, args: bytes) -> bytes:
        number, _, value = args.partition(b"=")
        n = int(number, 16)
        raw = bytes.fromhex(value.decode())
        if n >= len(REGISTERS) or len(raw) != REGISTERS[n].bits // 8:
            return b"E00"
        old = self._register_bytes()[n]
        if raw == old:
            return b"OK"
        if not self._may_write(n, raw, old):
            return b"E00"
        self._store_register(n, raw)
        return b"OK"

    def _may_write(self, n: int, new: bytes, old: bytes) -> bool:
        """Selectors stay as they are (a load would need the Host's checks), and so do the
        control registers (the Host owns them); EFLAGS only changes in bits the guest could
        change itself, plus TF and IF."""
        if n in SELECTORS or n >= FIRST_CONTROL:
            return False
        if n == EFLAGS_INDEX:
            changed = int.from_bytes(new, "little") ^ int.from_bytes(old, "little")
            return not changed & ~EFLAGS_WRITABLE
        return True

    def _store_register(self, n: int, raw: bytes) -> None:
        cpu = self.guest.cpu
        if n < FIRST_ST:
            cpu.set_reg(GENERAL[n], int.from_bytes(raw, "little"))
        elif n < FIRST_X87_CONTROL:
            top = (cpu.reg(Reg.FPSW) >> 11) & 7
            cpu.set_fp_register((top + n - FIRST_ST) & 7, int.from_bytes(raw[:8], "little"),
                                int.from_bytes(raw[8:], "little"))
        else:
            cpu.set_reg(X87_CONTROL[n - FIRST_X87_CONTROL], int.from_bytes(raw, "little"))
        self._diverged()

    def _diverged(self) -> None:
        """gdb changed the guest: the recorded future is void; replays start from here."""
        self.timeline.diverge(self.guest.icount)
        self.snapshot_now = self.timeline.available

    # -- memory ----------------------------------------------------------------------------------
    def _physical_ranges(self, addr: int, length: int) -> list[tuple[int, int]] | None:
        """[(guest-physical address, length)] covering [addr, addr+length) in the current
        mode, or None if some byte is not memory (unmapped, or outside guest RAM)."""
        memory = self.guest.memory
        if addr < 0 or length < 0 or addr + length > 1 << 32:
            return None
        if self.physical:
            return [(addr, length)] if memory.valid(addr, length) else None
        ranges = []
        done = 0
        while done < length:
            va = addr + done
            pa = self.guest.paging.translate(va, mark=False)
            chunk = min(length - done, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            if pa is None or not memory.valid(pa, chunk):
                return None
            ranges.append((pa, chunk))
            done += chunk
        return ranges

    def _read_memory(self, args: bytes) -> bytes:
        addr, length = (int(x, 16) for x in args.split(b","))
        length = min(length, PACKET_SIZE // 2 - 16)
        ram = self.guest.memory.ram
        data = bytearray()
        # A read that runs into an unmapped page returns what came before it (as gdbserver).
        for offset in range(0, length, PAGE_SIZE):
            va = addr + offset
            size = min(length - offset, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            ranges = self._physical_ranges(va, size)
            if ranges is None:
                break
            for pa, n in ranges:
                data += ram[pa:pa + n]
        if not data and length:
            return E_FAULT
        return bytes(data).hex().encode()

    def _write_memory(self, addr: int, data: bytes) -> bytes:
        ranges = self._physical_ranges(addr, len(data))
        if ranges is None:
            return E_FAULT
        ram = self.guest.memory.ram
        done = 0
        pages: set[int] = set()
        for pa, n in ranges:
            ram[pa:pa + n] = data[done:done + n]
            pages.update(range(pa // PAGE_SIZE, (pa + n - 1) // PAGE_SIZE + 1))
            done += n
        if data:
            self.guest.cpu.invalidate_code(sorted(pages))
            self._diverged()
        return b"OK"

    def _write_memory_hex(self, args: bytes) -> bytes:
        where, _, hexdata = args.partition(b":")
        addr, length = (int(x, 16) for x in where.split(b","))
        data = bytes.fromhex(hexdata.decode())
        if len(data) != length:
            return E_BADARG
        return self._write_memory(addr, data)

    def _write_memory_binary(self, args: bytes) -> bytes:
        where, _, raw = args.partition(b":")
        addr, length = (int(x, 16) for x in where.split(b","))
        data = unescape_binary(raw)
        if len(data) != length:
            return E_BADARG
        return self._write_memory(addr, data)

    # -- breakpoints and watchpoints --------------------------------------------------------------
    def _insert_point(self, args: bytes) -> bytes:
        kind, addr, length = self._point_args(args)
        if kind in (0, 1):
            self.breakpoints.setdefault(addr, set()).add(kind)  # armed before the next run
            return b"OK"
        if kind in WATCH_KINDS:
            if not 1 <= length <= PAGE_SIZE or addr + length > 1 << 32:
                return E_BADARG
            key = (kind, addr, length)
            if key not in self.watchpoints:
                self.watchpoints[key] = ([], [])
                self._arm_watchpoint(key)
            return b"OK"
        return b""

    def _arm_watchpoint(self, key: tuple[int, int, int]) -> None:
        """Hook the physical bytes behind a watched range as it is mapped now (a range that
        is not mapped keeps its last translation, if any)."""
        kind, addr, length = key
        ranges = self._physical_ranges(addr, length)
        old_ranges, old_hooks = self.watchpoints[key]
        if ranges is None or ranges == old_ranges:
            return
        self._disarm(old_hooks)
        cpu, hooks, va = self.guest.cpu, [], addr
        for pa, n in ranges:
            hooks.append(cpu.on_mem_access(self._watch_hook(kind, va, pa, n), pa, pa + n - 1,
                                           read=kind != 2, write=kind != 3))
            va += n
        self.watchpoints[key] = (ranges, hooks)
        cpu.flush_tlb()  # loads and stores already in the TLB would pass the hooks by
        cpu.flush_code()  # as would code translated before them (part of it, on 2.1.4)

    def _refresh_watchpoints(self) -> None:
        """Before a run: follow page-table changes of watched virtual ranges."""
        for key in list(self.watchpoints):
            self._arm_watchpoint(key)

    def _disarm(self, hooks: list[int]) -> None:
        for hook in hooks:
            self.guest.cpu.remove_hook(hook)

    def _remove_point(self, args: bytes) -> bytes:
        kind, addr, length = self._point_args(args)
        if kind in (0, 1):
            kinds = self.breakpoints.get(addr, set())
            kinds.discard(kind)
            if not kinds:
                self.breakpoints.pop(addr, None)
            return b"OK"
        if kind in WATCH_KINDS:
            entry = self.watchpoints.pop((kind, addr, length), None)
            if entry is not None:
                self._disarm(entry[1])
            return b"OK"
        return b""

    @staticmethod
    def _point_args(args: bytes) -> tuple[int, int, int]:
        kind, addr, length = args.split(b";")[0].split(b",")
        return int(kind, 16), int(addr, 16), int(length, 16)

    def _remove_all_points(self) -> None:
        self.breakpoints.clear()
        self.guest.cpu.set_breakpoints(frozenset())
        self._disarm(self.search_hooks)
        self.search_hooks = []
        for _, hooks in self.watchpoints.values():
            self._disarm(hooks)
        self.watchpoints.clear()

    def _arm_breakpoints(self) -> None:
        """Before a run: exits at the breakpoints while running forward (not the one being
        stepped over); none while replaying; recording hooks while searching backwards."""
        cpu = self.guest.cpu
        forward = self.mode in (CONTINUE, STEP)
        armed = frozenset(self.breakpoints) - {self.step_over} if forward else frozenset()
        # Kernel addresses map to the same code in every address space: changing those
        # drops only their blocks, not all translated code.
        cpu.set_breakpoints(armed, shared=all(a >= PAGE_OFFSET for a in armed | cpu.breakpoints))
        if self.mode == SEARCH and not self.search_hooks:
            self.search_hooks = [cpu.on_code(self._record_breakpoint, addr, addr)
                                 for addr in self.breakpoints]
            cpu.flush_code()
        elif self.mode != SEARCH and self.search_hooks:
            self._disarm(self.search_hooks)
            self.search_hooks = []

    def _breakpoint_stop(self, address: int) -> Stop:
        return Stop(SIGTRAP, "swbreak" if 0 in self.breakpoints[address] else "hwbreak")

    def _record_breakpoint(self, address: int) -> None:
        """Searching backwards: note the hit (the state before this instruction)."""
        if address in self.breakpoints:
            self.found.append((self.guest.icount - 1, self._breakpoint_stop(address)))

    def _watch_hook(self, kind: int, va: int, pa: int, length: int
                    ) -> Callable[[bool, int, int, int], None]:
        """The memory hook for `length` watched bytes at virtual `va`, physical `pa`."""
        reason = WATCH_KINDS[kind]

        def hook(is_write: bool, address: int, size: int, value: int) -> None:
            if (kind == 2 and not is_write) or (kind == 3 and is_write):
                return
            stop = Stop(SIGTRAP, reason, va + min(max(address - pa, 0), length - 1))
            if self.mode == SEARCH:
                # Going backwards, gdb stops before the instruction that made the access.
                self.found.append((self.guest.icount - 1, stop))
            elif self.mode in (CONTINUE, STEP) and self.hit is None:
                self.hit = stop
                self.guest.pause_after()
        return hook

    # -- resuming --------------------------------------------------------------------------------
    def _resume(self, mode: str, addr: bytes) -> None:
        """`c`/`s` [addr]: run on, stepping over a breakpoint at EIP first."""
        guest = self.guest
        if addr:
            guest.cpu.set_reg(Reg.EIP, int(addr, 16))
            self._diverged()
        self.mode = mode
        eip = guest.cpu.reg(Reg.EIP)
        self.step_from, self.step_eip, self.step_faults = guest.icount, eip, guest.stats.page_fills
        if eip in self.breakpoints:
            self.step_over = eip
            self.step_over_faults = guest.stats.page_fills
        return None

    def _end_step_over(self, guest: Guest) -> None:
        """After the one-instruction run over a breakpoint: arm it again, unless the
        instruction is still in progress at the same address (a `rep` string instruction
        between iterations, or a retry after the Host mapped a page), which it finishes."""
        address, self.step_over = self.step_over, None
        if guest.cpu.reg(Reg.EIP) != address or self.hit is not None or self.mode != CONTINUE:
            return
        if guest.stats.page_fills != self.step_over_faults or self._repeats_in_place(address):
            self.step_over = address
            self.step_over_faults = guest.stats.page_fills

    def _repeats_in_place(self, address: int) -> bool:
        """Is the instruction at `address` a `rep`-prefixed string instruction?"""
        decoded = self.guest.paging.opcode_at(address)
        return decoded is not None and bool(decoded[0] & {0xF2, 0xF3}) \
            and decoded[1] in STRING_OPS

    def _v_cont(self, args: bytes) -> bytes | None:
        for action in args.split(b";"):
            verb, _, thread = action.partition(b":")
            if thread not in (b"", b"1", b"-1", b"p1.1", b"p1.-1"):
                continue
            if verb[:1] in (b"c", b"C"):
                return self._resume(CONTINUE, b"")
            if verb[:1] in (b"s", b"S"):
                return self._resume(STEP, b"")
        return E_BADARG

    # -- reverse execution -----------------------------------------------------------------------
    def _reverse_step(self) -> bytes | None:
        """`bs`: the state one instruction earlier, by replay from the snapshot before it."""
        timeline, guest = self.timeline, self.guest
        if not timeline.available:
            return b""
        target = guest.icount - 1
        snap = timeline.at_or_before(target)
        if snap is None:
            self._report(Stop(SIGTRAP, "replaylog"))
            return None
        try:
            timeline.restore(snap)
        except TimeTravelError as e:
            return b"E." + str(e).encode()
        self.mode, self.goal, self.goal_stop = REPLAY, target, Stop(SIGTRAP)
        return None

    def _reverse_continue(self) -> bytes | None:
        """`bc`: back to the last breakpoint or watchpoint hit before now, found by replaying
        one snapshot interval at a time, latest first."""
        timeline, guest = self.timeline, self.guest
        if not timeline.available:
            return b""
        self.search_end = guest.icount
        starts = [i for i, s in enumerate(timeline.snapshots) if s.icount < guest.icount]
        if not starts:
            self._report(Stop(SIGTRAP, "replaylog"))
            return None
        self.search_index = starts[-1]
        return self._search_from(self.search_index, guest.icount)

    def _search_from(self, index: int, end: int) -> bytes | None:
        try:
            self.timeline.restore(self.timeline.snapshots[index])
        except TimeTravelError as e:
            self.mode = STOPPED
            return b"E." + str(e).encode()
        self.mode, self.goal, self.found = SEARCH, end, []
        return None

    def _search_segment_done(self) -> Stop | None:
        """A searched interval ran to its end: go to its last hit, or search the one before."""
        hits = [(icount, stop) for icount, stop in self.found if icount < self.search_end]
        snapshots = self.timeline.snapshots
        if hits:
            icount, stop = max(hits, key=lambda h: h[0])
            self.timeline.restore(snapshots[self.search_index])
            self.mode, self.goal, self.goal_stop = REPLAY, icount, stop
            return stop if self.guest.icount >= icount else None
        if self.search_index == 0:
            self.timeline.restore(snapshots[0])
            return Stop(SIGTRAP, "replaylog")
        error = self._search_from(self.search_index - 1, snapshots[self.search_index].icount)
        if error is not None:
            # What came before cannot be replayed: the history gdb can have starts here.
            self.timeline.restore(snapshots[self.search_index])
            self._say(f"gdb: reverse-continue stops here: {error[2:].decode()}")
            return Stop(SIGTRAP, "replaylog")
        self.search_index -= 1
        return None

    # -- ending ----------------------------------------------------------------------------------
    def _detach_packet(self) -> bytes | None:
        self.conn.send(b"OK")
        self._detach()
        return None

    def _detach(self) -> None:
        """gdb leaves: breakpoints and watchpoints go, the guest runs on undisturbed."""
        self._remove_all_points()
        self.timeline.replaying(False)
        self.timeline.clear()
        self.step_over = None
        self.mode = CONTINUE
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _kill(self) -> None:
        self._remove_all_points()
        self.conn.close()
        self.conn = None
        raise DebuggerKill("killed from gdb")

    def close(self, outcome: LgemuExit | None) -> None:
        """The run is over: tell a waiting gdb how it ended, and stop listening."""
        if self.conn is not None:
            if self.mode != STOPPED and outcome is not None:
                self.conn.send(EXIT_REPLIES.get(outcome.status, b"X%02x" % SIGKILL))
            self.conn.close()
            self.conn = None
        self.listener.close()


def control_registers(guest: Guest) -> tuple[int, int, int, int, int]:
    """cr0, cr2, cr3, cr4 as the guest sees them, and the Host's shadow cr3 (target_xml)."""
    cpu = guest.cpu
    cr2 = guest.lg.data.u32(LD_CR2) if guest.lg.data is not None else cpu.reg(Reg.CR2)
    return (cpu.reg(Reg.CR0), cr2, guest.paging.guest_pgdir, cpu.reg(Reg.CR4),
            cpu.reg(Reg.CR3))


def attach_control(stack: ExitStack, guest: Guest, config: BootConfig,
                   stderr: TextIO | None) -> None:
    """Install the gdb stub (`--gdb`, `-s`, `-S`) or the `--stop-at` controller."""
    if config.gdb is None:
        if config.stop_at is not None:
            guest.add_controller(StopAt(config.stop_at), Stage.STEER)
        return
    stub = GdbStub(guest, parse_endpoint(config.gdb), config.gdb_wait, config.stop_at,
                   config.snapshot_every, stderr)
    guest.add_controller(stub, Stage.STEER)
    stack.callback(lambda: stub.close(guest.outcome))
