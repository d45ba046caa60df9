"""`lgemu lab --workers N`: the lab's guests run in N worker processes, with the same bytes.

The scheduler's windows make this possible (`scheduler.py`): inside a window no guest can
receive what another sends in it.  The lab is built in the main process, then forked: worker k
runs the guests whose index is k modulo N.  For every window the main process sends each
worker the window's end and the frames that are now on their way to its guests; the worker
advances them exactly as the main process would, and answers with what each guest sent (with
its send time), its console bytes and how it stands.  The main process then forwards the sent
frames through the switches in guest order and writes the console bytes in guest order: the
order in which one process does both, so the switches' learning, loss and reorder draws, the
capture and stdout come out byte for byte the same.

Not with --workers: traces, coverage, gdb and -v, whose state lives in the worker's copy of a
guest (refused with one line).  A signal ends the lab from the main process; workers ignore
it and are told to stop.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import os
import signal
from multiprocessing.connection import Connection, Pipe
from typing import Any

from ..errors import ExitStatus, InternalError, LgemuExit, PowerDown
from .scheduler import Lab, Member, PrefixedLines
from .switch import SwitchPort


class Ended(LgemuExit):
    """A guest's ending as its worker reported it: the status and the line."""

    def __init__(self, status: int, line: str) -> None:
        super().__init__(line)
        self.status = status
        self.prefix = ""


def _outcome(status: int, line: str) -> LgemuExit:
    return PowerDown(line.removeprefix("lgemu: ")) if status == ExitStatus.POWER_DOWN \
        else Ended(status, line)


class WorkerPool:
    """The worker processes of one lab, driven window by window from the main process.

    The main process keeps every port's frames on their way, as one process would: frames
    the switches forward are also shipped to the owning worker with the next window, and
    each worker reports how many of them its guests took from each port."""

    def __init__(self, lab: Lab, count: int) -> None:
        self.lab = lab
        self.count = count
        self.conns: list[Connection] = []
        self.pids: list[int] = []
        self.state: dict[int, tuple[bool, int | None]] = {}
        self.owner = {id(port): index for index, member in enumerate(lab.members)
                      for port in member.ports}
        self.pending: dict[int, list[tuple[str, int, tuple[int, int, int, bytes]]]] = {}
        for switch in lab.switches.values():
            switch.on_push = self._pushed
        for k in range(count):
            parent, child = Pipe()
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                parent.close()
                for conn in self.conns:
                    conn.close()
                _worker(lab, k, count, child)
            child.close()
            self.conns.append(parent)
            self.pids.append(pid)

    def _pushed(self, port: SwitchPort, entry: tuple[int, int, int, bytes]) -> None:
        self.pending.setdefault(self.owner[id(port)], []).append(
            (port.switch.spec.name, port.number, entry))

    def waiting(self, member: Member) -> tuple[bool, int | None, int | None]:
        """Halted and timer as its worker last said; frames on their way as kept here."""
        halted, deadline = self.state.get(self.lab.members.index(member), (False, None))
        return halted, deadline, self.lab._next_arrival(member)

    def window(self, live: list[Member], end: int) -> None:
        """Run one window in the workers; forward what the guests sent, print their output."""
        lab = self.lab
        indices = [lab.members.index(m) for m in live]
        for k, conn in enumerate(self.conns):
            mine = [i for i in indices if i % self.count == k]
            deliveries = [d for i in mine for d in self.pending.pop(i, [])]
            conn.send(("window", end, mine, deliveries))
        self.pending.clear()  # frames to guests that have ended
        reports: dict[int, Any] = {}
        for conn in self.conns:
            try:
                for report in conn.recv():
                    reports[report[0]] = report
            except (EOFError, OSError):
                for member in live:
                    lab._end(member, InternalError("a lab worker process died"))
                return
        # In guest order, as one process runs them: what each took, printed, sent, and how
        # it ended.
        for index in sorted(reports):
            _, taken, sent, console, ended, halted, deadline = reports[index]
            member = lab.members[index]
            for port, count in zip(member.ports, taken, strict=True):
                for _ in range(count):
                    heapq.heappop(port.inbox)
            if console and isinstance(member.console, PrefixedLines):
                member.console.stream.write(console)
                member.console.stream.flush()
            for switch_name, port_number, sent_ns, frame in sent:
                switch = lab.switches[switch_name]
                switch.forward(switch.ports[port_number], frame, sent_ns)
            self.state[index] = (halted, deadline)
            if ended is not None:
                lab._end(member, _outcome(*ended))

    def close(self) -> None:
        """Tell the workers to stop, and wait for them."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
            conn.close()
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _worker(lab: Lab, k: int, count: int, conn: Connection) -> None:
    """A worker's life: run its guests window by window, as the main process asks."""
    status = 0
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # the main process ends the lab
        outboxes: dict[int, list[tuple[str, int, int, bytes]]] = {}
        for index, member in enumerate(lab.members):
            if index % count != k:
                continue
            outbox = outboxes.setdefault(index, [])
            if isinstance(member.console, PrefixedLines):
                member.console.stream = io.BytesIO()  # type: ignore[assignment]
            for port in member.ports:
                def send(frame: bytes, port: Any = port, outbox: Any = outbox) -> bool:
                    outbox.append((port.switch.spec.name, port.number, port.now_ns(), frame))
                    return True
                port.send = send  # type: ignore[method-assign]
        while True:
            message = conn.recv()
            if message[0] != "window":
                break
            _, end, mine, deliveries = message
            for switch_name, port_number, entry in deliveries:
                heapq.heappush(lab.switches[switch_name].ports[port_number].inbox, entry)
            before = {index: [len(p.inbox) for p in lab.members[index].ports] for index in mine}
            for index in mine:
                lab.advance(lab.members[index], end)
            reports = []
            for index in mine:
                member = lab.members[index]
                console = b""
                if isinstance(member.console, PrefixedLines):
                    buffer = member.console.stream
                    console = buffer.getvalue()  # type: ignore[attr-defined]
                    buffer.seek(0)
                    buffer.truncate()
                outcome = member.outcome
                ended = None if outcome is None else (outcome.status, outcome.line())
                # A guest that ended dropped the rest; the main process does so too.
                taken = [n - len(p.inbox) if outcome is None else 0
                         for n, p in zip(before[index], member.ports, strict=True)]
                reports.append((index, taken, outboxes[index][:], console, ended,
                                member.guest.interrupts.halted,
                                member.guest.clock.deadline_ns))
                outboxes[index].clear()
            conn.send(reports)
    except BaseException:  # the main process reports a dead worker
        status = 70
    finally:
        os._exit(status)
