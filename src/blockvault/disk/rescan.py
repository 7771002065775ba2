"""Have the kernel see a partition table just written to a disk.

Writing a table's sectors does not tell the kernel: until it re-reads them, the
new partitions have no devices (``/dev/sda2`` is missing or still the old one) and
nothing can mount them before a reboot. ``BLKRRPART`` asks the kernel to parse
the table itself; it refuses while a partition of the disk is in use, and a kernel
may not parse every table type (or a loop device without partition scanning), so
``partx --update`` (which parses it here and tells the kernel partition by
partition) finishes the job. Success is what sysfs shows afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

from blockvault.disk.device import open_device
from blockvault.disk.table.probe import read_table

__all__ = ["kernel_partitions", "reread_partitions"]

BLKRRPART: Final = 0x125F  # <linux/fs.h>: re-read the partition table


def kernel_partitions(disk: str | os.PathLike[str]) -> set[int]:
    """The partition numbers the kernel has devices for on ``disk`` (from sysfs)."""
    name = Path(os.path.realpath(disk)).name
    found = set()
    for entry in Path("/sys/class/block", name).iterdir():
        number = entry / "partition"
        if number.is_file():
            found.add(int(number.read_text()))
    return found


def reread_partitions(disk: str | os.PathLike[str]) -> bool:
    """Whether the kernel now has a device for every partition of the table on the
    block device ``disk`` (and none of a table no longer there); a partition holds
    no table the kernel reads."""
    if Path("/sys/class/block", Path(os.path.realpath(disk)).name, "partition").exists():
        return True
    with open_device(disk) as device:
        table = read_table(device, device.logical_sector_size)
        wanted = {p.number for p in table.partitions} if table else set()
        with contextlib.suppress(OSError):  # busy, or no partition scanning: partx below
            fcntl.ioctl(device.fd, BLKRRPART)
    if kernel_partitions(disk) == wanted:
        return True
    if shutil.which("partx") is None:
        return False
    # --update adds, resizes and removes; on a disk the kernel shows no partitions
    # of, it needs --add (and with no table left, there is nothing to add)
    action = "--update" if kernel_partitions(disk) or not wanted else "--add"
    subprocess.run(["partx", action, str(disk)], capture_output=True, check=False)
    return kernel_partitions(disk) == wanted
