"""A snapshot manifest: what was imaged, from where, and which index holds it.

Stored as UTF-8 JSON in a ``BVSN`` envelope; its id is the BLAKE3 of that JSON.
Writing it is the commit point of a backup.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PartitionRecord", "Snapshot", "Stats"]


@dataclass(frozen=True)
class PartitionRecord:
    number: int
    start: int
    size: int
    type: str
    filesystem: str  # FilesystemInfo.type, or "" when not imaged
    used_bytes: int
    imaged: bool
    label: str | None = None
    uuid: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Stats:
    read_bytes: int = 0  # bytes read from the source
    used_bytes: int = 0  # bytes in the used maps
    chunks: int = 0  # chunk references, holes excluded
    holes: int = 0
    new_chunks: int = 0  # chunks this backup added to the repository
    new_bytes: int = 0  # plaintext bytes of those chunks
    stored_bytes: int = 0  # bytes those chunks take in the repository
    seconds: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    time: str  # ISO 8601, UTC
    host: str
    source: str
    disk_size: int
    sector_size: int
    table: str  # "gpt" | "mbr" | "none"
    disk_id: str
    partitions: tuple[PartitionRecord, ...]
    index: str  # id of the index object
    chunk_size: int
    compression: str
    tags: tuple[str, ...] = ()
    stats: Stats = field(default_factory=Stats)
    id: str = ""  # filled in when read back; not part of the stored JSON

    @property
    def imaged_partitions(self) -> tuple[PartitionRecord, ...]:
        return tuple(p for p in self.partitions if p.imaged)

    def partition(self, number: int) -> PartitionRecord | None:
        return next((p for p in self.partitions if p.number == number), None)

    def to_json(self) -> bytes:
        data = asdict(self)
        data.pop("id")
        return json.dumps({"version": 1, **data}, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes, snapshot_id: str) -> Snapshot:
        """Parse; raises ``ValueError`` (or ``KeyError``/``TypeError``) when malformed."""
        data: dict[str, Any] = json.loads(raw)
        if data.pop("version", None) != 1:
            raise ValueError("unsupported manifest version")
        data["partitions"] = tuple(PartitionRecord(**p) for p in data["partitions"])
        data["tags"] = tuple(data.get("tags", ()))
        data["stats"] = Stats(**data.get("stats", {}))
        return cls(**data, id=snapshot_id)
