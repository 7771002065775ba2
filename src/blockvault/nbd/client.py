"""A small NBD client: reads an export (``qemu-nbd`` serving a VM disk) by offset, with
its holes from ``base:allocation`` block status.

A ``Client`` is itself an ``Export`` (``size``, ``read_at``, ``extents``), so what it
reads can be backed up, or served again. It negotiates fixed newstyle, structured
replies and ``base:allocation`` and sends one request at a time (a lock makes it safe to
share between threads). The server is not trusted either: every reply must answer the
request just sent, stay inside it and fit its bounds, or ``NbdError`` is raised.
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
from collections.abc import Iterator
from types import TracebackType

from blockvault.errors import NbdError
from blockvault.nbd import wire

__all__ = ["Client"]

MAX_REPLIES = 4096  # option replies the server may send to one option
_ZEROS = memoryview(bytes(wire.MAX_REQUEST))  # what a hole chunk reads as (pages never touched)


class Client:
    """One connection to one export, in transmission phase once constructed."""

    def __init__(self, sock: socket.socket, peer: str, export_name: str = "") -> None:
        self.sock = sock
        self.peer = peer
        self.size = 0
        self.flags = 0
        self.max_request = wire.MAX_REQUEST
        self.structured = False  # the server agreed to structured replies
        self.allocation = False  # ... and to base:allocation
        self._context = 0
        self._cookie = 0
        self._lock = threading.Lock()
        try:
            self._handshake(export_name)
        except (OSError, EOFError) as error:
            sock.close()
            raise NbdError(f"handshake failed: {error}", peer=peer) from None
        except BaseException:
            sock.close()
            raise

    @classmethod
    def connect(cls, uri: str, *, timeout: float | None = 60.0) -> Client:
        """Connect to ``nbd+unix:///NAME?socket=PATH`` or ``nbd://HOST[:PORT]/NAME``."""
        parts = urllib.parse.urlsplit(uri)
        name = urllib.parse.unquote(parts.path.removeprefix("/"))
        if parts.scheme == "nbd+unix":
            path = urllib.parse.parse_qs(parts.query).get("socket", [""])[0]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: str | tuple[str, int] = path
        elif parts.scheme == "nbd" and parts.hostname:
            target = (parts.hostname, parts.port or 10809)
            sock = socket.socket(
                socket.AF_INET6 if ":" in parts.hostname else socket.AF_INET, socket.SOCK_STREAM
            )
        else:
            raise NbdError("not an nbd:// or nbd+unix:// URI", peer=repr(uri))
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except OSError as error:
            sock.close()
            raise NbdError(f"cannot connect: {error.strerror or error}", peer=uri) from None
        return cls(sock, uri, name)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Say goodbye (``CMD_DISC``) and close."""
        try:
            with self._lock:
                self.sock.sendall(wire.REQUEST.pack(wire.REQUEST_MAGIC, 0, wire.CMD_DISC, 0, 0, 0))
        except OSError:
            pass
        finally:
            self.sock.close()

    def _fail(self, detail: str) -> NbdError:
        return NbdError(detail, peer=self.peer)

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        self._recv_into(memoryview(buf))
        return bytes(buf)

    def _recv_into(self, view: memoryview) -> None:
        try:
            wire.recv_into_exact(self.sock, view)
        except EOFError as error:
            raise self._fail(str(error)) from None
        except OSError as error:
            raise self._fail(f"reading failed: {error}") from None

    # ---- handshake ------------------------------------------------------------------
    def _handshake(self, name: str) -> None:
        magic, opt_magic, flags = wire.GREETING.unpack(self._recv(wire.GREETING.size))
        if magic != wire.NBDMAGIC or opt_magic != wire.IHAVEOPT:
            raise self._fail("not a newstyle NBD server")
        if not flags & wire.FLAG_FIXED_NEWSTYLE:
            raise self._fail("the server does not speak fixed newstyle")
        mine = wire.FLAG_C_FIXED_NEWSTYLE | (flags & wire.FLAG_NO_ZEROES)
        self.sock.sendall(wire.CLIENT_FLAGS.pack(mine))
        encoded = name.encode()
        if len(encoded) > wire.MAX_STRING:
            raise self._fail(f"export name of {len(encoded)} bytes")
        structured = self._option(wire.OPT_STRUCTURED_REPLY, b"")[0] == wire.REP_ACK
        if structured:
            query = wire.BASE_ALLOCATION.encode()
            data = (
                wire.U32.pack(len(encoded))
                + encoded
                + wire.U32.pack(1)
                + wire.U32.pack(len(query))
                + query
            )
            for kind, body in self._option_replies(wire.OPT_SET_META_CONTEXT, data):
                if kind == wire.REP_META_CONTEXT and body[4:] == query and len(body) >= 4:
                    (self._context,) = wire.U32.unpack(body[:4])
                    self.allocation = True
        self.structured = structured
        wanted = wire.INFO_BLOCK_SIZE.to_bytes(2, "big")
        go = wire.U32.pack(len(encoded)) + encoded + (1).to_bytes(2, "big") + wanted
        have_size = False
        for kind, body in self._option_replies(wire.OPT_GO, go):
            if kind == wire.REP_INFO and len(body) >= 2:
                info = int.from_bytes(body[:2], "big")
                if info == wire.INFO_EXPORT and len(body) == wire.INFO_EXPORT_BODY.size:
                    _, self.size, self.flags = wire.INFO_EXPORT_BODY.unpack(body)
                    have_size = True
                elif info == wire.INFO_BLOCK_SIZE and len(body) == wire.INFO_BLOCK_SIZE_BODY.size:
                    _, _, _, maximum = wire.INFO_BLOCK_SIZE_BODY.unpack(body)
                    self.max_request = max(4096, min(maximum, wire.MAX_REQUEST))
            elif kind & wire.REP_FLAG_ERROR:
                text = body.decode("utf-8", "replace")
                raise self._fail(f"export {name!r} refused ({kind & 0xFFFF}: {text})")
        if not have_size:
            raise self._fail("GO succeeded without naming the export's size")
        self.sock.settimeout(None)

    def _option(self, option: int, data: bytes) -> tuple[int, bytes]:
        """Send an option whose answer is one reply; return (reply type, data)."""
        replies = list(self._option_replies(option, data))
        return replies[-1]

    def _option_replies(self, option: int, data: bytes) -> Iterator[tuple[int, bytes]]:
        """Send an option; yield its replies up to ACK or an error (which ends it too)."""
        self.sock.sendall(wire.OPTION.pack(wire.IHAVEOPT, option, len(data)) + data)
        for _ in range(MAX_REPLIES):
            magic, answered, kind, length = wire.OPTION_REPLY.unpack(
                self._recv(wire.OPTION_REPLY.size)
            )
            if magic != wire.OPTION_REPLY_MAGIC or answered != option:
                raise self._fail(f"bad reply to option {option}")
            if length > wire.MAX_OPTION_DATA:
                raise self._fail(f"option reply of {length} bytes")
            body = self._recv(length)
            yield kind, body
            if kind == wire.REP_ACK or kind & wire.REP_FLAG_ERROR:
                return
        raise self._fail(f"more than {MAX_REPLIES} replies to option {option}")

    # ---- transmission ---------------------------------------------------------------
    def _request(self, command: int, offset: int, length: int, flags: int = 0) -> int:
        self._cookie += 1
        self.sock.sendall(
            wire.REQUEST.pack(wire.REQUEST_MAGIC, flags, command, self._cookie, offset, length)
        )
        return self._cookie

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"[{offset}, +{length}) is outside the export of {self.size} bytes")

    def _chunk(self, cookie: int, limit: int) -> tuple[bool, int, int]:
        """The header of the next structured reply chunk for ``cookie``: (done, type,
        payload length). An error chunk is read and raised; the caller reads the rest."""
        magic, flags, kind, got, length = wire.CHUNK.unpack(self._recv(wire.CHUNK.size))
        if magic != wire.STRUCTURED_REPLY_MAGIC or got != cookie:
            raise self._fail(f"reply magic {magic:#x} for cookie {got} (expected {cookie})")
        if length > limit:
            raise self._fail(f"reply chunk of {length} bytes (limit {limit})")
        if kind & wire.REPLY_TYPE_FLAG_ERROR:
            payload = self._recv(length)
            error = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else 0
            text = payload[6:].decode("utf-8", "replace")
            raise self._fail(f"error {error}: {text}" if text else f"error {error}")
        return bool(flags & wire.REPLY_FLAG_DONE), kind, length

    def read_at(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto_at(buf, offset)
        return bytes(buf)

    def readinto_at(self, buffer: bytearray | memoryview, offset: int) -> None:
        """Fill ``buffer`` from ``offset``, in requests the server's maximum allows;
        the data is received straight into it."""
        view = memoryview(buffer).cast("B")
        self._check(offset, len(view))
        with self._lock:
            for start in range(0, len(view), self.max_request):
                self._read_into(view[start : start + self.max_request], offset + start)

    def _read_into(self, view: memoryview, offset: int) -> None:
        length = len(view)
        cookie = self._request(wire.CMD_READ, offset, length)
        if not self.structured:
            magic, error, got = wire.SIMPLE_REPLY.unpack(self._recv(wire.SIMPLE_REPLY.size))
            if magic != wire.SIMPLE_REPLY_MAGIC or got != cookie:
                raise self._fail(f"simple reply magic {magic:#x} for cookie {got}")
            if error:
                raise self._fail(f"read [{offset}, +{length}) failed: error {error}")
            self._recv_into(view)
            return
        filled, done = 0, False
        while not done:
            done, kind, size = self._chunk(cookie, length + wire.OFFSET.size)
            if kind == wire.REPLY_TYPE_NONE and size == 0:
                continue
            if kind == wire.REPLY_TYPE_OFFSET_DATA and size >= wire.OFFSET.size:
                (at,) = wire.OFFSET.unpack(self._recv(wire.OFFSET.size))
                size -= wire.OFFSET.size
            elif kind == wire.REPLY_TYPE_OFFSET_HOLE and size == wire.OFFSET_HOLE.size:
                at, size = wire.OFFSET_HOLE.unpack(self._recv(wire.OFFSET_HOLE.size))
            else:
                raise self._fail(f"reply chunk of type {kind} to a read")
            if at < offset or at + size > offset + length:
                raise self._fail(f"read reply [{at}, +{size}) outside [{offset}, +{length})")
            target = view[at - offset : at - offset + size]
            if kind == wire.REPLY_TYPE_OFFSET_DATA:
                self._recv_into(target)
            else:
                target[:] = _ZEROS[:size]
            filled += size
        if filled != length:  # chunks may not overlap, so the sum says all was sent
            raise self._fail(f"read [{offset}, +{length}) answered {filled} bytes")

    def extents(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        """``(offset, length, is_hole)`` runs covering the range; all data when the
        server gave no block status."""
        self._check(offset, length)
        if not self.allocation:
            if length:
                yield offset, length, False
            return
        cursor, end = offset, offset + length
        while cursor < end:
            ask = min(end - cursor, 0xFFFF_FFFF // 4096 * 4096)
            with self._lock:
                runs = self._block_status(cursor, ask)
            for size, hole in runs:
                size = min(size, end - cursor)
                yield cursor, size, hole
                cursor += size
                if cursor >= end:
                    break

    def _block_status(self, offset: int, length: int) -> list[tuple[int, bool]]:
        cookie = self._request(wire.CMD_BLOCK_STATUS, offset, length)
        runs: list[tuple[int, bool]] = []
        done = False
        while not done:
            done, kind, length = self._chunk(cookie, wire.MAX_OPTION_DATA * 16)
            payload = self._recv(length)
            count, extra = divmod(len(payload) - wire.U32.size, wire.BLOCK_DESCRIPTOR.size)
            if kind != wire.REPLY_TYPE_BLOCK_STATUS or count < 1 or extra:
                raise self._fail(f"reply chunk of type {kind} to block status")
            (context,) = wire.U32.unpack_from(payload)
            if context != self._context:
                continue
            for k in range(count):
                size, state = wire.BLOCK_DESCRIPTOR.unpack_from(payload, 4 + 8 * k)
                if size == 0:
                    raise self._fail("a block status run of 0 bytes")
                runs.append((size, bool(state & wire.STATE_ZERO)))  # reads as zeros
        if not runs:
            raise self._fail(f"no block status for [{offset}, +{length})")
        return runs
