"""The cast datagram layer without a network: fragments, XOR repair, sizes, memory bound."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from pathlib import Path

import blake3
import pytest

from blockvault.deploy import auth, mmsg, receiver, wire
from blockvault.deploy import messages as msg
from blockvault.disk.device import open_device
from blockvault.extents import ExtentMap

FRAMER = wire.Framer(7, auth.DataTags(bytes(32)), 1)


def deliver(assembly: wire.Assembly, buffer: bytearray, bounds: list[int], lost: set[int]) -> bool:
    done = False
    for k in range(len(bounds) - 1):
        if k in lost:
            continue
        datagram = memoryview(buffer)[bounds[k] : bounds[k + 1]]
        index = wire.HEADER.unpack_from(datagram)[4]
        done = assembly.add(index, datagram[wire.HEADER.size : -auth.TAG]) or done
    return done


@pytest.mark.parametrize("size", [1, 1449, 1450, 1451, 8 * 1450, 8 * 1450 + 1, 100_000])
@pytest.mark.parametrize("seed", range(4))
def test_losses_are_repaired_or_named(size: int, seed: int) -> None:
    rnd = random.Random(seed * 1_000_003 + size)
    body = rnd.randbytes(size)
    buffer, bounds = FRAMER.datagrams(3, body, 1450)
    count = -(-size // 1450)
    assert len(bounds) - 1 == count + -(-count // wire.GROUP)  # data + one parity per group
    lost = {k for k in range(len(bounds) - 1) if rnd.random() < 0.15}
    a = wire.Assembly(count, size, 1450)
    if not deliver(a, buffer, bounds, lost):
        missing = set(a.missing_groups())
        assert missing
        again, again_bounds = FRAMER.datagrams(3, body, 1450, missing)
        assert deliver(a, again, again_bounds, set())
    assert bytes(a.body) == body


def test_one_loss_per_group_needs_no_resend() -> None:
    body = random.Random(1).randbytes(50_000)
    buffer, bounds = FRAMER.datagrams(0, body, 1450)
    a = wire.Assembly(-(-len(body) // 1450), len(body), 1450)
    lost = set(range(0, len(bounds) - 1, wire.GROUP + 1))  # the first fragment of each group
    assert deliver(a, buffer, bounds, lost)
    assert bytes(a.body) == body


def test_without_parity_a_loss_is_named_then_resent_with_it() -> None:
    body = random.Random(2).randbytes(50_000)
    count = -(-len(body) // 1450)
    buffer, bounds = FRAMER.datagrams(0, body, 1450, parity=False)
    assert len(bounds) - 1 == count  # data fragments only
    a = wire.Assembly(count, len(body), 1450)
    assert not deliver(a, buffer, bounds, {0, 9})  # one loss in each of two groups
    missing = set(a.missing_groups())
    assert missing == {0, 1}
    again, again_bounds = FRAMER.datagrams(0, body, 1450, missing)
    assert deliver(a, again, again_bounds, {0})  # the repair pass has parity
    assert bytes(a.body) == body


def test_wrong_length_fragment_is_ignored() -> None:
    a = wire.Assembly(2, 2000, 1450)
    assert not a.add(1, memoryview(bytes(1450)))  # the last fragment holds 550 bytes
    assert len(a.body) == 2000 and a.missing_groups() == [0]


def test_payload_fits_the_mtu() -> None:
    assert wire.payload_for(1500) + wire.HEADER.size + auth.TAG + 28 == 1500
    assert wire.payload_for(9000) == 9000 - 28 - wire.HEADER.size - auth.TAG
    assert wire.payload_for(65536) == wire.MAX_PAYLOAD  # loopback
    assert wire.link_mtu("lo") == int(Path("/sys/class/net/lo/mtu").read_text())


def test_partial_chunks_stay_within_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    size, payload = 100_000, 1450
    monkeypatch.setattr(receiver, "PARTIAL_LIMIT", 3 * size)
    state = receiver._State(*items(10, size))
    body = bytes(size)
    for chunk in range(10):
        buffer, bounds = FRAMER.datagrams(chunk, body, payload)
        a = state.start(chunk, -(-size // payload), size, payload)
        assert a is not None
        deliver(a, buffer, bounds, {0, 1})  # two losses in group 0: not repairable
        assert state.partial <= receiver.PARTIAL_LIMIT
    assert list(state.assemblies) == [7, 8, 9]
    need = dict((c, g) for c, g in state.need())
    assert [need[c] for c in range(7)] == [None] * 7  # let go: asked for whole
    assert [need[c] for c in (7, 8, 9)] == [(0,)] * 3  # kept: only the lost group
    # the next pass starts again at a low chunk: the partial ones ahead are kept
    assert state.start(2, -(-size // payload), size, payload) is None
    assert list(state.assemblies) == [7, 8, 9]


def test_a_complete_chunk_waits_for_the_writer_then_is_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    size, payload = 100_000, 1450
    monkeypatch.setattr(receiver, "QUEUE_LIMIT", size)
    state = receiver._State(*items(3, size))

    def arrive(chunk: int) -> None:
        buffer, bounds = FRAMER.datagrams(chunk, bytes(size), payload)
        a = state.start(chunk, -(-size // payload), size, payload)
        assert a is not None and deliver(a, buffer, bounds, set())
        state.complete(chunk, a)

    arrive(0)  # fills the queue
    writer = threading.Timer(0.05, take_one, (state,))
    writer.start()
    arrive(1)  # waits until the writer takes chunk 0
    writer.join()
    assert state.pending[1] == 0 and state.discarded == 0
    started = time.monotonic()
    arrive(2)  # nobody takes chunk 1: let go after WRITER_WAIT, asked for again
    assert time.monotonic() - started >= receiver.WRITER_WAIT
    assert state.pending[2] == 1 and state.discarded == 1
    assert [c for c, _ in state.need()] == [2]  # the queued ones are not asked for


def items(count: int, size: int) -> tuple[list[msg.Item], list[ExtentMap]]:
    """``count`` chunks of ``size`` bytes, all used, and their used extents."""
    made = [msg.Item(0, i * size, size, ((i * size, size),), True) for i in range(count)]
    return made, [ExtentMap(item.used) for item in made]


def take_one(state: receiver._State) -> None:
    """What the writer does on taking a body off its queue."""
    job = state.writes.get()
    assert job is not None
    with state.lock:
        state.queued -= len(job[1])
        state.room.notify()


@pytest.mark.parametrize(
    ("segmented", "coalesce"),
    [(True, True), (True, False), (False, False)],
    ids=["udp-gso-and-gro", "udp-gso", "sendmmsg-recvmmsg"],
)
def test_batched_send_and_receive_keep_every_datagram(segmented: bool, coalesce: bool) -> None:
    body = random.Random(5).randbytes(100_000)
    buffer, bounds = FRAMER.datagrams(4, body, 1450)
    expected = [bytes(buffer[bounds[k] : bounds[k + 1]]) for k in range(len(bounds) - 1)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        wire.receive_timeout(rx, 0.5)
        inbox = mmsg.Inbox(rx, wire.OVERHEAD + 1450, slots=16, coalesce=coalesce)
        assert inbox.coalesce == coalesce
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            out = mmsg.Outbox(tx, rx.getsockname())
            out.gso = segmented
            assert out.send(buffer, bounds, 0, len(expected)) == len(expected)
            assert out.gso == segmented  # loopback offloads: no fallback was taken
        got: list[bytes] = []
        runs = 0
        while len(got) < len(expected) and (n := inbox.receive()):
            for k in range(n):
                start, step = k * inbox.slot, inbox.segments[k]
                end = start + inbox.lengths[k]
                got += [bytes(inbox.view[o : min(o + step, end)]) for o in range(start, end, step)]
                runs += 1
    assert got == expected
    if coalesce:  # runs of datagrams arrived whole
        assert runs < len(expected) // 10


def test_socket_drops_counts_what_a_full_buffer_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a few datagrams fit
        assert wire.socket_drops(rx) == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for _ in range(100):
                tx.sendto(bytes(1000), rx.getsockname())
        queued = 0
        rx.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while rx.recv(2000):
                queued += 1
        assert wire.socket_drops(rx) == 100 - queued > 0


def test_only_authentic_datagrams_of_the_newest_pass_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over loopback, before the real datagrams: one of another session, a whole
    chunk under another key, a real one with a flipped byte and, after the newest
    pass began, the previous pass again. Each is dropped and counted; the chunk
    written is the sender's."""
    monkeypatch.setattr(receiver, "IDLE_LIMIT", 5.0)  # a wrong acceptance fails, not hangs
    rnd = random.Random(9)
    plain, other = rnd.randbytes(30_000), rnd.randbytes(30_000)

    def body(data: bytes) -> bytes:
        return b"\0" + blake3.blake3(data).digest() + data

    key = auth.Keys.derive(auth.new_code(), bytes(16)).data
    real = wire.Framer(77, auth.DataTags(key), 2).datagrams(0, body(plain), 1430)
    older = wire.Framer(77, auth.DataTags(key), 1).datagrams(0, body(other), 1430)
    forged = wire.Framer(77, auth.DataTags(bytes(32)), 3).datagrams(0, body(other), 1430)
    foreign = wire.Framer(78, auth.DataTags(key), 2).datagrams(0, body(other), 1430)

    def split(framed: tuple[bytearray, list[int]]) -> list[bytes]:
        buffer, bounds = framed
        return [bytes(buffer[bounds[k] : bounds[k + 1]]) for k in range(len(bounds) - 1)]

    tampered = bytearray(split(real)[1])
    tampered[wire.HEADER.size] ^= 1
    first, *rest = split(real)
    order = [split(foreign)[0], *split(forged), bytes(tampered), first, *split(older), *rest]
    items = [msg.Item(0, 0, len(plain), ((0, len(plain)),), True)]
    state = receiver._State(items, [ExtentMap(items[0].used)])
    device = open_device(tmp_path / "target.img", write=True, create_size=len(plain))
    a, b = socket.socketpair()
    with device, a, b, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        wire.receive_timeout(rx, 0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for datagram in order:
                tx.sendto(datagram, rx.getsockname())
        writer = threading.Thread(target=receiver._writer, args=(items, device, state))
        writer.start()
        channel = msg.Channel(a, key, sender=False, peer="sender")
        receiver._collect(rx, wire.OVERHEAD + 1430, 77, key, channel, state, lambda _: None)
        state.writes.put(None)
        writer.join()
        assert device.read_at(0, len(plain)) == plain
    assert state.foreign == 1
    assert state.forged == len(split(forged)) + 1  # the other key's, and the flipped byte
    assert state.replayed == len(split(older))


def test_a_chunk_body_whose_zstd_frame_declares_another_length_is_not_opened() -> None:
    """A zstd bomb (a small frame declaring 512 MiB) is refused before it is
    decompressed; an honest frame opens."""
    import tracemalloc

    import zstandard

    from blockvault.deploy.receiver import _opened

    plain = b"x" * 4096
    honest = bytes([1]) + bytes(32) + zstandard.ZstdCompressor().compress(plain)
    bomb_frame = zstandard.ZstdCompressor().compress(bytes(512 << 20))
    bomb = bytes([1]) + bytes(32) + bomb_frame
    decompressor = zstandard.ZstdDecompressor()
    assert _opened(decompressor, memoryview(honest), len(plain)) == plain
    tracemalloc.start()
    try:
        assert _opened(decompressor, memoryview(bomb), len(plain)) == b""
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(bomb_frame) < 1 << 20 and peak < 16 << 20
