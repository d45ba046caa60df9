"""A minimal gdb remote-protocol client, for tests and benchmarks that talk to the stub
packet by packet (real gdb is used where the test is about gdb itself).

    client = RspClient.connect(port)
    client.command("qSupported:swbreak+")    # → the reply payload, as str
    client.send("c"); client.interrupt(); client.reply()

Every wait has a timeout, so a broken stub fails the test instead of hanging it.
"""

from __future__ import annotations

import socket
import time

TIMEOUT = 30.0


class RspClient:
    """One connection to a gdb stub."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(TIMEOUT)
        self.buffer = b""

    @classmethod
    def connect(cls, port: int, timeout: float = TIMEOUT) -> RspClient:
        """Connect to 127.0.0.1:`port`, retrying while the stub is not listening yet."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return cls(socket.create_connection(("127.0.0.1", port), timeout=timeout))
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def send(self, payload: str | bytes) -> None:
        """Send one packet."""
        data = payload.encode() if isinstance(payload, str) else payload
        self.sock.sendall(b"$%s#%02x" % (data, sum(data) & 0xFF))

    def reply(self) -> str | None:
        """The next packet from the stub (acknowledged), or None if it closed."""
        while True:
            self.buffer = self.buffer.lstrip(b"+")
            end = self.buffer.find(b"#")
            if self.buffer.startswith(b"$") and end >= 0 and len(self.buffer) >= end + 3:
                payload, self.buffer = self.buffer[1:end], self.buffer[end + 3:]
                self.sock.sendall(b"+")
                return payload.decode("latin-1")
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data

    def command(self, payload: str | bytes) -> str | None:
        """Send a packet and return the reply."""
        self.send(payload)
        return self.reply()

    def interrupt(self) -> None:
        """Ctrl-C."""
        self.sock.sendall(b"\x03")

    def close(self) -> None:
        self.sock.close()
