"""Where a virtio-net device's frames go on the host: a UDP tunnel, a TAP interface, a pcap file.

The 2.6.24 Launcher wired every network device to a TAP interface, which needs root.  lgemu
offers three ends, chosen with `--net`:

* ``udp:LOCALPORT:HOST:PORT`` — each raw Ethernet frame is one UDP datagram.  The socket is
  bound to LOCALPORT (on 127.0.0.1 when HOST is a loopback address) and frames go to
  HOST:PORT; datagrams from anyone but HOST:PORT are ignored.  Two lgemu guests pointed at
  each other's ports share a wire without any privilege.
* ``tap:IFNAME`` — a TAP interface (``/dev/net/tun``, no packet-info header), as lguest had;
  needs CAP_NET_ADMIN or an interface the user owns.
* ``pcap:FILE`` — no wire at all: frames the guest sends are only recorded.
* ``replay:FILE`` — no wire: the frames a udp or tap card recorded with ``,record=FILE``
  arrive again at the same instruction counts (`lgemu.devices.replay`).

Any of them takes ``,mac=XX:XX:XX:XX:XX:XX`` (the guest's MAC address) and the first two
``,pcap=FILE``: every frame sent or received is appended to FILE in the classic pcap format
(LINKTYPE_ETHERNET), stamped with the guest's wall clock, so a pcap-only run is as
reproducible as any other.  Backends never block: `receive` returns what has arrived.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import UserError

MAX_FRAME = 65535  # larger frames are dropped, never gathered
RECEIVE_BATCH = 64  # datagrams taken per poll
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16

# Classic pcap (not pcapng): magic, version 2.4, thiszone, sigfigs, snaplen, linktype.
PCAP_HEADER = struct.Struct("<IHHiIII")
PCAP_RECORD = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len
PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1


class Link:
    """A wire: send frames, receive the ones that arrived, a descriptor to wait on."""

    description = ""

    def send(self, frame: bytes) -> bool:
        """Put one frame on the wire; False if the host refused it (it is dropped)."""
        raise NotImplementedError

    def receive(self) -> list[bytes]:
        """The frames that have arrived (never blocks)."""
        raise NotImplementedError

    def fileno(self) -> int:
        """A descriptor that becomes readable when a frame arrives."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the socket or interface."""


