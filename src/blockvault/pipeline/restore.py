"""Restore a snapshot onto a disk, or one partition onto a partition.

An arrangement of ``pipeline.onto``: ``SnapshotSource`` is the snapshot seen as a
disk (one imaged partition: a disk without a table), whose chunks are fetched,
hash-checked and then written; ``write_onto`` does the rest (refusals, smaller and
larger targets, sector sizes, keystones last, new ids, growing). Only used bytes
are written; unused space on the target is left alone unless ``zero_unused``.
"""

from __future__ import annotations

import contextlib
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from blockvault.disk.device import Device, Reader
from blockvault.disk.device import Region as Window
from blockvault.disk.fs.probe import probe
from blockvault.disk.rescan import reread_partitions
from blockvault.disk.table import PartitionTable
from blockvault.disk.table.probe import read_table
from blockvault.disk.volumes.stack import content_reader
from blockvault.errors import UsageError
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted, Warned
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.pipeline.onto import Onto, write_onto
from blockvault.pipeline.stages import ordered_map, workers, write_used
from blockvault.pipeline.target import Confirm
from blockvault.repo import ChunkRef, Index, Region, Repository, Snapshot
from blockvault.repo import format as fmt
from blockvault.repo.image import SnapshotImage

__all__ = ["RestoreResult", "SnapshotSource", "VolumeSource", "restore"]


@dataclass(frozen=True)
class RestoreResult:
    snapshot: str
    target: str
    written_bytes: int
    chunks: int
    seconds: float
    gpt_moved: bool = False
    grown: str | None = None  # what --grow did, or how a smaller target was laid out


def _refuse(answer: str) -> bool:
    return False


def restore(
    repo: Repository,
    snapshot: Snapshot,
    target: str,
    *,
    partition: int | str | None = None,
    confirm: Confirm = _refuse,
    zero_unused: bool = False,
    new_ids: bool = False,
    grow: bool = False,
    grow_partition: int | None = None,
    scratch: str | None = None,
    reporter: Reporter = quiet_reporter,
) -> RestoreResult:
    started = time.monotonic()
    snapshot.require_disk("restoring onto a disk or image file")
    index = repo.load_index(snapshot)
    source: SnapshotSource | VolumeSource
    if isinstance(partition, str):  # a logical volume: its filesystem alone onto TARGET
        source = VolumeSource(repo, snapshot, index, partition, reporter)
    else:
        source = SnapshotSource(repo, snapshot, index, partition, reporter)
    onto = Onto(
        "restoring the disk"
        if partition is None
        else f"restoring {'partition ' if isinstance(partition, int) else ''}{partition}",
        confirm,
        repository_path=repo.backend.capabilities.local_path,
        new_ids=new_ids,
        grow=grow,
        grow_partition=grow_partition,
        scratch=scratch,
        zero_unused=zero_unused,
    )
    done = write_onto(source, target, onto, reporter=reporter)
    # the kernel does not see a table by its sectors being written: without this the
    # restored disk's partitions had no devices until a reboot
    whole_disk = partition is None and stat.S_ISBLK(Path(target).stat().st_mode)
    if whole_disk and not reread_partitions(target):
        reporter(
            Warned(
                f"the kernel has not taken up the partition table restored on {target} "
                "(a partition of it in use?): run 'partx --update' on it or reboot"
            )
        )
    return RestoreResult(
        snapshot.id,
        target,
        done.written_bytes,
        source.chunks,
        round(time.monotonic() - started, 3),
        gpt_moved=done.gpt_moved,
        grown=done.grown,
    )


