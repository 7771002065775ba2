"""``backup --snapshot``: read from a read-only btrfs snapshot instead of the live tree.

Each path's subvolume is snapshotted read-only (``btrfs subvolume snapshot -r``) to
``.blockvault-snapshot-<random>`` beside its contents, the backup reads from there while
recording the original paths, and the snapshots are deleted afterwards, on error or
interruption too. Elsewhere ``--snapshot`` is refused: an LVM snapshot of a volume comes
with the ``--live`` work of issue 18 (disk images), not with file backup.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from typing import Final

from blockvault.errors import SourceError, UsageError

__all__ = ["SNAPSHOT_PREFIX", "PathMap", "snapshotted"]

SNAPSHOT_PREFIX: Final = ".blockvault-snapshot-"
_SUBVOLUME_ROOT_INODE: Final = 256  # BTRFS_FIRST_FREE_OBJECTID: every subvolume's root


class PathMap:
    """Where each original path is read from, and back (for messages and patterns)."""

    def __init__(self, pairs: dict[str, str] | None = None) -> None:
        self.pairs = dict(pairs or {})  # original -> where it is read

    def actual(self, original: str) -> str:
        return self.pairs.get(original, original)

    def original(self, text: str) -> str:
        """``text`` (a path, or a message starting with one) with a snapshot's path
        replaced by the original it stands for."""
        for original, actual in self.pairs.items():
            if actual != original and (
                text == actual or text.startswith((actual + "/", actual + ":"))
            ):
                return original + text[len(actual) :]
        return text


@contextlib.contextmanager
def snapshotted(paths: Sequence[str]) -> Iterator[PathMap]:
    """A read-only snapshot of each path's btrfs subvolume (one per subvolume), and
    the map from each path to its place inside one; deleted on the way out."""
    made: dict[str, str] = {}  # subvolume root -> its snapshot
    failed = False
    try:
        pairs = {}
        for path in paths:
            kind = _filesystem(path)
            if kind != "btrfs":
                raise UsageError(
                    f"--snapshot: {path} is on {kind}, not btrfs; blockvault makes file "
                    "snapshots only of btrfs subvolumes (LVM snapshots come with the disk "
                    "backup's --live)"
                )
            root = _subvolume_root(path)
            if root not in made:
                target = os.path.join(root, SNAPSHOT_PREFIX + secrets.token_hex(6))
                _btrfs("subvolume", "snapshot", "-r", root, target)
                made[root] = target
            inside = os.path.relpath(path, root)
            pairs[path] = made[root] if inside == "." else os.path.join(made[root], inside)
        yield PathMap(pairs)
    except BaseException:
        failed = True
        raise
    finally:
        for target in made.values():
            try:
                _btrfs("subvolume", "delete", target)
            except SourceError:
                if not failed:  # else the first error is the one to tell
                    raise


def _filesystem(path: str) -> str:
    proc = subprocess.run(
        ["stat", "-f", "-c", "%T", "--", path], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SourceError(
            proc.stderr.strip().splitlines()[-1:][0] if proc.stderr else "", path=path
        )
    return proc.stdout.strip()


def _subvolume_root(path: str) -> str:
    """The nearest directory at or above ``path`` that is a subvolume's root."""
    here = path if os.path.isdir(path) and not os.path.islink(path) else os.path.dirname(path)
    while os.lstat(here).st_ino != _SUBVOLUME_ROOT_INODE and here != "/":
        here = os.path.dirname(here)
    return here


def _btrfs(*args: str) -> None:
    try:
        proc = subprocess.run(["btrfs", *args], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SourceError(f"btrfs cannot be run: {exc.strerror}", path=args[-1]) from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SourceError(f"btrfs {args[0]} {args[1]} failed: {last}", path=args[-1])
