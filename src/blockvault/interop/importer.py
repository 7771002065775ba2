"""Another tool's disk image becomes an ordinary disk snapshot, through backup's stages.

A directory layout (Clonezilla, Rescuezilla, FOG: ``interop/image_dirs.py``) is read
into a ``ForeignDisk``: the ``sfdisk -d`` dump of its table, the boot-area bytes it
kept verbatim (``-mbr``, ``-hidden-data-after-mbr``, ``-gpt-1st``/``-2nd``), and one
payload per partition (a partclone image, a raw dd stream, or a swap area's UUID and
label). Then:

1. The table is rebuilt by ``sfdisk`` on a *sparse* scratch file of the disk's size
   (it holds only the table; no partition data is ever written to disk), and the
   verbatim boot-area bytes are laid over it. We do not write a table builder from
   the dump: sfdisk wrote that dump and reads it back exactly (GPT's backup copy
   included, which Clonezilla does not always keep), and the tool's own copies, laid
   over it, keep every byte it saved. The scratch file is then read like any disk:
   ``read_layout`` parses the table with our own code, and the boot areas are
   imaged by ``device_units`` as a disk backup images them.
2. Each partition's payload streams through the partclone reader into
   ``stream_units``; its used map is the image's bitmap.
3. ``store_regions`` hashes, deduplicates, compresses and stores, inside one writer
   session; the filesystem type is then probed from the stored blocks (so ``ls``,
   ``mount`` and shrinking know it), and the snapshot is committed.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

from blockvault.disk.device import Device, open_device
from blockvault.disk.fs import FilesystemInfo
from blockvault.disk.fs.c_swap import MAGICS, c_swap_le
from blockvault.disk.fs.probe import probe
from blockvault.disk.layout import DiskLayout, PartitionLayout, read_layout
from blockvault.errors import FilesystemError, ImageDamaged, SourceError
from blockvault.events import Noted, Reporter, Warned
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.interop.c_partclone import MAGIC
from blockvault.interop.partclone import PartcloneImage
from blockvault.interop.payload import Payload, pieces_of
from blockvault.pipeline.backup import (
    Unit,
    boot_area_map,
    chunk_tasks,
    device_units,
    plan_regions,
    store_regions,
    stream_units,
)
from blockvault.repo import Index, PartitionRecord, Region, Repository, Snapshot
from blockvault.repo import format as fmt
from blockvault.repo.image import RegionReader
from blockvault.repo.sessions import DEFAULT_TIMING, Timing
from blockvault.repo.writer import WriterSession
from blockvault.text import plural

__all__ = ["ForeignDisk", "ForeignPartition", "import_disk", "partclone_disk", "swap_header"]

SWAP_PAGE: Final = 4096  # the page size of the machines these tools run on (x86)
MAX_DISK_SIZE: Final = 1 << 50  # 1 PiB: a dump claiming more is hostile or damaged
MAX_RAW_AREA: Final = 1024 * 1024 * 1024  # Clonezilla keeps at most 1 GiB after the MBR


@dataclass(frozen=True)
class ForeignPartition:
    """What another tool saved of one partition: a payload, or a swap area's identity."""

    name: str  # the tool's device name: "sda1", "nvme0n1p2", "d1p1"
    start_sector: int  # where the table dump puts it
    payload: Path | None = None  # first piece of a partclone image or a raw stream
    payload_kind: str = "partclone"  # "partclone" | "raw" | "dd" (either: by magic)
    filesystem: str = ""  # what the tool recorded ("ext4", "vfat", "swap", ...)
    swap_uuid: str | None = None  # a swap area to recreate: its UUID and label
    swap_label: str | None = None
    pieces: tuple[Path, ...] = ()  # the payload's files when not named .aa, .ab, ...


@dataclass(frozen=True)
class ForeignDisk:
    """One disk of another tool's image, as the importer needs it."""

    tool: str  # "clonezilla", "rescuezilla", "fog", ...
    image: Path  # the directory (or file) imported, for messages
    name: str  # the tool's name for the disk: "sda"
    table_dump: str  # ``sfdisk -d`` output
    size: int  # bytes
    sector_size: int
    # (disk offset, file or bytes): the disk's bytes as the tool kept them
    raw_areas: tuple[tuple[int, Path | bytes], ...] = ()
    partitions: tuple[ForeignPartition, ...] = ()
    image_id: str = ""  # the tool's identity of the image (Clonezilla's IMG_ID)
    checksums: dict[str, tuple[str, str]] = field(default_factory=dict)  # file -> (algo, hex)
    notes: tuple[str, ...] = ()


