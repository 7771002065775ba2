"""Data datagrams (chunk fragments + XOR parity over groups of fragments, each with
its tag) and the multicast sockets; the control messages are in ``messages``.

Our own protocol, described in docs/CAST.md.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from blockvault.deploy import auth

ANNOUNCE_GROUP = "239.255.77.1"
ANNOUNCE_PORT = 9521
DATA_GROUPS = "239.255.128.0/17"  # a session's data group is one of these (data_group)
DATA_PORT = 9522
GROUP = 8  # data fragments per XOR parity fragment
# magic, session id, pass, chunk, fragment, fragments, chunk body size, payload size;
# the fragment follows, then the tag (auth.TAG bytes) of header and fragment
HEADER = struct.Struct(">4sIIIHHIH")
MAGIC = b"BVC4"
NONCE = slice(8, 20)  # pass, chunk, fragment, fragments: the GMAC nonce (auth.DataTags)
OVERHEAD = HEADER.size + auth.TAG  # bytes of a datagram besides its fragment
IP_UDP = 28  # IPv4 (no options) + UDP header bytes
MIN_PAYLOAD = 512  # an MTU below 576 is not worth a cast
MAX_PAYLOAD = 65507 - OVERHEAD  # largest UDP payload over IPv4, less header and tag
DEFAULT_MTU = 1500
SIOCGIFMTU = 0x8921  # <linux/sockios.h>
IP_MTU = 14  # <linux/in.h>: the route's MTU on a connected socket
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # <asm-generic/socket.h>: root may pass the sysctl caps


def data_group(session_id: int) -> str:
    """The multicast group of a session's data, from its announced id: sessions on one
    network each get their own (2^15 groups, all distinct in the 23 bits an Ethernet
    multicast address keeps), so a receiver's card and kernel drop another session's
    data instead of its Python loop. Two sessions that draw one group still work:
    each receiver drops the other's datagrams by session id (``foreign``)."""
    return str(ipaddress.IPv4Address(0xEFFF8000 | (session_id & 0x7FFF)))


def payload_for(mtu: int) -> int:
    """Fragment bytes that fit one unfragmented datagram on a link of ``mtu``."""
    return max(MIN_PAYLOAD, min(MAX_PAYLOAD, mtu - IP_UDP - OVERHEAD))


