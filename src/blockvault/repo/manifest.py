"""A snapshot manifest: what was imaged, from where, and which index holds it.

Stored as UTF-8 JSON in a ``BVSN`` envelope; its id is the BLAKE3 of that JSON.
Writing it is the commit point of a backup.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from blockvault.errors import UsageError
from blockvault.repo import format as fmt

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
    files: int = 0  # file snapshots: regular files in the trees


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
    # which disk this is, stable across reboots and renamed device nodes: "wwn:...",
    # "serial:...", "image:/absolute/path" or "table:<disk id>"; "" in snapshots made
    # before it was recorded (``origin`` then falls back to ``source``)
    source_id: str = ""
    # the snapshot this one was made after: the newest of the same origin when the
    # writer session began (what a file backup diffs against); "" when there was none,
    # or in snapshots made before it was recorded. It may since have been pruned.
    parent: str = ""
    # "disk" (an image: partitions and an index of regions) or "files" (directory trees
    # and streams: ``tree`` is the root tree object, ``paths`` what was backed up, and
    # the index's one files region lists every object the trees reference)
    kind: str = "disk"
    paths: tuple[str, ...] = ()
    tree: str = ""
    # file snapshots: what went wrong but did not stop the backup (unreadable files,
    # files changed while read), the first MAX_WARNINGS of ``warning_count``
    warnings: tuple[str, ...] = ()
    warning_count: int = 0
    id: str = ""  # filled in when read back; not part of the stored JSON

    @property
    def origin(self) -> str:
        """Host, disk and imaged partitions, for people: ``pc1 wwn:0x5000… [1, 2]``
        (for file snapshots: host and paths, ``pc1 files /home /etc``)."""
        if self.kind == "files":
            return f"{self.host} files {' '.join(self.paths)}"
        numbers = list(self.imaged_partitions_numbers)
        return f"{self.host} {self.source_id or self.source} partitions {numbers}"

    def same_origin(self, other: Snapshot) -> bool:
        """Whether both image the same partitions of the same disk of the same host:
        ``latest`` never crosses from one origin to another. A snapshot made before
        ``source_id`` was recorded is compared by its device or image path."""
        if self.kind != other.kind:
            return False
        if self.host != other.host or self.imaged_partitions_numbers != (
            other.imaged_partitions_numbers
        ):
            return False
        if self.source_id and other.source_id:
            return self.source_id == other.source_id
        return self.source == other.source

    def require_disk(self, use: str) -> None:
        """Refuse, in one line, to ``use`` a file snapshot as a disk image."""
        if self.kind == "files":
            raise UsageError(
                f"snapshot {self.id[:12]} holds files, not a disk image: {use} needs a disk "
                "snapshot ('blockvault restore SNAPSHOT DIR' restores files)"
            )

    @property
    def imaged_partitions_numbers(self) -> tuple[int, ...]:
        return tuple(p.number for p in self.imaged_partitions)

    @property
    def imaged_partitions(self) -> tuple[PartitionRecord, ...]:
        return tuple(p for p in self.partitions if p.imaged)

    def partition(self, number: int) -> PartitionRecord | None:
        return next((p for p in self.partitions if p.number == number), None)

    def to_json(self) -> bytes:
        data = asdict(self)
        data.pop("id")
        for optional in ("source_id", "parent", "paths", "tree", "warnings", "warning_count"):
            if not data[optional]:  # absent reads as it did before they existed
                data.pop(optional)
        if data["kind"] == "disk":
            data.pop("kind")
        return json.dumps({"version": 1, **data}, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes, snapshot_id: str) -> Snapshot:
        """Parse; raises ``ValueError`` (or ``KeyError``/``TypeError``) when malformed.
        Fields this version does not know are ignored (a newer writer may add some)."""
        data: Any = json.loads(raw)
        if not isinstance(data, dict) or data.pop("version", None) != 1:
            raise ValueError("unsupported manifest version")
        data = _known(cls, data)
        partitions = data["partitions"]
        if not isinstance(partitions, list) or len(partitions) > MAX_PARTITIONS:
            raise ValueError(f"partitions: a list of at most {MAX_PARTITIONS} is expected")
        data["partitions"] = tuple(
            PartitionRecord(**_known(PartitionRecord, p)) for p in partitions
        )
        tags = data.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("tags: a list of strings is expected")
        data["tags"] = tuple(tags)
        paths = data.get("paths", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ValueError("paths: a list of strings is expected")
        data["paths"] = tuple(paths)
        warnings = data.get("warnings", [])
        if (
            not isinstance(warnings, list)
            or len(warnings) > MAX_WARNINGS
            or not all(isinstance(w, str) and len(w) <= 4096 for w in warnings)
        ):
            raise ValueError(f"warnings: a list of at most {MAX_WARNINGS} strings is expected")
        data["warnings"] = tuple(warnings)
        if data.get("kind", "disk") not in ("disk", "files"):
            raise ValueError(f"kind: {data['kind']!r} is neither disk nor files")
        if data.get("tree") and not fmt.is_object_id(data["tree"]):
            raise ValueError(f"tree: {data['tree']!r} is not an object id")
        if data.get("kind") == "files" and not data.get("tree"):
            raise ValueError("a files snapshot names no tree")
        data["stats"] = Stats(**_known(Stats, data.get("stats", {})))
        if data.get("parent") and not fmt.is_object_id(data["parent"]):
            raise ValueError(f"parent: {data['parent']!r} is not a snapshot id")
        return cls(**data, id=snapshot_id)


MAX_PARTITIONS = 256  # GPT holds 128; more is damage
MAX_WARNINGS = 100  # a file snapshot keeps its first warnings; the count says how many


# the JSON types a field of each declared type may hold (bool is no int here)
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "str | None": (str, type(None)),
    "tuple[str, ...]": (list,),
}


def _known(kind: type, data: Any) -> dict[str, Any]:
    """The entries of ``data`` that are fields of dataclass ``kind`` (not ``id``), each
    checked to hold its JSON type; numbers may not be negative."""
    if not isinstance(data, dict):
        raise TypeError(f"{kind.__name__}: an object is expected")
    known = {}
    for f in fields(kind):
        if f.name == "id" or f.name not in data:
            continue
        value = data[f.name]
        allowed = _JSON_TYPES.get(str(f.type))
        if allowed is not None and (
            not isinstance(value, allowed)
            or (isinstance(value, bool) and bool not in allowed)
            or (isinstance(value, int | float) and not isinstance(value, bool) and value < 0)
        ):
            raise ValueError(f"{kind.__name__}.{f.name}: {value!r} is not a valid {f.type}")
        known[f.name] = value
    return known
