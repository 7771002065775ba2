"""Clone a disk (or one partition) straight onto another, without a repository.

An arrangement of ``pipeline.onto``, like restore: ``DeviceSource`` is the source
disk read through its layout (backup.plan_regions gives the used map, read_chunk
reads only used bytes); ``write_onto`` does the rest (refusals, smaller and larger
targets, sector sizes, keystones last, new ids, growing, the --verify hook).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from blockvault.disk.device import Device, Reader, open_device
from blockvault.disk.layout import DiskLayout, read_layout, refuse_plain_file
from blockvault.disk.table import PartitionTable
from blockvault.disk.usage import mounts_using
from blockvault.errors import SourceError, UsageError
from blockvault.events import Reporter
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.pipeline.adapt import copy_used
from blockvault.pipeline.backup import boot_area_map, plan_regions
from blockvault.pipeline.onto import Onto, write_onto
from blockvault.pipeline.pieces import Piece, copy_pieces, cut, verify_pieces
from blockvault.pipeline.stages import READ_THROUGH_GAP
from blockvault.pipeline.target import Confirm
from blockvault.repo import format as fmt

__all__ = ["CloneResult", "DeviceSource", "check_source", "clone"]


@dataclass(frozen=True)
class CloneResult:
    source: str
    target: str
    used_bytes: int
    written_bytes: int
    seconds: float
    gpt_moved: bool = False
    verified: bool | None = None
    grown: str | None = None  # what --grow did
    added: str | None = None  # the new partition --into-free made


def _refuse(answer: str) -> bool:
    return False


def clone(
    source: str,
    target: str,
    *,
    confirm: Confirm = _refuse,
    allow_mounted: bool = False,
    verify: bool = False,
    new_ids: bool = False,
    grow: bool = False,
    grow_partition: int | None = None,
    scratch: str | None = None,
    raw: bool = False,
    reporter: Reporter = quiet_reporter,
) -> CloneResult:
    """Copy ``source``'s used bytes onto ``target``; with ``grow`` (or ``grow_partition``)
    the last (or that) partition and its filesystem then fill a larger target. On a
    smaller target the partitions are laid out anew (adapt.plan_shrink), shrinking
    filesystems in sparse scratch files in ``scratch`` (default: a temporary directory
    with room). A file that is no disk image is refused unless ``raw``."""
    started = time.monotonic()
    src = Path(source)
    check_source(src, Path(target), allow_mounted)
    with open_device(src) as device:
        layout = read_layout(device)
        if not raw:
            refuse_plain_file(device, layout)
        disk = DeviceSource(device, layout, tuple(_pieces(layout)), reporter)

        def compare(out: Device, rebuilt: ExtentMap) -> bool:
            return verify_pieces(device, out, [p.without(rebuilt) for p in disk.pieces], reporter)

        onto = Onto(
            "cloning",
            confirm,
            new_ids=new_ids,
            grow=grow,
            grow_partition=grow_partition,
            scratch=scratch,
            verify=compare if verify else None,
        )
        done = write_onto(disk, target, onto, reporter=reporter)
    if done.verified is False:
        raise UsageError(f"verify failed: {target} differs from {source} in used bytes")
    return CloneResult(
        source,
        target,
        disk.used_bytes,
        done.written_bytes,
        round(time.monotonic() - started, 3),
        gpt_moved=done.gpt_moved,
        verified=done.verified,
        grown=done.grown,
    )


@dataclass(frozen=True)
class DeviceSource:
    """``onto.DiskSource`` over a disk, partition or image file read through its layout."""

    device: Device
    layout: DiskLayout
    pieces: tuple[Piece, ...]  # every used byte, cut for copying
    reporter: Reporter = quiet_reporter

    @property
    def size(self) -> int:
        return self.layout.size

    @property
    def sector_size(self) -> int:
        return self.layout.sector_size

    @property
    def table(self) -> PartitionTable | None:
        return self.layout.table

    @property
    def filesystems(self) -> dict[int, str]:
        return {p.number: p.fs.type for p in self.layout.partitions}

    @property
    def used(self) -> dict[int, int]:
        return {p.number: p.fs.used_bytes for p in self.layout.partitions}

    @property
    def used_bytes(self) -> int:
        return sum(p.used.total for p in self.pieces)

    def reader(self) -> Reader:
        return self.device

    def unused(self, target_size: int) -> ExtentMap:
        used = ExtentMap()
        for p in self.pieces:
            used = used | p.used.shift(p.base)
        return ExtentMap.span(0, target_size) - used

    def write(self, dest: Device, within: ExtentMap, fresh: bool, reporter: Reporter) -> int:
        pieces = [p.within(within) for p in self.pieces]
        return copy_pieces(self.device, dest, [p for p in pieces if p.used], fresh, reporter)

    def write_partition(self, number: int, dest: Device, shift: int, fresh: bool) -> int:
        part = self.layout.partition(number)
        assert part is not None
        start = part.partition.start
        return copy_used(self.device, start, part.fs.used, dest, start + shift)


def check_source(src: Path, target: Path, allow_mounted: bool) -> None:
    """Refuse a missing source, a target on the source's bytes, a source that may change."""
    if not src.exists():
        raise SourceError("does not exist", path=src)
    _refuse_same(src, target)
    if not allow_mounted:
        writable = [m for m in mounts_using(src) if not m.read_only]
        if writable:
            raise SourceError(
                f"{writable[0].mountpoint} is mounted read-write from it and may change "
                "during the copy; unmount it, mount it read-only or pass --allow-mounted",
                path=src,
            )


def _identity(path: Path) -> tuple[tuple[int, int], int, int]:
    """(what holds the bytes, offset, length): a loop device resolves to its backing file."""
    st = path.stat()
    if stat.S_ISBLK(st.st_mode):
        name = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        backing = _sys(Path(name) / "loop" / "backing_file")
        if backing and Path(backing).exists():
            bst = Path(backing).stat()
            offset = int(_sys(Path(name) / "loop" / "offset") or 0)
            limit = int(_sys(Path(name) / "loop" / "sizelimit") or 0)
            size = int(_sys(Path(name) / "size") or 0) * 512
            return (bst.st_dev, bst.st_ino), offset, limit or size
        return (-1, st.st_rdev), 0, 1 << 62
    return (st.st_dev, st.st_ino), 0, st.st_size


def _sys(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _refuse_same(source: Path, target: Path) -> None:
    if not target.exists():
        return
    s_id, s_off, s_len = _identity(source)
    t_id, t_off, t_len = _identity(target)
    if s_id != t_id:
        return
    if (s_off, s_len) == (t_off, t_len) or source.resolve() == target.resolve():
        raise UsageError(f"target {target} is the source {source}; nothing was written")
    if s_off < t_off + t_len and t_off < s_off + s_len:
        raise UsageError(
            f"target {target} overlaps the source {source} on the same disk; nothing was written"
        )


def _pieces(layout: DiskLayout) -> Iterator[Piece]:
    keep = boot_area_map(layout)
    for region in plan_regions(layout, None):
        # between the used runs of a partition lie its free blocks; between those of
        # the disk region lie other partitions, which must never be written over
        gap = READ_THROUGH_GAP if region.kind == fmt.REGION_PARTITION else 0
        yield from cut(region.start, region.size, region.used, gap=gap, keep=keep)
