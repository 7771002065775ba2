"""The one error tree of blockvault.

Every failure a user can cause or meet is one of these classes. Each carries a
message template that names the object concerned and, where there is one, a
remedy, plus the process exit code the CLI uses. Only ``blockvault.cli`` turns
an exception into an exit code and a single line on stderr.

::

    BlockvaultError                 exit 1   anything we understood but could not do
    ├── UsageError                  exit 2   the request itself is wrong
    │   ├── SourceError                      source missing, truncated, not a disk
    │   ├── PassphraseRequired               encrypted repository, no passphrase given
    │   ├── KeyFileInvalid                   a key file to import is not usable
    │   ├── BrowseError                      a snapshot path to browse is wrong (browse/)
    │   │   ├── PartitionNotFound                no such imaged partition in the snapshot
    │   │   ├── PathNotFound                     no such file or directory in it
    │   │   ├── UnsupportedFilesystem            swap, raw or unknown content
    │   │   └── MountpointError                  missing, busy or not empty
    │   └── TargetError                      target refused before anything was written
    │       ├── TargetTooSmall
    │       ├── TargetInUse                  mounted or opened exclusively elsewhere
    │       ├── TargetHoldsRepository
    │       └── TargetNotEmpty               needs confirmation (--yes)
    ├── DeviceError                 exit 1   reading or writing a device failed
    ├── CastError                   exit 1   a multicast session failed (deploy/)
    │   ├── CastAuthError                    a peer or packet failed authentication
    │   ├── CastProtocolError                a peer sent a malformed or oversized message
    │   └── CastInterrupted         exit 130 SIGINT/SIGTERM; says what the target holds
    ├── StorageError                exit 1   the storage backend failed
    │   ├── ObjectNotFound                   a named object does not exist
    │   └── TransientStorageError            a failure worth retrying (dropped link)
    ├── FormatError                 exit 1   foreign on-disk structure we cannot trust
    │   ├── PartitionTableError
    │   └── FilesystemError
    └── RepositoryError             exit 3   the repository cannot serve the request
        ├── RepositoryNotFound
        ├── RepositoryExists
        ├── SnapshotNotFound
        ├── AmbiguousSnapshot
        ├── WrongPassphrase                  no key of the repository opens with it
        ├── KeyMissing                       encrypted repository without a key object
        ├── SessionExpired                   a backup went silent past the gc grace period
        ├── RepositoryBusy                   gc could not get a quiet moment, or vice versa
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
    "BrowseError",
    "CastAuthError",
    "CastError",
    "CastInterrupted",
    "CastProtocolError",
    "ChunkCorrupt",
    "ChunkMissing",
    "DeviceError",
    "FilesystemError",
    "FormatError",
    "IntegrityError",
    "KeyFileInvalid",
    "KeyMissing",
    "MountpointError",
    "ObjectCorrupt",
    "ObjectNotFound",
    "PartitionNotFound",
    "PartitionTableError",
    "PassphraseRequired",
    "PathNotFound",
    "RepositoryBusy",
    "RepositoryError",
    "RepositoryExists",
    "RepositoryNotFound",
    "SessionExpired",
    "SnapshotNotFound",
    "SourceError",
    "StorageError",
    "TargetError",
    "TargetHoldsRepository",
    "TargetInUse",
    "TargetNotEmpty",
    "TargetTooSmall",
    "TransientStorageError",
    "UnsupportedFilesystem",
    "UsageError",
    "WrongPassphrase",
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


class PassphraseRequired(UsageError):
    template = (
        "repository {repo} is encrypted and no passphrase was given: set BLOCKVAULT_PASSWORD, "
        "pass --password-file FILE, or run on a terminal to be asked"
    )


class KeyFileInvalid(UsageError):
    template = "key file {path}: {detail}"


class BrowseError(UsageError):
    template = "{detail}"


class PartitionNotFound(BrowseError):
    template = (
        "snapshot {snapshot} has no imaged partition {partition}{detail}; "
        "'blockvault info {snapshot}' lists its partitions"
    )


class PathNotFound(BrowseError):
    template = "{path} {detail} in partition {partition} of snapshot {snapshot}"


class UnsupportedFilesystem(BrowseError):
    template = (
        "partition {partition} of snapshot {snapshot} holds {fs}, which cannot be browsed "
        "(ext2/3/4, FAT and NTFS can); 'blockvault mount' still shows its image p{partition}.img"
    )


class MountpointError(BrowseError):
    template = "mountpoint {path}: {detail}"


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


class CastError(BlockvaultError):
    template = "cast: {detail}"


class CastAuthError(CastError):
    template = "cast: {detail}; check that sender and receivers use the same session code"


class CastProtocolError(CastError):
    template = "cast: {peer} sent a malformed message: {detail}"


class CastInterrupted(CastError):
    """A signal stopped a cast; the message says truthfully what the target now holds.
    The CLI exits 128 + the signal (130 for SIGINT, 143 for SIGTERM)."""

    template = "cast interrupted: {detail}"
    exit_code = 130


class StorageError(BlockvaultError):
    template = "storage {location}: {detail}"


class ObjectNotFound(StorageError):
    template = "storage {location}: object {name} does not exist"


class TransientStorageError(StorageError):
    """A failure that may pass if the request is repeated (connection dropped or reset,
    timeout, server busy or 5xx). Backends raise it; the retry wrapper retries it."""

    template = "storage {location}: {detail}"


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


class WrongPassphrase(RepositoryError):
    template = (
        "wrong passphrase: it does not open {what}; check BLOCKVAULT_PASSWORD or --password-file"
    )


class KeyMissing(RepositoryError):
    template = (
        "repository {repo} is encrypted but holds no key; restore an exported one with "
        "'blockvault -r {repo} key import FILE'"
    )


class SessionExpired(RepositoryError):
    template = "{kind} session {session} in {repo} {detail}; {remedy}"


class RepositoryBusy(RepositoryError):
    template = "repository {repo} is busy: {detail}; try again later"


class IntegrityError(RepositoryError):
    exit_code = 4


class ChunkMissing(IntegrityError):
    template = "chunk {chunk} is missing from {repo}{where}"


class ChunkCorrupt(IntegrityError):
    template = "chunk {chunk} in {repo} is damaged ({detail}){where}"


class ObjectCorrupt(IntegrityError):
    template = "{kind} {name} in {repo} is damaged: {detail}"
