"""The receiving side of a cast: find the session, check the target, collect,
verify and write chunks, answer each pass with what is still missing.

Every chunk is decompressed and its BLAKE3 checked before a byte of it is
written; ``done`` is reported only when every chunk passed.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import blake3
import zstandard

from blockvault.deploy import mmsg, wire
from blockvault.disk.device import Device
from blockvault.disk.table import gpt
from blockvault.errors import BlockvaultError, UsageError
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.pipeline.stages import write_used
from blockvault.pipeline.target import Confirm, open_target

__all__ = ["CastFailed", "ReceiveResult", "receive"]

IDLE_LIMIT = 60.0  # seconds without a datagram or message before giving up
PARTIAL_LIMIT = 128 << 20  # bytes of partly received chunk bodies held in memory
QUEUE_LIMIT = 32 << 20  # bytes of complete chunk bodies waiting to be written
WRITER_WAIT = 0.2  # seconds a complete chunk may wait for room in the writer's queue
OVERFLOW_CHECK = 0.25  # seconds between looks at the socket's drop counter


class CastFailed(UsageError):
    template = "cast: {detail}"


@dataclass(frozen=True)
class ReceiveResult:
    snapshot: str
    target: str
    written_bytes: int
    chunks: int
    seconds: float
    peak_buffered: int = 0  # most bytes of chunk bodies held in memory at once


def _refuse(answer: str) -> bool:
    return False


def find_sender(session: str, interface: str, wait: float) -> tuple[str, dict[str, Any]]:
    """The address and announcement of the sender announcing ``session``."""
    sock = wire.multicast_listener(wire.ANNOUNCE_GROUP, wire.ANNOUNCE_PORT, interface)
    end = time.monotonic() + wait
    try:
        while time.monotonic() < end:
            sock.settimeout(max(0.1, end - time.monotonic()))
            try:
                data, (host, _) = sock.recvfrom(2048)
            except TimeoutError:
                break
            if data.startswith(b'{"type":"announce"'):
                with contextlib.suppress(ValueError):
                    message = json.loads(data)
                    if message.get("session") == session:
                        return host, message
    finally:
        sock.close()
    raise CastFailed(f"no sender announced session {session!r} within {wait:g}s")


def receive(
    target: str,
    *,
    interface: str | None = None,
    session: str = "default",
    max_wait: float = 600.0,
    confirm: Confirm = _refuse,
    reporter: Reporter = quiet_reporter,
) -> ReceiveResult:
    started = time.monotonic()
    address = wire.interface_address(interface)
    host, announce = find_sender(session, address, max_wait)
    # the sender never sends more than we say we take: our link's MTU
    payload = min(wire.payload_for(wire.link_mtu(interface)), announce.get("payload", 1 << 16))
    control = socket.create_connection((host, int(announce["port"])), timeout=10)
    control.settimeout(None)
    lines = wire.Lines(control)
    hello = {"type": "hello", "session": session, "host": socket.gethostname(), "payload": payload}
    wire.send_message(control, hello)
    manifest = lines.read()
    if not manifest or manifest.get("type") != "manifest":
        raise CastFailed("the sender sent no manifest")
    try:
        opened = open_target(
            target,
            manifest["need"],
            repository_path=None,
            confirm=confirm,
            what=f"casting snapshot {manifest['snapshot'][:12]}",
        )
        with opened.refusals():
            ss = opened.device.logical_sector_size
            whole_disk = manifest.get("partition") is None
            if whole_disk and opened.device.is_block and ss != manifest["sector_size"]:
                raise CastFailed(
                    f"{target} has {ss}-byte sectors, the snapshot "
                    f"{manifest['sector_size']}-byte ones; restore converts, cast does not"
                )
    except BlockvaultError as exc:
        wire.send_message(control, {"type": "error", "reason": str(exc)})
        control.close()
        raise
    items = manifest["items"]
    device = opened.device
    written = 0
    # on a larger disk the GPT backup moves to the end (as restore does): the old
    # one would land mid-disk, so it is not written
    backup = manifest.get("gpt_backup") if device.size > manifest["disk_size"] else None
    for item in items:
        item["used"] = _used(item, backup)
    with device:
        for item in items:
            if item["id"] is None and not opened.fresh:
                written += write_used(device, item["base"], item["offset"], None, item["used"])
        data = wire.multicast_listener(wire.DATA_GROUP, manifest["data_port"], address)
        wire.receive_timeout(data, 0.05)
        state = _State(items)
        reporter(TaskStarted("cast", state.total, target))
        wire.send_message(control, {"type": "ready"})
        threading.Thread(target=_control, args=(lines, state), daemon=True).start()
        writer = threading.Thread(target=_writer, args=(items, device, state), daemon=True)
        writer.start()
        try:
            slot = wire.HEADER.size + payload
            _collect(data, slot, wire.tag_of(session), control, state, reporter)
            state.writes.put(None)
            writer.join()
            if state.failure:
                raise CastFailed(state.failure)
            if backup is not None:
                _move_gpt_backup(device, manifest["sector_size"])
            device.sync()
            written += state.written
            reporter(TaskFinished("cast"))
            wire.send_message(control, {"type": "done", "bytes": written})
        except BaseException as exc:
            state.writes.put(None)
            with contextlib.suppress(OSError):
                wire.send_message(control, {"type": "error", "reason": str(exc)})
            raise
        finally:
            data.close()
            control.close()
    return ReceiveResult(
        manifest["snapshot"],
        target,
        written,
        len([i for i in items if i["id"]]),
        round(time.monotonic() - started, 3),
        state.peak_partial,
    )


def _used(item: dict[str, Any], skip: list[int] | None) -> ExtentMap:
    """The item's used extents (region-relative), less the absolute span ``skip``."""
    used = ExtentMap((o, n) for o, n in item["used"])
    if skip is not None and skip[0] >= item["base"]:
        used = used - ExtentMap.span(skip[0] - item["base"], skip[1])
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

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)  # the writer took a body off its queue
        chunks = [i for i, item in enumerate(items) if item["id"]]
        self.missing = set(chunks)
        self.total = sum(items[i]["used"].total for i in chunks)
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
        self.ended = ""
        self.pass_request: dict[str, Any] | None = None
        self.requested = 0.0

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

    def need(self) -> list[list[Any]]:
        """The NAK: every chunk still wanted, with its missing groups when partly here."""
        with self.lock:
            wanted = sorted(c for c in self.missing if self.pending[c])
        out: list[list[Any]] = []
        for c in wanted:
            a = self.assemblies.get(c)
            out.append([c, a.missing_groups() if a else None])
        return out


