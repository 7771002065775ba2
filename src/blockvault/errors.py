"""The one error tree of blockvault.

Every failure a user can cause or meet is one of these classes. Each carries a
message template that names the object concerned and, where there is one, a
remedy, plus the process exit code the CLI uses. Only ``blockvault.cli`` turns
an exception into an exit code and a single line on stderr.

::

    BlockvaultError                 exit 1   anything we understood but could not do
    ├── UsageError                  exit 2   the request itself is wrong
    │   ├── SourceError                      source missing, truncated, not a disk
    │   └── TargetError                      target refused before anything was written
    │       ├── TargetTooSmall
    │       ├── TargetInUse                  mounted or opened exclusively elsewhere
    │       ├── TargetHoldsRepository
    │       └── TargetNotEmpty               needs confirmation (--yes)
    ├── DeviceError                 exit 1   reading or writing a device failed
    ├── StorageError                exit 1   the storage backend failed
    │   └── ObjectNotFound                   a named object does not exist
    ├── FormatError                 exit 1   foreign on-disk structure we cannot trust
    │   ├── PartitionTableError
    │   └── FilesystemError
    └── RepositoryError             exit 3   the repository cannot serve the request
        ├── RepositoryNotFound
        ├── RepositoryExists
        ├── SnapshotNotFound
        ├── AmbiguousSnapshot
        └── IntegrityError          exit 4   stored data is missing or damaged
            ├── ChunkMissing
            ├── ChunkCorrupt
            └── ObjectCorrupt               index or manifest damaged
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AmbiguousSnapshot",
    "BlockvaultError",
    "ChunkCorrupt",
    "ChunkMissing",
    "DeviceError",
    "FilesystemError",
    "FormatError",
    "IntegrityError",
    "ObjectCorrupt",
    "ObjectNotFound",
    "PartitionTableError",
    "RepositoryError",
    "RepositoryExists",
    "RepositoryNotFound",
    "SnapshotNotFound",
    "SourceError",
    "StorageError",
    "TargetError",
    "TargetHoldsRepository",
    "TargetInUse",
    "TargetNotEmpty",
    "TargetTooSmall",
    "UsageError",
]


class BlockvaultError(Exception):
    """Base of every error blockvault raises on purpose."""

    template: ClassVar[str] = "{detail}"
    exit_code: ClassVar[int] = 1

    def __init__(self, detail: str = "", **fields: Any) -> None:
        self.fields = {"detail": detail, **fields}
        super().__init__(self.template.format(**self.fields))


class UsageError(BlockvaultError):
    exit_code = 2


class SourceError(UsageError):
    template = "source {path}: {detail}"


class TargetError(UsageError):
    template = "target {path}: {detail}"


class TargetTooSmall(TargetError):
    template = (
        "target {path} is too small: it has {have} bytes, the snapshot needs {need} "
        "({missing} bytes missing); nothing was written"
    )


class TargetInUse(TargetError):
    template = "target {path} is in use ({detail}); unmount it first, nothing was written"


class TargetHoldsRepository(TargetError):
    template = (
        "target {path} holds the repository {repo}; restoring onto it would destroy "
        "the backup, nothing was written"
    )


class TargetNotEmpty(TargetError):
    template = "target {path} is not empty ({detail}); pass --yes to overwrite it"


class DeviceError(BlockvaultError):
    template = "{path}: {detail}"


class StorageError(BlockvaultError):
    template = "storage {location}: {detail}"


class ObjectNotFound(StorageError):
    template = "storage {location}: object {name} does not exist"


class FormatError(BlockvaultError):
    template = "{detail}"


class PartitionTableError(FormatError):
    template = "partition table on {path}: {detail}"


class FilesystemError(FormatError):
    template = "{fs} filesystem {where}: {detail}"


class RepositoryError(BlockvaultError):
    template = "repository {repo}: {detail}"
    exit_code = 3


class RepositoryNotFound(RepositoryError):
    template = "no repository at {repo}; create one with 'blockvault -r {repo} init'"


class RepositoryExists(RepositoryError):
    template = "{repo} already holds a repository or other files; choose an empty location"


class SnapshotNotFound(RepositoryError):
    template = "no snapshot matches {ref!r} in {repo}; 'blockvault snapshots' lists them"


class AmbiguousSnapshot(RepositoryError):
    template = "{ref!r} matches {count} snapshots in {repo}; give more characters of the id"


class IntegrityError(RepositoryError):
    exit_code = 4


class ChunkMissing(IntegrityError):
    template = "chunk {chunk} is missing from {repo}{where}"


class ChunkCorrupt(IntegrityError):
    template = "chunk {chunk} in {repo} is damaged ({detail}){where}"


class ObjectCorrupt(IntegrityError):
    template = "{kind} {name} in {repo} is damaged: {detail}"
