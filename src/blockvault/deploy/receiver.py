"""The receiving side of a cast: find the session, check the target, collect,
verify and write chunks, answer each pass with what is still missing.

Only what the session's sender sent is used: the announcement, every control
message and every datagram carries a tag made with a key derived from the session
code, and whatever fails it is dropped and counted. Every chunk is then
decompressed and its BLAKE3 checked before a byte of it is written; ``done`` is
reported only when every chunk passed.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import blake3
import zstandard

from blockvault.deploy import auth, mmsg, wire
from blockvault.deploy import messages as msg
from blockvault.disk.device import Device
from blockvault.disk.table import gpt
from blockvault.errors import (
    BlockvaultError,
    CastAuthError,
    CastError,
    CastInterrupted,
    TargetError,
)
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.pipeline.stages import write_used
from blockvault.pipeline.target import Confirm, OpenedTarget, open_target

__all__ = ["ReceiveResult", "receive"]

IDLE_LIMIT = 60.0  # seconds without a datagram or message before giving up
PARTIAL_LIMIT = 128 << 20  # bytes of partly received chunk bodies held in memory
QUEUE_LIMIT = 32 << 20  # bytes of complete chunk bodies waiting to be written
WRITER_WAIT = 0.2  # seconds a complete chunk may wait for room in the writer's queue
OVERFLOW_CHECK = 0.25  # seconds between looks at the socket's drop counter
CONNECT_WAIT = 10.0  # seconds for the control connection and its opening
MANIFEST_WAIT = 60.0  # seconds for the manifest to arrive
ANNOUNCE_BYTES = 4096  # the largest announcement read


@dataclass(frozen=True)
class ReceiveResult:
    snapshot: str
    target: str
    written_bytes: int
    chunks: int
    seconds: float
    peak_buffered: int = 0  # most bytes of chunk bodies held in memory at once
    forged: int = 0  # datagrams dropped because their tag was wrong
    replayed: int = 0  # authentic datagrams of an earlier pass, dropped
    foreign: int = 0  # datagrams of another session or protocol, dropped


def _refuse(answer: str) -> bool:
    return False


def find_sender(
    session: str, code: str, interface: str, end: float, tried: set[bytes]
) -> tuple[msg.Announce, auth.Keys]:
    """The first authentic announcement of ``session`` (and the session's keys) from a
    sender not in ``tried`` (salts of sessions already tried), heard before ``end``."""
    sock = wire.multicast_listener(wire.ANNOUNCE_GROUP, wire.ANNOUNCE_PORT, interface)
    forged = 0
    try:
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(max(0.1, left))
            try:
                datagram, (host, _) = sock.recvfrom(ANNOUNCE_BYTES)
            except TimeoutError:
                break
            mac, _, body = datagram.partition(b" ")
            try:
                announce = msg.decode(body, host)
                tag = bytes.fromhex(mac.decode("ascii"))
            except (CastError, ValueError):
                continue
            if not isinstance(announce, msg.Announce) or announce.session != session:
                continue
            keys = auth.Keys.derive(code, announce.salt)
            if not auth.verify(keys.announce, body, tag):
                forged += 1
            elif announce.salt not in tried:
                return announce, keys
    finally:
        sock.close()
    if forged:
        raise CastAuthError(
            f"{forged} announcements of session {session!r} failed authentication "
            "and no authentic one came"
        )
    raise CastError(f"no sender announced session {session!r} in time")


def _join(
    session: str, code: str, address: str, payload: int, wait: float
) -> tuple[msg.Channel, msg.Manifest, msg.Announce, auth.Keys, int]:
    """Find the session's sender and open its control channel; a sender that fails
    the opening (a replayed announcement, a stale session) is passed over until
    ``wait`` runs out. Returns the channel, the manifest, the announcement, the keys
    and the largest fragment agreed on."""
    end = time.monotonic() + wait
    tried: set[bytes] = set()
    failure: BlockvaultError | OSError | None = None
    while True:
        try:
            announce, keys = find_sender(session, code, address, end, tried)
        except CastError:
            if failure is None:
                raise
            raise CastError(
                f"no sender of session {session!r} could be joined: {failure}"
            ) from None
        tried.add(announce.salt)
        size = min(payload, announce.payload)  # the sender never sends more than we take
        try:
            conn = socket.create_connection((announce.address, announce.port), CONNECT_WAIT)
        except OSError as exc:
            failure = exc
            continue
        channel = msg.Channel(conn, keys.control, sender=False, peer=announce.address)
        try:
            channel.answer(functools.partial(msg.Hello, session, socket.gethostname(), size))
            conn.settimeout(MANIFEST_WAIT)
            manifest = channel.read(announce.manifest_bytes)
            if not isinstance(manifest, msg.Manifest):
                raise CastError(f"{announce.address} sent no manifest")
            conn.settimeout(None)
        except (OSError, CastError) as exc:
            channel.close()
            failure = exc
            continue
        return channel, manifest, announce, keys, size


def receive(
    target: str,
    *,
    code: str,
    interface: str | None = None,
    session: str = "default",
    max_wait: float = 600.0,
    confirm: Confirm = _refuse,
    reporter: Reporter = quiet_reporter,
) -> ReceiveResult:
    """Receive the cast of ``session`` (keyed by ``code``) onto ``target``.

    SIGINT (KeyboardInterrupt) stops it: the sender is told, and CastInterrupted
    says whether anything was written (the target is then incomplete)."""
    started = time.monotonic()
    address = wire.interface_address(interface)
    try:
        channel, manifest, announce, keys, payload = _join(
            session, code, address, wire.payload_for(wire.link_mtu(interface)), max_wait
        )
    except KeyboardInterrupt:
        raise CastInterrupted(f"nothing was written to {target}") from None
    try:
        opened = _open(target, manifest, confirm)
    except KeyboardInterrupt:
        channel.close()
        raise CastInterrupted(f"nothing was written to {target}") from None
    except BlockvaultError as exc:
        _tell(channel, msg.Error(str(exc)[: msg.TEXT]))
        channel.close()
        raise
    items = manifest.items
    device = opened.device
    # on a larger disk the GPT backup moves to the end (as restore does): the old
    # one would land mid-disk, so it is not written
    backup = manifest.gpt_backup if device.size > manifest.disk_size else None
    state = _State(items, [_used(item, backup) for item in items])
    written = 0
    with device:
        try:
            for item, used in zip(items, state.used, strict=True):
                if not item.data and not opened.fresh:
                    written += write_used(device, item.base, item.offset, None, used)
            data = wire.multicast_listener(
                wire.data_group(announce.session_id), manifest.data_port, address
            )
            wire.receive_timeout(data, 0.05)
            reporter(TaskStarted("cast", state.total, target))
            channel.send(msg.Ready())
            threading.Thread(target=_control, args=(channel, state), daemon=True).start()
            writer = threading.Thread(target=_writer, args=(items, device, state), daemon=True)
            writer.start()
            try:
                slot = wire.OVERHEAD + payload
                _collect(data, slot, announce.session_id, keys.data, channel, state, reporter)
                state.writes.put(None)
                writer.join()
                if state.failure:
                    raise CastError(state.failure)
                if backup is not None:
                    _move_gpt_backup(device, manifest.sector_size)
                device.sync()
                written += state.written
                reporter(TaskFinished("cast"))
                channel.send(msg.Done(written))
            except BaseException:
                state.stopping = True
                state.writes.put(None)
                writer.join(5.0)  # what it is writing now is counted, then it stops
                raise
            finally:
                data.close()
        except KeyboardInterrupt:
            _tell(channel, msg.Error("the receiver was interrupted"))
            raise CastInterrupted(
                f"{target} is incomplete ({state.written} of {state.total} bytes of data "
                "written); cast or restore it again before use"
            ) from None
        except BaseException as exc:
            _tell(channel, msg.Error(str(exc)[: msg.TEXT]))
            raise
        finally:
            channel.close()
    return ReceiveResult(
        manifest.snapshot,
        target,
        written,
        sum(item.data for item in items),
        round(time.monotonic() - started, 3),
        state.peak_partial,
        state.forged,
        state.replayed,
        state.foreign,
    )


def _open(target: str, manifest: msg.Manifest, confirm: Confirm) -> OpenedTarget:
    """``target`` opened after the checks restore makes, and refused when its sectors
    differ from the snapshot's (restore converts, cast does not)."""
    opened = open_target(
        target,
        manifest.need,
        repository_path=None,
        confirm=confirm,
        what=f"casting snapshot {manifest.snapshot[:12]}",
    )
    with opened.refusals():
        ss = opened.device.logical_sector_size
        whole_disk = manifest.partition is None
        if whole_disk and opened.device.is_block and ss != manifest.sector_size:
            raise TargetError(
                f"it has {ss}-byte sectors, the snapshot {manifest.sector_size}-byte ones; "
                "restore converts, cast does not",
                path=target,
            )
    return opened


def _tell(channel: msg.Channel, message: msg.Message) -> None:
    with contextlib.suppress(OSError):
        channel.send(message)


def _used(item: msg.Item, skip: tuple[int, int] | None) -> ExtentMap:
    """The item's used extents (region-relative), less the absolute span ``skip``."""
    used = ExtentMap(item.used)
    if skip is not None and skip[0] >= item.base:
        used = used - ExtentMap.span(skip[0] - item.base, skip[1])
    return used


def _move_gpt_backup(device: Device, sector_size: int) -> None:
    """Write the backup GPT header and entries at the end of ``device`` (the primary
    copy was cast in place; its alternate LBA is updated too)."""
    table = gpt.parse(device, sector_size)
    if table is None:
        return
    boot_sector = device.read_at(0, sector_size)
    for offset, data in gpt.build(table, device.size, protective=True, boot_sector=boot_sector):
        device.write_at(offset, data)


class _State:
    """Shared by the collecting loop (owns ``assemblies``), the writer and the
    control thread. ``pending[c]`` is 1 while chunk ``c`` still wants datagrams;
    ``missing`` holds the chunks not yet written (the writer removes them)."""

    def __init__(self, items: Sequence[msg.Item], used: list[ExtentMap]) -> None:
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)  # the writer took a body off its queue
        chunks = [i for i, item in enumerate(items) if item.data]
        self.used = used
        self.missing = set(chunks)
        self.total = sum(used[i].total for i in chunks)
        # the largest body a chunk may have: flag + hash + a zstd frame of its length
        self.body_limit = [33 + item.length + (item.length >> 7) + 512 for item in items]
        self.pending = bytearray(len(items))
        for i in chunks:
            self.pending[i] = 1
        self.assemblies: dict[int, wire.Assembly] = {}  # chunks partly received
        self.partial = 0  # bytes held by assemblies
        self.refused = -1  # the chunk last turned away for want of memory
        self.peak_partial = 0
        self.writes: queue.Queue[tuple[int, bytearray] | None] = queue.Queue()
        self.queued = 0  # bytes waiting for the writer
        self.discarded = 0  # complete chunks let go because the writer stayed behind
        self.written = 0
        self.progress: list[int] = []
        self.failure = ""
        self.stopping = False  # interrupted: the writer takes no further chunk
        self.ended = ""
        self.pass_request: msg.PassEnd | None = None
        self.requested = 0.0
        self.forged = self.replayed = self.foreign = 0

    def start(self, chunk: int, count: int, size: int, payload: int) -> wire.Assembly | None:
        """A new assembly for ``chunk``, within PARTIAL_LIMIT bytes of partly received
        bodies. A pass sends chunks in ascending order, so partial chunks behind
        ``chunk`` get nothing more in this pass: they are let go first (their chunks
        come again whole in the next pass); those ahead are about to be completed and
        are kept. With nothing behind to let go, ``chunk`` itself waits (None)."""
        if chunk == self.refused:
            return None
        old = self.assemblies.pop(chunk, None)
        if old is not None:
            self.partial -= old.size
        while self.partial + size > PARTIAL_LIMIT:
            behind = [c for c in self.assemblies if c < chunk]
            if not behind:
                self.refused = chunk
                return None
            self.partial -= self.assemblies.pop(min(behind)).size
        self.refused = -1
        a = self.assemblies[chunk] = wire.Assembly(count, size, payload)
        self.partial += size
        self.peak_partial = max(self.peak_partial, self.partial + self.queued)
        return a

    def complete(self, chunk: int, a: wire.Assembly) -> None:
        del self.assemblies[chunk]
        self.partial -= a.size
        with self.lock:
            # the socket's buffer holds what arrives meanwhile; when the writer stays
            # behind, the chunk comes again in the next pass and the sender is told
            # to slow down (as for a socket overflow)
            fits = self.room.wait_for(lambda: self.queued + a.size <= QUEUE_LIMIT, WRITER_WAIT)
            if not fits:
                self.discarded += 1
                return
            self.queued += a.size
        self.pending[chunk] = 0
        self.writes.put((chunk, a.body))

    def need(self) -> list[tuple[int, tuple[int, ...] | None]]:
        """The NAK: every chunk still wanted, with its missing groups when partly here."""
        with self.lock:
            wanted = sorted(c for c in self.missing if self.pending[c])
        out: list[tuple[int, tuple[int, ...] | None]] = []
        for c in wanted:
            a = self.assemblies.get(c)
            out.append((c, tuple(a.missing_groups()) if a else None))
        return out


