"""A read-only NBD server for anything that reads by offset and knows its holes.

``serving(export)`` listens on a UNIX socket or a TCP address and answers each client
in its own thread until the ``with`` block ends. One export, named ``""`` (the default
name every client asks for). Handshake: fixed newstyle with ``OPT_GO``/``INFO``/
``EXPORT_NAME``/``LIST``/``ABORT``, structured replies and the ``base:allocation``
meta context, so that ``qemu-img convert`` and ``nbdcopy`` skip holes without reading
them. Transmission: ``READ``, ``BLOCK_STATUS``, ``DISC``; writes, trims and zeroing are
answered ``EPERM``.

A peer is not trusted: every length it sends is bounded before anything is allocated
(option data 64 KiB, names 4 KiB, a request 32 MiB, reads inside the export). A peer
that breaks the protocol loses its own connection, with one log line; the server and
the other clients go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from blockvault.errors import BlockvaultError
from blockvault.nbd import wire

__all__ = ["Export", "serving"]

log = logging.getLogger(__name__)

EXPORT_NAME = ""
CONTEXT_ID = 1  # our only meta context, base:allocation
MAX_CLIENTS = 16  # connections served at once; more are closed at once with a log line
WORKERS = 2  # threads answering one connection's reads (each holds up to 32 MiB)
QUEUED = 16  # requests of one connection accepted and not yet answered
MAX_OPTIONS = 256  # options one client may send before transmission
MAX_DESCRIPTORS = 16384  # block-status runs in one reply; the client asks again for the rest
HANDSHAKE_TIMEOUT = 60.0  # seconds a client may take per handshake message


class Export(Protocol):
    """What the server exports: a size, reads by offset, and where the holes are."""

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (always inside ``size``); safe across threads."""
        ...

    def extents(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        """``(offset, length, is_hole)`` runs covering ``[offset, offset + length)`` in
        order; a hole reads as zeros and is never read."""
        ...


class PeerError(Exception):
    """A client broke the protocol: its connection is closed (never leaves this module)."""


@contextlib.contextmanager
def serving(
    export: Export,
    *,
    socket_path: str | None = None,
    address: tuple[str, int] | None = None,
) -> Iterator[str]:
    """Serve ``export`` read-only until the block ends; yields the NBD URI.

    Without ``socket_path`` or ``address`` the socket is a private one in a new
    directory only this user can enter, removed afterwards. An address with port 0
    gets a free port (the URI names it).
    """
    if socket_path is not None and address is not None:
        raise ValueError("serve on a socket path or an address, not both")
    with contextlib.ExitStack() as stack:
        if address is not None:
            listener, uri = _listen_tcp(*address)
        else:
            if socket_path is None:
                private = stack.enter_context(tempfile.TemporaryDirectory(prefix="bv-nbd-"))
                socket_path = os.path.join(private, "nbd.sock")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(socket_path)
            stack.callback(_unlink, socket_path)
            uri = f"nbd+unix:///?socket={socket_path}"
        stack.callback(listener.close)
        listener.listen(16)
        server = _Server(export, listener)
        stack.callback(server.stop)
        server.start()
        yield uri


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _listen_tcp(host: str, port: int) -> tuple[socket.socket, str]:
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(sockaddr)
    bound = listener.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return listener, f"nbd://{shown}:{bound}"


class _Server:
    """The accept loop and the live connections, stopped together."""

    def __init__(self, export: Export, listener: socket.socket) -> None:
        self.export = export
        self.listener = listener
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.clients: dict[socket.socket, threading.Thread] = {}
        self.acceptor = threading.Thread(target=self._accept, name="nbd-accept", daemon=True)

    def start(self) -> None:
        self.listener.settimeout(0.2)  # the accept loop looks at `stopping` this often
        self.acceptor.start()

    def stop(self) -> None:
        self.stopping.set()
        self.acceptor.join()
        with self.lock:
            clients = list(self.clients.items())
        for sock, _ in clients:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
        for _, thread in clients:
            thread.join(timeout=10)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self.stopping.is_set():
                    log.exception("nbd: accepting a connection failed; the server stops")
                return
            name = _peer_name(sock, peer)
            with self.lock:
                if len(self.clients) >= MAX_CLIENTS:
                    log.warning("nbd: %s refused: %d clients already connected", name, MAX_CLIENTS)
                    sock.close()
                    continue
                sock.settimeout(None)
                if sock.family != socket.AF_UNIX:  # header and data are sent apart
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                thread = threading.Thread(
                    target=self._serve, args=(sock, name), name=f"nbd {name}", daemon=True
                )
                self.clients[sock] = thread
            thread.start()

    def _serve(self, sock: socket.socket, name: str) -> None:
        try:
            _Connection(self.export, sock).run()
        except PeerError as error:
            log.warning("nbd: %s: %s; connection closed", name, error)
        except (EOFError, ConnectionError, TimeoutError) as error:
            if not self.stopping.is_set():
                log.info("nbd: %s went away: %s", name, error)
        except Exception:  # a bug of ours must cost one connection, never the server
            log.exception("nbd: %s: unexpected error; connection closed", name)
        finally:
            with self.lock:
                self.clients.pop(sock, None)
            sock.close()


def _peer_name(sock: socket.socket, peer: object) -> str:
    if sock.family == socket.AF_UNIX:
        return f"client on {sock.getsockname()}"
    host, port = peer[:2] if isinstance(peer, tuple) else (peer, 0)
    return f"client {host}:{port}"


class _Options:
    """The option-data cursor: every field read is checked against what was sent."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("option data ends early")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def string(self) -> str:
        n = self.u32()
        if n > wire.MAX_STRING:
            raise ValueError(f"a string of {n} bytes (limit {wire.MAX_STRING})")
        return self.take(n).decode("utf-8")

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ValueError(f"{len(self.data) - self.pos} bytes after the option's fields")


class _Connection:
    """One client: the handshake, then requests answered one at a time."""

    def __init__(self, export: Export, sock: socket.socket) -> None:
        self.export = export
        self.sock = sock
        self.structured = False
        self.allocation = False  # base:allocation was selected with SET_META_CONTEXT
        self.sending = threading.Lock()  # replies are sent from the worker threads
        self.queued = threading.BoundedSemaphore(QUEUED)
        self.flags = wire.FLAG_HAS_FLAGS | wire.FLAG_READ_ONLY | wire.FLAG_CAN_MULTI_CONN

    def run(self) -> None:
        self.sock.settimeout(HANDSHAKE_TIMEOUT)
        if self._handshake():
            self.sock.settimeout(None)  # an idle client (a booted guest) may wait for hours
            self._transmit()

    def _recv(self, n: int) -> bytes:
        return wire.recv_exact(self.sock, n)

    # ---- handshake ------------------------------------------------------------------
    def _handshake(self) -> bool:
        """Options until GO or EXPORT_NAME (True: transmission follows) or ABORT."""
        flags = wire.FLAG_FIXED_NEWSTYLE | wire.FLAG_NO_ZEROES
        self.sock.sendall(wire.GREETING.pack(wire.NBDMAGIC, wire.IHAVEOPT, flags))
        (client,) = wire.CLIENT_FLAGS.unpack(self._recv(wire.CLIENT_FLAGS.size))
        known = wire.FLAG_C_FIXED_NEWSTYLE | wire.FLAG_C_NO_ZEROES
        if not client & wire.FLAG_C_FIXED_NEWSTYLE or client & ~known:
            raise PeerError(f"client flags {client:#x}: fixed newstyle is required")
        no_zeroes = bool(client & wire.FLAG_C_NO_ZEROES)
        for _ in range(MAX_OPTIONS):
            magic, option, length = wire.OPTION.unpack(self._recv(wire.OPTION.size))
            if magic != wire.IHAVEOPT:
                raise PeerError(f"option magic {magic:#x} is not IHAVEOPT")
            if length > wire.MAX_OPTION_DATA:
                raise PeerError(
                    f"option {option} carries {length} bytes (limit {wire.MAX_OPTION_DATA})"
                )
            data = self._recv(length)
            if option == wire.OPT_EXPORT_NAME:
                if data.decode("utf-8", "replace") != EXPORT_NAME:
                    raise PeerError("EXPORT_NAME asks for an export that does not exist")
                reply = wire.EXPORT_NAME_REPLY.pack(self.export.size, self.flags)
                self.sock.sendall(reply + (b"" if no_zeroes else bytes(124)))
                return True
            if option == wire.OPT_ABORT:
                self._reply(option, wire.REP_ACK)
                return False
            try:
                if self._option(option, _Options(data)):
                    return True
            except (ValueError, UnicodeDecodeError) as error:
                self._reply(option, wire.REP_ERR_INVALID, str(error).encode())
        raise PeerError(f"more than {MAX_OPTIONS} options")

    def _reply(self, option: int, kind: int, data: bytes = b"") -> None:
        header = wire.OPTION_REPLY.pack(wire.OPTION_REPLY_MAGIC, option, kind, len(data))
        self.sock.sendall(header + data)

    def _option(self, option: int, data: _Options) -> bool:
        """Answer one option; True when it was GO and transmission follows."""
        if option == wire.OPT_LIST:
            data.end()
            ours = EXPORT_NAME.encode()
            self._reply(option, wire.REP_SERVER, wire.U32.pack(len(ours)) + ours)
            self._reply(option, wire.REP_ACK)
        elif option == wire.OPT_STRUCTURED_REPLY:
            data.end()
            self.structured = True
            self._reply(option, wire.REP_ACK)
        elif option in (wire.OPT_INFO, wire.OPT_GO):
            name = data.string()
            wanted = [data.u16() for _ in range(data.u16())]
            data.end()
            if name != EXPORT_NAME:
                self._reply(option, wire.REP_ERR_UNKNOWN, b"no such export")
                return False
            info = wire.INFO_EXPORT_BODY.pack(wire.INFO_EXPORT, self.export.size, self.flags)
            self._reply(option, wire.REP_INFO, info)
            block = (wire.INFO_BLOCK_SIZE, 1, 4096, wire.MAX_REQUEST)
            self._reply(option, wire.REP_INFO, wire.INFO_BLOCK_SIZE_BODY.pack(*block))
            if wire.INFO_NAME in wanted:
                body = wire.INFO_NAME.to_bytes(2, "big") + EXPORT_NAME.encode()
                self._reply(option, wire.REP_INFO, body)
            self._reply(option, wire.REP_ACK)
            return option == wire.OPT_GO
        elif option in (wire.OPT_LIST_META_CONTEXT, wire.OPT_SET_META_CONTEXT):
            self._meta_context(option, data)
        else:
            self._reply(option, wire.REP_ERR_UNSUP, b"not supported by this read-only server")
        return False

    def _meta_context(self, option: int, data: _Options) -> None:
        name = data.string()
        queries = [data.string() for _ in range(data.u32())]
        data.end()
        setting = option == wire.OPT_SET_META_CONTEXT
        if setting and not self.structured:
            self._reply(option, wire.REP_ERR_INVALID, b"negotiate structured replies first")
            return
        if name != EXPORT_NAME:
            self._reply(option, wire.REP_ERR_UNKNOWN, b"no such export")
            return
        if setting:
            chosen = wire.BASE_ALLOCATION in queries
            self.allocation = chosen
        else:
            listed = ("base:", wire.BASE_ALLOCATION)
            chosen = not queries or any(q in listed for q in queries)
        if chosen:
            body = wire.U32.pack(CONTEXT_ID) + wire.BASE_ALLOCATION.encode()
            self._reply(option, wire.REP_META_CONTEXT, body)
        self._reply(option, wire.REP_ACK)

    # ---- transmission ---------------------------------------------------------------
    def _transmit(self) -> None:
        """Read requests in order; answer reads and block status on ``WORKERS`` threads
        (a client such as qemu-img keeps several in flight, and a snapshot's reads
        decompress), the rest at once. Replies may leave out of order, as NBD allows;
        leaving the ``with`` waits for every reply begun."""
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="nbd-io") as pool:
            while True:
                magic, flags, command, cookie, offset, length = wire.REQUEST.unpack(
                    self._recv(wire.REQUEST.size)
                )
                if magic != wire.REQUEST_MAGIC:
                    raise PeerError(f"request magic {magic:#x}")
                if command == wire.CMD_DISC:
                    return
                if command == wire.CMD_WRITE:
                    if length > wire.MAX_REQUEST:
                        raise PeerError(f"write of {length} bytes (limit {wire.MAX_REQUEST})")
                    self._recv(length)  # the payload follows; read it to stay in step
                inside = length > 0 and offset + length <= self.export.size
                if command in (wire.CMD_WRITE, wire.CMD_TRIM, wire.CMD_WRITE_ZEROES):
                    self._error(cookie, wire.EPERM, "the export is read-only")
                elif command == wire.CMD_READ and inside and length <= wire.MAX_REQUEST:
                    self._submit(pool, self._read, cookie, offset, length)
                elif command == wire.CMD_BLOCK_STATUS and inside and self.allocation:
                    one = bool(flags & wire.CMD_FLAG_REQ_ONE)
                    self._submit(pool, self._block_status, cookie, offset, length, one)
                elif command in (wire.CMD_READ, wire.CMD_BLOCK_STATUS):
                    self._error(cookie, wire.EINVAL, f"bad request [{offset}, +{length})")
                else:
                    self._error(cookie, wire.EINVAL, f"command {command} is not supported")

    def _submit(self, pool: ThreadPoolExecutor, work: Callable[..., None], *args: Any) -> None:
        """Answer a request on the pool; at most ``QUEUED`` wait, so a client that sends
        without reading replies stops being read."""
        self.queued.acquire()

        def answer() -> None:
            try:
                work(*args)
            except Exception as error:  # the peer went away mid-reply, or a bug of ours
                if not isinstance(error, OSError):
                    log.exception("nbd: answering a request failed; connection closed")
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)  # the request loop ends too
            finally:
                self.queued.release()

        pool.submit(answer)

    def _error(self, cookie: int, errno: int, message: str) -> None:
        if not self.structured:
            with self.sending:
                self.sock.sendall(wire.SIMPLE_REPLY.pack(wire.SIMPLE_REPLY_MAGIC, errno, cookie))
            return
        text = message.encode()[: wire.MAX_STRING]
        body = wire.ERROR_BODY.pack(errno, len(text)) + text
        self._chunk(cookie, wire.REPLY_TYPE_ERROR, body, done=True)

    def _chunk(
        self, cookie: int, kind: int, payload: bytes, data: bytes = b"", *, done: bool
    ) -> None:
        """One structured reply chunk: ``payload`` then ``data`` (sent as it is: a read's
        bytes are not copied into the header's buffer)."""
        flags = wire.REPLY_FLAG_DONE if done else 0
        size = len(payload) + len(data)
        header = wire.CHUNK.pack(wire.STRUCTURED_REPLY_MAGIC, flags, kind, cookie, size)
        with self.sending:  # a chunk is never cut by another reply's
            self.sock.sendall(header + payload)
            if data:
                self.sock.sendall(data)

    def _read(self, cookie: int, offset: int, length: int) -> None:
        try:
            if not self.structured:
                data = self.export.read_at(offset, length)
                with self.sending:
                    self.sock.sendall(wire.SIMPLE_REPLY.pack(wire.SIMPLE_REPLY_MAGIC, 0, cookie))
                    self.sock.sendall(data)
                return
            runs = [run for run in self.export.extents(offset, length) if run[1] > 0]
            if sum(size for _, size, _ in runs) != length:
                raise ValueError(f"the export's runs do not cover [{offset}, +{length})")
            for i, (start, size, hole) in enumerate(runs):
                done = i == len(runs) - 1
                if hole:
                    body = wire.OFFSET_HOLE.pack(start, size)
                    self._chunk(cookie, wire.REPLY_TYPE_OFFSET_HOLE, body, done=done)
                else:
                    data = self.export.read_at(start, size)
                    offset_field = wire.OFFSET.pack(start)
                    self._chunk(cookie, wire.REPLY_TYPE_OFFSET_DATA, offset_field, data, done=done)
        except (OSError, ValueError, BlockvaultError) as error:  # a missing or damaged chunk
            log.warning("nbd: reading [%d, +%d) failed: %s", offset, length, error)
            self._error(cookie, wire.EIO, str(error))

    def _block_status(self, cookie: int, offset: int, length: int, only_one: bool) -> None:
        descriptors: list[tuple[int, int]] = []  # (length, flags), merged when alike
        try:
            for _, size, hole in self.export.extents(offset, length):
                if size <= 0:
                    continue
                state = wire.STATE_HOLE | wire.STATE_ZERO if hole else 0
                if descriptors and descriptors[-1][1] == state:
                    size += descriptors.pop()[0]
                while size > wire.MAX_DESCRIPTOR:
                    descriptors.append((wire.MAX_DESCRIPTOR, state))
                    size -= wire.MAX_DESCRIPTOR
                descriptors.append((size, state))
                if len(descriptors) > MAX_DESCRIPTORS:
                    break
        except (OSError, ValueError, BlockvaultError) as error:
            self._error(cookie, wire.EIO, str(error))
            return
        if not descriptors:
            self._error(cookie, wire.EIO, "the export named no extents")
            return
        kept = descriptors[:1] if only_one else descriptors[:MAX_DESCRIPTORS]
        body = wire.U32.pack(CONTEXT_ID) + b"".join(wire.BLOCK_DESCRIPTOR.pack(*d) for d in kept)
        self._chunk(cookie, wire.REPLY_TYPE_BLOCK_STATUS, body, done=True)
