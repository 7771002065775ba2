"""Grow a FAT12/16/32 filesystem in place to fill its (already grown) partition.

No tool here does it reliably: fatresize (libparted) refuses FAT12, computes "max"
past the end of a partition that does not start the device, asserts on exact sizes
and rewrites the partition table to sizes of its own. So this is our own code.

More clusters need more FAT entries. While the FATs have room (they are rounded up
to whole sectors) only the BPB's sector count changes. Otherwise each FAT grows by a
number of sectors chosen so that all FATs together grow by ``k`` whole clusters: the
data region then starts ``k`` clusters later and old cluster ``c`` *is* new cluster
``c - k`` without a byte moving. Only the first ``k`` old clusters lie under the new
FATs (and, on FAT12/16, the moved root directory); those in use are copied to free
clusters, and every cluster number is rewritten: FAT chains, directory entries
(``.`` and ``..`` included), the FAT32 root cluster, FSInfo.

The type never changes: FAT12 stops at 4084 clusters and FAT16 at 65524 (more would
make it another type); the filesystem then stops there and the report says so.
Not crash safe: it runs on a copy that was just written, whose source is intact.
"""

from __future__ import annotations

from array import array
from math import gcd
from typing import Any

from blockvault.disk.device import Device
from blockvault.disk.fs.c_fat import DIR_ENTRY_SIZE, c_fat
from blockvault.disk.fs.fat import FAT12_MAX_CLUSTERS, FAT16_MAX_CLUSTERS, Geometry, geometry
from blockvault.errors import FilesystemError

__all__ = ["grow_fat"]

FAT32_MAX_CLUSTERS = 0x0FFF_FFF4
MAX_CLUSTERS = {12: FAT12_MAX_CLUSTERS, 16: FAT16_MAX_CLUSTERS, 32: FAT32_MAX_CLUSTERS}
ENTRY_MASK = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFF_FFFF}
ATTR_LFN = 0x0F
ATTR_VOLUME = 0x08
ATTR_DIRECTORY = 0x10
DELETED = 0xE5


