"""A disk's storage stack as one tree, for ``disks`` and ``inspect``.

disk -> partitions -> (LUKS -> LVM PV -> logical volumes ->) filesystems, each node
with what it holds, its size and used bytes, and where it is mounted. The layers
below a partition come from the layout (``FilesystemInfo.volumes``, disk/volumes);
an md RAID member is a node of its own kind naming its array, with the array
assembled from it (``/dev/mdN``, from sysfs holders) below it.

Mounts are matched to nodes through sysfs: a partition device names its number, a
device-mapper device its "VG-LV" name, and a loop device made with an offset (an
image's partition) its offset; anything else mounted from the disk belongs to the
disk itself (to its one partition when it has no table).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from blockvault.disk.fs import md
from blockvault.disk.layout import DiskLayout, PartitionLayout
from blockvault.disk.usage import Mount, mounts_using

__all__ = ["StackNode", "stack_tree", "sysfs_attribute"]

SYS_BLOCK = Path("/sys/dev/block")
_MAX_SYSFS = 256  # bytes of a sysfs attribute we read


@dataclass(frozen=True)
class StackNode:
    kind: str  # "disk", "partition", "md-member", a volume's kind ("luks2", "lvm2-lv", ...)
    name: str  # "/dev/sda", "1", "vg0", "vg0/root"
    size: int
    filesystem: str = ""  # what it holds; "" for a pure container (a PV)
    label: str | None = None
    uuid: str | None = None
    used_bytes: int = 0
    mounts: tuple[str, ...] = ()
    note: str | None = None
    children: tuple[StackNode, ...] = ()


def stack_tree(layout: DiskLayout, mounts: Sequence[Mount] | None = None) -> StackNode:
    """The tree of ``layout``, with ``mounts`` (by default: what is mounted from the
    disk now) on their nodes."""
    placed: dict[str, list[str]] = {}
    for mount in mounts_using(layout.path) if mounts is None else mounts:
        key = _node_of(mount, layout)
        placed.setdefault(key, []).append(mount.mountpoint)
    return StackNode(
        kind="disk",
        name=layout.path,
        size=layout.size,
        filesystem=layout.table_kind,
        used_bytes=layout.used_bytes,
        mounts=tuple(placed.get("disk", ())),
        children=tuple(
            _partition(p, placed, _arrays_on(layout.path, p.number)) for p in layout.partitions
        ),
    )


def _arrays_on(disk: str, number: int) -> tuple[StackNode, ...]:
    """The md arrays assembled from partition ``number`` of the block device ``disk``."""
    block = Path("/sys/class/block") / Path(os.path.realpath(disk)).name
    arrays = []
    for part in block.glob("*") if block.is_dir() else ():
        if sysfs_attribute(part / "partition") != str(number):
            continue
        for holder in sorted((part / "holders").glob("md*")):
            sectors = sysfs_attribute(holder / "size")
            level = sysfs_attribute(holder / "md" / "level")
            arrays.append(
                StackNode(
                    kind="md-array",
                    name=f"/dev/{holder.name}",
                    size=int(sectors) * 512 if sectors.isdigit() else 0,
                    note=f"assembled, {level}" if level else "assembled",
                )
            )
    return tuple(arrays)


def _partition(
    p: PartitionLayout, placed: dict[str, list[str]], arrays: tuple[StackNode, ...]
) -> StackNode:
    fs = p.fs
    is_member = (fs.note or "").startswith(md.NOTE_PREFIX)
    volumes = fs.volumes

    def below(parent: str) -> tuple[StackNode, ...]:
        return tuple(
            StackNode(
                kind=v.kind,
                name=v.name,
                size=v.size,
                filesystem=v.filesystem,
                label=v.label,
                uuid=v.uuid,
                used_bytes=v.used_bytes,
                mounts=tuple(placed.get(f"volume:{v.name}", ())),
                note=v.note,
                children=below(v.name),
            )
            for v in volumes
            if v.parent == parent and v.name != parent
        )

    return StackNode(
        kind="md-member" if is_member else "partition",
        name=str(p.number),
        size=p.partition.size,
        filesystem="" if volumes else fs.type,
        label=fs.label,
        uuid=fs.uuid,
        used_bytes=fs.used_bytes,
        mounts=tuple(placed.get(f"partition:{p.number}", ())),
        note=fs.note,
        children=below("") + arrays,
    )


def _node_of(mount: Mount, layout: DiskLayout) -> str:
    """The key of the node ``mount`` belongs to (see the module docstring)."""
    real = SYS_BLOCK / mount.device
    number = sysfs_attribute(real / "partition")
    if number.isdigit():
        return f"partition:{number}"
    dm_name = sysfs_attribute(real / "dm" / "name")
    if dm_name:
        return f"volume:{_lv_name(dm_name)}"
    offset = sysfs_attribute(real / "loop" / "offset")
    if offset.isdigit() and int(offset):
        for p in layout.partitions:
            if p.partition.start == int(offset):
                return f"partition:{p.number}"
    return "disk" if layout.table is not None else "partition:1"


def _lv_name(dm_name: str) -> str:
    """device-mapper's "VG-LV" (each "-" inside a name doubled) as "VG/LV"."""
    i = 0
    while i < len(dm_name):
        if dm_name[i] == "-":
            if dm_name[i + 1 : i + 2] == "-":
                i += 2
                continue
            return f"{dm_name[:i].replace('--', '-')}/{dm_name[i + 1 :].replace('--', '-')}"
        i += 1
    return dm_name


def sysfs_attribute(path: Path) -> str:
    """A sysfs attribute's value, bounded and stripped; "" when there is none."""
    try:
        with open(path, "rb") as file:
            return file.read(_MAX_SYSFS).decode("ascii", "replace").strip()
    except OSError:
        return ""
