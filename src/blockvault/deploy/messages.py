"""The messages of a cast (protocol 3): typed, versioned records and their wire form.

Each message is a frozen dataclass named by ``kind``. ``encode`` gives one JSON
object, ``{"v": 4, "type": kind, ...fields}``; ``decode`` checks the version, the
type and every field's type and range before a value is used, since all of them
come from the network. A ``Channel`` carries them over a control connection as
authenticated lines of bounded length (docs/CAST.md, "Control channel").
"""

from __future__ import annotations

import json
import math
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from blockvault.deploy import auth
from blockvault.errors import CastAuthError, CastProtocolError

__all__ = [
    "PROTOCOL",
    "Announce",
    "Bye",
    "Channel",
    "Done",
    "Drop",
    "Error",
    "Hello",
    "Item",
    "Manifest",
    "Message",
    "Need",
    "Overflow",
    "PassEnd",
    "Ready",
    "decode",
]

PROTOCOL = 4  # 4: a data group per session (wire.data_group)
MAX_INT = 1 << 62  # any count or size beyond this is not from an honest peer
MAX_CHUNK = 64 << 20  # bytes of one chunk's plaintext
MAX_GROUP = 0xFFFF  # a fragment index is a u16: so is any group number
TEXT = 1024  # characters of a name or a reason
LINE = 1 << 20  # bytes of a control line other than the manifest
NONCE = 16
_GIVEN: Any = object()  # a getter's value argument when the value is to be looked up


class Fields:
    """A decoded JSON object whose values are taken only through typed, bounded getters."""

    def __init__(self, raw: dict[str, Any], peer: str) -> None:
        self.raw = raw
        self.peer = peer

    def bad(self, detail: str) -> CastProtocolError:
        return CastProtocolError(detail, peer=self.peer)

    def get(self, name: str) -> Any:
        if name not in self.raw:
            raise self.bad(f"{self.raw.get('type')} without {name!r}")
        return self.raw[name]

    def whole(self, name: str, top: int = MAX_INT, value: Any = _GIVEN) -> int:
        v = self.get(name) if value is _GIVEN else value
        if type(v) is not int or not 0 <= v <= top:
            raise self.bad(f"{name} {v!r} is not a whole number from 0 to {top}")
        return v

    def optional(self, name: str, top: int = MAX_INT) -> int | None:
        return None if self.get(name) is None else self.whole(name, top)

    def text(self, name: str, limit: int = TEXT) -> str:
        v = self.get(name)
        if not isinstance(v, str) or len(v) > limit:
            raise self.bad(f"{name} is not a text of at most {limit} characters")
        return v

    def fraction(self, name: str) -> float:
        v = self.get(name)
        if type(v) not in (int, float) or not math.isfinite(v) or not 0 <= v <= 1:
            raise self.bad(f"{name} {v!r} is not a number from 0 to 1")
        return float(v)

    def hex(self, name: str, size: int) -> bytes:
        v = self.text(name, 2 * size)
        try:
            out = bytes.fromhex(v)
        except ValueError:
            out = b""
        if len(out) != size:
            raise self.bad(f"{name} is not {size} bytes in hex")
        return out

    def array(self, name: str, value: Any = _GIVEN, size: int | None = None) -> list[Any]:
        v = self.get(name) if value is _GIVEN else value
        if not isinstance(v, list) or (size is not None and len(v) != size):
            raise self.bad(f"{name} is not a list" + (f" of {size}" if size else ""))
        return v

    def span(self, name: str, value: Any, end: int) -> tuple[int, int]:
        """An (offset, length) pair lying within ``[0, end)``."""
        offset, length = self.array(name, value, 2)
        offset, length = self.whole(name, end, offset), self.whole(name, end, length)
        if offset + length > end:
            raise self.bad(f"{name} {offset}+{length} reaches past {end}")
        return offset, length


