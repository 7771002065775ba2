"""Restore a snapshot onto a disk, or one partition onto a partition.

Only used bytes are written; unused space on the target is left alone unless
``zero_unused``. Each chunk's hash is checked before a byte of it is written.
On a larger disk a GPT's backup header and entries move to the new end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from blockvault.disk import ids, sectors
from blockvault.disk.device import Device
from blockvault.disk.plan import LayoutPlan
from blockvault.disk.table import PartitionTable, gpt
from blockvault.disk.table.probe import read_table
from blockvault.disk.table.write import write_table
from blockvault.errors import TargetTooSmall, UsageError
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.pipeline.adapt import (
    GrowPlan,
    apply_grow,
    apply_layout,
    plan_grow,
    plan_shrink,
    shrunk_summary,
)
from blockvault.pipeline.stages import ordered_map, workers, write_used, zero_fill
from blockvault.pipeline.target import Confirm, OpenedTarget, open_target
from blockvault.repo import ChunkRef, Index, Region, Repository, Snapshot
from blockvault.repo import format as fmt
from blockvault.repo.image import SnapshotImage

__all__ = ["RestoreResult", "restore"]


@dataclass(frozen=True)
class RestoreResult:
    snapshot: str
    target: str
    written_bytes: int
    chunks: int
    seconds: float
    gpt_moved: bool = False
    grown: str | None = None  # what --grow did


def _refuse(answer: str) -> bool:
    return False


def restore(
    repo: Repository,
    snapshot: Snapshot,
    target: str,
    *,
    partition: int | None = None,
    confirm: Confirm = _refuse,
    zero_unused: bool = False,
    new_ids: bool = False,
    grow: bool = False,
    grow_partition: int | None = None,
    scratch: str | None = None,
    reporter: Reporter = quiet_reporter,
) -> RestoreResult:
    started = time.monotonic()
    index = repo.load_index(snapshot)
    repo_path = repo.backend.capabilities.local_path
    conversion: tuple[int, PartitionTable] | None = None
    moves: LayoutPlan | None = None
    if partition is not None:
        region = index.region(fmt.REGION_PARTITION, partition)
        if region is None:
            imaged = [p.number for p in snapshot.imaged_partitions]
            raise UsageError(
                f"snapshot {snapshot.id[:12]} holds no image of partition {partition} "
                f"(imaged: {', '.join(map(str, imaged)) or 'none'})"
            )
        opened = open_target(
            target,
            region.size,
            repository_path=repo_path,
            confirm=confirm,
            what=f"restoring partition {partition}",
        )
        plan = [(region, -region.start)]
    else:
        try:
            opened = open_target(
                target,
                snapshot.disk_size,
                repository_path=repo_path,
                confirm=confirm,
                what="restoring the disk",
            )
        except TargetTooSmall as exc:  # lay the partitions out anew, if they fit
            moves = _plan_shrink(repo, snapshot, index, exc.fields["have"], scratch)
            opened = open_target(
                target,
                exc.fields["have"],
                repository_path=repo_path,
                confirm=confirm,
                what="restoring the disk",
            )
        with opened.refusals():
            conversion = _sector_conversion(opened, snapshot, SnapshotImage(repo, snapshot, index))
        plan = [(r, 0) for r in index.regions]
    growing = None
    if grow or grow_partition is not None:
        with opened.refusals():
            growing = _plan_grow(repo, snapshot, index, opened, partition, grow_partition)
            moves = growing.moves
            if conversion is not None:
                raise UsageError(
                    "growing while converting the sector size is not supported yet; "
                    "nothing was written"
                )
    if moves is not None:
        with opened.refusals():
            if conversion is not None or zero_unused:
                raise UsageError(
                    "moving or shrinking partitions does not go with converting the sector "
                    "size or --zero-unused yet; nothing was written"
                )
        return _restore_moved(
            repo, snapshot, index, opened, moves, growing, new_ids, scratch, started, reporter
        )
    with opened.device:
        grown = (
            partition is None
            and conversion is None  # a conversion rebuilds the whole table for this disk
            and snapshot.table == "gpt"
            and (opened.device.size > snapshot.disk_size)
        )
        table = None
        boot_sector = b""
        if grown:
            image = SnapshotImage(repo, snapshot, index)
            table = gpt.parse(image, snapshot.sector_size)
            boot_sector = image.read_at(0, snapshot.sector_size)
            if table is not None:
                # the old backup table would land mid-disk: it is rebuilt at the new end
                old = ExtentMap.span(*gpt.backup_area(table, snapshot.disk_size))
                plan = [
                    (_without(r, old) if r.kind == fmt.REGION_DISK else r, shift)
                    for r, shift in plan
                ]
        written, chunks = _write(repo, index, plan, opened, reporter)
        if zero_unused:
            _zero_unused(opened, snapshot, plan)
        if table is not None:
            write_table(opened.device, table, boot_sector)
        if conversion is not None:
            sectors.convert_disk(opened.device, conversion[1], conversion[0])
        grew = None
        if growing is not None:
            head = SnapshotImage(repo, snapshot, index).read_at(0, snapshot.sector_size)
            grew = apply_grow(opened.device, growing, head)
        if new_ids:
            out = opened.device
            ss = out.logical_sector_size if out.is_block else None
            ids.renew_ids(out, read_table(out, ss) if partition is None else None)
        opened.device.sync()
    return RestoreResult(
        snapshot.id,
        target,
        written,
        chunks,
        round(time.monotonic() - started, 3),
        gpt_moved=table is not None,
        grown=grew,
    )


def _restore_moved(
    repo: Repository,
    snapshot: Snapshot,
    index: Index,
    opened: OpenedTarget,
    moves: LayoutPlan,
    growing: GrowPlan | None,
    new_ids: bool,
    scratch: str | None,
    started: float,
    reporter: Reporter,
) -> RestoreResult:
    """Restore with the partitions at new places (smaller target, or grown with
    partitions moved after it): adapt.apply_layout writes through ``_SnapshotSource``."""
    image = SnapshotImage(repo, snapshot, index)
    head = image.read_at(0, snapshot.sector_size)
    filesystems = {p.number: p.filesystem for p in snapshot.partitions}
    with opened.device as out:
        written = apply_layout(
            out,
            moves,
            filesystems,
            _SnapshotSource(repo, index, reporter),
            fresh=opened.fresh,
            scratch=scratch,
            boot_sector=head,
            used_bytes=sum(r.used.total for r in index.regions),
            reporter=reporter,
        )
        out.sync()
        grew = apply_grow(out, growing, head) if growing is not None else None
        if new_ids:  # last: growing rewrites the table with the source's ids
            ids.renew_ids(out, read_table(out, snapshot.sector_size))
        out.sync()
    return RestoreResult(
        snapshot.id,
        str(opened.device.path),
        written,
        0,
        round(time.monotonic() - started, 3),
        gpt_moved=moves.table.kind == "gpt" and opened.device.size > snapshot.disk_size,
        grown=grew or shrunk_summary(moves),
    )


@dataclass(frozen=True)
class _SnapshotSource:
    """adapt.Source over a snapshot: the restore writer, with a shift per partition."""

    repo: Repository
    index: Index
    reporter: Reporter

    def write_partition(self, number: int, dest: Device, shift: int, fresh: bool) -> int:
        region = self.index.region(fmt.REGION_PARTITION, number)
        if region is None:  # not imaged: nothing of it to write
            return 0
        target = OpenedTarget(dest, fresh=fresh)
        return _write(self.repo, self.index, [(region, shift)], target, self.reporter)[0]

    def write_head(self, dest: Device, end: int, fresh: bool) -> int:
        beyond = ExtentMap.span(end, 1 << 62)
        plan = [(_without(r, beyond), 0) for r in self.index.regions if r.kind == fmt.REGION_DISK]
        target = OpenedTarget(dest, fresh=fresh)
        return _write(self.repo, self.index, plan, target, self.reporter)[0]


def _plan_shrink(
    repo: Repository, snapshot: Snapshot, index: Index, have: int, scratch: str | None
) -> LayoutPlan:
    """The layout on a target of ``have`` bytes, from the snapshot's table and used maps."""
    table = read_table(SnapshotImage(repo, snapshot, index), snapshot.sector_size)
    # a partition the snapshot did not image has nothing to shrink: it keeps its size
    filesystems = {p.number: p.filesystem if p.imaged else "" for p in snapshot.partitions}
    used = {p.number: p.used_bytes for p in snapshot.partitions}
    return plan_shrink(table, filesystems, used, have, scratch)


