"""What travels on the wire: control messages (JSON lines over TCP), data datagrams
(chunk fragments + XOR parity over groups of fragments) and the announcement.

Our own protocol, described in docs/CAST.md.
"""

from __future__ import annotations

import fcntl
import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

ANNOUNCE_GROUP = "239.255.77.1"
ANNOUNCE_PORT = 9521
DATA_GROUP = "239.255.77.2"
DATA_PORT = 9522
PAYLOAD = 1400  # fragment bytes: 1400 + header + UDP/IP headers fits a 1500-byte MTU
GROUP = 8  # data fragments per XOR parity fragment
HEADER = struct.Struct(">4sIIHHI")  # magic, session tag, chunk, fragment, fragments, chunk size
MAGIC = b"BVC1"


@dataclass(frozen=True)
class Fragment:
    tag: int
    chunk: int
    index: int  # < count: data; >= count: parity of group index - count
    count: int
    size: int
    payload: bytes


def tag_of(session: str) -> int:
    return int.from_bytes(session.encode()[:16].ljust(4, b"\0")[:4], "big") ^ len(session)


def fragments(tag: int, chunk: int, data: bytes, groups: set[int] | None = None) -> list[bytes]:
    """The datagrams carrying ``data`` (only ``groups``, when given): each group's
    data fragments followed by its parity fragment."""
    count = max(1, -(-len(data) // PAYLOAD))
    out = []
    for g in range(-(-count // GROUP)):
        if groups is not None and g not in groups:
            continue
        members = range(g * GROUP, min((g + 1) * GROUP, count))
        pieces = [data[i * PAYLOAD : (i + 1) * PAYLOAD] for i in members]
        out += [
            HEADER.pack(MAGIC, tag, chunk, i, count, len(data)) + p
            for i, p in zip(members, pieces, strict=True)
        ]
        out.append(HEADER.pack(MAGIC, tag, chunk, count + g, count, len(data)) + xor(pieces))
    return out


def xor(pieces: list[bytes]) -> bytes:
    width = max(len(p) for p in pieces)
    acc = 0
    for p in pieces:
        acc ^= int.from_bytes(p.ljust(width, b"\0"), "little")
    return acc.to_bytes(width, "little")


def parse(datagram: bytes) -> Fragment | None:
    if len(datagram) < HEADER.size or datagram[:4] != MAGIC:
        return None
    _, tag, chunk, index, count, size = HEADER.unpack_from(datagram)
    return Fragment(tag, chunk, index, count, size, datagram[HEADER.size :])


class Assembly:
    """The fragments of one chunk received so far; repairs one loss per group.

    Work per datagram is constant: only the arriving fragment's group is looked at.
    """

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = size
        self.pieces: dict[int, bytes] = {}
        self.parity: dict[int, bytes] = {}
        self.have = [0] * (-(-count // GROUP))  # data fragments held per group

    def add(self, frag: Fragment) -> bytes | None:
        if frag.index < self.count:
            if frag.index in self.pieces:
                return None
            self.pieces[frag.index] = frag.payload
            group = frag.index // GROUP
            self.have[group] += 1
        else:
            group = frag.index - self.count
            if group >= len(self.have):
                return None
            self.parity[group] = frag.payload
        self._repair(group)
        if len(self.pieces) < self.count:
            return None
        return b"".join(self.pieces[i] for i in range(self.count))

    def missing_groups(self) -> list[int]:
        return [g for g, have in enumerate(self.have) if have < min(GROUP, self.count - g * GROUP)]

    def _repair(self, group: int) -> None:
        members = range(group * GROUP, min((group + 1) * GROUP, self.count))
        parity = self.parity.get(group)
        if parity is None or self.have[group] != len(members) - 1:
            return
        (i,) = [j for j in members if j not in self.pieces]
        width = min(PAYLOAD, self.size - i * PAYLOAD)
        self.pieces[i] = xor([parity, *(self.pieces[j] for j in members if j != i)])[:width]
        self.have[group] += 1


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")


class Lines:
    """JSON messages from a TCP stream, one per line."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def read(self) -> dict[str, Any] | None:
        line = self.file.readline()
        if not line:
            return None
        message: dict[str, Any] = json.loads(line)
        return message


def interface_address(name: str | None) -> str:
    """The IPv4 address of interface ``name`` ("0.0.0.0" for the default route)."""
    if not name:
        return "0.0.0.0"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
        except OSError as exc:
            raise OSError(f"interface {name}: {exc.strerror}") from None
    return socket.inet_ntoa(packed[20:24])


def multicast_sender(interface: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if interface != "0.0.0.0":
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    return s


def multicast_listener(group: str, port: int, interface: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.bind((group, port))
    membership = socket.inet_aton(group) + socket.inet_aton(interface)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    return s
