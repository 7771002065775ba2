"""The receiving side of a cast: find the session, check the target, collect,
verify and write chunks, answer each pass with what is still missing.

Every chunk is decompressed and its BLAKE3 checked before a byte of it is
written; ``done`` is reported only when every chunk passed.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import blake3
import zstandard

from blockvault.deploy import wire
from blockvault.disk.device import Device
from blockvault.errors import BlockvaultError, UsageError
from blockvault.extents import ExtentMap
from blockvault.pipeline.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.pipeline.events import quiet as quiet_reporter
from blockvault.pipeline.stages import write_used
from blockvault.pipeline.target import Confirm, open_target

__all__ = ["CastFailed", "ReceiveResult", "receive"]

IDLE_LIMIT = 60.0  # seconds without a datagram or message before giving up


class CastFailed(UsageError):
    template = "cast: {detail}"


@dataclass(frozen=True)
class ReceiveResult:
    snapshot: str
    target: str
    written_bytes: int
    chunks: int
    seconds: float


def _refuse(answer: str) -> bool:
    return False


def find_sender(session: str, interface: str, wait: float) -> tuple[str, int]:
    """The address and control port of the sender announcing ``session``."""
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
                import json

                message = json.loads(data)
                if message.get("session") == session:
                    return host, int(message["port"])
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
    host, port = find_sender(session, address, max_wait)
    control = socket.create_connection((host, port), timeout=10)
    control.settimeout(None)
    lines = wire.Lines(control)
    wire.send_message(control, {"type": "hello", "session": session, "host": socket.gethostname()})
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
    except BlockvaultError as exc:
        wire.send_message(control, {"type": "error", "reason": str(exc)})
        control.close()
        raise
    items = manifest["items"]
    device = opened.device
    written = 0
    with device:
        for item in items:
            if item["id"] is None and not opened.fresh:
                written += write_used(device, item["base"], item["offset"], None, _used(item))
        data = wire.multicast_listener(wire.DATA_GROUP, manifest["data_port"], address)
        data.settimeout(0.5)
        missing = {i for i, item in enumerate(items) if item["id"]}
        total = sum(sum(n for _, n in items[i]["used"]) for i in missing)
        reporter(TaskStarted("cast", total, target))
        wire.send_message(control, {"type": "ready"})
        state = _State(missing)
        threading.Thread(target=_control, args=(lines, control, state), daemon=True).start()
        writes: queue.Queue[tuple[int, bytes] | None] = queue.Queue(256)
        writer = threading.Thread(target=_writer, args=(writes, items, device, state), daemon=True)
        writer.start()
        tag = wire.tag_of(session)
        last = time.monotonic()
        try:
            while not state.finished():
                if state.ended:
                    raise CastFailed(f"the sender ended the session: {state.ended}")
                if time.monotonic() - last > IDLE_LIMIT:
                    raise CastFailed(f"nothing heard from the sender for {IDLE_LIMIT:g}s")
                try:
                    datagram = data.recv(65536)
                except TimeoutError:
                    continue
                last = state.last_datagram = time.monotonic()
                frag = wire.parse(datagram)
                if frag is None or frag.tag != tag or frag.chunk >= len(items):
                    continue
                with state.lock:
                    state.received += 1
                    if frag.chunk not in state.missing or frag.chunk in state.queued:
                        continue
                    a = state.assemblies.get(frag.chunk)
                    if a is None or a.size != frag.size:
                        a = state.assemblies[frag.chunk] = wire.Assembly(frag.count, frag.size)
                    body = a.add(frag)
                    if body is not None:
                        del state.assemblies[frag.chunk]
                        state.queued.add(frag.chunk)
                if body is not None:
                    writes.put((frag.chunk, body))
                for n in state.take_progress():
                    reporter(TaskAdvanced("cast", n))
            writes.put(None)
            writer.join()
            if state.failure:
                raise CastFailed(state.failure)
            device.sync()
            written += state.written
            reporter(TaskFinished("cast"))
            wire.send_message(control, {"type": "done", "bytes": written})
        except BaseException as exc:
            writes.put(None)
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
    )


def _used(item: dict[str, Any]) -> ExtentMap:
    return ExtentMap((o, n) for o, n in item["used"])


class _State:
    def __init__(self, missing: set[int]) -> None:
        self.lock = threading.Lock()
        self.missing = missing
        self.queued: set[int] = set()
        self.written = 0
        self.progress: list[int] = []
        self.failure = ""
        self.ended = ""
        self.assemblies: dict[int, wire.Assembly] = {}  # chunks partly received
        self.received = 0  # datagrams of this session since the last pass
        self.last_datagram = 0.0

    def finished(self) -> bool:
        with self.lock:
            return not self.missing or bool(self.failure)

    def take_progress(self) -> list[int]:
        with self.lock:
            out, self.progress = self.progress, []
        return out


def _control(lines: wire.Lines, sock: socket.socket, state: _State) -> None:
    """Answer each pass with a NAK: every chunk not yet received."""
    try:
        while True:
            message = lines.read()
            if message is None:
                state.ended = state.ended or "connection closed"
                return
            if message["type"] == "pass":
                # let datagrams still queued in the socket be taken first (bounded)
                end = time.monotonic() + 1.0
                while time.monotonic() - state.last_datagram < 0.05 < end - time.monotonic():
                    time.sleep(0.01)
                with state.lock:
                    need = [
                        [c, a.missing_groups() if (a := state.assemblies.get(c)) else None]
                        for c in sorted(state.missing - state.queued)
                    ]
                    loss = max(0.0, 1 - state.received / max(1, message.get("sent", 1)))
                    state.received = 0
                reply = {"type": "need", "pass": message["pass"], "chunks": need, "loss": loss}
                wire.send_message(sock, reply)
            elif message["type"] in ("drop", "bye"):
                state.ended = message.get("reason", "bye")
                return
    except (OSError, ValueError):
        state.ended = state.ended or "connection lost"


def _writer(
    writes: queue.Queue[tuple[int, bytes] | None],
    items: list[dict[str, Any]],
    device: Device,
    state: _State,
) -> None:
    decompressor = zstandard.ZstdDecompressor()
    while (job := writes.get()) is not None:
        n, body = job
        item = items[n]
        flag, digest, payload = body[0], body[1:33], body[33:]
        try:
            plain = (
                decompressor.decompress(payload, max_output_size=item["length"])
                if flag == 1
                else payload
            )
        except zstandard.ZstdError:
            plain = b""
        if len(plain) != item["length"] or blake3.blake3(plain).digest() != digest:
            with state.lock:  # damaged in transit: ask for it again
                state.queued.discard(n)
            continue
        try:
            count = write_used(device, item["base"], item["offset"], plain, _used(item))
        except OSError as exc:
            with state.lock:
                state.failure = f"writing the target: {exc}"
            return
        with state.lock:
            state.written += count
            state.progress.append(count)
            state.missing.discard(n)
            state.queued.discard(n)
