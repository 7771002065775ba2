"""Which snapshots hold a file: a glob over names (or paths) across snapshots.

Newest snapshot first, so the first match is the latest version. Logical volumes are
searched too, and LUKS partitions when a key is given. Partitions no parser reads
(swap, raw) are skipped; a damaged one is reported as a warning and
skipped, so one bad snapshot does not hide the others.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from blockvault.browse.tree import files_record
from blockvault.browse.volume import PARSERS, format_address, open_volume
from blockvault.errors import BlockvaultError, IntegrityError, PartitionNotFound
from blockvault.events import Reporter, Warned, quiet
from blockvault.repo.manifest import PartitionRecord, Snapshot
from blockvault.repo.repository import Repository

__all__ = ["Match", "find"]


@dataclass(frozen=True)
class Match:
    snapshot: str
    time: str
    partition: int
    path: str
    kind: str
    size: int
    mtime_ns: int
    target: str | None
    volume: str | None = None  # a logical volume ("vg0/root") of the partition

    @property
    def address(self) -> str:
        if self.volume is not None:
            return f"{self.snapshot[:12]}:{self.volume}:{self.path}"
        return format_address(self.snapshot, self.partition, self.path)


def _browsable(
    record: PartitionRecord, keys: Mapping[int | None, bytes]
) -> list[tuple[str | None, bytes | None]]:
    """The filesystems of one partition to search: (volume or None, LUKS key)."""
    key = keys.get(record.number, keys.get(None))
    found: list[tuple[str | None, bytes | None]] = []
    if record.filesystem in PARSERS:
        found.append((None, None))
    luks = record.volume("luks")
    if record.filesystem.startswith("luks") and luks and luks.filesystem in PARSERS and key:
        found.append((None, key))
    found.extend(
        (v.name, key)
        for v in record.volumes
        if v.kind == "lvm2-lv" and v.filesystem in PARSERS and not v.note
        and (key is not None or not v.encrypted)
    )  # fmt: skip
    return found


def find(
    repo: Repository,
    pattern: str,
    *,
    snapshots: list[Snapshot] | None = None,
    partition: int | None = None,
    luks_keys: Mapping[int | None, bytes] | None = None,
    reporter: Reporter = quiet,
) -> Iterator[Match]:
    """Entries whose name matches ``pattern`` (a glob; matched against the whole path
    from the partition's root when it holds a ``/``), newest snapshot first."""
    by_path = "/" in pattern
    glob = pattern if not by_path or pattern.startswith("/") else "/" + pattern
    chosen = snapshots if snapshots is not None else repo.snapshots()
    for snap in sorted(chosen, key=lambda s: s.time, reverse=True):
        keys = luks_keys or {}
        records = [p for p in snap.imaged_partitions if _browsable(p, keys)]
        if snap.kind == "files":  # its trees, one volume
            records = [files_record(snap)]
        if partition is not None:
            records = [p for p in records if p.number == partition]
            if not records and len(chosen) == 1:
                raise PartitionNotFound(
                    " that can be browsed",
                    snapshot=snap.id[:12],
                    partition=partition,
                    repo=repo.location,
                )
        if not records:
            continue
        index = repo.load_index(snap)
        places: list[tuple[PartitionRecord, str | None, bytes | None]] = (
            [(r, None, None) for r in records]
            if snap.kind == "files"
            else [(r, v, k) for r in records for v, k in _browsable(r, keys)]
        )
        for record, name, key in places:
            try:
                volume = open_volume(repo, snap, record.number, index, volume=name, luks_key=key)
                for entry in volume.walk("/"):
                    if entry.path == "/":
                        continue
                    subject = entry.path if by_path else entry.name
                    if fnmatch.fnmatchcase(subject, glob):
                        yield Match(
                            snap.id,
                            snap.time,
                            record.number,
                            entry.path,
                            entry.kind,
                            entry.size,
                            entry.mtime_ns,
                            entry.target,
                            name,
                        )
            except IntegrityError:
                raise
            except BlockvaultError as exc:
                where = f"partition {record.number}" + (f" volume {name}" if name else "")
                reporter(Warned(f"snapshot {snap.id[:12]} {where} skipped: {exc}"))
