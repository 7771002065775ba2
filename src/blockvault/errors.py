"""The one error tree of blockvault.

Every failure a user can cause or meet is one of these classes. Each carries a
message template that names the object concerned and, where there is one, a
remedy, plus the process exit code the CLI uses. Only ``blockvault.cli`` turns
an exception into an exit code and a single line on stderr. ``EXIT_CODES`` is the
one table of exit codes: ``blockvault --help`` prints it and docs/user-guide.md
repeats it (a test keeps the three and the classes below in agreement).

::

    BlockvaultError                 exit 1   anything we understood but could not do
    ├── UsageError                  exit 2   the request itself is wrong
    │   ├── SourceError                      source missing, truncated, not a disk
    │   │   └── LiveSourceError                  mounted read-write, no way to read it consistently
    │   ├── PassphraseRequired               encrypted repository, no passphrase given
    │   │   └── NewPassphraseRequired            a new one is needed and cannot be asked
    │   ├── KeyFileInvalid                   a key file to import is not usable
    │   ├── LuksKeyRejected                  no LUKS key slot opens with the key given
    │   ├── ImageReadOnly                    a write to a one-file image (.bvi)
    │   ├── PlanError                        a plan, or the plans file, is wrong (plans/)
    │   │   └── PlanNotFound                     no plan of that name in the plans file
    │   ├── ClockBehind                      a snapshot is dated after the clock: prune refuses
    │   ├── ScheduleError                    a plan's schedule or window spec is wrong
    │   ├── RescueOptionError                a blockvault.* kernel option of the rescue system
    │   ├── PxeOptionError                   a pxe serve/wake option: MAC, action, interface
    │   ├── AdaptRefused                     restore --adapt: no Linux root in the snapshot
    │   ├── BrowseError                      a snapshot path to browse is wrong (browse/)
    │   │   ├── PartitionNotFound                no such imaged partition in the snapshot
    │   │   ├── PathNotFound                     no such file or directory in it
    │   │   │   └── FilePathNotFound                 ... in a file snapshot's trees
    │   │   ├── UnsupportedFilesystem            swap, raw or unknown content
    │   │   └── MountpointError                  missing, busy or not empty
    │   └── TargetError                      target refused before anything was written
    │       ├── TargetTooSmall
    │       ├── TargetInUse                  mounted or opened exclusively elsewhere
    │       ├── TargetHoldsRepository
    │       └── TargetNotEmpty               needs confirmation (--yes)
    ├── DeviceError                 exit 1   reading or writing a device failed
    │   └── SnapshotFailed                   a live backup's snapshot failed or overflowed
    ├── PlanRunFailed               exit 1   a plan's run failed or was stopped (its error line)
    ├── TreeIncomplete              exit 1   extract skipped entries or left files unfinished
    │   └── TreeDamaged             exit 4   ... and some of them for missing or damaged data
    ├── NotifyError                 exit 1   a notification could not be sent (plans/)
    ├── CenterError                 exit 1   the Backup Center (center/): its state, accounts
    │   ├── CenterStateError                 center.toml, the certificate or the database
    │   ├── CenterUserError         exit 2   a user account cannot be made or changed so
    │   │   ├── CenterUserNotFound               no user of that name
    │   │   └── CenterUserExists                 a user of that name already exists
    │   ├── CenterSettingError      exit 2   no such setting, or a value out of its bounds
    │   └── CenterUnreachable                an agent cannot reach its center
    ├── CastError                   exit 1   a multicast session failed (deploy/)
    │   ├── CastAuthError                    a peer or packet failed authentication
    │   ├── CastProtocolError                a peer sent a malformed or oversized message
    │   └── CastInterrupted         exit 130 a signal (CLI: 128 + N); what the target holds
    ├── NbdError                    exit 1   an NBD server broke the protocol or refused (nbd/)
    ├── StorageError                exit 1   the storage backend failed
    │   ├── ObjectNotFound                   a named object does not exist
    │   ├── ObjectTooLarge          exit 4   an object larger than its kind allows, refused unread
    │   └── TransientStorageError            a failure worth retrying (dropped link)
    ├── RescueBuildError            exit 1   rescue media could not be built (rescue/)
    ├── PxeServeError               exit 1   the network boot service failed (rescue/pxe.py)
    ├── AdaptError                  exit 1   restore --adapt: a step in the restored system failed
    ├── VirtualMachineError         exit 1   QEMU could not run a guest (interop/boot.py)
    │   └── BootFailed              exit 5   a guest did not reach its login prompt or marker
    ├── FormatError                 exit 1   foreign on-disk structure we cannot trust
    │   ├── PartitionTableError
    │   ├── FilesystemError
    │   ├── ImageDamaged                     another tool's image fails its own checks
    │   └── UnsafeName                       a name from a snapshot that would leave its tree
    └── RepositoryError             exit 3   the repository cannot serve the request
        ├── RepositoryNotFound
        ├── RepositoryExists
        ├── SnapshotNotFound
        ├── AmbiguousSnapshot
        ├── AmbiguousLatest                  'latest' would cross hosts, disks or partition sets
        ├── WrongPassphrase                  no key of the repository opens with it
        ├── KeyMissing                       encrypted repository without a key object
        ├── SessionExpired                   a backup went silent past the gc grace period
        ├── RepositoryBusy                   gc could not get a quiet moment, or vice versa
        └── IntegrityError          exit 4   stored data is missing or damaged
            ├── ChunkMissing
            ├── ChunkCorrupt
            ├── ObjectCorrupt               index or manifest damaged
            └── PieceError                  a one-file image's piece is missing, foreign or damaged

    Interrupted (a BaseException)   exit 128 + signal: 130 SIGINT, 143 SIGTERM, 129 SIGHUP
    (stdout's reader gone, a BrokenPipeError: 141 = 128 + SIGPIPE, silent; cli/main.py)

``Interrupted`` is outside the tree on purpose: like ``KeyboardInterrupt``, no
``except BlockvaultError`` or ``except Exception`` may swallow it on its way out. The
CLI raises it from its signal handlers; whoever knows what the interruption left
behind (the writer session, gc) says so in ``outcome`` before it propagates.
"""