def link_mtu(interface: str | None) -> int:
    """The MTU of ``interface``, or of the route to the data group when None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            if interface:
                request = struct.pack("16s16x", interface.encode())
                ifreq = fcntl.ioctl(s.fileno(), SIOCGIFMTU, request)
                return int(struct.unpack_from("i", ifreq, 16)[0])
            s.connect((data_group(0), DATA_PORT))
            return int(s.getsockopt(socket.IPPROTO_IP, IP_MTU))
        except OSError:
            return DEFAULT_MTU


@dataclass(frozen=True)
class Framer:
    """Frames chunk bodies into tagged datagrams for one pass of one session."""

    session_id: int
    tags: auth.DataTags  # from the session's data key
    number: int  # the pass: a receiver drops datagrams of passes before the latest

    def datagrams(
        self,
        chunk: int,
        body: bytes,
        payload: int,
        groups: set[int] | None = None,
        parity: bool = True,
    ) -> tuple[bytearray, list[int]]:
        """The datagrams carrying ``body`` (only ``groups``, when given), back to back in
        one buffer, and their bounds (datagram k is ``buffer[bounds[k]:bounds[k + 1]]``):
        each group's data fragments followed, with ``parity``, by its parity fragment."""
        size = len(body)
        count = max(1, -(-size // payload))
        if count > 0xFFFF:
            raise ValueError(f"chunk {chunk}: {size} bytes need more than 65535 fragments")
        view = memoryview(body)
        out = bytearray()
        bounds = [0]
        pack, encrypt, nonce = HEADER.pack, self.tags.aead.encrypt, NONCE
        head = (MAGIC, self.session_id, self.number, chunk)

        def put(index: int, piece: bytes | memoryview) -> None:
            framed = pack(*head, index, count, size, payload) + piece
            out.extend(framed)
            out.extend(encrypt(framed[nonce], b"", framed))  # the GMAC tag
            bounds.append(len(out))

        for g in range(-(-count // GROUP)):
            if groups is not None and g not in groups:
                continue
            members = range(g * GROUP, min((g + 1) * GROUP, count))
            for i in members:
                put(i, view[i * payload : (i + 1) * payload])
            if parity:
                put(count + g, xor([view[i * payload : (i + 1) * payload] for i in members]))
        return out, bounds


def xor(pieces: Sequence[bytes | memoryview]) -> bytes:
    """XOR of ``pieces``, each padded with zeros to the longest."""
    width = max(len(p) for p in pieces)
    acc = 0
    for p in pieces:
        acc ^= int.from_bytes(p, "little")  # little endian: short pieces pad at the top
    return acc.to_bytes(width, "little")


class Assembly:
    """One chunk body being received: its fragments are copied into place as they
    arrive, and one loss per group is rebuilt from the group's parity.

    Work per datagram is a copy and a few counters; the XOR runs only for a group
    that lost exactly one fragment.
    """

    __slots__ = ("body", "count", "got", "group_have", "have", "parity", "payload", "size")

    def __init__(self, count: int, size: int, payload: int) -> None:
        self.count = count
        self.size = size
        self.payload = payload
        self.body = bytearray(size)
        self.got = bytearray(count)  # 1 where the data fragment is in place
        self.group_have = bytearray(-(-count // GROUP))  # data fragments in place per group
        self.have = 0
        self.parity: dict[int, bytes] = {}

    def width(self, index: int) -> int:
        """Bytes of data fragment ``index`` (of parity fragment ``count + g``: its group's
        first member's width)."""
        if index >= self.count:
            index = (index - self.count) * GROUP
        return min(self.payload, self.size - index * self.payload)

    def add(self, index: int, data: memoryview) -> bool:
        """Take fragment ``index``; True once the whole body is in place."""
        if index < self.count:
            n = len(data)
            last = index == self.count - 1
            if self.got[index] or ((n != self.payload or last) and n != self.width(index)):
                return False
            self.got[index] = 1
            start = index * self.payload
            self.body[start : start + n] = data
            group = index // GROUP
            self.group_have[group] += 1
            self.have += 1
            if self.have == self.count:
                return True
            if group in self.parity:
                self._repair(group)
        else:
            group = index - self.count
            if group >= len(self.group_have) or group in self.parity:
                return False
            if self.group_have[group] == self._members(group) or len(data) != self.width(index):
                return False  # the usual case: nothing lost, the parity is not needed
            self.parity[group] = bytes(data)
            self._repair(group)
        return self.have == self.count

    def missing_groups(self) -> list[int]:
        return [g for g, have in enumerate(self.group_have) if have < self._members(g)]

    def _members(self, group: int) -> int:
        return min(GROUP, self.count - group * GROUP)

    def _repair(self, group: int) -> None:
        first = group * GROUP
        members = range(first, first + self._members(group))
        if self.group_have[group] != len(members) - 1:
            return
        (lost,) = [i for i in members if not self.got[i]]
        p, view = self.payload, memoryview(self.body)
        others = [view[i * p : i * p + self.width(i)] for i in members if i != lost]
        width = self.width(lost)
        self.body[lost * p : lost * p + width] = xor([self.parity[group], *others])[:width]
        self.got[lost] = 1
        self.group_have[group] += 1
        self.have += 1


def interface_address(name: str | None) -> str:
    """The IPv4 address of interface ``name`` (without one, the address the routing
    table sends multicast from): the sockets of a cast bind to it, never to all."""
    if not name:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((data_group(0), DATA_PORT))
            except OSError as exc:
                raise OSError(f"no route to multicast ({exc.strerror}): pass --interface") from None
            return str(s.getsockname()[0])
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
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    if interface != "0.0.0.0":
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
    return s


def multicast_listener(group: str, port: int, interface: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:  # as root past net.core.rmem_max: a burst must not overflow while Python is busy
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    s.bind((group, port))
    membership = socket.inet_aton(group) + socket.inet_aton(interface)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    return s


def receive_timeout(sock: socket.socket, seconds: float) -> None:
    """A kernel receive timeout on a blocking socket: one system call per receive
    (a Python socket timeout polls before every receive)."""
    sock.settimeout(None)
    micros = int(seconds * 1_000_000)
    timeval = struct.pack("ll", micros // 1_000_000, micros % 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)


SO_MEMINFO = 55  # <asm-generic/socket.h>: u32 counters, SK_MEMINFO_DROPS is the ninth


def socket_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped on ``sock`` because its buffer was full (0 where
    the counter cannot be read)."""
    try:
        return int(
            struct.unpack_from("32xI", sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[0]
        )
    except (OSError, struct.error):
        return 0
