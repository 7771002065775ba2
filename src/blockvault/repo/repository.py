"""The repository: content-addressed chunks, indexes and snapshot manifests.

Invariants:
  * An object's name is the BLAKE3 of its plaintext; every read re-checks it.
  * A backup writes chunks, then the index, then the manifest. A snapshot exists
    once its manifest does, so a killed backup leaves only unreferenced chunks,
    which a rerun reuses.
  * Objects are never rewritten in place (writes are atomic in the backend).
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, replace

from blockvault.errors import (
    AmbiguousSnapshot,
    ChunkCorrupt,
    ChunkMissing,
    ObjectCorrupt,
    ObjectNotFound,
    RepositoryError,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
    UsageError,
)
from blockvault.repo import format as fmt
from blockvault.repo.index import Index
from blockvault.repo.manifest import Snapshot
from blockvault.repo.objects import Codec, DecodeError, object_id
from blockvault.storage import Backend, open_backend

__all__ = ["Repository", "RepositoryConfig", "parse_compression"]


def parse_compression(spec: str) -> int:
    """``zstd:LEVEL`` (1-22), ``zstd`` (level 3) or ``none`` -> zstd level (0 = none)."""
    name, _, level = spec.partition(":")
    if name == "none" and not level:
        return 0
    if name == "zstd":
        try:
            value = int(level) if level else 3
        except ValueError:
            value = -1
        if 1 <= value <= 22:
            return value
    raise UsageError(f"compression {spec!r}: use zstd:LEVEL with LEVEL 1-22, or none")


@dataclass(frozen=True)
class RepositoryConfig:
    id: str
    chunk_size: int
    compression: str

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": fmt.REPOSITORY_FORMAT,
                "version": fmt.VERSION,
                "id": self.id,
                "chunk_size": self.chunk_size,
                "compression": self.compression,
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RepositoryConfig:
        data = json.loads(raw)
        if data.get("format") != fmt.REPOSITORY_FORMAT:
            raise ValueError("not a blockvault repository")
        if data.get("version") != fmt.VERSION:
            raise ValueError(f"format version {data.get('version')} is not supported")
        return cls(data["id"], int(data["chunk_size"]), str(data["compression"]))


class Repository:
    def __init__(self, backend: Backend, config: RepositoryConfig) -> None:
        self.backend = backend
        self.config = config
        self.location = backend.location
        self.codec = Codec(parse_compression(config.compression))
        self._known: set[str] | None = None
        self._lock = threading.Lock()

    # --- life cycle --------------------------------------------------------------
    @classmethod
    def init(
        cls,
        location: str,
        *,
        chunk_size: int = fmt.DEFAULT_CHUNK_SIZE,
        compression: str = "zstd:3",
    ) -> Repository:
        parse_compression(compression)
        if chunk_size < 4096 or chunk_size & (chunk_size - 1) or chunk_size > 64 << 20:
            raise UsageError(f"chunk size {chunk_size}: use a power of two from 4 KiB to 64 MiB")
        backend = open_backend(location)
        backend.create()
        if not backend.is_empty():
            raise RepositoryExists(repo=location)
        config = RepositoryConfig(uuid.uuid4().hex, chunk_size, compression)
        backend.write(fmt.CONFIG_NAME, config.to_json())
        repo = cls(backend, config)
        repo._known = set()
        return repo

    @classmethod
    def open(cls, location: str) -> Repository:
        backend = open_backend(location)
        try:
            raw = backend.read(fmt.CONFIG_NAME)
        except ObjectNotFound:
            raise RepositoryNotFound(repo=location) from None
        try:
            config = RepositoryConfig.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(f"config is unreadable: {exc}", repo=location) from None
        return cls(backend, config)

    def with_compression(self, compression: str) -> Repository:
        """The same repository writing new chunks at another compression setting."""
        clone = Repository(self.backend, self.config)
        clone.codec = Codec(parse_compression(compression))
        clone._known, clone._lock = self._known, self._lock
        return clone

    # --- chunks ------------------------------------------------------------------
    def _known_chunks(self) -> set[str]:
        with self._lock:
            if self._known is None:
                self._known = {
                    name.rsplit("/", 1)[1] for name in self.backend.list(fmt.DATA_DIR + "/")
                }
            return self._known

    def has_chunk(self, chunk_id: str) -> bool:
        return chunk_id in self._known_chunks()

    def put_chunk(
        self, plaintext: bytes | bytearray | memoryview, chunk_id: str | None = None
    ) -> int:
        """Store a chunk unless present; returns the bytes written (0 when deduplicated)."""
        chunk_id = chunk_id or object_id(plaintext)
        known = self._known_chunks()
        with self._lock:
            if chunk_id in known:
                return 0
            known.add(chunk_id)  # claim it so that concurrent writers skip it
        try:
            data = self.codec.encode(fmt.CHUNK_MAGIC, plaintext)
            self.backend.write(fmt.chunk_name(chunk_id), data)
        except BaseException:
            with self._lock:
                known.discard(chunk_id)
            raise
        return len(data)

    def read_raw_chunk(self, chunk_id: str) -> bytes:
        """The stored (still compressed) form, as remote copies and multicast move it."""
        try:
            return self.backend.read(fmt.chunk_name(chunk_id))
        except ObjectNotFound:
            raise ChunkMissing(chunk=chunk_id, repo=self.location, where="") from None

    def decode_chunk(self, chunk_id: str, raw: bytes) -> bytes:
        try:
            return self.codec.decode(fmt.CHUNK_MAGIC, raw, chunk_id)
        except DecodeError as exc:
            raise ChunkCorrupt(str(exc), chunk=chunk_id, repo=self.location, where="") from None

    def get_chunk(self, chunk_id: str) -> bytes:
        """The verified plaintext of a chunk."""
        return self.decode_chunk(chunk_id, self.read_raw_chunk(chunk_id))

    # --- snapshots -----------------------------------------------------------------
    def write_snapshot(self, snapshot: Snapshot, index: Index) -> Snapshot:
        """Write the index, then the manifest (the commit point); returns it with its id."""
        index_plain = index.to_bytes()
        index_id = object_id(index_plain)
        self.backend.write(
            fmt.index_name(index_id), self.codec.encode(fmt.INDEX_MAGIC, index_plain)
        )
        snapshot = replace(snapshot, index=index_id)
        manifest = snapshot.to_json()
        snapshot_id = object_id(manifest)
        self.backend.write(
            fmt.snapshot_name(snapshot_id), self.codec.encode(fmt.SNAPSHOT_MAGIC, manifest)
        )
        return replace(snapshot, id=snapshot_id)

    def snapshot_ids(self) -> list[str]:
        return sorted(name.rsplit("/", 1)[1] for name in self.backend.list(fmt.SNAPSHOT_DIR + "/"))

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        name = fmt.snapshot_name(snapshot_id)
        try:
            raw = self.backend.read(name)
        except ObjectNotFound:
            raise SnapshotNotFound(ref=snapshot_id, repo=self.location) from None
        try:
            plain = self.codec.decode(fmt.SNAPSHOT_MAGIC, raw, snapshot_id)
            return Snapshot.from_json(plain, snapshot_id)
        except (DecodeError, ValueError, KeyError, TypeError) as exc:
            raise ObjectCorrupt(
                str(exc), kind="snapshot", name=snapshot_id, repo=self.location
            ) from None

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot, oldest first."""
        return sorted((self.load_snapshot(i) for i in self.snapshot_ids()), key=lambda s: s.time)

    def resolve(self, ref: str) -> Snapshot:
        """A snapshot by full id, unique id prefix, or ``latest``."""
        if ref == "latest":
            snaps = self.snapshots()
            if not snaps:
                raise SnapshotNotFound(ref=ref, repo=self.location)
            return snaps[-1]
        matches = [i for i in self.snapshot_ids() if i.startswith(ref.lower())] if ref else []
        if not matches:
            raise SnapshotNotFound(ref=ref, repo=self.location)
        if len(matches) > 1:
            raise AmbiguousSnapshot(ref=ref, count=len(matches), repo=self.location)
        return self.load_snapshot(matches[0])

    def load_index(self, snapshot: Snapshot) -> Index:
        name = fmt.index_name(snapshot.index)
        try:
            raw = self.backend.read(name)
        except ObjectNotFound:
            raise ObjectCorrupt(
                "index object is missing", kind="index", name=snapshot.index, repo=self.location
            ) from None
        try:
            plain = self.codec.decode(fmt.INDEX_MAGIC, raw, snapshot.index)
            return Index.from_bytes(plain)
        except (DecodeError, ValueError) as exc:
            raise ObjectCorrupt(
                str(exc), kind="index", name=snapshot.index, repo=self.location
            ) from None

    def stored_size(self, chunk_ids: set[str]) -> int:
        """Bytes the given chunks take in storage."""
        return sum(self.backend.size(fmt.chunk_name(c)) for c in chunk_ids)
