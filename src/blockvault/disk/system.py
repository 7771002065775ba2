"""Which disk and partitions a working system needs (``backup --system``).

The running machine says where ``/``, ``/boot`` and ``/boot/efi`` come from in
``/proc/self/mountinfo``: a device number per mount. sysfs turns that number
into a disk and a byte offset: a partition names its parent disk and start; a
loop device names its backing file and offset (``losetup -o``), so a system
mounted from an image file resolves to that file. The partitions found there,
plus the EFI System and BIOS boot partitions of the same disk (the firmware and
GRUB need them though nothing mounts them), are the choice.

``root`` lets a caller (and the tests) treat another directory as ``/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from blockvault.disk.device import open_device
from blockvault.disk.table import PartitionTable
from blockvault.disk.table.probe import read_table
from blockvault.errors import SourceError

__all__ = ["SystemChoice", "choose_system"]

MOUNTS = ("/", "/boot", "/boot/efi")
ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"
ESP_MBR_TYPE = "0xef"
SYSFS = Path("/sys/dev/block")


@dataclass(frozen=True)
class SystemChoice:
    """The disk to image and why each of its partitions was chosen."""

    disk: Path
    partitions: tuple[int, ...]
    reasons: tuple[str, ...]  # one per partition, e.g. "mounted on /boot", "EFI System"


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _mounted_devices(root: Path, mountinfo: Path) -> dict[str, str]:
    """``{"/": "8:2", "/boot": ...}`` for the system mounts under ``root`` (the last mount wins)."""
    wanted = {os.path.normpath(f"{root}/{m}"): m for m in MOUNTS}
    found: dict[str, str] = {}
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = os.path.normpath(_unescape(fields[4]))
        if point in wanted:
            found[wanted[point]] = fields[2]
    return found


def _resolve(majmin: str, sysfs: Path) -> tuple[Path, int]:
    """The disk (device or image file) behind device ``majmin`` and the byte offset on it."""
    node = (sysfs / majmin).resolve()
    if (node / "partition").exists():
        start = int((node / "start").read_text()) * 512  # sysfs counts 512-byte units
        return Path("/dev") / node.parent.name, start
    loop = node / "loop"
    if loop.is_dir():
        backing = (loop / "backing_file").read_text().strip().removesuffix(" (deleted)")
        return Path(backing), int((loop / "offset").read_text())
    if not (node / "dev").exists():
        raise SourceError(f"no block device {majmin} in sysfs", path=sysfs / majmin)
    return Path("/dev") / node.name, 0


def _extra(table: PartitionTable) -> list[tuple[int, str]]:
    out = []
    for p in table.data_partitions:
        if p.type in (ESP_GUID, ESP_MBR_TYPE):
            out.append((p.number, "EFI System"))
        elif p.type == BIOS_BOOT_GUID:
            out.append((p.number, "BIOS boot"))
    return out


def choose_system(
    root: Path = Path("/"),
    *,
    mountinfo: Path = Path("/proc/self/mountinfo"),
    sysfs: Path = SYSFS,
) -> SystemChoice:
    """The disk holding the system mounted at ``root`` and the partitions it needs.

    Raises SourceError when nothing is mounted at ``root``, when ``/``, ``/boot`` and
    ``/boot/efi`` lie on different disks, or when a mount is no partition of its disk.
    """
    root = Path(os.path.abspath(root))
    mounts = _mounted_devices(root, mountinfo)
    if "/" not in mounts:
        raise SourceError("nothing is mounted there, so it holds no system to back up", path=root)
    places = {m: _resolve(majmin, sysfs) for m, majmin in mounts.items()}
    disk = places["/"][0]
    for mount, (other, _) in places.items():
        if other != disk:
            raise SourceError(
                f"{mount} lies on {other}, / on {disk}; a system spread over disks is not "
                "supported, back each disk up by itself",
                path=root,
            )
    with open_device(disk) as device:
        table = read_table(device, device.logical_sector_size if device.is_block else None)
    if table is None:
        if set(mounts) == {"/"} and places["/"][1] == 0:
            return SystemChoice(disk, (), ("whole disk mounted on /",))
        raise SourceError("the disk holding the system has no partition table", path=disk)
    chosen: dict[int, str] = {}
    for mount, (_, offset) in sorted(places.items()):
        part = next((p for p in table.data_partitions if p.start == offset), None)
        if part is None:
            raise SourceError(
                f"{mount} is mounted from byte {offset}, no partition's start", path=disk
            )
        chosen.setdefault(part.number, f"mounted on {mount}")
    for number, why in _extra(table):
        chosen.setdefault(number, why)
    numbers = tuple(sorted(chosen))
    return SystemChoice(disk, numbers, tuple(chosen[n] for n in numbers))
