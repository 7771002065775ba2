"""The sending side of a cast: announce, admit receivers, stream passes, report.

Each pass sends every chunk some receiver still lacks; receivers answer each pass
with what they still need (NAKs). The rate follows the median receiver's loss, so
one lossy or slow receiver is served in later passes instead of slowing the rest.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import blake3
import zstandard

from blockvault.deploy import auth, mmsg, wire
from blockvault.deploy import messages as msg
from blockvault.disk.table import gpt
from blockvault.errors import CastError, CastInterrupted, CastProtocolError, UsageError
from blockvault.events import (
    Noted,
    Reporter,
    TaskAdvanced,
    TaskFinished,
    TaskStarted,
    Warned,
)
from blockvault.events import quiet as quiet_reporter
from blockvault.pipeline.stages import ordered_map
from blockvault.repo import Repository, Snapshot
from blockvault.repo import format as fmt
from blockvault.repo.image import SnapshotImage

__all__ = ["CastResult", "PassReport", "ReceiverReport", "send"]

PASS_REPLY_WAIT = 3.0  # seconds to wait for receivers' NAKs after a pass
ANNOUNCE_EVERY = 0.5  # seconds between announcements
POLL = 0.05  # seconds between looks at who is ready or done
STALL_PASSES = 6  # passes without progress before a receiver is dropped
MIN_RATE = 5.0  # Mbit/s
SLOWER = 0.6  # rate factor after a pass that lost too much
BURST = 64  # datagrams between pacing checks (one or two system calls)
CHECK = 0.25  # seconds between looks at receivers' overflow reports during a pass
OVERRUN_SLOWER = 0.8  # rate factor when most receivers overflow mid-pass
RECOVER_CHECKS = 4  # quiet checks (1 s) before the rate grows again within a pass
RECOVER_FASTER = 1.1
HELLO_WAIT = 10.0  # seconds a new connection has to say hello
MAX_PEERS = 1024  # connections at once; more are refused


@dataclass
class ReceiverReport:
    address: str
    host: str
    status: str = "joining"  # joining, ready, verified, failed, dropped
    bytes: int = 0
    seconds: float = 0.0
    reason: str = ""
    naks: int = 0  # chunks asked for again after FEC could not repair them


@dataclass
class PassReport:
    """One pass over what receivers still lacked, and how it went."""

    chunks: int
    datagrams: int
    seconds: float
    start_mbit: float  # the rate it began at (overflow reports may cut it mid-pass)
    end_mbit: float
    parity: bool
    worst_loss: float  # share of its datagrams the most lossy receiver did not get
    overflow_cuts: int  # times most receivers' socket buffers overflowed and the rate fell


@dataclass
class CastResult:
    snapshot: str
    session: str
    passes: int
    seconds: float
    final_rate_mbit: float
    receivers: list[ReceiverReport]
    payload: int = 0  # fragment bytes per datagram in the last pass
    pass_reports: list[PassReport] = field(default_factory=list)
    rejected: int = 0  # control connections refused: failed authentication or malformed


@dataclass
class _Peer:
    channel: msg.Channel
    report: ReceiverReport
    missing: dict[int, set[int] | None] = field(default_factory=dict)  # chunk -> groups
    loss: float = 0.0  # share of the last pass's datagrams this receiver did not get
    answered: int = -1
    joined: float = 0.0
    stalled: int = 0
    payload: int = wire.MAX_PAYLOAD  # largest fragment it takes (its link's MTU)
    overflowed: float = 0.0  # when it last said its socket buffer overflowed


def plan(
    repo: Repository, snapshot: Snapshot, partition: int | None
) -> tuple[int, list[msg.Item], list[str | None], tuple[int, int] | None]:
    """Bytes the target needs, the manifest items (one per chunk with used bytes), their
    chunk ids (None: a hole) and where the GPT backup (entries + header) lies on the
    snapshot's disk, if it has one."""
    index = repo.load_index(snapshot)
    skip = None
    if partition is None and snapshot.table == "gpt":
        # a larger target gets the backup GPT at its own end: receivers skip the old one
        table = gpt.parse(SnapshotImage(repo, snapshot, index), snapshot.sector_size)
        if table is not None:
            skip = gpt.backup_area(table, snapshot.disk_size)
    if partition is not None:
        region = index.region(fmt.REGION_PARTITION, partition)
        if region is None:
            raise UsageError(f"snapshot {snapshot.id[:12]} holds no image of partition {partition}")
        regions, need, shift = [region], region.size, -region.start
    else:
        regions, need, shift = list(index.regions), snapshot.disk_size, 0
    items, ids = [], []
    for region in regions:
        for ref in region.chunks(index.chunk_size):
            if ref.used:
                used = tuple((e.offset, e.length) for e in ref.used)
                base = region.start + shift
                items.append(msg.Item(base, ref.offset, ref.length, used, ref.chunk_id is not None))
                ids.append(ref.chunk_id)
    return need, items, ids, skip


