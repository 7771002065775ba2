"""A disk's layout: its table, its partitions with their used maps, its boot areas.

The layout is what a backup images and what ``inspect`` shows. A disk without a
partition table is one partition, number 1, spanning the whole disk.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from blockvault.disk.device import Device, Reader, Region, SourceDisk, open_device
from blockvault.disk.fs import FilesystemInfo, md
from blockvault.disk.fs.probe import known, probe, raw
from blockvault.disk.table import Partition, PartitionTable, mbr
from blockvault.disk.table.gpt import SECTOR_SIZES, detect_sector_size
from blockvault.disk.table.probe import read_table
from blockvault.disk.volumes.luks import KeySource
from blockvault.errors import FilesystemError, PartitionTableError, SourceError, UsageError
from blockvault.extents import ExtentMap

__all__ = [
    "DiskLayout",
    "LuksKeys",
    "PartitionLayout",
    "read_layout",
    "refuse_plain_file",
    "refuse_plain_path",
    "select_volumes",
]

# LUKS passphrases or key file contents by partition number (None: every partition), or
# a function asked for partition N's key only when N holds a LUKS container (a prompt)
LuksKeys = Mapping[int | None, bytes] | Callable[[int], bytes | None]

BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"  # GRUB's core image on GPT disks
BIOS_BOOT_NOTE = "BIOS boot partition (boot loader code), imaged raw"
DAMAGED = "; imaged raw"  # ends the note of a filesystem whose structures failed to read


@dataclass(frozen=True)
class PartitionLayout:
    partition: Partition
    fs: FilesystemInfo

    @property
    def number(self) -> int:
        return self.partition.number


@dataclass(frozen=True)
class DiskLayout:
    path: str
    size: int
    sector_size: int
    table: PartitionTable | None
    partitions: tuple[PartitionLayout, ...]
    boot_areas: ExtentMap  # disk-relative; always imaged raw (zero chunks skipped)
    warnings: tuple[str, ...] = ()

    @property
    def table_kind(self) -> str:
        return self.table.kind if self.table else "none"

    def partition(self, number: int) -> PartitionLayout | None:
        return next((p for p in self.partitions if p.number == number), None)

    @property
    def used_bytes(self) -> int:
        return self.boot_areas.total + sum(p.fs.used_bytes for p in self.partitions)


def sector_size_of(device: SourceDisk) -> int:
    """The logical sector size the disk's table is written in.

    A block device says; an image file does not. A GPT header tells by where it lies;
    an MBR does not, so each size is tried and the one under which more partitions
    start with a known filesystem wins (512 on a tie).
    """
    if device.is_block:
        return device.logical_sector_size
    gpt_size = detect_sector_size(device)
    if gpt_size:
        return gpt_size
    scores = {}
    for size in SECTOR_SIZES:
        table = mbr.parse(device, size)
        parts = table.data_partitions if table else ()
        scores[size] = sum(
            1 for p in parts if p.end <= device.size and known(Region(device, p.start, p.size))
        )
    return max(SECTOR_SIZES, key=lambda size: (scores[size], -size))


def read_layout(device: SourceDisk, luks_keys: LuksKeys | None = None) -> DiskLayout:
    sector_size = sector_size_of(device)
    try:
        table = read_table(device, sector_size)
    except PartitionTableError as exc:
        raise SourceError(
            f"{exc.fields['detail']}: the disk or image is truncated or its table damaged",
            path=device.path,
        ) from None
    warnings: list[str] = []
    parts: tuple[Partition, ...]
    if table is None:
        whole = Partition(number=1, start=0, size=device.size, type="", kind="whole")
        parts = (whole,)
    else:
        parts = table.data_partitions
        for p in parts:
            if p.end > device.size:
                raise_truncated(device, p)
    layouts = []
    for part in parts:
        info = probe_partition(device, part, _key_source(luks_keys, part.number))
        if info.type == "raw" and info.note != BIOS_BOOT_NOTE:  # boot code is expected raw
            warnings.append(
                f"partition {part.number}: {info.note or 'unknown content, imaged raw'} "
                "(all-zero chunks skipped)"
            )
        warnings.extend(
            f"partition {part.number}, {v.name}: {v.note}" for v in info.volumes if v.note
        )
        layouts.append(PartitionLayout(part, info))
    warnings.extend(_same_array_notes(layouts))
    covered = ExtentMap((p.start, p.size) for p in parts)
    boot = ExtentMap.span(0, device.size) - covered
    return DiskLayout(
        str(device.path), device.size, sector_size, table, tuple(layouts), boot, tuple(warnings)
    )


def _same_array_notes(layouts: list[PartitionLayout]) -> list[str]:
    """Members of one md array on this disk hold the same data: say so, never image
    them twice silently (each is imaged raw; their equal chunks are stored once)."""
    arrays: dict[str, list[int]] = {}
    for p in layouts:
        if p.fs.uuid and (p.fs.note or "").startswith(md.NOTE_PREFIX):
            arrays.setdefault(p.fs.uuid, []).append(p.number)
    return [
        f"partitions {', '.join(map(str, numbers))} are members of the same md array "
        f"{array}: each is imaged raw and the data they share is stored once"
        for array, numbers in arrays.items()
        if len(numbers) > 1
    ]


def refuse_plain_file(device: Device, layout: DiskLayout) -> None:
    """Refuse a regular file with neither a partition table nor a filesystem (a text
    file, an archive) as a disk source: imaging it raw is rarely what was meant.
    Block devices are disks whatever they hold."""
    if device.is_block or layout.table is not None or device.size == 0:
        return
    if all(p.fs.type == "raw" for p in layout.partitions):
        # a signature whose structures failed to read: name that, not "no filesystem"
        notes = [p.fs.note or "" for p in layout.partitions]
        damaged = [note for note in notes if note.endswith(DAMAGED)]
        if damaged:
            raise SourceError(
                f"holds a damaged filesystem ({damaged[0].removesuffix(DAMAGED)}); "
                "pass --raw to copy it as raw bytes anyway",
                path=device.path,
            )
        raise SourceError(
            "is a regular file with neither a partition table nor a filesystem, so it "
            "does not look like a disk image; pass --raw to copy it as raw bytes anyway",
            path=device.path,
        )


def refuse_plain_path(path: str) -> None:
    """``refuse_plain_file`` for a path (a block device is never refused)."""
    with open_device(path) as device:
        if not device.is_block:
            refuse_plain_file(device, read_layout(device))


def _key_source(keys: LuksKeys | None, number: int) -> KeySource:
    if callable(keys):
        return functools.partial(keys, number)
    return None if keys is None else keys.get(number, keys.get(None))


def probe_partition(reader: Reader, part: Partition, luks_key: KeySource = None) -> FilesystemInfo:
    """The filesystem of one partition; a damaged one is imaged raw (the caller warns).
    A LUKS key that opens no key slot raises ``LuksKeyRejected``."""
    region = Region(reader, part.start, part.size)
    if part.type == BIOS_BOOT_GUID:
        return raw(region, note=BIOS_BOOT_NOTE)
    try:
        return probe(region, luks_key, f"partition {part.number}")
    except FilesystemError as exc:
        return raw(region, note=f"{exc}{DAMAGED}")


def raise_truncated(device: SourceDisk, part: Partition) -> None:
    raise SourceError(
        f"partition {part.number} ends at byte {part.end} but the disk has only "
        f"{device.size} bytes: the image is truncated",
        path=device.path,
    )


def _line(name: str, parent: Mapping[str, str]) -> set[str]:
    """``name`` and every volume it lies in (a loop in hostile records ends it)."""
    seen: set[str] = set()
    while name and name not in seen:
        seen.add(name)
        name = parent.get(name, "")
    return seen


NOT_CHOSEN = "not imaged: the backup chose other logical volumes"


def select_volumes(layout: DiskLayout, names: Sequence[str]) -> tuple[DiskLayout, list[int]]:
    """``layout`` narrowed to the logical volumes ``names`` (``VG/LV``), and the numbers
    of the partitions holding them. In those partitions the other LVs' used bytes are
    dropped (their records say so); the layers' metadata and the chosen LVs stay."""
    wanted = set(names)
    found: set[str] = set()
    numbers: list[int] = []
    partitions = []
    for p in layout.partitions:
        chosen = wanted & {v.name for v in p.fs.volumes if v.kind == "lvm2-lv"}
        if not chosen:
            partitions.append(p)
            continue
        found |= chosen
        numbers.append(p.number)
        parent = {v.name: v.parent for v in p.fs.volumes}
        keep = set().union(*(_line(n, parent) for n in chosen))
        kept = [v for v in p.fs.volumes if v.name in keep or _line(v.name, parent) & chosen]
        dropped = [v for v in p.fs.volumes if v not in kept]
        used = p.fs.used
        for v in dropped:
            if v.kind == "lvm2-lv":
                used = used.subtract(v.used_out)
        volumes = tuple(v if v in kept else replace(v, note=NOT_CHOSEN) for v in p.fs.volumes)
        partitions.append(replace(p, fs=replace(p.fs, used=used, volumes=volumes)))
    missing = sorted(wanted - found)
    if missing:
        have = [v.name for p in layout.partitions for v in p.fs.volumes if v.kind == "lvm2-lv"]
        raise UsageError(
            f"{layout.path} has no logical volume {', '.join(missing)} "
            f"(it has {', '.join(have) or 'none'}); name one as VG/LV"
        )
    return replace(layout, partitions=tuple(partitions)), numbers