def _read_fat(raw: bytes, bits: int, count: int) -> list[int]:
    if bits == 16:
        return list(array("H", raw[: 2 * count]))
    if bits == 32:
        return [v & 0x0FFF_FFFF for v in array("I", raw[: 4 * count])]
    out = []
    for n in range(count):
        pair = int.from_bytes(raw[n * 3 // 2 : n * 3 // 2 + 2], "little")
        out.append(pair >> 4 if n % 2 else pair & 0xFFF)
    return out


def _pack_fat(entries: array[int], bits: int, length: int) -> bytes:
    if bits != 12:
        raw = entries.tobytes()
    else:
        buf = bytearray((len(entries) * 3 + 1) // 2)
        for n, v in enumerate(entries):
            at = n * 3 // 2
            if n % 2:
                buf[at] |= (v << 4) & 0xF0
                buf[at + 1] = v >> 4
            else:
                buf[at] = v & 0xFF
                buf[at + 1] |= v >> 8
        raw = bytes(buf)
    return raw.ljust(length, b"\0")


def _new_geometry(lay: Geometry, bits: int, total: int) -> tuple[int, int]:
    """(sectors per FAT, clusters) for ``total`` sectors, FATs growing in whole clusters."""
    step = lay.cluster_sectors // gcd(lay.cluster_sectors, lay.fats)
    fat = lay.fat_sectors
    while True:
        data = lay.reserved + lay.fats * fat + lay.root_sectors
        clusters = min(MAX_CLUSTERS[bits], max(0, total - data) // lay.cluster_sectors)
        if fat * lay.sector * 8 // bits >= clusters + 2:
            return fat, clusters
        fat += step


def grow_fat(device: Device, offset: int, size: int) -> str:
    """Grow the FAT filesystem at ``offset`` of ``device`` to up to ``size`` bytes."""
    boot = c_fat.fat_boot_sector(device.read_at(offset, 512))
    lay = geometry(boot)
    bits, ss, spc = lay.bits, lay.sector, lay.cluster_sectors
    fs = f"fat{bits}"
    cluster_bytes = ss * spc
    new_fat, clusters = _new_geometry(lay, bits, size // ss)
    if clusters <= lay.clusters:
        why = f"{fs} addresses at most {MAX_CLUSTERS[bits]} clusters" if bits != 32 else ""
        return f"{fs} filesystem kept at {lay.total_sectors * ss} bytes" + (
            f" ({why} of {cluster_bytes} bytes)" if why else " (no room for another cluster)"
        )
    k = lay.fats * (new_fat - lay.fat_sectors) // spc
    old_data = offset + lay.data_start * ss
    sector = device.read_at(offset, ss)
    fat_at = offset + (lay.reserved + lay.active_fat * lay.fat_sectors) * ss
    old = _read_fat(device.read_at(fat_at, lay.fat_sectors * ss), bits, lay.clusters + 2)
    mask = ENTRY_MASK[bits]
    bad = mask - 8  # 0xFF7, 0xFFF7, 0x0FFFFFF7
    last_old = lay.clusters + 1

    # where each old cluster goes: c - k, or (the first k) a free cluster
    moved: dict[int, int] = {}
    free = (n for n in range(2, clusters + 2) if n + k > last_old or old[n + k] == 0)
    for c in range(2, min(k + 2, last_old + 1)):
        if old[c] and old[c] != bad:
            target = next(free, None)
            if target is None:
                raise FilesystemError(
                    "too few free clusters to make room for larger FATs",
                    fs=fs,
                    where=f"at byte {offset}",
                )
            moved[c] = target

    def new_number(c: int) -> int:
        return moved.get(c, c - k)

    def is_link(v: int) -> bool:
        return 2 <= v <= last_old

    for c, target in moved.items():
        data = device.read_at(old_data + (c - 2) * cluster_bytes, cluster_bytes)
        device.write_at(old_data + (target + k - 2) * cluster_bytes, data)

    entries = array("I" if bits == 32 else "H", bytes((4 if bits == 32 else 2) * (clusters + 2)))
    entries[0], entries[1] = old[0], old[1]
    for c in range(2, last_old + 1):
        v = old[c]
        if not v or (c < k + 2 and c not in moved):
            continue
        entries[new_number(c)] = new_number(v) if is_link(v) else v

    def chain(first: int) -> list[int]:
        seen: list[int] = []
        c = first
        while is_link(c) and c not in seen:
            seen.append(c)
            c = old[c]
        return seen

    def remap(buf: bytearray) -> list[int]:
        """Rewrite the cluster numbers of one directory's entries; its subdirectories."""
        subdirs = []
        for at in range(0, len(buf) - DIR_ENTRY_SIZE + 1, DIR_ENTRY_SIZE):
            entry = c_fat.fat_dir_entry(bytes(buf[at : at + DIR_ENTRY_SIZE]))
            name, attr = bytes(entry.DIR_Name), entry.DIR_Attr
            if name[0] == 0:
                break
            if name[0] == DELETED or attr == ATTR_LFN or attr & ATTR_VOLUME:
                continue
            hi = entry.DIR_FstClusHI if bits == 32 else 0
            c = hi << 16 | entry.DIR_FstClusLO
            if not is_link(c):
                continue
            n = new_number(c)
            if bits == 32:
                entry.DIR_FstClusHI = n >> 16
            entry.DIR_FstClusLO = n & 0xFFFF
            buf[at : at + DIR_ENTRY_SIZE] = entry.dumps()
            if attr & ATTR_DIRECTORY and name[:2] not in (b". ", b".."):
                subdirs.append(c)
        return subdirs

    def walk_clusters(first: int, visited: set[int]) -> None:
        if first in visited:
            return
        visited.add(first)
        for c in chain(first):
            at = old_data + (new_number(c) + k - 2) * cluster_bytes
            buf = bytearray(device.read_at(at, cluster_bytes))
            for sub in remap(buf):
                walk_clusters(sub, visited)
            device.write_at(at, bytes(buf))

    new_root_at = offset + (lay.reserved + lay.fats * new_fat) * ss
    visited: set[int] = set()
    if bits == 32:
        root = int(boot.fat32.BPB_RootClus)
        walk_clusters(root, visited)
        boot.fat32.BPB_RootClus = new_number(root)
    else:
        root_dir = bytearray(
            device.read_at(old_data - lay.root_sectors * ss, lay.root_sectors * ss)
        )
        subdirs = remap(root_dir)
        device.write_at(new_root_at, bytes(root_dir))
        for sub in subdirs:
            walk_clusters(sub, visited)

    table = _pack_fat(entries, bits, new_fat * ss)
    for n in range(lay.fats):
        device.write_at(offset + (lay.reserved + n * new_fat) * ss, table)

    total = lay.reserved + lay.fats * new_fat + lay.root_sectors + clusters * spc
    total = max(total, size // ss) if clusters < MAX_CLUSTERS[bits] else total
    _write_boot(device, offset, sector, boot, bits, new_fat, total)
    if bits == 32:
        free_count = entries[2:].count(0)
        first_free = next((n for n in range(2, clusters + 2) if not entries[n]), 0xFFFF_FFFF)
        fsinfo = int(boot.fat32.BPB_FSInfo)
        backup = int(boot.fat32.BPB_BkBootSec)
        for at in [fsinfo, backup + fsinfo] if backup else [fsinfo]:
            info = c_fat.fat_fsinfo(device.read_at(offset + at * ss, len(c_fat.fat_fsinfo)))
            info.FSI_Free_Count, info.FSI_Nxt_Free = free_count, first_free
            device.write_at(offset + at * ss, info.dumps())
    capped = ""
    if clusters == MAX_CLUSTERS[bits] and total < size // ss:
        capped = f" ({fs} addresses at most {clusters} clusters of {cluster_bytes} bytes)"
    return f"{fs} filesystem grown to {total * ss} bytes{capped}"


def _write_boot(
    device: Device, offset: int, sector: bytes, boot: Any, bits: int, fat_sectors: int, total: int
) -> None:
    """The boot sector (and FAT32's backup) with the new size and FAT size."""
    bpb = boot.bpb
    if total < 0x10000 and bits != 32:
        bpb.BPB_TotSec16, bpb.BPB_TotSec32 = total, 0
    else:
        bpb.BPB_TotSec16, bpb.BPB_TotSec32 = 0, total
    if bits == 32:
        boot.fat32.BPB_FATSz32 = fat_sectors
    else:
        bpb.BPB_FATSz16 = fat_sectors
    raw = bytearray(sector)  # a sector larger than 512 bytes keeps its tail
    head = boot.dumps()
    raw[: len(head)] = head
    device.write_at(offset, bytes(raw))
    if bits == 32 and boot.fat32.BPB_BkBootSec:
        device.write_at(offset + int(boot.fat32.BPB_BkBootSec) * len(raw), bytes(raw))