from __future__ import annotations

import string
from typing import Any, ClassVar

from blockvault.text import command_word, shown

__all__ = [
    "EXIT_CODES",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_STDOUT_CLOSED",
    "AdaptError",
    "AdaptRefused",
    "AmbiguousLatest",
    "AmbiguousSnapshot",
    "BlockvaultError",
    "BootFailed",
    "BrowseError",
    "CastAuthError",
    "CastError",
    "CastInterrupted",
    "CastProtocolError",
    "CenterError",
    "CenterRefused",
    "CenterStateError",
    "CenterUnreachable",
    "CertificateMismatch",
    "ChunkCorrupt",
    "ChunkMissing",
    "ClockBehind",
    "DeviceError",
    "FilePathNotFound",
    "FilesystemError",
    "FormatError",
    "ImageDamaged",
    "ImageReadOnly",
    "IntegrityError",
    "Interrupted",
    "KeyFileInvalid",
    "KeyMissing",
    "LiveSourceError",
    "LuksKeyRejected",
    "MountpointError",
    "NbdError",
    "NewPassphraseRequired",
    "NotifyError",
    "ObjectCorrupt",
    "ObjectNotFound",
    "ObjectTooLarge",
    "PartitionNotFound",
    "PartitionTableError",
    "PassphraseRequired",
    "PathNotFound",
    "PieceError",
    "PlanError",
    "PlanNotFound",
    "PlanRunFailed",
    "PxeOptionError",
    "PxeServeError",
    "RepositoryBusy",
    "RepositoryError",
    "RepositoryExists",
    "RepositoryNotFound",
    "RescueBuildError",
    "RescueOptionError",
    "ScheduleError",
    "SessionExpired",
    "SnapshotFailed",
    "SnapshotNotFound",
    "SourceError",
    "StorageError",
    "TargetError",
    "TargetHoldsRepository",
    "TargetInUse",
    "TargetNotEmpty",
    "TargetTooSmall",
    "TransientStorageError",
    "TreeDamaged",
    "TreeIncomplete",
    "UnsafeName",
    "UnsupportedFilesystem",
    "UsageError",
    "VirtualMachineError",
    "WrongPassphrase",
]

EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE: what a shell shows for `cat | head`

EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "an operation failed (I/O or storage error, unreadable structure, demo or cast failed)",
    2: "the request is wrong or refused (bad option or source, target refused, no passphrase)",
    3: "the repository cannot serve the request (missing, unknown snapshot, wrong passphrase)",
    4: "data in the repository is missing or damaged, or verify found a difference",
    5: "verify --boot: the guest did not reach its login prompt or marker in time",
    EXIT_INTERNAL: "internal error (a bug: please report it with BLOCKVAULT_DEBUG=1 output)",
    129: "stopped by SIGHUP (the terminal closed); the one line says what it left",
    EXIT_INTERRUPTED: "interrupted by Ctrl-C (SIGINT); the one line says what it left",
    EXIT_STDOUT_CLOSED: "the reader of the output went away, as head does; nothing said, like cat",
    143: "stopped by SIGTERM; the one line says what it left",
}


class BlockvaultError(Exception):
    """Base of every error blockvault raises on purpose. Its message is one line safe
    for a terminal: a field may be a name from a hostile snapshot, so the formatted
    message goes through :func:`~blockvault.text.shown`; ``fields`` keep the values
    as given, for callers that need them exact. In a suggested command a field is
    written ``{repo:arg}``: one shell word (quoted if need be), so it runs pasted."""

    template: ClassVar[str] = "{detail}"
    exit_code: ClassVar[int] = 1

    def __init__(self, detail: str = "", **fields: Any) -> None:
        self.fields = {"detail": detail, **fields}
        super().__init__(shown(_MESSAGE.format(self.template, **self.fields)))


class _MessageFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        if format_spec == "arg":
            return command_word(str(value))
        return super().format_field(value, format_spec)


_MESSAGE = _MessageFormatter()


class UsageError(BlockvaultError):
    exit_code = 2


class SourceError(UsageError):
    template = "source {path}: {detail}"


class LiveSourceError(SourceError):
    template = (
        "source {path}: {detail}; back it up from an LVM logical volume whose volume group "
        "has free extents (--live=lvm), unmount it or mount it read-only, or pass "
        "--live=unsafe-reread for a copy that is not crash-consistent"
    )


class PassphraseRequired(UsageError):
    template = (
        "repository {repo} is encrypted and no passphrase was given: set BLOCKVAULT_PASSWORD, "
        "pass --password-file FILE, or run on a terminal to be asked"
    )


class NewPassphraseRequired(PassphraseRequired):
    template = (
        "{what} needs a new passphrase and there is no terminal to ask for it: "
        "set {env} or pass {option} FILE"
    )


class KeyFileInvalid(UsageError):
    template = "key file {path}: {detail}"


class LuksKeyRejected(UsageError):
    """A LUKS key was given for a partition but opens none of its key slots: imaging it
    raw instead would silently store far more than asked, so we stop."""

    template = (
        "{where}: {detail}; check the passphrase or --luks-key-file (a key file is used "
        "byte for byte, as cryptsetup --key-file does)"
    )


class ImageReadOnly(UsageError):
    template = (
        "{path} is a one-file image, which is read-only; import it into a repository "
        "to add to it: blockvault -r REPO import {path:arg}"
    )


class PlanError(UsageError):
    template = "{where}: {detail}"  # where: "plan NAME" or "plans file PATH"


class PlanNotFound(PlanError):
    template = "no plan named {plan!r} in {path}; 'blockvault plan list' shows the plans"


