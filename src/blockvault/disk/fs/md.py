"""Linux software RAID (mdadm) members: recognised by their superblock, imaged raw.

A member holds an md superblock and, for RAID1, a full copy of the array's data.
Where the superblock sits depends on its version (``include/uapi/linux/raid/md_p.h``):

======== ===================================================================
0.90     64 KiB from the end, the end first rounded down to 64 KiB; native
         byte order (little-endian on every machine that made one we read)
1.0      8 KiB from the end, rounded down to 4 KiB; little-endian
1.1      at byte 0
1.2      at byte 4096
======== ===================================================================

A member is imaged raw (all-zero chunks skipped) with a note naming its array:
the array's filesystem is read by its used blocks when the assembled array
(``/dev/mdN``) is backed up instead. Two members of one RAID1 array on the same
disk hold the same data, so their chunks deduplicate; the layout says so
(disk/layout.py) rather than let it pass silently.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any, Final

from dissect.cstruct import cstruct  # type: ignore[import-untyped]

from blockvault.disk.device import Reader
from blockvault.disk.fs import FilesystemInfo
from blockvault.extents import ExtentMap
from blockvault.text import shown

__all__ = ["MD_MAGIC", "NOTE_PREFIX", "detect", "read", "superblock_offsets"]

MD_MAGIC: Final = 0xA92B4EFC
NOTE_PREFIX: Final = "mdadm RAID member"

_MD_P = """
/* mdp_super_t, the version 0.90 superblock: its first (generic constant) words */
struct mdp_super_0 {
    uint32  md_magic;
    uint32  major_version;
    uint32  minor_version;
    uint32  patch_version;
    uint32  gvalid_words;
    uint8   set_uuid0[4];
    uint32  ctime;
    uint32  level;
    uint32  size;           /* used size of the members, in KiB */
    uint32  nr_disks;
    uint32  raid_disks;
    uint32  md_minor;
    uint32  not_persistent;
    uint8   set_uuid1[12];  /* set_uuid1..3 */
};

/* struct mdp_superblock_1, versions 1.0, 1.1 and 1.2: its constant array state */
struct mdp_superblock_1 {
    uint32  magic;
    uint32  major_version;  /* 1 */
    uint32  feature_map;
    uint32  pad0;
    uint8   set_uuid[16];
    char    set_name[32];
    uint64  ctime;
    uint32  level;          /* 0, 1, 4, 5, 6, 10; -1 linear */
    uint32  layout;
    uint64  size;           /* used size of the members, in 512-byte sectors */
    uint32  chunksize;
    uint32  raid_disks;
    uint32  bitmap_offset;
    uint32  new_level;
    uint64  reshape_position;
    uint32  delta_disks;
    uint32  new_layout;
    uint32  new_chunk;
    uint32  new_offset;
    uint64  data_offset;    /* sectors from the member's start to the array's data */
    uint64  data_size;
    uint64  super_offset;
    uint64  recovery_offset;
    uint32  dev_number;
};
"""
c_md: Any = cstruct(endian="<").load(_MD_P)

_V090_RESERVED: Final = 64 * 1024
_V10_BACK: Final = 8 * 1024
_V10_ALIGN: Final = 4 * 1024
_BLOCK: Final = 512  # as raw partitions (probe.RAW_BLOCK_SIZE, which imports this module)
_LEVELS: Final = {0xFFFFFFFF: "linear", 0: "RAID0", 1: "RAID1", 4: "RAID4", 5: "RAID5"}


def superblock_offsets(size: int) -> dict[str, int]:
    """Where each version's superblock would sit on a member of ``size`` bytes."""
    offsets = {"1.1": 0, "1.2": 4096}
    if size >= _V10_BACK + _V10_ALIGN:
        offsets["1.0"] = (size - _V10_BACK) & ~(_V10_ALIGN - 1)
    if size >= 2 * _V090_RESERVED:
        offsets["0.90"] = (size & ~(_V090_RESERVED - 1)) - _V090_RESERVED
    return offsets


def _find(reader: Reader) -> tuple[str, Any] | None:
    """The version and parsed superblock of the first valid one found."""
    for version, offset in superblock_offsets(reader.size).items():
        struct = c_md.mdp_super_0 if version == "0.90" else c_md.mdp_superblock_1
        if offset + len(struct) > reader.size:
            continue
        data = reader.read_at(offset, len(struct))
        sb = struct(data)
        if version == "0.90":
            if sb.md_magic == MD_MAGIC and sb.major_version == 0 and sb.minor_version == 90:
                return version, sb
        elif sb.magic == MD_MAGIC and sb.major_version == 1 and sb.super_offset * 512 == offset:
            return version, sb
    return None


def _words_uuid(raw: bytes) -> uuid.UUID:
    """A 0.90 array's uuid as mdadm and blkid show it: four words in the (little-endian)
    byte order of the machine that wrote them, each shown most significant byte first.
    Version 1 stores the uuid as bytes, shown as they are."""
    return uuid.UUID(bytes=struct.pack(">4I", *struct.unpack("<4I", raw)))


def detect(reader: Reader) -> bool:
    return _find(reader) is not None


def read(reader: Reader) -> FilesystemInfo:
    """A member: the whole partition is used (imaged raw), named by its array."""
    found = _find(reader)
    assert found is not None, "read() after detect()"
    version, sb = found
    if version == "0.90":
        array = _words_uuid(bytes(sb.set_uuid0) + bytes(sb.set_uuid1))
        name = None
    else:
        array = uuid.UUID(bytes=bytes(sb.set_uuid))
        name = shown(sb.set_name.split(b"\0")[0].decode("utf-8", "replace")) or None
    level = _LEVELS.get(sb.level, f"level {sb.level}")
    what = f"array {name} " if name else "array "
    return FilesystemInfo(
        type="raw",
        size=reader.size,
        block_size=_BLOCK,
        used=ExtentMap.span(0, reader.size),
        label=name,
        uuid=str(array),
        note=(
            f"{NOTE_PREFIX} ({level}, metadata {version}, {what}{array}), imaged raw; "
            "back up the assembled array (/dev/mdN) to image it by used blocks"
        ),
    )