def _collect(
    data: socket.socket,
    slot: int,
    tag: int,
    control: socket.socket,
    state: _State,
    reporter: Reporter,
) -> None:
    """Drain the data socket until every chunk is written: many datagrams per system
    call, each copied once into its chunk's place; NAKs are answered from here, where
    the assemblies live."""
    inbox = mmsg.Inbox(data, slot, coalesce=True)
    view, lengths, segments, slot = inbox.view, inbox.lengths, inbox.segments, inbox.slot
    unpack, head = wire.HEADER.unpack_from, wire.HEADER.size
    pending, assemblies, magic = state.pending, state.assemblies, wire.MAGIC
    chunks = len(pending)
    received = 0
    last = check = time.monotonic()
    drops, discarded = wire.socket_drops(data), 0
    while state.missing and not state.failure:
        n = inbox.receive()
        for k in range(n):
            start = k * slot
            end = start + lengths[k]
            step = segments[k] or 1
            for off in range(start, end, step):  # one datagram, or a run of them
                length = min(step, end - off)
                if length < head:
                    break
                mark, t, chunk, index, count, size, payload = unpack(view, off)
                if t != tag or mark != magic or chunk >= chunks:
                    break
                received += 1
                if not pending[chunk]:
                    continue
                a = assemblies.get(chunk)
                if a is None or a.size != size or a.payload != payload or a.count != count:
                    a = state.start(chunk, count, size, payload)
                    if a is None:
                        continue
                if a.add(index, view[off + head : off + length]):
                    state.complete(chunk, a)
        now = time.monotonic()
        if n:
            last = now
        elif now - last > IDLE_LIMIT:
            raise CastFailed(f"nothing heard from the sender for {IDLE_LIMIT:g}s")
        if state.ended:
            raise CastFailed(f"the sender ended the session: {state.ended}")
        if now - check > OVERFLOW_CHECK:
            # datagrams the kernel dropped because this loop fell behind, or chunks let
            # go because the writer did: the sender slows down at once when most
            # receivers say so
            before = drops + discarded
            check, drops, discarded = now, wire.socket_drops(data), state.discarded
            if drops + discarded > before:
                wire.send_message(
                    control, {"type": "overflow", "drops": drops, "discarded": discarded}
                )
        request = state.pass_request
        # answer a pass once the datagrams still queued in the socket are taken
        if request is not None and (now - last > 0.05 or now - state.requested > 1.0):
            state.pass_request = None
            loss = max(0.0, 1 - received / max(1, request.get("sent", 1)))
            received = 0
            reply = {"type": "need", "pass": request["pass"], "chunks": state.need(), "loss": loss}
            wire.send_message(control, reply)
        if state.progress:
            with state.lock:
                done, state.progress = state.progress, []
            for count in done:
                reporter(TaskAdvanced("cast", count))


def _control(lines: wire.Lines, state: _State) -> None:
    """Hand each pass to the collecting loop; note the end of the session."""
    try:
        while True:
            message = lines.read()
            if message is None:
                state.ended = state.ended or "connection closed"
                return
            if message["type"] == "pass":
                state.requested = time.monotonic()
                state.pass_request = message
            elif message["type"] in ("drop", "bye"):
                state.ended = message.get("reason", "bye")
                return
    except (OSError, ValueError):
        state.ended = state.ended or "connection lost"


def _writer(items: list[dict[str, Any]], device: Device, state: _State) -> None:
    """Decompress, verify and write complete chunks (zstd, BLAKE3 and pwrite release
    the GIL, so this runs beside the collecting loop)."""
    decompressor = zstandard.ZstdDecompressor()
    while (job := state.writes.get()) is not None:
        n, body = job
        item = items[n]
        view = memoryview(body)
        try:
            plain = (
                decompressor.decompress(view[33:], max_output_size=item["length"])
                if body[0] == 1
                else bytes(view[33:])
            )
        except zstandard.ZstdError:
            plain = b""
        with state.lock:
            state.queued -= len(body)
            state.room.notify()
        if len(plain) != item["length"] or blake3.blake3(plain).digest() != view[1:33]:
            state.pending[n] = 1  # damaged in transit: ask for it again
            continue
        try:
            count = write_used(device, item["base"], item["offset"], plain, item["used"])
        except OSError as exc:
            with state.lock:
                state.failure = f"writing the target: {exc}"
            return
        with state.lock:
            state.written += count
            state.progress.append(count)
            state.missing.discard(n)