def _sector_conversion(
    opened: OpenedTarget, snapshot: Snapshot, image: SnapshotImage
) -> tuple[int, PartitionTable] | None:
    """The target's sector size and the snapshot's table when the restored disk must be
    converted to other sectors; checked on the snapshot before anything is written."""
    device = opened.device
    new_ss = device.logical_sector_size
    if not device.is_block or snapshot.table == "none" or new_ss == snapshot.sector_size:
        return None
    table = read_table(image, snapshot.sector_size)
    reason = sectors.check_disk(image, table, new_ss) if table else "its table cannot be read"
    if reason is not None or table is None:
        raise UsageError(
            f"target {device.path} has {new_ss}-byte sectors, the snapshot "
            f"{snapshot.sector_size}-byte ones, and it cannot be converted: {reason}; "
            "nothing was written"
        )
    return new_ss, table


def _plan_grow(
    repo: Repository,
    snapshot: Snapshot,
    index: Index,
    opened: OpenedTarget,
    partition: int | None,
    number: int | None,
) -> GrowPlan:
    """Check --grow before a byte is written: the table and filesystem types come from
    the snapshot (its image of the disk's first and last sectors)."""
    filesystems = {p.number: p.filesystem for p in snapshot.partitions}
    if partition is not None:
        region = index.region(fmt.REGION_PARTITION, partition)
        assert region is not None
        fs = {1: filesystems.get(partition, "")}
        return plan_grow(None, fs, region.size, opened.device.size, None)
    table = read_table(SnapshotImage(repo, snapshot, index), snapshot.sector_size)
    return plan_grow(table, filesystems, snapshot.disk_size, opened.device.size, number)