class ClockBehind(UsageError):
    template = (
        "snapshot {snapshot} is dated {time}, after this machine's clock ({now}): the clock "
        "may have jumped back, so nothing was pruned; set the clock right and prune again"
    )


class ScheduleError(UsageError):
    template = "{what} '{spec}': {detail}"


class BrowseError(UsageError):
    template = "{detail}"


class PartitionNotFound(BrowseError):
    template = (
        "snapshot {snapshot} has no imaged partition {partition}{detail}; "
        "'blockvault -r {repo:arg} info {snapshot}' lists its partitions"
    )


class PathNotFound(BrowseError):
    template = "{path} {detail} in partition {partition} of snapshot {snapshot}"


class FilePathNotFound(PathNotFound):
    template = "{path} {detail} in file snapshot {snapshot}"


class UnsupportedFilesystem(BrowseError):
    template = (
        "partition {partition} of snapshot {snapshot} holds {fs}, which cannot be browsed "
        "(ext2/3/4, FAT and NTFS can); 'blockvault -r {repo:arg} mount {snapshot} DIR' still "
        "shows its image as DIR/p{partition}.img"
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


class SnapshotFailed(DeviceError):
    template = "{path}: {detail}; nothing was committed"


class NotifyError(BlockvaultError):
    """A mail or webhook that could not be delivered; ``transient`` when trying again
    later may help (connection refused, timeout, SMTP 4xx, HTTP 5xx or 429)."""

    template = "notification to {target}: {detail}"

    @property
    def transient(self) -> bool:
        return bool(self.fields.get("transient"))


class PlanRunFailed(BlockvaultError):
    template = "plan {plan}: run {run} {status}: {detail} (log: {log})"


class TreeIncomplete(BlockvaultError):
    template = "{target}: {entries} could not be written (named above); everything else was written"


class TreeDamaged(TreeIncomplete):
    exit_code = 4


class CenterError(BlockvaultError):
    """The Backup Center (server or an agent's link to it): state, enrolment, API."""


class CenterStateError(CenterError):
    template = "center state {path}: {detail}"


class CenterUserError(CenterError):
    """A user account of the center cannot be made or changed as asked."""

    template = "center user {name}: {detail}"
    exit_code = 2


class CenterUserNotFound(CenterUserError):
    template = "center user {name}: no such user ('blockvault center user list' lists them)"


class CenterUserExists(CenterUserError):
    template = "center user {name}: already exists (change it with 'center user passwd')"


class CenterSettingError(CenterError):
    template = "center setting {key}: {detail}"
    exit_code = 2


class CenterUnreachable(CenterError):
    template = "cannot reach the center at {url}: {detail}"


class CenterRefused(CenterError):
    """The center answered and said no: a bad or used-up token, a revoked host."""

    template = "the center at {url} refused: {detail}"


class CertificateMismatch(CenterError):
    template = (
        "the center at {url} presented certificate {found}, not {expected}: check "
        "--fingerprint (center init printed it); if it is right, something is in between"
    )


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


class NbdError(BlockvaultError):
    """An NBD server (``qemu-nbd`` serving a VM disk) answered what we cannot use."""

    template = "NBD server {peer}: {detail}"


class StorageError(BlockvaultError):
    template = "storage {location}: {detail}"


class ObjectNotFound(StorageError):
    template = "storage {location}: object {name} does not exist"


class ObjectTooLarge(StorageError):
    """Found from the object's size before its body is read: a hostile repository or
    server cannot make us allocate more than the bound of the object's kind."""

    template = (
        "storage {location}: object {name} is {size} bytes, more than the {limit} it may "
        "have; the repository is damaged or forged (see blockvault check)"
    )
    exit_code = 4


class TransientStorageError(StorageError):
    """A failure that may pass if the request is repeated (connection dropped or reset,
    timeout, server busy or 5xx). Backends raise it; the retry wrapper retries it."""

    template = "storage {location}: {detail}"


class RescueOptionError(UsageError):
    template = (
        "kernel command line option {option}: {detail} (see 'Unattended rescue' in the user guide)"
    )


class RescueBuildError(BlockvaultError):
    template = "rescue media {output}: {detail}"


class PxeOptionError(UsageError):
    template = "pxe {option}: {detail} (see 'Network boot (PXE)' in the user guide)"


class PxeServeError(BlockvaultError):
    template = "pxe serve on {interface}: {detail}"


class AdaptRefused(UsageError):
    """Refused before the target was written: nothing to adapt in the snapshot."""

    template = (
        "snapshot {snapshot}: {detail}; restore it without --adapt "
        "(see 'Restore onto other hardware' in the user guide)"
    )


class AdaptError(BlockvaultError):
    """A step of ``--adapt`` failed after the data was written: the restore stands."""

    template = "adapting the system restored on {target}: {detail}"


class VirtualMachineError(BlockvaultError):
    template = "QEMU: {detail}"


class BootFailed(VirtualMachineError):
    """The guest ran but its console never showed the login prompt or marker: the
    disk's boot chain (firmware, boot loader, kernel, root) did not come up."""

    template = (
        "snapshot {snapshot} did not boot: {detail}; last console line: {last!r}; watch it "
        "with 'blockvault -r {repo:arg} boot {snapshot}', or give --timeout or --marker"
    )
    exit_code = 5


class FormatError(BlockvaultError):
    template = "{detail}"


class PartitionTableError(FormatError):
    template = "partition table on {path}: {detail}"


class FilesystemError(FormatError):
    template = "{fs} filesystem {where}: {detail}"


class ImageDamaged(FormatError):
    """Another tool's image (partclone, Clonezilla) that fails a check its own format
    carries: a checksum, a size, a missing piece. The detail says where."""

    template = "image {image}: {detail}; it is damaged, so no snapshot was made of it"


class UnsafeName(FormatError):
    """A snapshot's entry whose name or place would take a write outside its tree:
    the tree writer refuses it and the caller skips it."""

    template = "{path!r}: {detail}; skipped"


class RepositoryError(BlockvaultError):
    template = "repository {repo}: {detail}"
    exit_code = 3


class RepositoryNotFound(RepositoryError):
    template = "no repository at {repo}; create one with 'blockvault -r {repo:arg} init'"


class RepositoryExists(RepositoryError):
    template = "{repo} already holds a repository or other files; choose an empty location"


class SnapshotNotFound(RepositoryError):
    template = (
        "no snapshot matches {ref!r} in {repo}; 'blockvault -r {repo:arg} snapshots' lists them"
    )


class AmbiguousSnapshot(RepositoryError):
    template = "{ref!r} matches {count} snapshots in {repo}; give more characters of the id"


class AmbiguousLatest(RepositoryError):
    template = (
        "'latest' is ambiguous in {repo}: it holds snapshots of {count} sources ({candidates}); "
        "choose one with --host H and/or --source S, or give a snapshot id"
    )


class WrongPassphrase(RepositoryError):
    template = (
        "wrong passphrase: it does not open {what}; check BLOCKVAULT_PASSWORD or --password-file"
    )


class KeyMissing(RepositoryError):
    template = (
        "repository {repo} is encrypted but holds no key; restore an exported one with "
        "'blockvault -r {repo:arg} key import FILE'"
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


class PieceError(IntegrityError):
    """A piece of a one-file image (``.bvi``) that is missing, belongs to another image,
    sits in the wrong place, is truncated or damaged: named, with the damage's bytes."""

    template = "one-file image {piece} {detail}"


class Interrupted(BaseException):
    """A signal (SIGINT, SIGTERM, SIGHUP) stopped the work; it cleaned up on the way out.

    ``outcome`` is one sentence on the state it left, filled in by the code that knows
    (never "unchanged" once something was written); the CLI prints it."""

    def __init__(self, signal_name: str, number: int) -> None:
        self.signal_name = signal_name
        self.exit_code = 128 + number
        self.outcome = ""
        super().__init__(signal_name)

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}" + (f": {self.outcome}" if self.outcome else "")
