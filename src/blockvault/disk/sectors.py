"""Moving a disk between 512-byte and 4096-byte logical sectors.

A partition table counts in sectors, and so do the FAT and NTFS boot sectors;
ext2/3/4 count in their own blocks and need nothing. Everything here is pure:
it takes the bytes or the parsed table of the source and returns what the
target must hold, or says in one line why the copy cannot be converted
without moving file data (which a block copy never does).

FAT: the data region (the clusters) must start on a whole new sector and a
cluster must hold at least one; everything before it (reserved region, FATs,
FAT12/16 root directory) is metadata and is rebuilt whole by ``convert_fat``,
so FATs that did not start on a 4096-byte boundary are simply moved within
that region. NTFS: only the boot sector and its backup change. XFS needs nothing when
it was made for sectors at least as large as the new ones, and is refused otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from blockvault.disk.device import Device, Reader, Region
from blockvault.disk.fs import ext, fat, ntfs, xfs
from blockvault.disk.fs.c_fat import c_fat
from blockvault.disk.fs.c_ntfs import (
    backup_boot_offset,
    c_ntfs,
    cluster_sectors,
    cluster_sectors_field,
)
from blockvault.disk.fs.probe import probe
from blockvault.disk.table import PartitionTable
from blockvault.disk.table import gpt as gpt_table
from blockvault.disk.table import mbr as mbr_table

__all__ = [
    "check_disk",
    "check_fat",
    "check_ntfs",
    "check_table",
    "convert_disk",
    "convert_fat",
    "convert_ntfs",
    "fat_metadata_size",
    "rescale_table",
]

SECTOR_SIZES = (512, 4096)


def check_table(
    table: PartitionTable, new_ss: int, fs_sizes: Mapping[int, int] | None = None
) -> str | None:
    """Why ``table`` cannot be written in ``new_ss``-byte sectors, or None when it can.

    A partition must start on a new sector. Its size may end mid-sector when
    ``fs_sizes`` (partition number -> bytes its filesystem spans) says the content
    ends before: ``rescale_table`` then drops the tail (a GPT's last partition often
    ends at the last usable 512-byte LBA, not on a 4096-byte one).
    """
    if new_ss not in SECTOR_SIZES:
        return f"{new_ss}-byte sectors are not supported (only 512 and 4096)"
    sizes = fs_sizes or {}
    for p in table.partitions:
        rounded = p.size // new_ss * new_ss
        if p.start % new_ss or sizes.get(p.number, p.size) > rounded or not rounded:
            return (
                f"partition {p.number} (start byte {p.start}, {p.size} bytes) is not whole "
                f"{new_ss}-byte sectors, so it cannot be described on the target"
            )
        if p.ebr_offset is not None and p.ebr_offset % new_ss:
            return f"the EBR of partition {p.number} is not on a {new_ss}-byte sector"
    return None


def rescale_table(
    table: PartitionTable, new_ss: int, fs_sizes: Mapping[int, int] | None = None
) -> PartitionTable:
    """``table`` as it reads in ``new_ss``-byte sectors; build it with ``gpt.build``/``mbr.build``.

    Partitions are kept in bytes. For a GPT the first usable LBA keeps its byte
    offset when it can (rounded up) and never overlaps the new primary entry array;
    the last usable LBA and the backup are recomputed by ``gpt.build`` for the disk.
    Raises ValueError with ``check_table``'s reason.
    """
    reason = check_table(table, new_ss, fs_sizes)
    if reason is not None:
        raise ValueError(reason)
    parts = tuple(replace(p, size=p.size // new_ss * new_ss) for p in table.partitions)
    table = replace(table, partitions=parts)
    if table.kind != "gpt":
        return replace(table, sector_size=new_ss)
    count = table.entry_count or gpt_table.DEFAULT_ENTRY_COUNT
    esize = table.entry_size or gpt_table.ENTRY_SIZE
    array_blocks = -(-count * esize // new_ss)
    first_byte = (table.first_usable_lba or 0) * table.sector_size
    first = max(2 + array_blocks, -(-first_byte // new_ss))
    if any(p.start < first * new_ss for p in table.partitions):
        first = 2 + array_blocks
    return replace(
        table,
        sector_size=new_ss,
        first_usable_lba=first,
        last_usable_lba=0,  # gpt.build computes it for the target disk
    )


# --- FAT ------------------------------------------------------------------------------
_FAT32_RESERVED_MIN = 4  # boot sector, FSInfo and their backups


def _fat_geometry(boot: bytes) -> fat.Geometry:
    return fat.geometry(c_fat.fat_boot_sector(boot[:512]))


def fat_metadata_size(boot: bytes) -> int:
    """Bytes from the start of the FAT volume to its first cluster: what convert_fat rewrites."""
    g = _fat_geometry(boot)
    return g.data_start * g.sector


def _fat_plan(boot: bytes, new_ss: int) -> dict[str, int] | str:
    g = _fat_geometry(boot)
    ss = g.sector
    data_start = g.data_start * ss
    cluster = g.cluster_sectors * ss
    if data_start % new_ss:
        return (
            f"its clusters start at byte {data_start}, not on a {new_ss}-byte sector; "
            "converting would move file data"
        )
    if cluster < new_ss:
        return f"its {cluster}-byte clusters are smaller than a {new_ss}-byte sector"
    fat_sectors = -(-g.fat_sectors * ss // new_ss)
    root = -(-g.root_bytes // new_ss)
    reserved = data_start // new_ss - g.fats * fat_sectors - root
    need = _FAT32_RESERVED_MIN if g.fat32_form else 1
    if reserved < need:
        return f"its reserved region would shrink to {reserved} sectors of {new_ss} bytes"
    total = g.total_sectors * ss // new_ss
    return {"reserved": reserved, "fat": fat_sectors, "total": total, "spc": cluster // new_ss}


def check_fat(boot: bytes, new_ss: int) -> str | None:
    """Why this FAT volume cannot move to ``new_ss``-byte sectors, or None."""
    plan = _fat_plan(boot, new_ss)
    return plan if isinstance(plan, str) else None


def convert_fat(metadata: bytes, new_ss: int, partition_start: int) -> bytes:
    """The first ``fat_metadata_size`` bytes of a FAT volume, rewritten for ``new_ss``-byte sectors.

    ``metadata`` is that region as the source holds it. The boot sector fields that
    count sectors are recomputed, the FATs and the root directory are laid out again
    right before the unchanged first cluster, and on FAT32 the FSInfo sector and the
    backup boot sector get sectors of their own. ``partition_start`` (bytes) gives
    the hidden sector count. Raises ValueError with ``check_fat``'s reason.
    """
    plan = _fat_plan(metadata, new_ss)
    if isinstance(plan, str):
        raise ValueError(plan)
    g = _fat_geometry(metadata)
    ss = g.sector
    boot = c_fat.fat_boot_sector(metadata[:512])
    bpb = boot.bpb
    bpb.BPB_BytsPerSec = new_ss
    bpb.BPB_SecPerClus = plan["spc"]
    bpb.BPB_RsvdSecCnt = plan["reserved"]
    bpb.BPB_HiddSec = min(partition_start // new_ss, 0xFFFF_FFFF)
    if plan["total"] < 0x10000 and not g.fat32_form:
        bpb.BPB_TotSec16, bpb.BPB_TotSec32 = plan["total"], 0
    else:
        bpb.BPB_TotSec16, bpb.BPB_TotSec32 = 0, plan["total"]
    if g.fat32_form:
        boot.fat32.BPB_FATSz32 = plan["fat"]
    else:
        bpb.BPB_FATSz16 = plan["fat"]

    out = bytearray(len(metadata))

    def put(sector: int, data: bytes | bytearray) -> None:
        out[sector * new_ss : sector * new_ss + len(data)] = data

    if g.fat32_form:
        fsinfo = metadata[boot.fat32.BPB_FSInfo * ss :][:512]
        backup = 6 if plan["reserved"] >= 8 else 2
        boot.fat32.BPB_FSInfo = 1
        boot.fat32.BPB_BkBootSec = backup
        put(1, fsinfo)
        put(backup, boot.dumps())
        put(backup + 1, fsinfo)
    put(0, boot.dumps())
    old_fat_at = g.reserved * ss
    fat_bytes = g.fat_sectors * ss
    for i in range(g.fats):
        copy = metadata[old_fat_at + i * fat_bytes :][:fat_bytes]
        put(plan["reserved"] + i * plan["fat"], copy)
    root_at = old_fat_at + g.fats * fat_bytes
    put(plan["reserved"] + g.fats * plan["fat"], metadata[root_at : root_at + g.root_bytes])
    return bytes(out)


# --- NTFS -----------------------------------------------------------------------------


def _ntfs_cluster(bpb: Any) -> int:
    return cluster_sectors(int(bpb.sectors_per_cluster)) * int(bpb.bytes_per_sector)


def _ntfs_size(boot: Any) -> int:
    """Bytes the volume spans: its sectors and the backup boot sector after them."""
    return backup_boot_offset(boot) + int(boot.bpb.bytes_per_sector)


def check_ntfs(boot: bytes, new_ss: int) -> str | None:
    """Why this NTFS volume cannot move to ``new_ss``-byte sectors, or None."""
    cluster = _ntfs_cluster(c_ntfs.NTFS_BOOT_SECTOR(boot[:512]).bpb)
    if cluster < new_ss:
        return f"its {cluster}-byte clusters are smaller than a {new_ss}-byte sector"
    return None


def convert_ntfs(boot: bytes, new_ss: int, partition_start: int) -> list[tuple[int, bytes]]:
    """Writes, as ``(byte offset in the volume, bytes)``, for the boot sector and its backup.

    ``boot`` is the start of the source volume, at least ``new_ss`` bytes. The backup
    boot sector lies in the last sector of the volume, which moves with the sector
    size; it becomes a whole copy of the new first sector, as ntfsfix and Windows
    compare them.
    """
    if len(boot) < new_ss:
        raise ValueError(f"give the first {new_ss} bytes of the volume, not {len(boot)}")
    reason = check_ntfs(boot, new_ss)
    if reason is not None:
        raise ValueError(reason)
    sector = c_ntfs.NTFS_BOOT_SECTOR(boot[:512])
    bpb = sector.bpb
    # the volume ends with its backup boot sector: keep that end where it was
    total = _ntfs_size(sector) // new_ss - 1
    spc = _ntfs_cluster(bpb) // new_ss
    bpb.bytes_per_sector = new_ss
    bpb.sectors_per_cluster = cluster_sectors_field(spc)
    bpb.hidden_sectors = min(partition_start // new_ss, 0xFFFF_FFFF)
    sector.number_of_sectors = total
    new = sector.dumps() + boot[512:new_ss]
    return [(0, new), (total * new_ss, new)]


# --- on a whole disk ------------------------------------------------------------------
_METADATA_READ = 64 << 20  # FAT metadata beyond this (a FAT of 16M clusters) is refused


def _volume_kind(reader: Reader) -> str | None:
    if ntfs.detect(reader):
        return "ntfs"
    return "fat" if fat.detect(reader) else None


def _fs_sizes(source: Reader, table: PartitionTable, new_ss: int) -> dict[int, int]:
    """Bytes each filesystem spans, for the partitions that end mid-sector."""
    sizes = {}
    for p in table.data_partitions:
        if p.size % new_ss:
            volume = Region(source, p.start, p.size)
            if ntfs.detect(volume):  # the backup boot sector ends the volume
                sizes[p.number] = _ntfs_size(c_ntfs.NTFS_BOOT_SECTOR(volume.read_at(0, 512)))
            else:
                sizes[p.number] = probe(volume).size
    return sizes


def check_disk(source: Reader, table: PartitionTable, new_ss: int) -> str | None:
    """Why the disk on ``source`` cannot be copied to ``new_ss``-byte sectors, or None.

    Call it before writing anything: it reads only the source.
    """
    reason = check_table(table, new_ss, _fs_sizes(source, table, new_ss))
    if reason is not None:
        return reason
    for p in table.data_partitions:
        volume = Region(source, p.start, p.size)
        kind = _volume_kind(volume)
        if kind is None and ext.detect(volume):
            block = probe(volume).block_size  # Linux mounts no ext block below a sector
            if block < new_ss:
                return (
                    f"partition {p.number} (ext): its {block}-byte blocks are smaller than "
                    f"a {new_ss}-byte sector, so it could not be mounted there"
                )
        if kind is None and xfs.detect(volume):
            sector = xfs.sector_size(volume)
            if sector < new_ss:
                return (
                    f"partition {p.number} (xfs): it was made for {sector}-byte sectors, so it "
                    f"could not be mounted on {new_ss}-byte ones (mkfs.xfs -s size={new_ss} "
                    "makes one that can)"
                )
        if kind is None:
            continue
        boot = volume.read_at(0, 512)
        if kind == "fat":
            reason = check_fat(boot, new_ss)
            if reason is None and fat_metadata_size(boot) > _METADATA_READ:
                reason = "its FATs are larger than 64 MiB"
        else:
            reason = check_ntfs(boot, new_ss)
        if reason is not None:
            return f"partition {p.number} ({kind.upper()}): {reason}"
    return None


def convert_disk(device: Device, table: PartitionTable, new_ss: int) -> list[str]:
    """Rewrite a disk copied byte for byte from one with ``table`` for ``new_ss``-byte sectors.

    ``device`` already holds the source's bytes. The table is rebuilt for the new
    sectors (GPT: protective MBR, headers and entries at the new LBAs, backup at the
    device's end), then each FAT and NTFS volume's boot sector (FAT: with its FATs)
    is rewritten. Returns one line per change for the report. Raises ValueError with
    ``check_disk``'s reason, before writing, when it cannot.
    """
    reason = check_disk(device, table, new_ss)
    if reason is not None:
        raise ValueError(reason)
    new = rescale_table(table, new_ss, _fs_sizes(device, table, new_ss))
    boot = device.read_at(0, 512)
    writes: list[tuple[int, bytes]] = []
    if new.kind == "gpt":
        writes += gpt_table.build(new, device.size, protective=True, boot_sector=boot)
    else:
        writes += mbr_table.build(new, device.size, boot_sector=boot)
    done = [f"{table.kind} table rewritten for {new_ss}-byte sectors"]
    for p in table.data_partitions:
        volume = device.region(p.start, p.size)
        kind = _volume_kind(volume)
        if kind == "fat":
            size = fat_metadata_size(volume.read_at(0, 512))
            metadata = volume.read_at(0, size)
            writes.append((p.start, convert_fat(metadata, new_ss, p.start)))
        elif kind == "ntfs":
            head = volume.read_at(0, max(512, new_ss))
            writes += [(p.start + at, data) for at, data in convert_ntfs(head, new_ss, p.start)]
        else:
            continue
        done.append(f"partition {p.number}: {kind.upper()} boot sector rewritten")
    for offset, data in writes:
        device.write_at(offset, data)
    device.sync()
    return done
