"""The repository on a real local directory: dedup, atomic objects, damage detection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blockvault.errors import (
    AmbiguousSnapshot,
    ChunkCorrupt,
    ChunkMissing,
    ObjectCorrupt,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
    UsageError,
)
from blockvault.extents import ExtentMap
from blockvault.repo import Index, Region, Repository, Snapshot
from blockvault.repo import format as fmt
from blockvault.repo.objects import object_id
from tests.repo.records import commit_chunks


def make_snapshot(repo: Repository, chunk: bytes, when: str) -> Snapshot:
    return commit_chunks(repo, [chunk], when)


def test_init_open_and_refusals(tmp_path: Path) -> None:
    location = str(tmp_path / "repo")
    with pytest.raises(RepositoryNotFound):
        Repository.open(location)
    repo = Repository.init(location)
    assert Repository.open(location).config == repo.config
    with pytest.raises(RepositoryExists):
        Repository.init(location)
    with pytest.raises(UsageError):
        Repository.init(str(tmp_path / "other"), compression="lz4")


def test_chunks_are_stored_once(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    data = b"x" * 100_000
    assert repo.put_chunk(data) > 0
    assert repo.put_chunk(data) == 0
    repo.flush()  # chunks are listed once durable
    reopened = Repository.open(repo.location)
    assert reopened.put_chunk(data) == 0  # known from the listing, not just this session
    assert reopened.get_chunk(object_id(data)) == data
    assert len(list(repo.backend.list("data/"))) == 1


def test_damaged_chunk_is_detected(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    data = os.urandom(50_000)
    repo.put_chunk(data)
    repo.flush()
    chunk_id = object_id(data)
    path = Path(repo.location) / fmt.chunk_name(chunk_id)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ChunkCorrupt):
        repo.get_chunk(chunk_id)
    path.write_bytes(bytes(raw[:20]))
    with pytest.raises(ChunkCorrupt):
        repo.get_chunk(chunk_id)
    other = b"another chunk" * 100
    repo.put_chunk(other)
    repo.flush()
    path.write_bytes((Path(repo.location) / fmt.chunk_name(object_id(other))).read_bytes())
    with pytest.raises(ChunkCorrupt, match="does not match"):
        repo.get_chunk(chunk_id)
    path.unlink()
    with pytest.raises(ChunkMissing):
        repo.get_chunk(chunk_id)


def test_snapshots_resolve_and_damage(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    a = make_snapshot(repo, b"a" * 4096, "2026-01-01T00:00:00+00:00")
    b = make_snapshot(repo, b"b" * 4096, "2026-01-02T00:00:00+00:00")
    assert [s.id for s in repo.snapshots()] == [a.id, b.id]
    assert repo.resolve("latest").id == b.id
    assert repo.resolve(a.id[:10]).id == a.id
    with pytest.raises(SnapshotNotFound):
        repo.resolve("ffffffffffff")
    if a.id[0] == b.id[0]:
        with pytest.raises(AmbiguousSnapshot):
            repo.resolve(a.id[0])
    index = repo.load_index(a)
    assert index.regions[0].chunk_ids == (bytes.fromhex(object_id(b"a" * 4096)),)
    index_path = Path(repo.location) / fmt.index_name(a.index)
    index_path.write_bytes(index_path.read_bytes()[:-3])
    with pytest.raises(ObjectCorrupt):
        repo.load_index(a)
    manifest = Path(repo.location) / fmt.snapshot_name(b.id)
    raw = bytearray(manifest.read_bytes())
    raw[20] ^= 0xFF
    manifest.write_bytes(bytes(raw))
    with pytest.raises(ObjectCorrupt):
        repo.load_snapshot(b.id)


def test_index_round_trip() -> None:
    regions = (
        Region(
            fmt.REGION_DISK,
            0,
            0,
            10 << 20,
            ExtentMap([(0, 4096), (9 << 20, 512)]),
            (b"\1" * 32, fmt.HOLE, b"\2" * 32),
        ),
        Region(
            fmt.REGION_PARTITION,
            3,
            1 << 20,
            5 << 20,
            ExtentMap([(4096, 8192)]),
            (b"\3" * 32, fmt.HOLE),
        ),
    )
    index = Index(4 << 20, regions)
    assert Index.from_bytes(index.to_bytes()) == index
    with pytest.raises(ValueError):
        Index.from_bytes(index.to_bytes()[:-1])
