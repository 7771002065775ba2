"""Encrypted repositories and damage detection, on a real local directory.

Independent oracles: ids are compared with BLAKE3 computed here (keyed with the
key read back out of the key file with scrypt and AES-GCM from ``cryptography``
directly, not through our code); every byte of an object is flipped in turn.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from hypothesis import given, settings
from hypothesis import strategies as st

from blockvault.errors import (
    ChunkCorrupt,
    IntegrityError,
    KeyFileInvalid,
    KeyMissing,
    ObjectCorrupt,
    PassphraseRequired,
    RepositoryError,
    UsageError,
    WrongPassphrase,
)
from blockvault.repo import Repository
from blockvault.repo import format as fmt
from blockvault.repo.crypto import MasterKey, Sealer
from blockvault.repo.keys import KeyFile, ScryptParams, wrap
from blockvault.repo.objects import Codec, DecodeError
from tests.repo.records import commit_chunks

FAST = ScryptParams(n=2**10)  # the default costs 0.4 s per open; the format is the same
MAGICS = (fmt.CHUNK_MAGIC, fmt.INDEX_MAGIC, fmt.SNAPSHOT_MAGIC)


def new_repo(tmp_path: Path, encrypted: bool, name: str = "repo") -> Repository:
    location = str(tmp_path / name)
    if encrypted:
        return Repository.init(location, encryption="repokey", passphrase="pw", kdf=FAST)
    return Repository.init(location)


def reopen(repo: Repository) -> Repository:
    return Repository.open(repo.location, passphrase="pw")


def master_key_by_hand(repo_dir: Path, passphrase: str) -> tuple[bytes, bytes]:
    """The master key, unwrapped from the key file with the primitives themselves."""
    (key_path,) = (repo_dir / "keys").iterdir()
    doc = json.loads(key_path.read_bytes())
    salt = base64.b64decode(doc["salt"])
    p = doc["params"]
    kek = Scrypt(salt=salt, length=32, n=p["n"], r=p["r"], p=p["p"]).derive(passphrase.encode())
    aad = f"blockvault-key/1/{doc['repository']}/scrypt/{p['n']}/{p['r']}/{p['p']}/".encode()
    raw = AESGCM(kek).decrypt(
        base64.b64decode(doc["nonce"]), base64.b64decode(doc["wrapped"]), aad + salt
    )
    return raw[:32], raw[32:]


# --- the envelope ------------------------------------------------------------------


def decodes_to_original_or_fails(load: Callable[[], object], original: object) -> bool:
    """A plain object's id authenticates its plaintext, not its stored bytes: zstd
    ignores a few frame bits (the "unused" bit of the frame header descriptor, for
    one), so such a flip still decodes to exactly the original, which is harmless."""
    try:
        return load() == original
    except (DecodeError, IntegrityError):
        return True


def test_envelope_layout_is_fixed() -> None:
    assert fmt.ENVELOPE.size == 16
    assert (fmt.GCM_NONCE, fmt.GCM_TAG) == (12, 16)
    codec = Codec(3, Sealer(MasterKey.generate()))
    data = codec.encode(fmt.CHUNK_MAGIC, b"z" * 1000)
    header = fmt.EnvelopeHeader.unpack(data)
    assert (header.magic, header.version, header.encryption, header.length) == (
        b"BVCK",
        1,
        1,
        1000,
    )
    assert header.compression == fmt.Compression.ZSTD  # compressed before sealing
    assert len(data) < 100  # a sealed zstd frame, not 1000 bytes of ciphertext


@settings(max_examples=60, deadline=None)
@given(
    plaintext=st.binary(max_size=5000) | st.binary(max_size=40).map(lambda b: b * 100),
    magic=st.sampled_from(MAGICS),
    level=st.sampled_from([0, 1, 3]),
    encrypted=st.booleans(),
    flip=st.integers(min_value=0),
)
def test_envelope_round_trip_and_any_flip_is_detected(
    plaintext: bytes, magic: bytes, level: int, encrypted: bool, flip: int
) -> None:
    codec = Codec(level, Sealer(MasterKey.generate()) if encrypted else None)
    oid = codec.id_of(plaintext).hex()
    data = codec.encode(magic, plaintext, oid)
    assert codec.decode(magic, data, oid) == plaintext
    damaged = bytearray(data)
    damaged[flip % len(data)] ^= 1 << (flip % 8)
    if encrypted:
        with pytest.raises(DecodeError):
            codec.decode(magic, bytes(damaged), oid)
    else:
        assert decodes_to_original_or_fails(
            lambda: codec.decode(magic, bytes(damaged), oid), plaintext
        )
    with pytest.raises(DecodeError):
        codec.decode(magic, data[: flip % len(data)], oid)


def test_plain_and_sealed_objects_never_mix() -> None:
    sealed = Codec(3, Sealer(MasterKey.generate()))
    plain = Codec(3)
    text = b"some object" * 50
    with pytest.raises(DecodeError, match="unencrypted object in an encrypted"):
        sealed.decode(
            fmt.INDEX_MAGIC, plain.encode(fmt.INDEX_MAGIC, text), sealed.id_of(text).hex()
        )
    with pytest.raises(DecodeError, match="encrypted object in an unencrypted"):
        plain.decode(fmt.INDEX_MAGIC, sealed.encode(fmt.INDEX_MAGIC, text), plain.id_of(text).hex())
    other = Codec(3, Sealer(MasterKey.generate()))
    with pytest.raises(DecodeError, match="authentication failed"):
        other.decode(
            fmt.INDEX_MAGIC, sealed.encode(fmt.INDEX_MAGIC, text), sealed.id_of(text).hex()
        )


# --- keys and ids --------------------------------------------------------------------


def test_encrypted_ids_are_keyed_and_objects_hold_no_plaintext(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, encrypted=True)
    marker = b"A KNOWN PLAINTEXT STRING THAT MUST NOT BE STORED "
    chunk = marker * 2000 + os.urandom(1000)
    snap = commit_chunks(repo, [chunk], "2026-01-01T00:00:00+00:00")
    encryption_key, id_key = master_key_by_hand(tmp_path / "repo", "pw")
    expected = blake3.blake3(chunk, key=id_key).hexdigest()
    assert repo.chunk_id(chunk).hex() == expected != blake3.blake3(chunk).hexdigest()
    assert [p.name for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file()] == [expected]
    stored = [p.read_bytes() for p in (tmp_path / "repo").rglob("*") if p.is_file()]
    for blob in stored:
        for needle in (marker[:16], b"/dev/x", b"2026-01-01", b'"host"'):
            assert needle not in blob
    # the manifest decrypts with the key read by hand, and its name is its keyed hash
    manifest = (tmp_path / "repo" / fmt.snapshot_name(snap.id)).read_bytes()
    header, nonce, body = manifest[:16], manifest[16:28], manifest[28:]
    payload = AESGCM(encryption_key).decrypt(nonce, body, header + bytes.fromhex(snap.id))
    text = zstandard.ZstdDecompressor().decompress(payload) if header[5] == 1 else payload
    assert json.loads(text)["source"] == "/dev/x"
    assert blake3.blake3(text, key=id_key).hexdigest() == snap.id


def test_unencrypted_repository_is_unchanged(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, encrypted=False)
    chunk = b"plain" * 1000
    commit_chunks(repo, [chunk], "2026-01-01T00:00:00+00:00")
    assert repo.chunk_id(chunk) == blake3.blake3(chunk).digest()
    config = json.loads((tmp_path / "repo" / "config").read_bytes())
    assert set(config) == {"format", "version", "id", "chunk_size", "compression"}
    assert not (tmp_path / "repo" / "keys").exists()
    for path in (tmp_path / "repo").rglob("*"):
        if path.is_file() and path.name != "config":
            assert path.read_bytes()[6] == 0  # encryption byte


def test_passphrase_errors(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, encrypted=True)
    with pytest.raises(WrongPassphrase):
        Repository.open(repo.location, passphrase="wrong")
    with pytest.raises(PassphraseRequired):
        Repository.open(repo.location)
    asked: list[int] = []

    def ask() -> str:
        asked.append(1)
        return "pw"

    assert Repository.open(repo.location, passphrase=ask).encrypted
    plain = new_repo(tmp_path, encrypted=False, name="plain")
    Repository.open(plain.location, passphrase=ask)
    assert len(asked) == 1  # an unencrypted repository never asks
    with pytest.raises(UsageError, match="empty"):
        Repository.init(str(tmp_path / "e"), encryption="repokey", passphrase="", kdf=FAST)
    with pytest.raises(UsageError):
        Repository.init(str(tmp_path / "f"), encryption="keyfile", passphrase="x")


def test_change_passphrase_export_import(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, encrypted=True)
    snap = commit_chunks(repo, [b"x" * 5000], "2026-01-01T00:00:00+00:00")
    exported = repo.export_key()
    assert KeyFile.from_json(exported).repository == repo.config.id
    new_id = repo.change_passphrase("new", kdf=FAST)
    assert [p.name for p in (tmp_path / "repo" / "keys").iterdir()] == [new_id]
    with pytest.raises(WrongPassphrase):
        Repository.open(repo.location, passphrase="pw")
    again = Repository.open(repo.location, passphrase="new")
    assert again.load_snapshot(snap.id) == snap
    # lose every key, then bring back the export (which keeps its old passphrase)
    shutil.rmtree(tmp_path / "repo" / "keys")
    with pytest.raises(KeyMissing):
        Repository.open(repo.location, passphrase="new")
    with pytest.raises(WrongPassphrase):
        Repository.import_key(repo.location, exported, "new")
    Repository.import_key(repo.location, exported, "pw")
    assert reopen(repo).load_snapshot(snap.id) == snap
    # a key of another repository, and a file that is no key, are refused
    other = new_repo(tmp_path, encrypted=True, name="other")
    with pytest.raises(KeyFileInvalid, match="belongs to repository"):
        Repository.import_key(repo.location, other.export_key(), "pw")
    with pytest.raises(KeyFileInvalid, match="not a blockvault key"):
        Repository.import_key(repo.location, b"hello", "pw")


def test_key_that_does_not_decrypt_the_objects_is_refused(tmp_path: Path) -> None:
    """A key file for this repository id that opens with the passphrase but holds
    another master key (forged, or from a re-initialised repository)."""
    repo = new_repo(tmp_path, encrypted=True)
    commit_chunks(repo, [b"y" * 5000], "2026-01-01T00:00:00+00:00")
    forged = wrap(MasterKey.generate(), "pw", repo.config.id, FAST)
    with pytest.raises(KeyFileInvalid, match="does not decrypt"):
        Repository.import_key(repo.location, forged.to_json(), "pw")
    assert len(list((tmp_path / "repo" / "keys").iterdir())) == 1
    # a key file moved to another repository id no longer opens at all
    moved = KeyFile.from_json(repo.export_key())
    other = new_repo(tmp_path, encrypted=True, name="other")
    moved = KeyFile(other.config.id, moved.params, moved.salt, moved.nonce, moved.wrapped)
    with pytest.raises(WrongPassphrase):
        Repository.import_key(other.location, moved.to_json(), "pw")


def test_config_downgrade_is_refused(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, encrypted=True)
    config = tmp_path / "repo" / "config"
    doc = json.loads(config.read_bytes())
    del doc["encryption"]
    config.write_text(json.dumps(doc))
    with pytest.raises(RepositoryError, match="holds keys"):
        Repository.open(repo.location, passphrase="pw")


def test_damaged_key_file_params_are_refused(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, encrypted=True)
    doc = json.loads(repo.export_key())
    doc["params"]["n"] = 2**30
    with pytest.raises(KeyFileInvalid, match="scrypt"):
        Repository.import_key(repo.location, json.dumps(doc).encode(), "pw")


# --- tampering -----------------------------------------------------------------------

Tamper = Callable[[Path, Path], None]


def flip_byte(at: int) -> Tamper:
    def tamper(path: Path, other: Path) -> None:
        raw = bytearray(path.read_bytes())
        raw[at % len(raw)] ^= 0x01
        path.write_bytes(bytes(raw))

    return tamper


def truncate(path: Path, other: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def swap(path: Path, other: Path) -> None:
    path.write_bytes(other.read_bytes())


TAMPERS = {
    "flip-header": flip_byte(5),
    "flip-first": flip_byte(16),
    "flip-middle": flip_byte(40),
    "flip-last": flip_byte(-1),
    "truncate": truncate,
    "swap": swap,
}


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
@pytest.mark.parametrize("how", sorted(TAMPERS))
@pytest.mark.parametrize("kind", ["chunk", "index", "manifest"])
def test_tampering_is_detected(tmp_path: Path, encrypted: bool, how: str, kind: str) -> None:
    repo = new_repo(tmp_path, encrypted)
    a = commit_chunks(repo, [os.urandom(3000) * 4, b"a" * 9000], "2026-01-01T00:00:00+00:00")
    b = commit_chunks(repo, [os.urandom(3000) * 4], "2026-01-02T00:00:00+00:00")
    root = Path(repo.location)
    a_chunk = repo.load_index(a).regions[0].chunk_ids[0].hex()
    b_chunk = repo.load_index(b).regions[0].chunk_ids[0].hex()
    target, other = {
        "chunk": (fmt.chunk_name(a_chunk), fmt.chunk_name(b_chunk)),
        "index": (fmt.index_name(a.index), fmt.index_name(b.index)),
        "manifest": (fmt.snapshot_name(a.id), fmt.snapshot_name(b.id)),
    }[kind]
    TAMPERS[how](root / target, root / other)
    fresh = reopen(repo)
    error = {"chunk": ChunkCorrupt, "index": ObjectCorrupt, "manifest": ObjectCorrupt}[kind]
    with pytest.raises(error) as caught:
        if kind == "chunk":
            fresh.get_chunk(a_chunk)
        elif kind == "index":
            fresh.load_index(a)
        else:
            fresh.load_snapshot(a.id)
    assert isinstance(caught.value, IntegrityError) and caught.value.exit_code == 4
    assert (a_chunk if kind == "chunk" else a.index if kind == "index" else a.id)[:12] in str(
        caught.value
    )
    # the untouched snapshot still reads
    assert fresh.get_chunk(b_chunk)
    assert fresh.load_index(b).regions[0].chunk_ids[0].hex() == b_chunk


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_every_byte_of_an_index_and_a_manifest_is_covered(tmp_path: Path, encrypted: bool) -> None:
    repo = new_repo(tmp_path, encrypted)
    snap = commit_chunks(repo, [b"q" * 7000], "2026-01-01T00:00:00+00:00")
    for path, load in (
        (Path(repo.location) / fmt.index_name(snap.index), lambda: repo.load_index(snap)),
        (Path(repo.location) / fmt.snapshot_name(snap.id), lambda: repo.load_snapshot(snap.id)),
    ):
        good = path.read_bytes()
        original = load()
        harmless = 0
        for at in range(len(good)):
            damaged = bytearray(good)
            damaged[at] ^= 0x10
            path.write_bytes(bytes(damaged))
            try:
                load()
                harmless += 1
            except ObjectCorrupt:
                continue
            assert not encrypted, f"flip at byte {at} not detected"
            assert load() == original
        assert harmless <= 3  # plain: only ignored zstd bits (see above)
        path.write_bytes(good)
        load()


def test_with_compression_keeps_encrypting(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, encrypted=True).with_compression("none")
    chunk = b"abc" * 5000
    repo.put_chunk(chunk)
    repo.flush()
    chunk_id = repo.chunk_id(chunk).hex()
    stored = (tmp_path / "repo" / fmt.chunk_name(chunk_id)).read_bytes()
    header = fmt.EnvelopeHeader.unpack(stored)
    assert (header.compression, header.encryption) == (fmt.Compression.NONE, 1)
    assert b"abcabc" not in stored
    assert reopen(repo).get_chunk(chunk_id) == chunk
