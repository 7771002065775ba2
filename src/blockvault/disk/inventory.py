"""The block devices of this machine, for ``blockvault disks``."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from blockvault.disk.device import open_device
from blockvault.disk.layout import DiskLayout, read_layout
from blockvault.errors import BlockvaultError

__all__ = ["DiskInfo", "list_disks", "unreadable"]

SKIP_PREFIXES = ("ram", "zram", "dm-", "md", "sr", "fd")


@dataclass(frozen=True)
class DiskInfo:
    path: str
    model: str
    size: int
    logical_sector_size: int
    physical_sector_size: int
    layout: DiskLayout | None
    error: str | None = None  # why the layout could not be read, in words


# errors a device can answer when opened or read, said the way a user can act on them
UNREADABLE = {
    errno.EACCES: "permission denied: run blockvault as root",
    errno.EPERM: "permission denied: run blockvault as root",
    errno.ENOMEDIUM: "no medium: the drive is empty (insert a disk or card)",
    errno.EIO: "I/O error: the device failed to read (see dmesg; the disk may be failing)",
    errno.ENXIO: "no such device: it was removed or is not ready",
    errno.ENODEV: "no such device: it was removed or is not ready",
    errno.EBUSY: "busy: held exclusively by another program or the kernel",
}

DENIED = (errno.EACCES, errno.EPERM)


def unreadable(exc: BaseException) -> str:
    """Why a device could not be read, in words: the first OS error behind ``exc``
    (an error raised ``from None`` keeps it as its context) explained, else ``exc``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in UNREADABLE:
            if seen.errno in DENIED and os.geteuid() == 0:
                return "permission denied even to root (a container or security policy)"
            return UNREADABLE[seen.errno]
        seen = seen.__cause__ or seen.__context__
    return str(exc)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def list_disks(sys_block: Path = Path("/sys/block")) -> list[DiskInfo]:
    """Whole disks (not partitions), loop devices only when they have a backing file."""
    disks = []
    for entry in sorted(sys_block.iterdir()):
        name = entry.name
        if name.startswith(SKIP_PREFIXES):
            continue
        if name.startswith("loop") and not _read(entry / "loop" / "backing_file"):
            continue
        size = int(_read(entry / "size") or 0) * 512
        if size == 0:
            continue
        model = _read(entry / "device" / "model")
        if name.startswith("loop"):
            model = f"loop: {_read(entry / 'loop' / 'backing_file')}"
        logical = int(_read(entry / "queue" / "logical_block_size") or 512)
        physical = int(_read(entry / "queue" / "physical_block_size") or logical)
        layout, error = None, None
        try:
            with open_device(Path("/dev") / name) as device:
                layout = read_layout(device)
        except (BlockvaultError, OSError) as exc:
            error = unreadable(exc)
        disks.append(DiskInfo(f"/dev/{name}", model, size, logical, physical, layout, error))
    return disks
