"""The unattended job's log file: bounded, and kept on the system it restored.

While the job runs, its lines go to ``/run/blockvault-rescue.log`` (RAM: gone at
power-off). After a restore or a received deployment succeeds, that log is copied
to ``/var/log/blockvault-rescue-<UTC time>.log`` on the restored Linux root: the
first filesystem on the target that holds ``etc/`` and ``var/log/`` as
directories. That is where the machine's owner looks for what happened to it, and
it is the one place that is always writable afterwards: a repository may be
remote, read-only (an image on the stick) or append-only, and a file beside its
objects would be one more thing every repository reader has to skip.

The target's filesystems are as hostile as the snapshot they came from: they are
mounted ``nosuid,nodev,noexec``, and the copy is written by the safe tree writer
(no symlink is followed, nothing existing is replaced). The log holds at most
:data:`LOG_MAX` bytes of the job's output, then a note, then the final line.
"""

from __future__ import annotations

import contextlib
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final, TextIO

from blockvault.disk.rescan import reread_partitions
from blockvault.errors import BlockvaultError
from blockvault.pipeline.tree import TreeWriter

__all__ = ["LOG_MAX", "ROOT_FILESYSTEMS", "BoundedLog", "keep_on_target", "log_name"]

LOG_MAX: Final = 1024 * 1024  # bytes of job output kept; the console gets every line
ROOT_FILESYSTEMS: Final = ("ext2", "ext3", "ext4", "xfs", "btrfs")
MOUNT_OPTIONS: Final = "nosuid,nodev,noexec,noatime"


class BoundedLog:
    """Lines into a file, up to ``limit`` bytes; past it one note, then only the lines
    written with ``final`` (the job's OK or FAIL line)."""

    def __init__(self, file: TextIO, limit: int = LOG_MAX) -> None:
        self.file = file
        self.room = limit
        self.dropped = 0

    def line(self, text: str, *, final: bool = False) -> None:
        data = text + "\n"
        size = len(data.encode("utf-8", "replace"))
        if size <= self.room or final:
            if final and self.dropped:
                self.file.write(f"[{self.dropped} lines left out: the log is bounded]\n")
                self.dropped = 0
            self.file.write(data)
            self.room -= size
        else:
            self.dropped += 1
            self.room = 0
        self.file.flush()


def log_name(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"blockvault-rescue-{stamp}.log"


def keep_on_target(log: Path, device: str, *, now: float | None = None) -> str | None:
    """Copy ``log`` onto the Linux root on ``device`` (a disk or one filesystem);
    where it went (``/dev/vda2:/var/log/...``), or None when no filesystem there is a
    Linux root."""
    with open(log, "rb") as file:
        data = file.read(LOG_MAX + 64 * 1024)  # the bound, its note and the final line
    # a restore takes up the table it wrote; a clone or a cast receive may not
    with contextlib.suppress(BlockvaultError, OSError):  # not a disk: nothing to re-read
        reread_partitions(device)
    for candidate in _filesystems(device):
        with tempfile.TemporaryDirectory(prefix="blockvault-target-", dir="/run") as point:
            mount = ["mount", "-o", MOUNT_OPTIONS, candidate, point]
            if subprocess.run(mount, check=False, capture_output=True).returncode != 0:
                continue
            try:
                with TreeWriter(point) as tree:
                    if not all(_is_dir(tree, p) for p in (["etc"], ["var", "log"])):
                        continue
                    name = log_name(now)
                    tree.write_file(["var", "log", name], [data])
                    return f"{candidate}:/var/log/{name}"
            except (OSError, BlockvaultError):
                continue
            finally:
                subprocess.run(["umount", point], check=False, capture_output=True)
    return None


def _is_dir(tree: TreeWriter, path: list[str]) -> bool:
    try:
        st = tree.lstat(path)
    except (OSError, BlockvaultError):  # a symlink on the way is refused, not followed
        return False
    return st is not None and stat.S_ISDIR(st.st_mode)


def _filesystems(device: str) -> list[str]:
    """``device`` and its partitions that hold a filesystem a Linux root can be on,
    probed on the device itself (udev's record may predate the restore)."""
    listing = subprocess.run(
        ["lsblk", "-l", "-n", "-p", "-o", "NAME", device],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    found = []
    for name in listing:
        kind = subprocess.run(
            ["blkid", "-p", "-o", "value", "-s", "TYPE", name],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if kind in ROOT_FILESYSTEMS:
            found.append(name)
    return found
