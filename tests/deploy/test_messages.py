"""Cast messages, codes and the authenticated control channel, without a network."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockvault.deploy import auth, wire
from blockvault.deploy import messages as msg
from blockvault.errors import CastAuthError, CastProtocolError, KeyFileInvalid, UsageError
from tests.conftest import blockvault

ITEM = msg.Item(1 << 20, 0, 4096, ((0, 1024), (2048, 2048)), True)
MESSAGES: list[msg.Message] = [
    msg.Announce("lab1", 0xDEADBEEF, bytes(range(16)), "10.0.0.1", 9520, 1430, 123),
    msg.Hello("lab1", "pc-07", 1430, bytes(16)),
    msg.Manifest("ab" * 32, 2 << 20, None, (ITEM,), 9522, 2 << 20, 512, (4096, 512)),
    msg.Manifest("ab" * 32, 1 << 20, 1, (msg.Item(0, 4096, 4096, (), False),), 9522, 0, 4096, None),
    msg.Ready(),
    msg.PassEnd(3, 100_000),
    msg.Need(3, ((0, None), (7, (0, 2))), 0.25),
    msg.Overflow(10, 2),
    msg.Done(1 << 30),
    msg.Error("target too small"),
    msg.Drop("no progress"),
    msg.Bye(),
]
FIELD_NAMES = {name for m in MESSAGES for name in json.loads(m.encode())} - {"v", "type"}


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.kind)
def test_every_message_decodes_to_itself(message: msg.Message) -> None:
    assert msg.decode(message.encode(), "peer") == message


def mangled(message: msg.Message, **changes: object) -> bytes:
    raw = json.loads(message.encode())
    raw.update(changes)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b"{", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (mangled(msg.Ready(), v=2), "protocol version 2"),
        (mangled(msg.Ready(), type="shell"), "unknown message type"),
        (mangled(msg.Done(1), written=-1), "written -1"),
        (mangled(msg.Done(1), written=True), "written True"),
        (mangled(msg.Done(1), written=1.5), "written 1.5"),
        (mangled(msg.PassEnd(1, 1), sent=1 << 70), "sent"),
        (mangled(msg.Need(1, (), 0.0), loss=float("nan")), "loss"),
        (mangled(msg.Need(1, (), 0.0), chunks=[[1, [70000]]]), "group 70000"),
        (mangled(msg.Need(1, (), 0.0), chunks=[[1]]), "chunks is not a list of 2"),
        (mangled(msg.Error("x"), reason="x" * 5000), "reason"),
        (mangled(MESSAGES[0], address="lab1.local"), "not IPv4"),
        (mangled(MESSAGES[0], address="10.0.0.1\x00"), "not IPv4"),
        (mangled(MESSAGES[0], salt="00"), "salt is not 16 bytes"),
        (mangled(MESSAGES[1], payload=70000), "payload 70000"),
        # nothing the manifest names may lie outside the target or its chunk
        (mangled(MESSAGES[2], need=(1 << 20) + 2048), "reaches past 1050624"),
        (mangled(MESSAGES[2], items=[[0, 0, 4096, 1, [[4000, 200]]]]), "used 4000+200"),
        (mangled(MESSAGES[3], items=[[0, 8192, 4096, 1, [[0, 100]]]]), "before its chunk"),
        (mangled(MESSAGES[2], items=[[0, 0, 128 << 20, 1, []]]), "length"),
        (mangled(MESSAGES[2], sector_size=1000), "sector size 1000"),
        (mangled(MESSAGES[2], gpt_backup=[2 << 20, 512]), "gpt_backup"),
        (mangled(MESSAGES[2], items=[[0, 0, 4096, 1]]), "item is not a list of 5"),
    ],
)
def test_malformed_messages_are_refused_by_name(line: bytes, words: str) -> None:
    with pytest.raises(CastProtocolError, match="peer sent a malformed message") as caught:
        msg.decode(line, "peer")
    assert words in str(caught.value)


def test_codes_carry_100_bits_and_forgive_how_they_are_typed() -> None:
    codes = {auth.new_code() for _ in range(100)}
    assert len(codes) == 100
    code = codes.pop()
    assert len(code) == 23 and code.count("-") == 3
    assert auth.parse_code(code.lower().replace("-", " ")) == code.replace("-", "")
    assert len(auth.parse_code(code)) * 5 >= 100
    with pytest.raises(UsageError, match="'1' is not a base32 letter"):
        auth.parse_code(code[:-1] + "1")
    with pytest.raises(UsageError, match="19 characters"):
        auth.parse_code(code[:-1])


def test_key_file_holds_a_code(tmp_path: Path) -> None:
    path = tmp_path / "code"
    code = auth.new_code()
    path.write_text(code + "\nanything\n")
    assert auth.read_key_file(str(path)) == auth.parse_code(code)
    path.write_bytes(b"\xff" * 10_000)
    with pytest.raises(KeyFileInvalid, match="no cast code"):
        auth.read_key_file(str(path))
    with pytest.raises(KeyFileInvalid, match="No such file"):
        auth.read_key_file(str(tmp_path / "missing"))


def test_keys_differ_per_session_and_per_channel() -> None:
    code = auth.new_code()
    one, two = auth.Keys.derive(code, bytes(16)), auth.Keys.derive(code, bytes(15) + b"\1")
    assert len({one.announce, one.control, one.data, two.announce, two.control, two.data}) == 6
    assert auth.Keys.derive(code, bytes(16)) == one


@pytest.fixture
def pair() -> Iterator[tuple[msg.Channel, msg.Channel, socket.socket]]:
    """A sender and a receiver channel over a socket pair, opened; and the receiver's
    raw socket, for what an attacker could write into it."""
    key = auth.Keys.derive(auth.new_code(), bytes(16)).control
    a, b = socket.socketpair()
    sender = msg.Channel(a, key, sender=True, peer="receiver")
    receiver = msg.Channel(b, key, sender=False, peer="sender")
    sender.challenge()
    receiver.answer(lambda nonce: msg.Hello("s", "h", 1430, nonce))
    assert isinstance(sender.greeted(), msg.Hello)
    yield sender, receiver, b
    sender.close()
    receiver.close()


def test_control_lines_are_authenticated_in_order(
    pair: tuple[msg.Channel, msg.Channel, socket.socket],
) -> None:
    sender, receiver, raw = pair
    sender.send(msg.PassEnd(1, 10))
    assert receiver.read() == msg.PassEnd(1, 10)
    receiver.send(msg.Ready())
    line = sender.file.peek(1)  # the receiver's line, as it travels
    assert sender.read() == msg.Ready()
    raw.sendall(line.split(b"\n")[0] + b"\n")  # the same line again: a replay
    with pytest.raises(CastAuthError, match="failed authentication"):
        sender.read()


def test_a_forged_control_line_is_refused(
    pair: tuple[msg.Channel, msg.Channel, socket.socket],
) -> None:
    sender, _receiver, raw = pair
    raw.sendall(auth.TAG * b"00" + b" " + msg.Done(1).encode() + b"\n")
    with pytest.raises(CastAuthError):
        sender.read()


def test_a_control_line_is_bounded(pair: tuple[msg.Channel, msg.Channel, socket.socket]) -> None:
    sender, _receiver, raw = pair
    raw.sendall(b"0" * 5000)
    with pytest.raises(CastProtocolError, match="longer than 4096 bytes"):
        sender.read(4096)


def test_a_datagram_verifies_only_unaltered_and_with_its_sessions_key() -> None:
    key = auth.Keys.derive(auth.new_code(), bytes(16)).data
    tags = auth.DataTags(key)
    buffer, bounds = wire.Framer(1, tags, 1).datagrams(0, bytes(range(256)) * 20, 1430)
    first = memoryview(buffer[bounds[0] : bounds[1]])
    body, mac = first[: -auth.TAG], first[-auth.TAG :]
    assert tags.check(body[wire.NONCE], body, mac)
    assert not auth.DataTags(bytes(32)).check(body[wire.NONCE], body, mac)
    flipped = bytearray(body)
    flipped[wire.HEADER.size + 5] ^= 1
    assert not tags.check(body[wire.NONCE], memoryview(flipped), mac)
    second = memoryview(buffer[bounds[1] : bounds[2]])  # another nonce: no tag is reused
    assert second[-auth.TAG :] != mac and not tags.check(
        second[wire.NONCE], second[: -auth.TAG], mac
    )


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ([], "needs the session code"),
        (["--code", "ABCDE-FGHIJ"], "10 characters, a code has 20"),
        (["--key-file", "/nonexistent/code"], "key file /nonexistent/code"),
    ],
)
def test_receive_without_a_usable_code_is_refused_before_listening(
    tmp_path: Path, options: list[str], words: str
) -> None:
    target = tmp_path / "target.img"
    run = blockvault("cast", "receive", target, "--max-wait", "0", *options)
    assert run.returncode == 2 and words in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not target.exists()


def test_cast_code_prints_a_fresh_code() -> None:
    first, second = (blockvault("cast", "code").stdout.strip() for _ in range(2))
    assert first != second and auth.parse_code(first) and auth.parse_code(second)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted({type(m).kind for m in MESSAGES})),
    fields=st.dictionaries(st.sampled_from(sorted(FIELD_NAMES)), JSON, max_size=8),
)
def test_any_json_decodes_to_a_checked_message_or_a_protocol_error(
    kind: str, fields: dict[str, object]
) -> None:
    """Whatever a peer puts in the fields, decoding never fails any other way."""
    line = json.dumps({**fields, "v": msg.PROTOCOL, "type": kind}).encode()
    try:
        message = msg.decode(line, "peer")
    except CastProtocolError:
        return
    assert msg.decode(message.encode(), "peer") == message  # what passed is well formed
