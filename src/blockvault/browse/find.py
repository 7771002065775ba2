"""Which snapshots hold a file: a glob over names (or paths) across snapshots.

Newest snapshot first, so the first match is the latest version. Partitions no
parser reads (swap, raw) are skipped; a damaged one is reported as a warning and
skipped, so one bad snapshot does not hide the others.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass

from blockvault.browse.tree import files_record
from blockvault.browse.volume import PARSERS, format_address, open_volume
from blockvault.errors import BlockvaultError, IntegrityError, PartitionNotFound
from blockvault.events import Reporter, Warned, quiet
from blockvault.repo.manifest import Snapshot
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

    @property
    def address(self) -> str:
        return format_address(self.snapshot, self.partition, self.path)


def find(
    repo: Repository,
    pattern: str,
    *,
    snapshots: list[Snapshot] | None = None,
    partition: int | None = None,
    reporter: Reporter = quiet,
) -> Iterator[Match]:
    """Entries whose name matches ``pattern`` (a glob; matched against the whole path
    from the partition's root when it holds a ``/``), newest snapshot first."""
    by_path = "/" in pattern
    glob = pattern if not by_path or pattern.startswith("/") else "/" + pattern
    chosen = snapshots if snapshots is not None else repo.snapshots()
    for snap in sorted(chosen, key=lambda s: s.time, reverse=True):
        records = [p for p in snap.imaged_partitions if p.filesystem in PARSERS]
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
        for record in records:
            try:
                volume = open_volume(repo, snap, record.number, index)
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
                        )
            except IntegrityError:
                raise
            except BlockvaultError as exc:
                reporter(
                    Warned(f"snapshot {snap.id[:12]} partition {record.number} skipped: {exc}")
                )
