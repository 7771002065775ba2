"""Back up a disk (or chosen partitions) into a repository.

Plan: read the layout, turn the boot areas and each chosen partition into a
region with a used map, cut each region into fixed chunks aligned to its start,
then on a thread pool read, hash, deduplicate, compress and store each chunk.
The index and the manifest are written last (the commit point).

``store_regions`` is the part every source shares: it takes the regions and their
chunks as ``Unit``s, each knowing how to get its bytes. A disk's units read them on
the worker (``device_units``: positional reads run in parallel); a stream that can
only be read forward (another tool's image, interop/) fills them in order on the
calling thread (``stream_units``) and the workers hash, compress and store.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import NamedTuple

from blockvault.disk.device import SourceDisk
from blockvault.disk.identity import source_identity
from blockvault.disk.layout import DiskLayout, LuksKeys, read_layout, select_volumes
from blockvault.disk.live import LiveRead, live_source
from blockvault.disk.table.gpt import backup_area
from blockvault.disk.volumes import Volume
from blockvault.errors import SourceError, UsageError
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted, Warned
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.pipeline.parent import NO_PARENT, ParentChunks
from blockvault.pipeline.stages import is_zero, ordered_map, read_chunk, workers
from blockvault.repo import (
    Index,
    PartitionRecord,
    Region,
    Repository,
    Snapshot,
    Stats,
    VolumeRecord,
)
from blockvault.repo import format as fmt
from blockvault.repo.sessions import DEFAULT_TIMING, Timing
from blockvault.repo.writer import WriterSession
from blockvault.text import plural

__all__ = [
    "ChunkTask",
    "Unit",
    "backup",
    "boot_area_map",
    "chunk_tasks",
    "device_units",
    "plan_regions",
    "store_regions",
    "stream_units",
]

BOOT_BLOCK = 4096  # granularity at which non-zero bytes outside partitions are kept
GAP_KEPT = 1024 * 1024  # the gap before the first partition is kept whole up to here
# bytes of consecutive chunks read at once (see _read_units); on the benchmark disk,
# cold, 16 MiB spent less system time than 4 or 8 (32 MiB reads are mmap'ed afresh each)
READ_UNIT = 16 * 1024 * 1024
MAX_REREADS = 3  # --live=unsafe-reread: passes after the first before giving up on agreement


class ChunkTask(NamedTuple):  # a tuple: some 30,000 are made per 2 GB backed up
    region: int  # position in the region list
    number: int  # chunk number within the region
    base: int  # region start on the disk
    offset: int  # region-relative
    length: int
    used: ExtentMap  # region-relative, clipped to this chunk
    refine: ExtentMap | None  # for boot areas: bytes kept even when zero


class Unit(NamedTuple):
    """Consecutive chunks of one region and how to get their bytes (run on a worker):
    ``load()`` returns the bytes from the first task's offset to the last one's end."""

    tasks: list[ChunkTask]
    load: Callable[[], bytearray | memoryview]


class _Done(NamedTuple):
    task: ChunkTask
    chunk_id: bytes
    used: ExtentMap
    stored: int  # bytes written to the repository (0 when deduplicated)
    new_bytes: int


def boot_area_map(layout: DiskLayout) -> ExtentMap:
    """Boot-area bytes always kept, zero or not: the table structures and the first gap."""
    keep = ExtentMap()
    if layout.partitions:
        first = min(p.partition.start for p in layout.partitions)
        keep = keep | ExtentMap.span(0, min(first, GAP_KEPT))
    table = layout.table
    if table is not None and table.kind == "gpt":
        keep = keep | ExtentMap.span(0, table.first_usable_lba * table.sector_size)
        offset, length = backup_area(table, layout.size)
        keep = keep | ExtentMap.span(offset, length)
    return keep & layout.boot_areas


def plan_regions(layout: DiskLayout, partitions: Sequence[int] | None) -> list[Region]:
    """The regions to image (ids not filled in yet): boot areas, then each partition."""
    if partitions:
        known = {p.number for p in layout.partitions}
        missing = sorted(set(partitions) - known)
        if missing:
            raise UsageError(
                f"{layout.path} has no partition {', '.join(map(str, missing))} "
                f"(it has {', '.join(str(n) for n in sorted(known)) or 'none'})"
            )
    regions = [Region(fmt.REGION_DISK, 0, 0, layout.size, layout.boot_areas, ())]
    for p in layout.partitions:
        if partitions and p.number not in partitions:
            continue
        part = p.partition
        regions.append(Region(fmt.REGION_PARTITION, p.number, part.start, part.size, p.fs.used, ()))
    return regions


def _touched(used: ExtentMap, chunk_size: int) -> Iterator[int]:
    """Numbers of the chunks that hold a used byte, in order: the rest are holes
    and never enter the pipeline (half of a typical disk)."""
    last = -1
    for extent in used:
        for k in range(max(last + 1, extent.offset // chunk_size), -(-extent.end // chunk_size)):
            yield k
            last = k


def chunk_tasks(regions: list[Region], chunk_size: int, keep: ExtentMap) -> Iterator[ChunkTask]:
    """Every chunk of ``regions`` that holds a used byte, in order (``keep``: the
    disk-relative boot-area bytes kept even when zero)."""
    for i, region in enumerate(regions):
        for k in _touched(region.used, chunk_size):
            offset = k * chunk_size
            length = min(chunk_size, region.size - offset)
            refine = keep.clip(offset, length) if region.kind == fmt.REGION_DISK else None
            yield ChunkTask(
                i, k, region.start, offset, length, region.used.clip(offset, length), refine
            )


def _read_units(tasks: Iterable[ChunkTask], unit: int) -> Iterator[list[ChunkTask]]:
    """Consecutive chunks of one region, about ``unit`` bytes together: a worker reads
    them in one go, since one large read is much faster than several small ones."""
    batch: list[ChunkTask] = []
    for task in tasks:
        if batch and (
            task.region != batch[0].region or task.offset + task.length - batch[0].offset > unit
        ):
            yield batch
            batch = []
        batch.append(task)
    if batch:
        yield batch


def device_units(device: SourceDisk, tasks: Iterable[ChunkTask]) -> Iterator[Unit]:
    """Units read from a device on the workers, about ``READ_UNIT`` bytes each."""
    for batch in _read_units(tasks, READ_UNIT):
        yield Unit(batch, functools.partial(_read_batch, device, batch))


def _read_batch(device: SourceDisk, batch: list[ChunkTask]) -> bytearray:
    first, last = batch[0], batch[-1]
    used = ExtentMap(extent for task in batch for extent in task.used)
    span = last.offset + last.length - first.offset
    data = read_chunk(device, first.base, first.offset, span, used)
    assert data is not None  # every task holds a used byte (_touched)
    return data


def stream_units(
    tasks: Iterable[ChunkTask], runs: Iterable[tuple[int, memoryview]]
) -> Iterator[Unit]:
    """One unit per chunk, filled here from ``runs``: ``(region offset, data)`` of one
    region's used bytes in ascending order, each inside the region's used map (so
    inside the chunks of ``tasks``). Bytes no run covers stay zero."""
    pending = iter(runs)
    offset, data = next(pending, (0, memoryview(b"")))
    for task in tasks:
        buf = bytearray(task.length)
        end = task.offset + task.length
        while data:
            if offset >= end:
                break
            if offset < task.offset:
                raise ValueError(f"a run at {offset} lies before chunk {task.number}: out of order")
            n = min(len(data), end - offset)
            buf[offset - task.offset : offset - task.offset + n] = data[:n]
            offset, data = offset + n, data[n:]
            if not data:
                offset, data = next(pending, (0, memoryview(b"")))
        yield Unit([task], functools.partial(_given, buf))
    if data:
        raise ValueError(f"a run at {offset} lies outside the used map")


def _given(data: bytearray) -> bytearray:
    return data


def _nonzero_blocks(data: memoryview, offset: int, used: ExtentMap) -> ExtentMap:
    """The ``BOOT_BLOCK``-sized blocks of ``data`` that hold a non-zero byte, within ``used``."""
    blocks = [
        (offset + pos, BOOT_BLOCK)
        for pos in range(0, len(data), BOOT_BLOCK)
        if not is_zero(data[pos : pos + BOOT_BLOCK])
    ]
    return ExtentMap(blocks) & used


def backup(
    repo: Repository,
    source: str | SourceDisk,
    *,
    partitions: Sequence[int | str] | None = None,
    tags: Sequence[str] = (),
    live: str | None = None,
    luks_keys: LuksKeys | None = None,
    reporter: Reporter = quiet_reporter,
    timing: Timing = DEFAULT_TIMING,
) -> Snapshot:
    """Image ``source`` into ``repo``; returns the committed snapshot.

    ``source`` is a device or image path, or a disk already open (``SourceDisk``: a VM
    disk read through NBD), which the caller closes. ``partitions`` holds numbers and
    logical volumes (``"vg0/root"``, imaged alone in their PV). ``luks_keys`` open LUKS
    containers, so that only their used sectors are stored (still encrypted). A path in
    use (a filesystem on it mounted read-write) or any ``live`` method is read as
    disk/live.py decides: from a snapshot, or read again until two reads agree.
    Everything is written through one ``WriterSession`` (repo/writer.py), which keeps it
    safe beside ``gc`` and says what an interruption left behind."""
    started = time.monotonic()
    if not isinstance(source, str):
        if live is not None:
            raise UsageError(f"{source.path} is an open disk: --live applies to devices")
        return _backup(
            repo,
            source,
            LiveRead(str(source.path), str(source.path), ""),
            luks_keys,
            partitions,
            tags,
            reporter,
            timing,
            started,
        )
    with live_source(source, live, reporter) as (device, view):
        return _backup(repo, device, view, luks_keys, partitions, tags, reporter, timing, started)


def _backup(
    repo: Repository,
    device: SourceDisk,
    view: LiveRead,
    luks_keys: LuksKeys | None,
    partitions: Sequence[int | str] | None,
    tags: Sequence[str],
    reporter: Reporter,
    timing: Timing,
    started: float,
) -> Snapshot:
    layout, numbers = _chosen_layout(device, luks_keys, partitions)
    for warning in layout.warnings:
        reporter(Warned(warning))
    plan_regions(layout, numbers)  # a partition asked for that is not there: refused now
    with WriterSession(repo, kind="backup", timing=timing) as writer:
        parent = ParentChunks.load(
            repo, writer.choose_parent(_manifest(repo, layout, numbers, tags, view))
        )
        index, stats = _store_layout(
            writer, device, layout, numbers, reporter, view.origin, parent=parent
        )
        if view.rereads:
            layout, index, stats = _read_until_stable(
                writer, device, luks_keys, partitions, index, stats, reporter, view.origin
            )
        view.check()
        stats = replace(stats, seconds=round(time.monotonic() - started, 3))
        snapshot = replace(_manifest(repo, layout, numbers, tags, view), stats=stats)

        def store_again(missing: set[str]) -> None:
            reporter(
                Warned(
                    f"a gc removed {plural(len(missing), 'chunk')} this backup had found "
                    "in the repository; they were read again from the source and stored"
                )
            )
            _store_again(writer, device, index, missing)

        return writer.commit(snapshot, index, store_again)


def _chosen_layout(
    device: SourceDisk, luks_keys: LuksKeys | None, partitions: Sequence[int | str] | None
) -> tuple[DiskLayout, list[int] | None]:
    """The source's layout and the partition numbers to image (None: all). Logical
    volumes asked for (``"vg0/root"``) narrow their partitions to them."""
    layout = read_layout(device, luks_keys)
    if partitions is None:
        return layout, None
    numbers = [p for p in partitions if isinstance(p, int)]
    names = [p for p in partitions if isinstance(p, str)]
    if names:  # logical volumes: their partitions, narrowed to them
        layout, holding = select_volumes(layout, names)
        numbers += [n for n in holding if n not in numbers]
    return layout, numbers


def _store_layout(
    writer: WriterSession,
    device: SourceDisk,
    layout: DiskLayout,
    partitions: Sequence[int] | None,
    reporter: Reporter,
    description: str,
    task_name: str = "backup",
    parent: ParentChunks = NO_PARENT,
) -> tuple[Index, Stats]:
    """One pass: read and store the chosen regions of ``layout`` from ``device``
    (``parent``: the chunks of the snapshot this one is made after, by position)."""
    regions = plan_regions(layout, partitions)
    tasks = chunk_tasks(regions, writer.repo.config.chunk_size, boot_area_map(layout))
    units = device_units(device, tasks)
    return store_regions(writer, regions, units, reporter, description, task_name, parent)


def _read_until_stable(
    writer: WriterSession,
    device: SourceDisk,
    luks_keys: LuksKeys | None,
    partitions: Sequence[int | str] | None,
    index: Index,
    stats: Stats,
    reporter: Reporter,
    description: str,
) -> tuple[DiskLayout, Index, Stats]:
    """Read the used map and the used blocks again until a pass reads what the one
    before it read (same regions, same chunks), at most ``MAX_REREADS`` times: a block
    written during a pass is read again in the next. What changed was stored by the
    pass that read it; chunks of earlier passes no index holds are left to gc."""
    for _ in range(MAX_REREADS):
        layout, numbers = _chosen_layout(device, luks_keys, partitions)
        again, more = _store_layout(
            writer, device, layout, numbers, reporter, description, "reread"
        )
        stats = replace(
            more,
            read_bytes=stats.read_bytes + more.read_bytes,
            new_chunks=stats.new_chunks + more.new_chunks,
            new_bytes=stats.new_bytes + more.new_bytes,
            stored_bytes=stats.stored_bytes + more.stored_bytes,
        )
        if again == index:
            return layout, index, stats
        index = again
    reporter(
        Warned(
            f"{description} was still changing after {plural(MAX_REREADS, 'second read')}; "
            "the snapshot holds the last read and is not crash-consistent"
        )
    )
    return layout, index, stats


def _manifest(
    repo: Repository,
    layout: DiskLayout,
    partitions: Sequence[int] | None,
    tags: Sequence[str],
    view: LiveRead,
) -> Snapshot:
    """The snapshot record of a backup (its stats are set once imaged, its index and
    parent at commit). A snapshot read for a live backup is recorded as its origin."""
    return Snapshot(
        time=_now(),
        host=socket.gethostname(),
        source=view.origin,
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
                filesystem=p.fs.type,
                used_bytes=p.fs.used_bytes,
                imaged=not partitions or p.number in partitions,
                label=p.fs.label,
                uuid=p.fs.uuid,
                name=p.partition.name,
                volumes=tuple(_volume_record(v) for v in p.fs.volumes),
            )
            for p in layout.partitions
        ),
        index="",
        chunk_size=repo.config.chunk_size,
        compression=f"zstd:{repo.codec.level}" if repo.codec.level else "none",
        tags=tuple(tags),
        source_id=source_identity(view.origin, layout.table.disk_id if layout.table else ""),
        live=view.method,
    )


def _volume_record(volume: Volume) -> VolumeRecord:
    return VolumeRecord(**{f.name: getattr(volume, f.name) for f in fields(VolumeRecord)})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _store_again(
    writer: WriterSession, device: SourceDisk, index: Index, missing: set[str]
) -> None:
    """Re-read the chunks in ``missing`` from the source and store them (a gc that ran
    during the backup removed chunks it had deduplicated against)."""
    for region in index.regions:
        for ref in region.chunks(index.chunk_size):
            if ref.chunk_id not in missing:
                continue
            data = read_chunk(device, region.start, ref.offset, ref.length, ref.used)
            if data is None or writer.repo.chunk_id(data).hex() != ref.chunk_id:
                raise SourceError(
                    f"changed while it was backed up ({region.name} at byte "
                    f"{region.start + ref.offset}), and a gc removed the stored copy; "
                    "nothing was committed, run the backup again",
                    path=str(device.path),
                )
            writer.put_chunk(data, ref.chunk_id)
            missing.discard(ref.chunk_id)


def store_regions(
    writer: WriterSession,
    regions: list[Region],
    units: Iterable[Unit],
    reporter: Reporter,
    description: str,
    task_name: str = "backup",
    parent: ParentChunks = NO_PARENT,
) -> tuple[Index, Stats]:
    """Hash, deduplicate, compress and store the chunks of ``units`` on a thread pool;
    returns the index of ``regions`` (a disk region's used map refined to the boot-area
    bytes kept and the non-zero blocks) and the statistics. ``units`` come in region
    order and hold every chunk of ``regions`` with a used byte. ``parent`` is the
    parent snapshot's chunks by position, for stages that reuse or build on them."""
    del parent  # no stage uses it yet
    repo = writer.repo
    chunk_size = repo.config.chunk_size

    def store_one(task: ChunkTask, data: memoryview) -> _Done:
        used = task.used
        if task.refine is not None:
            used = task.refine | _nonzero_blocks(data, task.offset, task.used)
        if is_zero(data):
            return _Done(task, fmt.HOLE, used, 0, 0)
        digest = repo.chunk_id(data)
        stored = writer.put_chunk(data, digest.hex())
        return _Done(task, digest, used, stored, len(data) if stored else 0)

    def store(unit: Unit) -> list[_Done]:
        view = memoryview(unit.load())
        first = unit.tasks[0]
        at = [task.offset - first.offset for task in unit.tasks]  # each chunk's place in data
        return [store_one(t, view[a : a + t.length]) for t, a in zip(unit.tasks, at, strict=True)]

    total = sum(r.used.total for r in regions)
    reporter(TaskStarted(task_name, total, description))
    counts = [-(-r.size // chunk_size) for r in regions]
    ids = [[fmt.HOLE] * n for n in counts]  # filled in below for each chunk read
    used_maps = [[ExtentMap()] * n for n in counts]
    read = chunks = new_chunks = new_bytes = stored_bytes = 0
    threads = workers(repo.backend.capabilities.parallel_io)
    # closing: when this loop is left by an error or an interruption, the pool stops
    # and its running tasks finish here, before the session flushes and ends
    with contextlib.closing(ordered_map(store, units, threads)) as results:
        for batch in results:
            advanced = 0
            for done in batch:
                task = done.task
                ids[task.region][task.number] = done.chunk_id
                used_maps[task.region][task.number] = done.used
                advanced += task.used.total
                if done.chunk_id != fmt.HOLE:
                    chunks += 1
                if done.stored:
                    new_chunks += 1
                    new_bytes += done.new_bytes
                    stored_bytes += done.stored
            read += advanced
            reporter(TaskAdvanced(task_name, advanced))
    reporter(TaskFinished(task_name))
    final = []
    for i, region in enumerate(regions):
        used = region.used
        if region.kind == fmt.REGION_DISK:
            used = ExtentMap(e for m in used_maps[i] for e in m)
        final.append(
            Region(region.kind, region.number, region.start, region.size, used, tuple(ids[i]))
        )
    used_total = sum(r.used.total for r in final)
    holes = sum(counts) - chunks
    stats = Stats(read, used_total, chunks, holes, new_chunks, new_bytes, stored_bytes)
    return Index(chunk_size, tuple(final)), stats