def swap_header(size: int, uuid_text: str | None, label: str | None) -> bytes:
    """The first page of a swap area as ``mkswap -U UUID -L LABEL`` writes it."""
    header = c_swap_le.swap_info()
    header.version = 1
    header.last_page = size // SWAP_PAGE - 1
    header.nr_badpages = 0
    header.sws_uuid = list(uuid.UUID(uuid_text).bytes if uuid_text else bytes(16))
    header.sws_volume = (label or "").encode()[:16]
    page = bytearray(SWAP_PAGE)
    raw = header.dumps()
    page[: len(raw)] = raw
    page[-len(MAGICS[0]) :] = MAGICS[0]
    return bytes(page)


def partclone_disk(path: Path) -> ForeignDisk:
    """A bare partclone image (or the first of its pieces) as a disk without a table:
    one partition, number 1, as large as the device it was made of."""
    with Payload(pieces_of(path), path.name) as payload:
        header = PartcloneImage(payload).header
    return ForeignDisk(
        tool="partclone",
        image=path,
        name=path.name.partition(".")[0] or "image",
        table_dump="",
        size=header.device_size,
        sector_size=512,
        partitions=(ForeignPartition(path.name, 0, path, "partclone", header.filesystem),),
    )


def import_disk(
    repo: Repository,
    disk: ForeignDisk,
    *,
    tags: Sequence[str] = (),
    reporter: Reporter = quiet_reporter,
    timing: Timing = DEFAULT_TIMING,
) -> Snapshot:
    """Store ``disk`` in ``repo`` as one disk snapshot; returns it committed."""
    started = time.monotonic()
    for note in disk.notes:
        reporter(Noted(note))
    with tempfile.TemporaryDirectory(prefix="blockvault-import-") as scratch_dir:
        scratch = Path(scratch_dir) / "table"
        _write_boot_areas(disk, scratch)
        with open_device(scratch) as device:
            layout = read_layout(device)
            by_start = {p.partition.start: p.number for p in layout.partitions}
            sources: dict[int, ForeignPartition] = {}
            for part in disk.partitions:
                number = by_start.get(part.start_sector * disk.sector_size)
                if number is None:
                    raise SourceError(
                        f"{part.name} starts at sector {part.start_sector}, where the "
                        f"partition table of {disk.name} has no partition",
                        path=str(disk.image),
                    )
                sources[number] = part
            with contextlib.ExitStack() as stack:
                streams = {
                    n: stack.enter_context(_open_stream(disk, part, layout.partition(n)))
                    for n, part in sorted(sources.items())
                }
                regions = [
                    r if r.kind == fmt.REGION_DISK else replace(r, used=streams[r.number].used)
                    for r in plan_regions(layout, None)
                    if r.kind == fmt.REGION_DISK or r.number in streams
                ]
                draft = _manifest(repo, disk, layout, regions, tags)
                with WriterSession(repo, kind="import", timing=timing) as writer:
                    writer.choose_parent(draft)
                    units = _units(device, layout, regions, streams, repo.config.chunk_size)
                    index, stats = store_regions(
                        writer, regions, units, reporter, str(disk.image), task_name="import"
                    )
                    repo.flush()  # so the filesystems can be probed from the stored blocks
                    records = _probed(repo, index, draft.partitions, sources, reporter)
                    stats = replace(stats, seconds=round(time.monotonic() - started, 3))
                    snapshot = replace(draft, partitions=records, stats=stats, time=_now())

                    def store_again(missing: set[str]) -> None:
                        # the payload was read once, forward: it cannot be read again here
                        raise SourceError(
                            f"a gc removed {plural(len(missing), 'chunk')} this import had "
                            "found in the repository while it ran; nothing was committed: "
                            "import again",
                            path=str(disk.image),
                        )

                    return writer.commit(snapshot, index, store_again)


