"""One-file images at the storage level: the byte layout, reading back what was written
(whole and in pieces), and each way a piece can be wrong, named with its place."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import blake3
import pytest
import xxhash

from blockvault.errors import ImageReadOnly, ObjectNotFound, ObjectTooLarge, PieceError
from blockvault.storage import open_backend
from blockvault.storage.bundle import (
    MAGIC,
    PIECE_HEADER,
    SPLIT_SIZES,
    TOC_ENTRY,
    TRAILER,
    BundleBackend,
    BundleWriter,
    first_piece,
    is_bundle,
    parse_split,
    piece_name,
)

KiB = 1024


def objects(seed: int = 1, count: int = 40) -> dict[str, bytes]:
    rng = random.Random(seed)
    made = {"config": b'{"format": "blockvault-repository"}'}
    for _ in range(count):
        name = f"data/{rng.randrange(256):02x}/{rng.getrandbits(256):064x}"
        made[name] = rng.randbytes(rng.randrange(1, 48 * KiB))
    made["snapshots/" + "ab" * 32] = b"manifest"
    made["keys/empty"] = b""
    return made


def write(dest: Path, made: dict[str, bytes], split: int | None = None) -> list[str]:
    with BundleWriter(str(dest), split) as out:
        for name, data in made.items():
            out.add(name, data)
        return out.finish()


def test_layout_sizes_are_fixed() -> None:
    assert (PIECE_HEADER.size, TRAILER.size, TOC_ENTRY.size) == (64, 64, 20)
    assert len(MAGIC) == 8


def test_one_file_reads_back_every_object(tmp_path: Path) -> None:
    made = objects()
    assert write(tmp_path / "x.bvi", made) == [str(tmp_path / "x.bvi")]
    backend = open_backend(str(tmp_path / "x.bvi"))
    assert isinstance(backend, BundleBackend)
    assert sorted(backend.list()) == sorted(made)
    assert sorted(backend.list("data/")) == sorted(n for n in made if n.startswith("data/"))
    for name, data in made.items():
        assert backend.read(name) == data
        assert backend.size(name) == len(data)
    assert dict(backend.list_sizes("snapshots/")) == {"snapshots/" + "ab" * 32: 8}
    with pytest.raises(ObjectNotFound):
        backend.read("data/00/missing")
    big = max(made, key=lambda n: len(made[n]))
    with pytest.raises(ObjectTooLarge):
        backend.read(big, len(made[big]) - 1)


def test_the_magic_decides_not_the_name(tmp_path: Path) -> None:
    write(tmp_path / "image.bin", objects())
    assert is_bundle(str(tmp_path / "image.bin"))
    (tmp_path / "other.bvi").write_bytes(b"not an image at all")
    assert not is_bundle(str(tmp_path / "other.bvi"))
    assert not is_bundle(str(tmp_path))


def test_pieces_hold_the_stream_objects_span_them(tmp_path: Path) -> None:
    made = objects(seed=2)
    pieces = write(tmp_path / "x.bvi", made, split=64 * KiB)
    assert len(pieces) > 5
    assert pieces == [piece_name(str(tmp_path / "x.bvi"), n) for n in range(1, len(pieces) + 1)]
    assert all(os.path.getsize(p) == 64 * KiB for p in pieces[:-1])
    assert not (tmp_path / "x.bvi").exists()
    assert first_piece(str(tmp_path / "x.bvi")) == pieces[0]
    for given in (tmp_path / "x.bvi", pieces[0]):
        backend = open_backend(str(given))
        assert {n: backend.read(n) for n in backend.list()} == made
    # each header names the set, its place, the count, and is checksummed
    headers = [PIECE_HEADER.unpack(Path(p).read_bytes()[:64]) for p in pieces]
    assert {h[3] for h in headers} == {headers[0][3]}
    assert [(h[4], h[5]) for h in headers] == [(n, len(pieces)) for n in range(1, len(pieces) + 1)]
    raw = Path(pieces[0]).read_bytes()[:56]
    assert headers[0][-1] == xxhash.xxh3_64_intdigest(raw)


def test_nothing_carries_a_final_name_until_finished(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), BundleWriter(str(tmp_path / "x.bvi"), 64 * KiB) as out:
        for name, data in objects().items():
            out.add(name, data)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_image_is_not_overwritten(tmp_path: Path) -> None:
    write(tmp_path / "x.bvi", objects())
    with pytest.raises(Exception, match="exists"):
        BundleWriter(str(tmp_path / "x.bvi"))


def test_writes_are_refused_with_the_remedy(tmp_path: Path) -> None:
    write(tmp_path / "x.bvi", objects())
    backend = open_backend(str(tmp_path / "x.bvi"))
    for attempt in (
        lambda: backend.write("sessions/x", b"{}"),
        lambda: backend.write_batched("data/00/00", b"x"),
        lambda: backend.delete("config"),
        backend.create,
    ):
        with pytest.raises(ImageReadOnly, match="read-only; import it into a repository"):
            attempt()


@pytest.fixture
def split(tmp_path: Path) -> list[Path]:
    (tmp_path / "a").mkdir()
    return [Path(p) for p in write(tmp_path / "a" / "x.bvi", objects(seed=3), split=64 * KiB)]


def opening_fails(first: Path, words: str, piece: Path) -> None:
    """Opening the image, or reading all of it, raises a PieceError that names
    ``piece`` and says ``words``."""
    with pytest.raises(PieceError) as caught:
        backend = BundleBackend(str(first))
        for name in backend.list():
            backend.read(name)
    message = str(caught.value)
    assert str(piece) in message and words in message, message
    assert caught.value.exit_code == 4


def test_a_missing_piece_is_named(split: list[Path]) -> None:
    split[3].unlink()
    opening_fails(split[0], f"is missing (piece 4 of {len(split)})", split[3])


def test_a_truncated_piece_is_named(split: list[Path]) -> None:
    os.truncate(split[2], os.path.getsize(split[2]) - 10)
    opening_fails(split[0], "is truncated", split[2])


def test_a_foreign_piece_is_named(split: list[Path], tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    other = write(tmp_path / "b" / "x.bvi", objects(seed=3), split=64 * KiB)
    os.replace(other[1], split[1])
    opening_fails(split[0], "belongs to another image", split[1])


def test_reordered_pieces_are_named(split: list[Path], tmp_path: Path) -> None:
    os.replace(split[1], tmp_path / "swap")
    os.replace(split[2], split[1])
    os.replace(tmp_path / "swap", split[2])
    opening_fails(split[0], "holds piece 3", split[1])


def test_damage_is_named_with_its_piece_and_bytes(split: list[Path]) -> None:
    data = bytearray(split[4].read_bytes())
    data[1000] ^= 0xFF
    split[4].write_bytes(bytes(data))
    opening_fails(split[0], "is damaged at bytes", split[4])
    # the bytes named hold the flipped one
    with pytest.raises(PieceError) as caught:
        backend = BundleBackend(str(split[0]))
        for name in backend.list():
            backend.read(name)
    low, high = (int(n) for n in str(caught.value).split("at bytes ")[1].split(" ")[0].split("-"))
    assert low <= 1000 <= high


def test_a_damaged_header_or_table_is_named(split: list[Path]) -> None:
    data = bytearray(split[1].read_bytes())
    data[20] ^= 1
    split[1].write_bytes(bytes(data))
    opening_fails(split[0], "is damaged at bytes 0-63 (its header)", split[1])


def test_a_damaged_table_of_contents_is_named(tmp_path: Path) -> None:
    write(tmp_path / "x.bvi", objects())
    path = tmp_path / "x.bvi"
    data = bytearray(path.read_bytes())
    data[-TRAILER.size - 5] ^= 1  # the table's last bytes
    path.write_bytes(bytes(data))
    opening_fails(path, "(its table of contents)", path)


def test_a_hostile_table_cannot_name_outside_objects(tmp_path: Path) -> None:
    """A table whose checksums were recomputed (forged, not damaged) still cannot name an
    object outside the storage's namespace."""
    path = tmp_path / "x.bvi"
    write(path, {"config": b"{}"})
    data = bytearray(path.read_bytes())
    trailer = TRAILER.unpack(data[-64:])
    toc_offset = trailer[2]
    name = b"../../etc/passwd"
    toc = TOC_ENTRY.pack(0, 2, 1, len(name)) + struct.pack("<Q", xxhash.xxh3_64_intdigest(b"{}"))
    toc += name
    body = bytes(data[64 : 64 + toc_offset]) + toc
    stream_trailer = TRAILER.pack(
        b"\x89BVIEND\n", trailer[1], toc_offset, len(toc), blake3.blake3(toc).digest()[:16], 0
    )
    stream_trailer = stream_trailer[:-8] + struct.pack(
        "<Q", xxhash.xxh3_64_intdigest(stream_trailer[:-8])
    )
    body += stream_trailer
    header = PIECE_HEADER.pack(MAGIC, 1, 0, trailer[1], 1, 1, 0, len(body), 0)
    header = header[:-8] + struct.pack("<Q", xxhash.xxh3_64_intdigest(header[:-8]))
    path.write_bytes(header + body)
    opening_fails(path, "bad name", path)


def test_split_sizes() -> None:
    fat32_limit = 4 * 2**30 - 1  # FAT32 stores at most 4 GiB - 1 byte in one file
    assert parse_split("fat32") == parse_split("4G") == SPLIT_SIZES["fat32"] <= fat32_limit
    assert parse_split("dvd") <= 4_700_372_992  # single-layer DVD±R, minus its filesystem
    assert parse_split("700M") == 700 * 2**20
    assert parse_split("1GiB") == 2**30
    assert parse_split("65536") == 65536
    for bad in ("0", "1K", "lots", "-5M"):
        with pytest.raises(Exception, match="--split"):
            parse_split(bad)
