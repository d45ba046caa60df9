"""The virtio console (type 3, §12.1): queue 0 is input, queue 1 is output.

Output buffers are written to the host's stdout byte for byte and returned at once: the
2.6.24 driver spins until its buffer comes back, so the kick is served before the guest runs
on.  Early-console strings (NOTIFY on a plain address) go to the same sink.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from ..abi import DeviceType
from .base import Device
from .vring import Vring

INPUT_QUEUE, OUTPUT_QUEUE = 0, 1


class ConsoleOutput:
    """Where guest console bytes go: a binary stream, flushed per write."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream: BinaryIO | None = stream
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        """Write guest bytes exactly (no newline translation).  If the reader has gone
        (`lgemu boot | head`), the rest is discarded and the guest runs on."""
        if not data or self.stream is None:
            return
        try:
            self.stream.write(data)
            self.stream.flush()
        except BrokenPipeError:
            self._discard()
            return
        self.bytes_written += len(data)

    def _discard(self) -> None:
        # Point the descriptor at /dev/null so the interpreter's own flush at exit is quiet.
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):
            pass
        self.stream = None


class Console(Device):
    """hvc0: the guest's console."""

    type = DeviceType.CONSOLE
    name = "console"
    num_queues = 2

    def __init__(self, output: ConsoleOutput) -> None:
        super().__init__()
        self.output = output

    def kick(self, queue: Vring) -> None:
        if queue is not self.queues[OUTPUT_QUEUE]:
            return  # input buffers posted: console input is served by the input side
        returned = False
        while (chain := queue.pop()) is not None:
            data = queue.gather(chain.readable)
            self.output.write(data)
            queue.push(chain.head, len(data))
            returned = True
        if returned:
            self.interrupt(queue)