class Message:
    kind: ClassVar[str]

    def wire(self) -> dict[str, Any]:
        """The fields in their JSON form (a subclass with nested records overrides it)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def encode(self) -> bytes:
        text = json.dumps({"v": PROTOCOL, "type": self.kind, **self.wire()}, separators=(",", ":"))
        return text.encode()

    @classmethod
    def parse(cls, f: Fields) -> Message:
        raise NotImplementedError


M = TypeVar("M", bound=type[Message])
_KINDS: dict[str, type[Message]] = {}


def _message(kind: str) -> Callable[[M], M]:
    def register(cls: M) -> M:
        cls.kind = kind
        _KINDS[kind] = cls
        return cls

    return register


def decode(line: bytes, peer: str) -> Message:
    """The message in ``line``, every field checked; CastProtocolError otherwise."""
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):
        raise CastProtocolError("not JSON", peer=peer) from None
    if not isinstance(raw, dict):
        raise CastProtocolError("not a JSON object", peer=peer)
    if raw.get("v") != PROTOCOL:
        raise CastProtocolError(
            f"protocol version {raw.get('v')!r}, this blockvault speaks {PROTOCOL}", peer=peer
        )
    cls = _KINDS.get(raw.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise CastProtocolError(f"unknown message type {str(raw.get('type'))[:40]!r}", peer=peer)
    return cls.parse(Fields(raw, peer))


@_message("announce")
@dataclass(frozen=True)
class Announce(Message):
    """Multicast every ANNOUNCE_EVERY: where the control port is and how to key the session."""

    session: str
    session_id: int  # in every data datagram's header: other sessions are dropped at once
    salt: bytes  # with the code, the session's keys
    address: str  # the control listener's address (a datagram's source can be forged)
    port: int
    payload: int  # the sender's largest fragment
    manifest_bytes: int  # the manifest line's length: the receiver reads no more

    def wire(self) -> dict[str, Any]:
        return {**super().wire(), "salt": self.salt.hex()}

    @classmethod
    def parse(cls, f: Fields) -> Announce:
        address = f.text("address", 15)
        try:
            socket.inet_aton(address)
        except (OSError, ValueError):  # ValueError: a NUL inside
            raise f.bad(f"address {address!r} is not IPv4") from None
        return cls(
            f.text("session"),
            f.whole("session_id", 0xFFFFFFFF),
            f.hex("salt", auth.SALT),
            address,
            f.whole("port", 0xFFFF),
            f.whole("payload", 0xFFFF),
            f.whole("manifest_bytes", MAX_INT),
        )


@_message("hello")
@dataclass(frozen=True)
class Hello(Message):
    session: str
    host: str
    payload: int  # the largest fragment this receiver takes (its link's MTU)
    nonce: bytes  # this connection's receiver nonce: the sender's lines cover it

    def wire(self) -> dict[str, Any]:
        return {**super().wire(), "nonce": self.nonce.hex()}

    @classmethod
    def parse(cls, f: Fields) -> Hello:
        return cls(
            f.text("session"), f.text("host"), f.whole("payload", 0xFFFF), f.hex("nonce", NONCE)
        )


@dataclass(frozen=True)
class Item:
    """One chunk of the image: where it goes and which of its bytes are used.

    ``used`` holds region-relative (offset, length) runs inside ``[offset, offset +
    length)``; the target bytes are ``base + offset`` on. ``data`` False: a hole."""

    base: int
    offset: int
    length: int
    used: tuple[tuple[int, int], ...]
    data: bool

    def wire(self) -> list[Any]:
        return [self.base, self.offset, self.length, int(self.data), self.used]

    @classmethod
    def parse(cls, f: Fields, raw: Any, need: int) -> Item:
        base, offset, length, data, used = f.array("item", raw, 5)
        base, offset = f.whole("base", need, base), f.whole("offset", need, offset)
        length = f.whole("length", MAX_CHUNK, length)
        if base + offset + length > need:
            raise f.bad(f"an item at {base}+{offset} of {length} bytes reaches past {need}")
        runs = tuple(f.span("used", run, offset + length) for run in f.array("used", used))
        if any(start < offset for start, _ in runs):
            raise f.bad(f"a used run lies before its chunk at {offset}")
        return cls(base, offset, length, runs, bool(f.whole("data", 1, data)))


@_message("manifest")
@dataclass(frozen=True)
class Manifest(Message):
    snapshot: str
    need: int  # bytes the target must hold
    partition: int | None
    items: tuple[Item, ...]
    data_port: int
    disk_size: int
    sector_size: int
    gpt_backup: tuple[int, int] | None  # where the snapshot's backup GPT lies on its disk

    def wire(self) -> dict[str, Any]:
        return {**super().wire(), "items": [i.wire() for i in self.items]}

    @classmethod
    def parse(cls, f: Fields) -> Manifest:
        need, disk_size = f.whole("need"), f.whole("disk_size")
        backup = f.get("gpt_backup")
        sector_size = f.whole("sector_size", 1 << 16)
        if sector_size < 512 or sector_size & (sector_size - 1):
            raise f.bad(f"sector size {sector_size} is not a power of two from 512")
        return cls(
            f.text("snapshot", 128),
            need,
            f.optional("partition", 1 << 16),
            tuple(Item.parse(f, raw, need) for raw in f.array("items")),
            f.whole("data_port", 0xFFFF),
            disk_size,
            sector_size,
            None if backup is None else f.span("gpt_backup", backup, disk_size),
        )


@_message("ready")
@dataclass(frozen=True)
class Ready(Message):
    @classmethod
    def parse(cls, f: Fields) -> Ready:
        return cls()


@_message("pass")
@dataclass(frozen=True)
class PassEnd(Message):
    """A pass is over: ``sent`` datagrams went out; the receiver answers with Need."""

    number: int
    sent: int

    @classmethod
    def parse(cls, f: Fields) -> PassEnd:
        return cls(f.whole("number"), f.whole("sent"))


@_message("need")
@dataclass(frozen=True)
class Need(Message):
    """What a receiver still lacks after pass ``number``: chunks, each with the groups
    it misses (None: the whole chunk); and the share of datagrams it did not get."""

    number: int
    chunks: tuple[tuple[int, tuple[int, ...] | None], ...]
    loss: float

    @classmethod
    def parse(cls, f: Fields) -> Need:
        chunks = []
        for entry in f.array("chunks"):
            chunk, groups = f.array("chunks", entry, 2)
            missing = None
            if groups is not None:
                missing = tuple(f.whole("group", MAX_GROUP, g) for g in f.array("groups", groups))
            chunks.append((f.whole("chunk", 0xFFFFFFFF, chunk), missing))
        return cls(f.whole("number"), tuple(chunks), f.fraction("loss"))


@_message("overflow")
@dataclass(frozen=True)
class Overflow(Message):
    """The receiver fell behind: its socket dropped datagrams, or its writer chunks."""

    drops: int
    discarded: int

    @classmethod
    def parse(cls, f: Fields) -> Overflow:
        return cls(f.whole("drops"), f.whole("discarded"))


@_message("done")
@dataclass(frozen=True)
class Done(Message):
    written: int  # bytes written, every chunk verified and the target synced

    @classmethod
    def parse(cls, f: Fields) -> Done:
        return cls(f.whole("written"))


@_message("error")
@dataclass(frozen=True)
class Error(Message):
    reason: str

    @classmethod
    def parse(cls, f: Fields) -> Error:
        return cls(f.text("reason"))


@_message("drop")
@dataclass(frozen=True)
class Drop(Message):
    reason: str

    @classmethod
    def parse(cls, f: Fields) -> Drop:
        return cls(f.text("reason"))


@_message("bye")
@dataclass(frozen=True)
class Bye(Message):
    """The session is over (``reason`` says why when it ended early)."""

    reason: str = ""

    @classmethod
    def parse(cls, f: Fields) -> Bye:
        return cls(f.text("reason"))


class Channel:
    """One control connection: messages as authenticated lines of bounded length.

    A line is ``tag-hex SP json LF``; the tag covers the direction, the line's
    sequence number in that direction, the connection's nonces and the JSON. The
    sender opens with an untagged challenge (its nonce); the receiver's Hello is
    tagged over that nonce and brings the receiver's own, which every later line
    covers too. So a line recorded on one connection, or earlier on the same one,
    does not verify again: replays are refused.
    """

    def __init__(self, sock: socket.socket, key: bytes, *, sender: bool, peer: str) -> None:
        self.sock = sock
        self.key = key
        self.peer = peer
        self.file = sock.makefile("rb")
        self.mine, self.theirs = (b"S", b"R") if sender else (b"R", b"S")
        self.sent = self.got = 0
        self.nonces = b""
        self.lock = threading.Lock()

    def challenge(self) -> None:
        """The sender's first line: a fresh nonce, untagged."""
        self.nonces = secrets.token_bytes(NONCE)
        line = json.dumps({"v": PROTOCOL, "type": "challenge", "nonce": self.nonces.hex()})
        self.sock.sendall(line.encode() + b"\n")

    def answer(self, hello: Callable[[bytes], Hello]) -> None:
        """The receiver's side of the opening: read the challenge, send ``hello(nonce)``."""
        fields_ = Fields(self._json(self._line(256)), self.peer)
        if fields_.raw.get("type") != "challenge" or fields_.raw.get("v") != PROTOCOL:
            raise fields_.bad(f"{str(fields_.raw.get('type'))[:40]!r} instead of a challenge")
        self.nonces = fields_.hex("nonce", NONCE)
        nonce = secrets.token_bytes(NONCE)
        self.send(hello(nonce))
        self.nonces += nonce

    def greeted(self) -> Hello:
        """The sender's side of the opening: the receiver's tagged Hello."""
        message = self.read(4096)
        if not isinstance(message, Hello):
            raise CastProtocolError(f"{message and message.kind} before hello", peer=self.peer)
        self.nonces += message.nonce
        return message

    def send(self, message: Message) -> None:
        body = message.encode()
        with self.lock:
            mac = auth.tag(self.key, self._covered(self.mine, self.sent, body))
            self.sent += 1
            self.sock.sendall(mac.hex().encode() + b" " + body + b"\n")

    def read(self, limit: int = LINE) -> Message | None:
        """The next message (None when the peer closed); CastAuthError when its tag is
        wrong, CastProtocolError when it is too long or malformed."""
        line = self._line(limit)
        if not line:
            return None
        mac, _, body = line.partition(b" ")
        try:
            tag = bytes.fromhex(mac.decode("ascii"))
        except ValueError:
            tag = b""
        if not auth.verify(self.key, self._covered(self.theirs, self.got, body), tag):
            raise CastAuthError(f"a control message from {self.peer} failed authentication")
        self.got += 1
        return decode(body, self.peer)

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def _covered(self, direction: bytes, number: int, body: bytes) -> bytes:
        return direction + number.to_bytes(8, "big") + self.nonces + body

    def _line(self, limit: int) -> bytes:
        line = self.file.readline(limit + 1)
        if line and not line.endswith(b"\n"):
            detail = f"a line longer than {limit} bytes" if len(line) > limit else "a cut line"
            raise CastProtocolError(detail, peer=self.peer)
        return line[:-1]

    def _json(self, line: bytes) -> dict[str, Any]:
        try:
            raw = json.loads(line)
        except (ValueError, RecursionError):
            raw = None
        if not isinstance(raw, dict):
            raise CastProtocolError("not a JSON object", peer=self.peer)
        return raw