def _write_boot_areas(disk: ForeignDisk, scratch: Path) -> None:
    """The sparse scratch disk: the table from the dump, then the verbatim areas."""
    if not 0 < disk.size <= MAX_DISK_SIZE:
        raise SourceError(f"a disk of {disk.size} bytes is out of range", path=str(disk.image))
    try:
        with scratch.open("wb") as out:
            out.truncate(disk.size)  # a hole: only the table and boot areas are written
    except OSError as exc:
        raise SourceError(
            f"a sparse scratch file of {disk.size} bytes for its partition table cannot be "
            f"made in {scratch.parent.parent} ({exc.strerror}); set TMPDIR to another "
            "filesystem",
            path=str(disk.image),
        ) from None
    if disk.table_dump.strip() and disk.sector_size == 512:
        _run_sfdisk(disk, scratch)
    # sfdisk (2.38) treats a file as 512-byte sectors: a disk of larger sectors keeps
    # only the tool's verbatim copies of its table (Clonezilla saves them)
    with scratch.open("r+b") as out:
        for offset, area in disk.raw_areas:
            length = len(area) if isinstance(area, bytes) else area.stat().st_size
            name = "the saved boot area" if isinstance(area, bytes) else area.name
            if length > MAX_RAW_AREA or offset + length > disk.size:
                raise ImageDamaged(
                    f"{name} holds {length} bytes for byte {offset} of a {disk.size}-byte disk",
                    image=str(disk.image),
                )
            out.seek(offset)
            if isinstance(area, bytes):
                out.write(area)
                continue
            with area.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)


def _run_sfdisk(disk: ForeignDisk, scratch: Path) -> None:
    # the dump names the tool's device (device: /dev/sda): sfdisk ignores it for a file
    dump = "\n".join(
        line for line in disk.table_dump.splitlines() if not line.startswith("device:")
    )
    command = [
        "sfdisk",
        "--no-reread",
        "--no-tell-kernel",
        "--quiet",
        "--wipe=never",
        str(scratch),
    ]
    try:
        done = subprocess.run(command, input=dump + "\n", capture_output=True, text=True)
    except FileNotFoundError:
        raise SourceError(
            "sfdisk (util-linux) is needed to read the partition table dump: install it",
            path=str(disk.image),
        ) from None
    if done.returncode:
        detail = " ".join(done.stderr.split())[:300]
        raise ImageDamaged(
            f"the partition table dump of {disk.name} is refused by sfdisk: {detail}",
            image=str(disk.image),
        )


class _Stream(Protocol):
    """A partition's content read forward: its used map, then its used bytes in order."""

    used: ExtentMap

    def runs(self) -> Iterator[tuple[int, memoryview]]: ...


class _RawStream:
    """A raw dd image of the partition: every byte counts (zero chunks become holes)."""

    def __init__(self, payload: Payload, size: int) -> None:
        self.payload = payload
        self.used = ExtentMap.span(0, size)

    def runs(self) -> Iterator[tuple[int, memoryview]]:
        size, step = self.used.total, 4 * 1024 * 1024
        for offset in range(0, size, step):
            data = memoryview(bytearray(min(step, size - offset)))
            self.payload.readinto(data)
            yield offset, data
        if not self.payload.at_end():
            raise self.payload.damaged(f"the raw image is longer than the {size}-byte partition")


class _SwapArea:
    """A swap area the tool did not save but described: its header is made anew."""

    def __init__(self, size: int, uuid_text: str | None, label: str | None) -> None:
        self.header = swap_header(size, uuid_text, label)
        self.used = ExtentMap.span(0, len(self.header))

    def runs(self) -> Iterator[tuple[int, memoryview]]:
        yield 0, memoryview(self.header)


class _NtfsBackupBoot:
    """An NTFS partclone image with the backup boot sector put back.

    NTFS keeps a copy of its boot sector in the sector after the volume (mkntfs makes
    the volume one sector shorter than the partition). partclone.ntfs images whole
    clusters of the volume only, so that sector (and the partial cluster before it) is
    in no image; without it the restored volume has no backup boot sector. It is the
    boot sector's copy by definition, so it is made from the boot sector, which is the
    image's first block (read ahead, not consumed)."""

    def __init__(self, image: PartcloneImage, offset: int, boot: bytes) -> None:
        self.image = image
        self.offset = offset
        self.boot = boot
        self.used = image.used | ExtentMap.span(offset, len(boot))

    @classmethod
    def around(cls, image: PartcloneImage, size: int) -> _NtfsBackupBoot | None:
        h = image.header
        if h.filesystem != "ntfs" or not image.used or image.used.start != 0:
            return None
        boot = image.payload.peek(512)
        sector = int.from_bytes(boot[11:13], "little")
        if len(boot) < 512 or boot[3:11] != b"NTFS    " or sector != 512:
            return None
        offset = int.from_bytes(boot[40:48], "little") * sector
        covered = h.total_blocks * h.block_size
        if not covered <= offset <= size - sector:
            return None
        return cls(image, offset, boot)

    def runs(self) -> Iterator[tuple[int, memoryview]]:
        yield from self.image.runs()
        yield self.offset, memoryview(self.boot)