def _without(region: Region, cut: ExtentMap) -> Region:
    return Region(
        region.kind, region.number, region.start, region.size, region.used - cut, region.chunk_ids
    )


def _write(
    repo: Repository,
    index: Index,
    plan: list[tuple[Region, int]],
    opened: OpenedTarget,
    reporter: Reporter,
) -> tuple[int, int]:
    device = opened.device

    def tasks() -> Iterator[tuple[ChunkRef, int]]:
        for region, shift in plan:
            for ref in region.chunks(index.chunk_size):
                if ref.used and not (ref.chunk_id is None and opened.fresh):
                    yield ref, region.start + shift

    def put(task: tuple[ChunkRef, int]) -> int:
        ref, base = task
        data = repo.get_chunk(ref.chunk_id) if ref.chunk_id else None
        return write_used(device, base, ref.offset, data, ref.used)

    total = sum(r.used.total for r, _ in plan)
    reporter(TaskStarted("restore", total, str(device.path)))
    written = chunks = 0
    for n in ordered_map(put, tasks(), workers(repo.backend.capabilities.parallel_io)):
        written += n
        chunks += 1
        reporter(TaskAdvanced("restore", n))
    reporter(TaskFinished("restore"))
    return written, chunks


def _zero_unused(opened: OpenedTarget, snapshot: Snapshot, plan: list[tuple[Region, int]]) -> None:
    """Zero every target byte the snapshot covers but does not use."""
    if opened.fresh:
        return
    size = opened.device.size
    domain = ExtentMap()
    used = ExtentMap()
    for region, shift in plan:
        base = region.start + shift
        used = used | region.used.shift(base)
        domain = domain | ExtentMap.span(base, region.size)
    if plan and plan[0][0].kind == fmt.REGION_DISK:
        skipped = ExtentMap((p.start, p.size) for p in snapshot.partitions if not p.imaged)
        domain = (domain | ExtentMap.span(0, size)) - skipped
    zero_fill(opened.device, 0, domain.clip(0, size) - used)