def wire_form(repo: Repository, chunk_id: str) -> bytes:
    """flag (0 plain, 1 zstd) + unkeyed BLAKE3 of the plaintext + payload.

    An unencrypted repository's stored frame goes as-is (its id is the unkeyed hash);
    an encrypted one is opened here, since receivers hold no key.
    """
    if not repo.encrypted:
        raw = repo.read_raw_chunk(chunk_id)
        header = fmt.EnvelopeHeader.unpack(raw)
        flag = 1 if header.compression == fmt.Compression.ZSTD else 0
        return bytes([flag]) + bytes.fromhex(chunk_id) + raw[fmt.ENVELOPE.size :]
    plain = repo.get_chunk(chunk_id)
    return b"\1" + blake3.blake3(plain).digest() + zstandard.ZstdCompressor(level=3).compress(plain)


def send(
    repo: Repository,
    snapshot: Snapshot,
    *,
    code: str,
    partition: int | None = None,
    interface: str | None = None,
    session: str = "default",
    port: int = 9520,
    min_receivers: int = 1,
    max_wait: float = 60.0,
    max_rate: float = 1000.0,
    timeout: float = 3600.0,
    reporter: Reporter = quiet_reporter,
) -> CastResult:
    """Cast ``snapshot`` to every receiver that proves it holds ``code``.

    SIGINT (KeyboardInterrupt) ends the session: receivers are told, and
    CastInterrupted says how many had verified."""
    started = time.monotonic()
    snapshot.require_disk("casting")
    if len(session) > msg.TEXT:
        raise UsageError(f"a session name has at most {msg.TEXT} characters")
    need, items, ids, gpt_backup = plan(repo, snapshot, partition)
    chunks = [i for i, chunk_id in enumerate(ids) if chunk_id]
    offered = frozenset(chunks)
    sizes_of = [sum(length for _, length in item.used) for item in items]  # for progress
    manifest = msg.Manifest(
        snapshot.id,
        need,
        partition,
        tuple(items),
        wire.DATA_PORT,
        snapshot.disk_size,
        snapshot.sector_size,
        gpt_backup,
    )
    salt = auth.new_salt()
    keys = auth.Keys.derive(code, salt)
    session_id = secrets.randbits(32)
    data_tags = auth.DataTags(keys.data)
    address = wire.interface_address(interface)
    own_payload = wire.payload_for(wire.link_mtu(interface))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))  # the interface it serves only; port 0: any free one
    listener.listen(64)
    listener.settimeout(0.5)
    announcement = msg.Announce(
        session,
        session_id,
        salt,
        address,
        listener.getsockname()[1],  # receivers learn the port from the announcement
        own_payload,
        len(manifest.encode()) + 2 * auth.TAG + 2,
    )
    peers: list[_Peer] = []
    rejected = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def serve(peer: _Peer) -> None:
        channel = peer.channel
        try:
            channel.send(manifest)
            while not stop.is_set():
                message = channel.read(len(items) * 40 + msg.LINE)
                if message is None:
                    raise ConnectionError("connection closed")
                with lock:
                    if _heard(peer, message, peers, chunks, offered, min_receivers, reporter):
                        return
        except (OSError, ValueError, CastError) as exc:  # ValueError: closed under our read
            with lock:
                if peer.report.status in ("joining", "ready"):
                    peer.report.status = "failed"
                    peer.report.reason = f"lost contact: {exc}"
                    peer.missing = {}

    def greet(conn: socket.socket, host: str) -> None:
        """Admit a connection that proves it holds the code and names our session."""
        channel = msg.Channel(conn, keys.control, sender=True, peer=host)
        try:
            conn.settimeout(HELLO_WAIT)
            channel.challenge()
            hello = channel.greeted()
            conn.settimeout(None)
        except (OSError, ValueError, CastError):
            hello = None
        if hello is None or hello.session != session:
            with lock:
                rejected[0] += 1
            channel.close()
            return
        peer = _Peer(channel, ReceiverReport(host, hello.host))
        peer.payload = max(wire.MIN_PAYLOAD, hello.payload)
        with lock:
            peers.append(peer)
        serve(peer)

    def admit() -> None:
        while not stop.is_set():
            try:
                conn, (host, _) = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if threading.active_count() > MAX_PEERS:
                conn.close()
                continue
            threading.Thread(target=greet, args=(conn, host), daemon=True).start()

    def announce() -> None:
        sock = wire.multicast_sender(address)
        body = announcement.encode()
        datagram = auth.tag(keys.announce, body).hex().encode() + b" " + body
        while True:  # at once, then every ANNOUNCE_EVERY: receivers already waiting join now
            with contextlib.suppress(OSError):
                sock.sendto(datagram, (wire.ANNOUNCE_GROUP, wire.ANNOUNCE_PORT))
            if stop.wait(ANNOUNCE_EVERY):
                break
        sock.close()

    def overrun() -> bool:
        """True when most ready receivers reported overflowing in the last CHECK."""
        since = time.monotonic() - 2 * CHECK
        with lock:
            ready = [p for p in peers if p.report.status == "ready"]
            return bool(ready) and sum(p.overflowed > since for p in ready) * 2 > len(ready)

    threads = [threading.Thread(target=f, daemon=True) for f in (admit, announce)]
    for t in threads:
        t.start()
    data_address = (wire.data_group(session_id), wire.DATA_PORT)
    data = mmsg.Outbox(wire.multicast_sender(address), data_address)
    payload = own_payload
    pace = _Pace(max_rate, max_rate)
    passes = 0
    reports: list[PassReport] = []
    farewell = msg.Bye()
    try:
        wait_end = time.monotonic() + max_wait
        while time.monotonic() < wait_end:
            with lock:
                if sum(p.report.status == "ready" for p in peers) >= min_receivers:
                    break
            time.sleep(POLL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with lock:
                active = [p for p in peers if p.report.status == "ready"]
                wanted = _union([p.missing for p in active])
                joining = any(p.report.status == "joining" for p in peers)
                sizes = [p.payload for p in active]
            if not active and not joining:
                break
            if not wanted:
                time.sleep(POLL)
                continue
            # the largest datagram every receiver takes (a smaller late joiner lowers it)
            payload = min([own_payload, *sizes])
            # parity costs 12.5 % of the wire: sent only once a receiver has lost datagrams
            with lock:
                parity = any(p.loss > 0 for p in active)
            passes += 1
            task = f"pass {passes}"
            total = sum(sizes_of[n] for n in wanted)
            reporter(TaskStarted(task, total, f"{len(active)} receivers"))
            began, start_rate, cuts = time.monotonic(), pace.rate, pace.cuts
            sent = _stream(
                repo,
                ids,
                wanted,
                data,
                wire.Framer(session_id, data_tags, passes),
                payload,
                pace,
                overrun,
                parity,
                functools.partial(_advanced, reporter, task, sizes_of),
            )
            reporter(TaskFinished(task))
            for p in active:
                _tell(p, msg.PassEnd(passes, sent))
            reply_end = time.monotonic() + PASS_REPLY_WAIT
            while time.monotonic() < reply_end:
                with lock:
                    if all(p.answered >= passes or p.report.status != "ready" for p in active):
                        break
                time.sleep(0.02)
            with lock:
                losses = [p.loss for p in active if p.answered >= passes]
                reports.append(
                    PassReport(
                        len(wanted),
                        sent,
                        round(time.monotonic() - began, 3),
                        round(start_rate, 1),
                        round(pace.rate, 1),
                        parity,
                        round(max(losses, default=0.0), 4),
                        pace.cuts - cuts,
                    )
                )
                pace.update([p.loss for p in active if p.report.status == "ready"])
            with lock:
                for p in active:
                    if p.report.status == "ready" and p.stalled >= STALL_PASSES:
                        _drop(p, f"no progress in {STALL_PASSES} passes")
                        reporter(Warned(f"{p.report.address} dropped: no progress"))
        with lock:
            for p in peers:
                if p.report.status in ("ready", "joining"):
                    _drop(p, "session time limit reached")
    except KeyboardInterrupt:
        farewell = msg.Bye("the sender was interrupted")
        with lock:
            done = sum(p.report.status == "verified" for p in peers)
            others = len(peers) - done
        raise CastInterrupted(
            f"{done} receiver{'s' * (done != 1)} had verified their targets; the "
            f"{others} other{'s' * (others != 1)} were told the session ended and their "
            "targets are incomplete"
        ) from None
    finally:
        stop.set()
        listener.close()
        data.sock.close()
        with lock:
            for p in peers:
                _tell(p, farewell)
                p.channel.close()
    return CastResult(
        snapshot.id,
        session,
        passes,
        round(time.monotonic() - started, 3),
        round(pace.rate, 1),
        [p.report for p in peers],
        payload,
        reports,
        rejected[0],
    )


def _heard(
    peer: _Peer,
    message: msg.Message,
    peers: list[_Peer],
    chunks: list[int],
    offered: frozenset[int],
    min_receivers: int,
    reporter: Reporter,
) -> bool:
    """Apply one message from ``peer`` (under the session lock); True when it ends the
    conversation. Chunk numbers a receiver names must be ones the manifest offered."""
    if isinstance(message, msg.Ready):
        peer.report.status = "ready"
        peer.missing = dict.fromkeys(chunks)
        peer.joined = time.monotonic()
        ready = sum(p.report.status == "ready" for p in peers)
        reporter(
            Noted(
                f"{peer.report.address} ({peer.report.host}) joined: "
                f"{ready} ready, {min_receivers} awaited"
            )
        )
    elif isinstance(message, msg.Need):
        before = peer.missing
        if any(c not in offered for c, _ in message.chunks):
            raise CastProtocolError("need names a chunk not offered", peer=peer.report.address)
        peer.missing = {c: None if g is None else set(g) for c, g in message.chunks}
        peer.loss = message.loss
        peer.report.naks += len(peer.missing)
        peer.answered = message.number
        peer.stalled = peer.stalled + 1 if peer.missing == before else 0
    elif isinstance(message, msg.Overflow):
        peer.overflowed = time.monotonic()
    elif isinstance(message, msg.Done):
        peer.report.status = "verified"
        peer.report.bytes = message.written
        peer.report.seconds = round(time.monotonic() - peer.joined, 3)
        peer.missing = {}
        return True
    elif isinstance(message, msg.Error):
        peer.report.status = "failed"
        peer.report.reason = message.reason
        return True
    return False


def _union(wants: list[dict[int, set[int] | None]]) -> dict[int, set[int] | None]:
    """What a pass must carry: per chunk every group anyone lacks (None = all)."""
    out: dict[int, set[int] | None] = {}
    for want in wants:
        for chunk, groups in want.items():
            have = out.get(chunk, set())
            out[chunk] = None if groups is None or have is None else have | groups
    return dict(sorted(out.items()))


def _stream(
    repo: Repository,
    ids: list[str | None],
    wanted: dict[int, set[int] | None],
    out: mmsg.Outbox,
    framer: wire.Framer,
    payload: int,
    pace: _Pace,
    overrun: Callable[[], bool],
    parity: bool,
    advance: Callable[[int], None],
) -> int:
    """Send the ``wanted`` groups of chunks at no more than ``pace.rate``, a few
    dozen datagrams per system call; returns the number of datagrams sent.

    Every CHECK seconds ``overrun()`` says whether most receivers are dropping
    datagrams for want of CPU; then the rate is cut at once, not after the pass,
    and after a quiet second it grows back by 10 % a second, up to where it began."""
    now = time.monotonic()
    due = now  # when the next burst may go
    check = now + CHECK
    count = quiet = 0
    ceiling = pace.rate  # what the last pass's loss allowed: overflow recovery stops there

    def load(n: int) -> tuple[int, bytes]:
        chunk_id = ids[n]
        assert chunk_id is not None  # holes are never wanted
        return n, wire_form(repo, chunk_id)

    # closed on the way out: a signal lands in this loop's body, and the loaders
    # must not outlive it
    with contextlib.closing(ordered_map(load, list(wanted), 2)) as loaded:
        for n, body in loaded:
            buffer, bounds = framer.datagrams(n, body, payload, wanted[n], parity)
            total = len(bounds) - 1
            first = 0
            while first < total:
                now = time.monotonic()
                if now >= check:
                    check = now + CHECK
                    if overrun():
                        pace.slow_down()
                        quiet = 0
                    elif (quiet := quiet + 1) >= RECOVER_CHECKS and pace.rate < ceiling:
                        pace.rate = min(ceiling, pace.rate * RECOVER_FASTER)  # they caught up
                        quiet = 0
                if due - now > 0.002:
                    time.sleep(due - now)
                due = max(due, now - 0.05)  # after a stall, no burst to catch up
                last = min(total, first + BURST)
                took = out.send(buffer, bounds, first, last)
                if took < last - first:  # ENOBUFS: the queue is full; the rest count as lost
                    time.sleep(0.001)
                wire_bytes = bounds[last] - bounds[first] + wire.IP_UDP * (last - first)
                due += wire_bytes / (pace.rate * 125_000)
                count += last - first
                first = last
            advance(n)
    return count


@dataclass
class _Pace:
    """The sending rate, steered by the median receiver's loss.

    Loss the link has at any rate (a bad cable, a lossy radio hop) is not caused by
    our pace. After a cut the loss is compared with what it would be had the old
    rate overrun the path (the receiver got ``(1 - loss) * rate``: that much fits);
    when it stayed nearer the old loss, the old rate comes back and that loss
    becomes the baseline the thresholds are measured above.
    """

    rate: float
    max_rate: float
    baseline: float = 0.0  # loss that persists whatever the rate
    cut_from: tuple[float, float] | None = None  # (rate, loss) before the last cut
    overran: bool = False  # slowed down during the pass: do not speed up after it
    cuts: int = 0  # times slowed down mid-pass, in all

    def update(self, losses: list[float]) -> None:
        if not losses:
            return
        median = statistics.median(losses)
        cut, self.cut_from = self.cut_from, None
        if cut is not None:
            # had the old rate overrun the path, the slower one would lose about this
            expected = max(0.0, 1 - (1 - cut[1]) / SLOWER)
            if median > (cut[1] + expected) / 2:
                self.rate, self.baseline = cut[0], median
                return
        excess = median - self.baseline
        if excess > 0.05:
            self.cut_from = (self.rate, median)
            self.rate = max(MIN_RATE, self.rate * SLOWER)
        elif excess < 0.01 and not self.overran:
            self.rate = min(self.max_rate, self.rate * 1.25)
        self.overran = False

    def slow_down(self) -> None:
        """Most receivers overflowed their socket buffers during this pass."""
        self.rate = max(MIN_RATE, self.rate * OVERRUN_SLOWER)
        self.overran = True
        self.cuts += 1


def _advanced(reporter: Reporter, task: str, sizes_of: list[int], n: int) -> None:
    reporter(TaskAdvanced(task, sizes_of[n]))


def _tell(peer: _Peer, message: msg.Message) -> None:
    with contextlib.suppress(OSError):
        peer.channel.send(message)


def _drop(peer: _Peer, reason: str) -> None:
    peer.report.status = "dropped"
    peer.report.reason = reason
    peer.missing = {}
    _tell(peer, msg.Drop(reason))