@contextlib.contextmanager
def _open_stream(
    disk: ForeignDisk, part: ForeignPartition, layout: PartitionLayout | None
) -> Iterator[_Stream]:
    assert layout is not None  # numbers come from the layout
    size = layout.partition.size
    if part.payload is None:
        yield _SwapArea(size, part.swap_uuid, part.swap_label)
        return
    pieces = list(part.pieces) or pieces_of(part.payload)
    with Payload(pieces, part.payload.name, disk.checksums) as payload:
        plain = part.payload_kind == "raw" or (
            part.payload_kind == "dd" and payload.peek(len(MAGIC)) != MAGIC
        )
        if plain:
            yield _RawStream(payload, size)
        else:
            image = PartcloneImage(payload, limit=size)
            yield _NtfsBackupBoot.around(image, size) or image


def _units(
    device: Device,
    layout: DiskLayout,
    regions: list[Region],
    streams: dict[int, _Stream],
    chunk_size: int,
) -> Iterator[Unit]:
    """The boot areas read from the scratch disk on the workers, then each partition's
    stream, filled here in order."""
    tasks = chunk_tasks(regions, chunk_size, boot_area_map(layout))
    for number, group in itertools.groupby(tasks, key=lambda t: t.region):
        region = regions[number]
        if region.kind == fmt.REGION_DISK:
            yield from device_units(device, group)
        else:
            yield from stream_units(group, streams[region.number].runs())


def _manifest(
    repo: Repository,
    disk: ForeignDisk,
    layout: DiskLayout,
    regions: list[Region],
    tags: Sequence[str],
) -> Snapshot:
    """The snapshot record before storing (partitions' filesystems are probed after)."""
    imaged = {r.number: r for r in regions if r.kind == fmt.REGION_PARTITION}
    origin = disk.image_id[:32] or disk.image.name
    return Snapshot(
        time=_now(),
        host=socket.gethostname(),
        source=f"{disk.tool}:{disk.image}/{disk.name}",
        disk_size=layout.size,
        sector_size=layout.sector_size,
        table=layout.table_kind,
        disk_id=layout.table.disk_id if layout.table else "",
        partitions=tuple(
            PartitionRecord(
                number=p.number,
                start=p.partition.start,
                size=p.partition.size,
                type=p.partition.type,
                filesystem="",
                used_bytes=imaged[p.number].used.total if p.number in imaged else 0,
                imaged=p.number in imaged,
                name=p.partition.name,
            )
            for p in layout.partitions
        ),
        index="",
        chunk_size=repo.config.chunk_size,
        compression=f"zstd:{repo.codec.level}" if repo.codec.level else "none",
        tags=tuple(tags),
        source_id=f"{disk.tool}:{origin}:{disk.name}",
    )


def _probed(
    repo: Repository,
    index: Index,
    records: tuple[PartitionRecord, ...],
    sources: dict[int, ForeignPartition],
    reporter: Reporter,
) -> tuple[PartitionRecord, ...]:
    """Each imaged partition's filesystem, label and UUID, read from the stored blocks
    as a backup reads them from a disk; the tool's own word where they cannot be read."""
    out = []
    for record in records:
        region = index.region(fmt.REGION_PARTITION, record.number)
        if region is None:
            out.append(record)
            continue
        said = _family(sources[record.number].filesystem)
        try:
            info: FilesystemInfo | None = probe(RegionReader(repo, region, index.chunk_size))
        except FilesystemError as exc:
            info = None
            reporter(Warned(f"partition {record.number}: {exc}; recorded as {said or 'raw'}"))
        if info is None or info.type == "raw":
            out.append(replace(record, filesystem=said or "raw"))
        else:
            out.append(replace(record, filesystem=info.type, label=info.label, uuid=info.uuid))
    return tuple(out)


_FAMILIES: Final = {
    "vfat": "fat32",
    "fat": "fat32",
    "linux-swap": "swap",
    **{n: n for n in ("ext2", "ext3", "ext4", "fat12", "fat16", "fat32", "ntfs", "swap")},
}


def _family(tool_name: str) -> str:
    """A tool's filesystem name in blockvault's words ("vfat" -> "fat32"), or ""."""
    return _FAMILIES.get(tool_name.lower(), "")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
