"""Clone one partition into the free space of another disk, as a new partition there.

``clone --into-free``: the planning (which free extent, which entry) is
``disk.free_space.place_partition``; the copy is clone's own (``pipeline.pieces``,
with a shift from the source's offset to the new partition's), after
``open_target`` made its refusals. It follows write_onto's rule, keystones last
(docs/DESIGN.md "One path onto targets"), for the one partition it adds: first the
filesystem's used bytes but its keystones (``onto.keystones`` of a bare filesystem:
its first 128 KiB, where the boot sector or superblock lies), then those, whole,
with the hidden-sector count set for the new place, and last of all the table entry.
A copy that fails or is interrupted half way leaves the target's table, and so every
existing partition, as it was, and no filesystem signature where the new partition
would start. Nothing outside the free extent is written but the table structures.
Writing into free space overwrites nothing a user sees, so the target is not
required to be empty (no --yes).
"""

from __future__ import annotations

import os
import stat
import time
import uuid
from pathlib import Path

from blockvault.disk.device import Device, open_device
from blockvault.disk.free_space import Placement, entry_type, place_partition
from blockvault.disk.fs.hidden import move_hidden_sectors
from blockvault.disk.fs.resize import can_grow, grow_filesystem
from blockvault.disk.layout import PartitionLayout, read_layout, sector_size_of
from blockvault.disk.table import Partition
from blockvault.disk.table.probe import read_table
from blockvault.disk.table.write import write_table
from blockvault.errors import BlockvaultError, SourceError, TargetError, UsageError
from blockvault.events import Reporter
from blockvault.events import quiet as quiet_reporter
from blockvault.pipeline.clone import CloneResult, check_source
from blockvault.pipeline.onto import failure_says, keystones
from blockvault.pipeline.pieces import Piece, copy_pieces, cut, verify_pieces
from blockvault.pipeline.stages import READ_THROUGH_GAP
from blockvault.pipeline.target import open_target

__all__ = ["clone_into_free"]


def _yes(answer: str) -> bool:
    return True  # only free space is written: nothing to confirm


def clone_into_free(
    source: str,
    target: str,
    *,
    partition: int | None = None,
    allow_mounted: bool = False,
    verify: bool = False,
    grow: bool = False,
    reporter: Reporter = quiet_reporter,
) -> CloneResult:
    """Copy the partition ``source`` (or partition ``partition`` of the disk ``source``)
    into a new partition in the first free extent of ``target`` large enough for it;
    with ``grow`` the new partition and its filesystem fill that whole extent."""
    started = time.monotonic()
    src, dst = Path(source), Path(target)
    check_source(src, dst, allow_mounted)
    if not dst.exists():
        raise TargetError("does not exist: --into-free adds a partition to a disk", path=dst)
    with open_device(src) as device:
        part, entry, source_ss = _source_partition(device, partition)
        opened = open_target(target, 0, repository_path=None, confirm=_yes, what="cloning")
        out = opened.device
        with opened.refusals():
            placement = _plan(out, part, entry, source_ss, grow)
        with out:
            start = placement.partition.start
            shift = start - part.partition.start
            pieces = _pieces(part, shift)
            body, head = _split(part, shift, source_ss)
            with failure_says(f"the partition table of {target} is as it was: nothing was added"):
                written = copy_pieces(device, out, body, False, reporter)
                out.sync()
                written += copy_pieces(device, out, head, False, quiet_reporter)
                out.sync()
                verified = verify_pieces(device, out, pieces, reporter) if verify else None
                if verified is False:
                    raise UsageError(f"verify failed: {target} differs from {source} in used bytes")
                # after verify: the boot sectors now differ from the source's on purpose
                move_hidden_sectors(out, start, part.partition.size, placement.table.sector_size)
                out.sync()
            write_table(out, placement.table)
            out.sync()
            grown = None
            if placement.partition.size > part.partition.size and grow:
                grown = grow_filesystem(out.path, start, placement.partition.size, part.fs.type)
    new = placement.partition
    return CloneResult(
        source,
        target,
        sum(p.used.total for p in pieces),
        written,
        round(time.monotonic() - started, 3),
        verified=verified,
        grown=grown,
        added=f"partition {new.number} at byte {new.start}, {new.size} bytes, type {new.type}",
    )