class SnapshotSource:
    """``onto.DiskSource`` over a snapshot, or over one imaged partition of it (then a
    disk without a table whose offset 0 is the partition's start)."""

    def __init__(
        self,
        repo: Repository,
        snapshot: Snapshot,
        index: Index,
        partition: int | None = None,
        reporter: Reporter = quiet_reporter,
    ) -> None:
        self.repo, self.index, self.reporter = repo, index, reporter
        self.chunks = 0  # chunks written
        image = SnapshotImage(repo, snapshot, index)
        self.table: PartitionTable | None = None
        if partition is None:
            self.regions = index.regions
            self.offset = 0  # source disk offset of the snapshot's disk offset 0
            self.size, self.sector_size = snapshot.disk_size, snapshot.sector_size
            self._reader: Reader = image
            if snapshot.table != "none":
                self.table = read_table(image, snapshot.sector_size)
            # a partition the snapshot did not image is not written, grown or shrunk
            self.filesystems = {
                p.number: p.filesystem if p.imaged else "" for p in snapshot.partitions
            }
            self.used = {p.number: p.used_bytes for p in snapshot.partitions}
            self._skipped = ExtentMap(
                (p.start, p.size) for p in snapshot.partitions if not p.imaged
            )
            return
        region = index.region(fmt.REGION_PARTITION, partition)
        if region is None:
            imaged = [p.number for p in snapshot.imaged_partitions]
            raise UsageError(
                f"snapshot {snapshot.id[:12]} holds no image of partition {partition} "
                f"(imaged: {', '.join(map(str, imaged)) or 'none'})"
            )
        self.regions = (region,)
        self.offset = -region.start
        self.size, self.sector_size = region.size, snapshot.sector_size
        self._reader = Window(image, region.start, region.size)
        fs = next((p.filesystem for p in snapshot.partitions if p.number == partition), "")
        self.filesystems = {1: fs}
        self.used = {1: region.used.total}
        self._skipped = ExtentMap()

    @property
    def used_bytes(self) -> int:
        return sum(r.used.total for r in self.regions)

    def reader(self) -> Reader:
        return self._reader

    def unused(self, target_size: int) -> ExtentMap:
        domain = used = ExtentMap()
        for region in self.regions:
            base = region.start + self.offset
            used = used | region.used.shift(base)
            domain = domain | ExtentMap.span(base, region.size)
            if region.kind == fmt.REGION_DISK:  # boot areas: the whole target
                domain = domain | ExtentMap.span(0, target_size)
        return (domain - self._skipped).clip(0, target_size) - used

    def write(self, dest: Device, within: ExtentMap, fresh: bool, reporter: Reporter) -> int:
        plan = [(r, self.offset) for r in self.regions]
        return self._write(dest, [(_within(r, within, s), s) for r, s in plan], fresh, reporter)

    def write_partition(self, number: int, dest: Device, shift: int, fresh: bool) -> int:
        region = self.index.region(fmt.REGION_PARTITION, number)
        if region is None:  # not imaged: nothing of it to write
            return 0
        return self._write(dest, [(region, shift)], fresh, self.reporter)

    def _write(
        self, dest: Device, plan: list[tuple[Region, int]], fresh: bool, reporter: Reporter
    ) -> int:
        """Each region's used chunks at its start plus its shift, several at a time."""
        repo, chunk_size = self.repo, self.index.chunk_size

        def tasks() -> Iterator[tuple[ChunkRef, int]]:
            for region, shift in plan:
                for ref in region.chunks(chunk_size):
                    if ref.used and not (ref.chunk_id is None and fresh):
                        yield ref, region.start + shift

        def put(task: tuple[ChunkRef, int]) -> int:
            ref, base = task
            data = repo.get_chunk(ref.chunk_id) if ref.chunk_id else None
            return write_used(dest, base, ref.offset, data, ref.used)

        reporter(TaskStarted("restore", sum(r.used.total for r, _ in plan), str(dest.path)))
        written = 0
        threads = workers(repo.backend.capabilities.parallel_io)
        # closing: an error or a signal in this loop stops the workers here, before
        # the target is closed and called incomplete (see stages.ordered_map)
        with contextlib.closing(ordered_map(put, tasks(), threads)) as results:
            for n in results:
                written += n
                self.chunks += 1
                reporter(TaskAdvanced("restore", n))
        reporter(TaskFinished("restore"))
        return written


def _within(region: Region, disk_bytes: ExtentMap, offset: int) -> Region:
    """``region`` with only the used bytes in ``disk_bytes`` (source disk offsets)."""
    start = region.start + offset
    used = region.used & disk_bytes.clip(start, region.size).shift(-start)
    return Region(region.kind, region.number, region.start, region.size, used, region.chunk_ids)


class VolumeSource:
    """``onto.DiskSource`` over one logical volume of a snapshot: a disk without a table
    holding the LV's filesystem, read through the LV's mapping from its partition's
    region. Its used map is read again from the filesystem in the snapshot (the manifest
    keeps only its size). An LV inside LUKS is refused: restoring it alone would write
    its plaintext."""

    table: PartitionTable | None = None

    def __init__(
        self,
        repo: Repository,
        snapshot: Snapshot,
        index: Index,
        name: str,
        reporter: Reporter = quiet_reporter,
    ) -> None:
        self.reporter = reporter
        self.chunks = 0
        record = next((p for p in snapshot.imaged_partitions if p.volume(name)), None)
        volume = record.volume(name) if record else None
        region = index.region(fmt.REGION_PARTITION, record.number) if record else None
        if record is None or volume is None or volume.kind != "lvm2-lv" or region is None:
            names = [v.name for p in snapshot.imaged_partitions for v in p.volumes]
            raise UsageError(
                f"snapshot {snapshot.id[:12]} has no logical volume {name} "
                f"(it has: {', '.join(n for n in names if '/' in n) or 'none'})"
            )
        if volume.encrypted or volume.note:
            why = "it lies in a LUKS container" if volume.encrypted else volume.note
            raise UsageError(
                f"logical volume {name} cannot be restored alone: {why}; restore partition "
                f"{record.number} instead"
            )
        image = SnapshotImage(repo, snapshot, index)
        where = f"partition {record.number} of snapshot {snapshot.id[:12]}"
        window = Window(image, region.start, region.size)
        self._reader = content_reader(window, record.volumes, name, None, where)
        self.size, self.sector_size = volume.size, snapshot.sector_size
        self.filesystems = {1: volume.filesystem}
        self._used = probe(self._reader).used
        self.used = {1: self._used.total}

    @property
    def used_bytes(self) -> int:
        return self._used.total

    def reader(self) -> Reader:
        return self._reader

    def unused(self, target_size: int) -> ExtentMap:
        return ExtentMap.span(0, min(self.size, target_size)) - self._used

    def write(self, dest: Device, within: ExtentMap, fresh: bool, reporter: Reporter) -> int:
        return self._copy(dest, self._used & within, 0, reporter)

    def write_partition(self, number: int, dest: Device, shift: int, fresh: bool) -> int:
        return self._copy(dest, self._used, shift, self.reporter)

    def _copy(self, dest: Device, used: ExtentMap, shift: int, reporter: Reporter) -> int:
        reporter(TaskStarted("restore", used.total, str(dest.path)))
        written = 0
        for extent in used:
            for at in range(extent.offset, extent.end, PIECE):
                n = min(PIECE, extent.end - at)
                dest.write_at(at + shift, self._reader.read_at(at, n))
                written += n
                self.chunks += 1
                reporter(TaskAdvanced("restore", n))
        reporter(TaskFinished("restore"))
        return written


PIECE = 4 << 20  # bytes of an LV copied at once
