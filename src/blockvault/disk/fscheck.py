"""Run a filesystem's own checker, read-only, on a partition of a disk or image.

The partition is copied into a sparse temporary file first (the checkers want a
device or file of their own, and the CI kernel makes no partition devices for
loop disks). Used by the demo and by tests as the independent oracle.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from blockvault.disk.device import Reader
from blockvault.extents import ExtentMap

__all__ = ["CHECKERS", "FsckResult", "check_filesystem"]

# filesystem type -> read-only check command (the file name is appended)
CHECKERS: dict[str, list[str]] = {
    "ext2": ["e2fsck", "-fn"],
    "ext3": ["e2fsck", "-fn"],
    "ext4": ["e2fsck", "-fn"],
    "fat12": ["fsck.vfat", "-n"],
    "fat16": ["fsck.vfat", "-n"],
    "fat32": ["fsck.vfat", "-n"],
    "ntfs": ["ntfsfix", "-n"],
    "xfs": ["xfs_repair", "-n", "-f"],  # -f: the partition is a file, not a device
}


@dataclass(frozen=True)
class FsckResult:
    filesystem: str
    command: str
    ok: bool
    output: str


def check_filesystem(
    reader: Reader, fs_type: str, used: ExtentMap, workdir: str | None = None
) -> FsckResult | None:
    """Check the filesystem in ``reader`` (only ``used`` bytes are copied); None if no checker."""
    command = CHECKERS.get(fs_type)
    if command is None or shutil.which(command[0]) is None:
        return None
    with tempfile.TemporaryDirectory(dir=workdir, prefix="blockvault-fsck-") as tmp:
        copy = Path(tmp) / "partition.img"
        with open(copy, "wb") as out:
            out.truncate(reader.size)
            for extent in used:
                for pos in range(extent.offset, extent.end, 4 << 20):
                    n = min(4 << 20, extent.end - pos)
                    out.seek(pos)
                    out.write(reader.read_at(pos, n))
        proc = subprocess.run([*command, str(copy)], capture_output=True, text=True, check=False)
    output = "\n".join(part.strip() for part in (proc.stderr, proc.stdout) if part.strip())
    return FsckResult(fs_type, " ".join(command), proc.returncode == 0, output.replace(tmp, "."))