def _collect(
    data: socket.socket,
    slot: int,
    session_id: int,
    key: bytes,
    channel: msg.Channel,
    state: _State,
    reporter: Reporter,
) -> None:
    """Drain the data socket until every chunk is written: many datagrams per system
    call, each checked against its tag, then copied once into its chunk's place;
    NAKs are answered from here, where the assemblies live.

    Dropped and counted: a datagram of another session (foreign), one whose tag is
    wrong (forged), and an authentic one of a pass before the latest seen (replayed,
    or late). The sizes in an authentic header are still checked before use."""
    largest = slot - wire.OVERHEAD  # the fragment size we said we take
    inbox = mmsg.Inbox(data, slot, coalesce=True)
    view, lengths, segments, slot = inbox.view, inbox.lengths, inbox.segments, inbox.slot
    unpack, head, overhead = wire.HEADER.unpack_from, wire.HEADER.size, wire.OVERHEAD
    decrypt, nonce, tag_size = auth.DataTags(key).aead.decrypt, wire.NONCE, auth.TAG
    pending, assemblies, magic, limits = (
        state.pending,
        state.assemblies,
        wire.MAGIC,
        state.body_limit,
    )
    chunks = len(pending)
    received = latest = 0
    last = check = time.monotonic()
    drops, discarded = wire.socket_drops(data), 0
    while state.missing and not state.failure:
        n = inbox.receive()
        for k in range(n):
            start = k * slot
            end = start + lengths[k]
            step = segments[k] or 1
            for off in range(start, end, step):  # one datagram, or a run of them
                stop = min(off + step, end)
                body_end = stop - tag_size
                if stop - off < overhead:
                    state.foreign += 1
                    break
                mark, sid, number, chunk, index, count, size, payload = unpack(view, off)
                if sid != session_id or mark != magic:
                    state.foreign += 1
                    break
                datagram = view[off:body_end]
                try:
                    decrypt(datagram[nonce], view[body_end:stop], datagram)  # GMAC check
                except auth.InvalidTag:
                    state.forged += 1
                    continue
                if number < latest:
                    state.replayed += 1
                    continue
                latest = number
                if chunk >= chunks:
                    continue
                received += 1
                if not pending[chunk]:
                    continue
                a = assemblies.get(chunk)
                if a is None or a.size != size or a.payload != payload or a.count != count:
                    if not (0 < payload <= largest and size <= limits[chunk]):
                        continue
                    if count != max(1, -(-size // payload)):
                        continue
                    a = state.start(chunk, count, size, payload)
                    if a is None:
                        continue
                if a.add(index, view[off + head : body_end]):
                    state.complete(chunk, a)
        now = time.monotonic()
        if n:
            last = now
        elif now - last > IDLE_LIMIT:
            raise CastError(f"nothing heard from the sender for {IDLE_LIMIT:g}s")
        if state.ended:
            raise CastError(f"the sender ended the session: {state.ended}")
        if now - check > OVERFLOW_CHECK:
            # datagrams the kernel dropped because this loop fell behind, or chunks let
            # go because the writer did: the sender slows down at once when most
            # receivers say so
            before = drops + discarded
            check, drops, discarded = now, wire.socket_drops(data), state.discarded
            if drops + discarded > before:
                channel.send(msg.Overflow(drops, discarded))
        request = state.pass_request
        # answer a pass once the datagrams still queued in the socket are taken
        if request is not None and (now - last > 0.05 or now - state.requested > 1.0):
            state.pass_request = None
            loss = min(1.0, max(0.0, 1 - received / max(1, request.sent)))
            received = 0
            channel.send(msg.Need(request.number, tuple(state.need()), loss))
        if state.progress:
            with state.lock:
                done, state.progress = state.progress, []
            for count in done:
                reporter(TaskAdvanced("cast", count))


def _control(channel: msg.Channel, state: _State) -> None:
    """Hand each pass to the collecting loop; note the end of the session."""
    try:
        while True:
            message = channel.read()
            if message is None:
                state.ended = state.ended or "connection closed"
                return
            if isinstance(message, msg.PassEnd):
                state.requested = time.monotonic()
                state.pass_request = message
            elif isinstance(message, (msg.Drop, msg.Bye)):
                state.ended = message.reason or "bye"
                return
    except (OSError, ValueError, CastError) as exc:  # ValueError: closed under our read
        state.ended = state.ended or f"connection lost: {exc}"


def _opened(decompressor: zstandard.ZstdDecompressor, body: memoryview, length: int) -> bytes:
    """A chunk body's plaintext (flag, BLAKE3, then zstd or raw bytes); b"" when it
    cannot be the ``length`` bytes announced. zstd allocates whatever a frame declares,
    max_output_size notwithstanding, so a frame declaring another length is refused
    before it is decompressed."""
    payload = body[33:]
    if body[0] != 1:
        return bytes(payload)
    try:
        if zstandard.frame_content_size(payload) not in (-1, length):
            return b""
        return decompressor.decompress(payload, max_output_size=length)
    except zstandard.ZstdError:
        return b""


def _writer(items: Sequence[msg.Item], device: Device, state: _State) -> None:
    """Decompress, verify and write complete chunks (zstd, BLAKE3 and pwrite release
    the GIL, so this runs beside the collecting loop)."""
    decompressor = zstandard.ZstdDecompressor()
    while (job := state.writes.get()) is not None and not state.stopping:
        n, body = job
        item = items[n]
        view = memoryview(body)
        plain = _opened(decompressor, view, item.length)
        with state.lock:
            state.queued -= len(body)
            state.room.notify()
        if len(plain) != item.length or blake3.blake3(plain).digest() != view[1:33]:
            state.pending[n] = 1  # damaged in transit: ask for it again
            continue
        try:
            count = write_used(device, item.base, item.offset, plain, state.used[n])
        except OSError as exc:
            with state.lock:
                state.failure = f"writing the target: {exc}"
            return
        with state.lock:
            state.written += count
            state.progress.append(count)
            state.missing.discard(n)