class UdpLink(Link):
    """Frames as UDP datagrams between LOCALPORT and HOST:PORT."""

    def __init__(self, local_port: int, host: str, port: int) -> None:
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as e:
            raise UserError(f"--net udp: cannot resolve {host!r}: {e}") from None
        self.peer = infos[0][4]
        bind_host = "127.0.0.1" if ipaddress.ip_address(self.peer[0]).is_loopback else ""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((bind_host, local_port))
        except OSError as e:
            self.sock.close()
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"--net udp: local port {local_port} is in use") from None
            raise UserError(f"--net udp: cannot bind port {local_port}: {e.strerror}") \
                from None
        self.sock.setblocking(False)
        self.description = f"udp {local_port} → {self.peer[0]}:{self.peer[1]}"

    def send(self, frame: bytes) -> bool:
        try:
            self.sock.sendto(frame, self.peer)
        except OSError:
            return False
        return True

    def receive(self) -> list[bytes]:
        frames = []
        for _ in range(RECEIVE_BATCH):
            try:
                data, source = self.sock.recvfrom(MAX_FRAME + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. an ICMP error reported on the socket
                continue
            if source == self.peer:
                frames.append(data)
        return frames

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


class TapLink(Link):
    """A TAP interface: one read() or write() is one Ethernet frame."""

    def __init__(self, ifname: str) -> None:
        name = ifname.encode()
        if not name or len(name) >= IFNAMSIZ or b"/" in name or b"\0" in name:
            raise UserError(f"--net tap:{ifname}: not a valid interface name")
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise UserError(f"--net tap:{ifname}: cannot open /dev/net/tun: "
                            f"{e.strerror}") from None
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name, IFF_TAP | IFF_NO_PI))
        except OSError as e:
            os.close(self.fd)
            hint = " (needs CAP_NET_ADMIN or a TAP interface you own)" \
                if e.errno in (errno.EPERM, errno.EACCES) else ""
            raise UserError(f"--net tap:{ifname}: {e.strerror}{hint}") from None
        self.description = f"tap {ifname}"

    def send(self, frame: bytes) -> bool:
        try:
            return os.write(self.fd, frame) == len(frame)
        except OSError:
            return False

    def receive(self) -> list[bytes]:
        frames = []
        for _ in range(RECEIVE_BATCH):
            try:
                frames.append(os.read(self.fd, MAX_FRAME + 1))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
        return frames

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class PcapWriter:
    """Frames appended to a classic pcap file (LINKTYPE_ETHERNET)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            raise UserError(f"{path}: is a directory")
        try:
            self.file: BinaryIO | None = path.open("wb")
            self.file.write(PCAP_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, MAX_FRAME,
                                             LINKTYPE_ETHERNET))
            self.file.flush()
        except OSError as e:
            raise UserError(f"{path}: cannot write pcap file: {e.strerror}") from None
        self.frames = 0

    def record(self, frame: bytes, wall_ns: int) -> None:
        """Append one frame stamped `wall_ns` (nanoseconds since the epoch)."""
        if self.file is None:
            return
        seconds, ns = divmod(max(wall_ns, 0), 1_000_000_000)
        try:
            self.file.write(PCAP_RECORD.pack(seconds & 0xFFFFFFFF, ns // 1000, len(frame),
                                             len(frame)) + frame)
            self.file.flush()
        except OSError:
            self.close()  # a full disk stops the capture, not the guest
            return
        self.frames += 1

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None


@dataclass
class NetOption:
    """A parsed `--net` value."""

    kind: str  # "udp", "tap" or "pcap"
    mac: bytes | None = None
    pcap: Path | None = None
    local_port: int = 0
    host: str = ""
    port: int = 0
    ifname: str = ""
    record: Path | None = None  # ,record=FILE (lgemu.devices.replay)
    replay: Path | None = None  # replay:FILE


def parse_mac(text: str) -> bytes:
    """``XX:XX:XX:XX:XX:XX`` → 6 bytes; a usable station address (not multicast, not 0)."""
    parts = text.split(":")
    try:
        if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
            raise ValueError
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise UserError(f"--net: bad MAC address {text!r} (want XX:XX:XX:XX:XX:XX)") \
            from None
    if mac[0] & 1:
        raise UserError(f"--net: MAC address {text} is a multicast address")
    if mac == bytes(6):
        raise UserError(f"--net: MAC address {text} is all zeros")
    return mac


def _port(text: str, what: str, option: str, allow_zero: bool = False) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        port = -1
    if not (0 if allow_zero else 1) <= port <= 0xFFFF:
        raise UserError(f"--net {option}: {what} {text!r} is not a port number")
    return port


def parse_net_option(text: str) -> NetOption:
    """`KIND:ARGS[,mac=…][,pcap=FILE]` → `NetOption` (see the module docstring)."""
    backend, *extras = text.split(",")
    kind, _, args = backend.partition(":")
    if kind == "udp":
        fields = args.split(":")
        if len(fields) != 3 or not fields[1]:
            raise UserError(f"--net {text}: want udp:LOCALPORT:HOST:PORT")
        option = NetOption("udp", local_port=_port(fields[0], "local port", text,
                                                   allow_zero=True),
                           host=fields[1], port=_port(fields[2], "port", text))
    elif kind == "tap":
        option = NetOption("tap", ifname=args)
    elif kind == "replay":
        if not args:
            raise UserError(f"--net {text}: want replay:FILE")
        option = NetOption("replay", replay=Path(args))
    elif kind == "pcap":
        if not args:
            raise UserError(f"--net {text}: want pcap:FILE")
        option = NetOption("pcap", pcap=Path(args))
    else:
        raise UserError(f"--net {text}: unknown kind {kind!r} (udp:LOCALPORT:HOST:PORT, "
                        "tap:IFNAME, replay:FILE or pcap:FILE)")
    for extra in extras:
        key, _, value = extra.partition("=")
        if key == "mac" and option.mac is None:
            option.mac = parse_mac(value)
        elif key == "pcap" and option.pcap is None and value:
            option.pcap = Path(value)
        elif key == "record" and option.record is None and value \
                and option.kind in ("udp", "tap"):
            option.record = Path(value)
        else:
            raise UserError(f"--net {text}: unexpected {extra!r} (mac=XX:..., pcap=FILE, "
                            "and record=FILE on udp and tap)")
    return option


def open_link(option: NetOption) -> Link | None:
    """The wire an option names (None for pcap-only)."""
    if option.kind == "udp":
        return UdpLink(option.local_port, option.host, option.port)
    if option.kind == "tap":
        return TapLink(option.ifname)
    return None
