"""Clone a disk (or one partition) straight onto another, without a repository.

The same stages as backup and restore: the source's layout gives the used map
(backup.plan_regions), read_chunk reads only used bytes, write_used puts them on
a target opened by open_target (all its refusals). Placement is one to one; on a
larger disk a GPT's backup header and entries move to the new end.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from blockvault.disk import ids, sectors
from blockvault.disk.device import Device, open_device
from blockvault.disk.layout import DiskLayout, read_layout
from blockvault.disk.table import gpt
from blockvault.disk.table.probe import read_table
from blockvault.disk.table.write import write_table
from blockvault.disk.usage import mounts_using
from blockvault.errors import SourceError, TargetTooSmall, UsageError
from blockvault.events import Reporter
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.pipeline.adapt import (
    DeviceSource,
    apply_grow,
    apply_layout,
    plan_grow,
    plan_shrink,
    shrunk_summary,
)
from blockvault.pipeline.backup import boot_area_map, plan_regions
from blockvault.pipeline.pieces import Piece, copy_pieces, cut, verify_pieces
from blockvault.pipeline.stages import READ_THROUGH_GAP
from blockvault.pipeline.target import Confirm, open_target
from blockvault.repo import format as fmt

__all__ = ["CloneResult", "clone"]


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
    reporter: Reporter = quiet_reporter,
) -> CloneResult:
    """Copy ``source``'s used bytes onto ``target``; with ``grow`` (or ``grow_partition``)
    the last (or that) partition and its filesystem then fill a larger target. On a
    smaller target the partitions are laid out anew (adapt.plan_shrink), shrinking
    filesystems in sparse files in ``scratch``."""
    started = time.monotonic()
    src = Path(source)
    check_source(src, Path(target), allow_mounted)
    with open_device(src) as device:
        layout = read_layout(device)
        pieces = list(_pieces(layout))
        fss = {p.number: p.fs.type for p in layout.partitions}
        try:
            opened = open_target(
                target, layout.size, repository_path=None, confirm=confirm, what="cloning"
            )
            moves = None
        except TargetTooSmall as exc:  # lay the partitions out anew, if they fit
            used = {p.number: p.fs.used_bytes for p in layout.partitions}
            moves = plan_shrink(layout.table, fss, used, exc.fields["have"], scratch)
            opened = open_target(
                target, exc.fields["have"], repository_path=None, confirm=confirm, what="cloning"
            )
        out = opened.device
        growing = None
        with opened.refusals():
            new_ss = _sector_conversion(device, layout, out)
            if grow or grow_partition is not None:
                if new_ss is not None:
                    raise UsageError(
                        "growing while converting the sector size is not supported yet; "
                        "nothing was written"
                    )
                growing = plan_grow(layout.table, fss, layout.size, out.size, grow_partition)
                moves = growing.moves
            if moves is not None and (new_ss is not None or verify):
                raise UsageError(
                    "moving or shrinking partitions does not go with converting the sector "
                    "size or --verify yet; nothing was written"
                )
        if moves is not None:
            with opened.device:
                boot = device.read_at(0, layout.sector_size)
                written = apply_layout(
                    out,
                    moves,
                    fss,
                    DeviceSource(device, layout),
                    fresh=opened.fresh,
                    scratch=scratch,
                    boot_sector=boot,
                    used_bytes=sum(p.used.total for p in pieces),
                    reporter=reporter,
                )
                out.sync()
                grown = apply_grow(out, growing, boot) if growing else None
                if new_ids:  # last: growing rewrites the table with the source's ids
                    ids.renew_ids(out, read_table(out, layout.sector_size))
                out.sync()
            return CloneResult(
                source,
                target,
                sum(p.used.total for p in pieces),
                written,
                round(time.monotonic() - started, 3),
                gpt_moved=moves.table.kind == "gpt" and out.size > layout.size,
                grown=grown or shrunk_summary(moves),
            )
        with opened.device:
            old_gpt = _moving_gpt(layout, out.size)
            if old_gpt:
                pieces = [p.without(old_gpt) for p in pieces]
            written = copy_pieces(device, out, pieces, opened.fresh, reporter)
            boot = device.read_at(0, layout.sector_size)
            if old_gpt:
                assert layout.table is not None
                write_table(out, layout.table, boot)
            _after_write(out, layout, bool(old_gpt), new_ss, new_ids and not growing)
            out.sync()
            # a converted or renamed copy differs from its source by design
            verify = verify and not (new_ss or new_ids)
            verified = None
            if verify:
                # the rebuilt table differs from the source's on purpose (sgdisk -v checks it)
                rebuilt = old_gpt | _table_head(layout) if old_gpt else ExtentMap()
                compared = [p.without(rebuilt) for p in pieces]
                verified = verify_pieces(device, out, compared, reporter)
            grown = apply_grow(out, growing, boot) if growing else None
            if growing and new_ids:  # growing rewrote the table with the source's ids
                ids.renew_ids(out, read_table(out, layout.sector_size))
    if verified is False:
        raise UsageError(f"verify failed: {target} differs from {source} in used bytes")
    return CloneResult(
        source,
        target,
        sum(p.used.total for p in pieces),
        written,
        round(time.monotonic() - started, 3),
        gpt_moved=bool(old_gpt),
        verified=verified,
        grown=grown,
    )


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


def _after_write(
    device: Device, layout: DiskLayout, gpt_moved: bool, new_ss: int | None, new_ids: bool
) -> None:
    """Hook for fix-ups on the written target (sector conversion, new ids): the
    target is open, all data is written, sync follows. ``layout`` is the source's."""
    table = layout.table
    if new_ss is not None and table is not None:
        sectors.convert_disk(device, table, new_ss)
        table = read_table(device, new_ss)
    if new_ids:
        ids.renew_ids(device, table)


def _sector_conversion(source: Device, layout: DiskLayout, target: Device) -> int | None:
    """The target's sector size when the copy must be converted to it; checked before
    anything is written, so a copy that cannot convert is refused untouched."""
    new_ss = target.logical_sector_size
    if not target.is_block or layout.table is None or new_ss == layout.sector_size:
        return None
    reason = sectors.check_disk(source, layout.table, new_ss)
    if reason is not None:
        raise UsageError(
            f"target {target.path} has {new_ss}-byte sectors, the source "
            f"{layout.sector_size}-byte ones, and the copy cannot be converted: {reason}; "
            "nothing was written"
        )
    return new_ss


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


def _moving_gpt(layout: DiskLayout, target_size: int) -> ExtentMap:
    """The source's backup GPT area when the target is larger (it would land mid-disk)."""
    table = layout.table
    if table is None or table.kind != "gpt" or target_size <= layout.size:
        return ExtentMap()
    return ExtentMap.span(*gpt.backup_area(table, layout.size))


def _table_head(layout: DiskLayout) -> ExtentMap:
    table = layout.table
    assert table is not None
    return ExtentMap.span(0, table.first_usable_lba * table.sector_size)