def _plan(
    out: Device, part: PartitionLayout, entry: tuple[Partition, str] | None, ss: int, grow: bool
) -> Placement:
    """Every refusal about the target, before a byte is written."""
    try:
        table = read_table(out, sector_size_of(out))
    except BlockvaultError as exc:
        raise TargetError(f"its partition table is damaged: {exc}", path=out.path) from None
    if table is None:
        raise TargetError(
            "has no partition table; create one first (sgdisk -o for GPT, "
            "or echo 'label: dos' | sfdisk), nothing was written",
            path=out.path,
        )
    if table.sector_size != ss:
        raise TargetError(
            f"has {table.sector_size}-byte sectors, the source {ss}-byte ones; "
            "--into-free does not convert sector sizes, nothing was written",
            path=out.path,
        )
    fs = part.fs.type
    if grow:
        reason = can_grow(fs)
        if reason:
            raise UsageError(f"cannot grow the new partition: {reason}; nothing was written")
    source_entry, source_kind = entry if entry else (None, "")
    kind_matches = source_kind == table.kind
    try:
        return place_partition(
            table,
            out.size,
            part.partition.size,
            type=entry_type(source_entry.type if source_entry else None, fs, table.kind),
            name=source_entry.name if source_entry and kind_matches else None,
            uuid=str(uuid.uuid4()),
            attributes=source_entry.attributes if source_entry and kind_matches else 0,
            fill=grow,
        )
    except UsageError as exc:
        raise TargetError(f"{exc}; nothing was written", path=out.path) from None


def _source_partition(
    device: Device, number: int | None
) -> tuple[PartitionLayout, tuple[Partition, str] | None, int]:
    """The partition to copy, its entry in a table with that table's kind (for the new
    entry's type and name) when one is known, and its sector size."""
    layout = read_layout(device)
    if number is not None:
        part = layout.partition(number) if layout.table is not None else None
        if part is None:
            have = ", ".join(str(p.number) for p in layout.partitions) if layout.table else "none"
            raise SourceError(f"has no partition {number} (it has {have})", path=device.path)
        assert layout.table is not None
        return part, (part.partition, layout.table.kind), layout.sector_size
    if layout.table is not None:
        raise SourceError(
            "holds a partition table, not one filesystem: name the partition to copy "
            "with --partition N",
            path=device.path,
        )
    return layout.partitions[0], _entry_of(device.path), layout.sector_size


def _entry_of(path: Path) -> tuple[Partition, str] | None:
    """The table entry a partition device stands for: a kernel partition (sysfs names
    its disk and start) or a loop device over part of an image file (its offset)."""
    st = path.stat()
    if not stat.S_ISBLK(st.st_mode):
        return None
    sysfs = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    if (sysfs / "partition").exists():
        disk, offset = Path("/dev") / sysfs.resolve().parent.name, int(_read(sysfs / "start")) * 512
    elif _read(sysfs / "loop" / "backing_file"):
        disk, offset = (
            Path(_read(sysfs / "loop" / "backing_file")),
            int(_read(sysfs / "loop" / "offset") or 0),
        )
    else:
        return None
    try:
        with open_device(disk) as whole:
            table = read_table(whole, sector_size_of(whole))
    except (BlockvaultError, OSError):
        return None
    for p in table.data_partitions if table else ():
        if p.start == offset:
            return p, table.kind if table else ""
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _pieces(part: PartitionLayout, shift: int) -> list[Piece]:
    """Clone's pieces of one partition, each to be written ``shift`` bytes further on."""
    p = part.partition
    return list(cut(p.start, p.size, part.fs.used, gap=READ_THROUGH_GAP, shift=shift))


def _split(part: PartitionLayout, shift: int, ss: int) -> tuple[list[Piece], list[Piece]]:
    """The partition's used bytes but its keystones, and the keystones: every byte of
    them, zeros too (what the free space held there must not outlive the copy as a
    second signature)."""
    p = part.partition
    marks = keystones(p.size, ss, None)  # region-relative: a bare filesystem's
    on_disk = marks.shift(p.start)
    body = [rest for piece in _pieces(part, shift) if (rest := piece.without(on_disk)).used]
    head = cut(p.start, p.size, marks, gap=READ_THROUGH_GAP, keep=on_disk, shift=shift)
    return body, list(head)
