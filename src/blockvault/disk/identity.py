"""Which disk a source is, stable across reboots: ``latest`` must never pick another
disk's snapshot because /dev/sda named a different disk last week.

In order of preference: the world-wide name (``wwn:``, from sysfs ``wwid``), the
serial number (``serial:``), the backing file of a loop device or the path of an
image file (``image:``, absolute), the partition table's disk id (``table:``, the
GPT disk GUID or MBR signature), and last the device path (``device:``). sysfs
values are read with a bound and stripped of anything unprintable.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["source_identity"]

_MAX_VALUE = 256  # bytes of a sysfs attribute we read


def source_identity(path: str, disk_id: str = "", sysfs: Path = Path("/sys")) -> str:
    """The identity of the disk or image file at ``path`` (see the module docstring)."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        return f"image:{os.path.realpath(path)}"
    block = sysfs / "dev" / "block" / f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    for kind, attribute in (
        ("wwn", "wwid"),
        ("wwn", "device/wwid"),
        ("serial", "serial"),
        ("serial", "device/serial"),
        ("image", "loop/backing_file"),
    ):
        value = _read(block / attribute)
        if value:
            return f"{kind}:{value}"
    return f"table:{disk_id}" if disk_id else f"device:{path}"


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as file:
            raw = file.read(_MAX_VALUE)
    except OSError:
        return ""
    text = raw.decode("ascii", "replace").strip()
    return "".join(c for c in text if c.isprintable())
