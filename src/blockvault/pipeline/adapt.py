"""Adapt a copied disk to a target of another size: grow, move or shrink partitions.

Shared by clone and restore. ``plan_grow`` and ``plan_shrink`` run before a byte is
written (every refusal they can make happens there); ``apply_layout`` writes the
source's partitions at their new places (a ``Source`` says how: clone reads its
disk, restore its snapshot), shrinking filesystems in scratch files first;
``apply_grow`` runs after the data is on the target.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from blockvault.disk.device import Device, Region, open_device
from blockvault.disk.fs.hidden import move_hidden_sectors
from blockvault.disk.fs.probe import probe
from blockvault.disk.fs.resize import (
    can_grow,
    can_shrink,
    grow_filesystem,
    kept_size,
    shrink_filesystem,
)
from blockvault.disk.plan import (
    DoesNotFit,
    LayoutPlan,
    grown_table,
    last_partition,
    moved_layout,
    shrunk_layout,
)
from blockvault.disk.table import PartitionTable
from blockvault.disk.table.write import write_table
from blockvault.errors import UsageError
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.pipeline.stages import READ_THROUGH_GAP, ordered_map, read_chunk, write_used
from blockvault.text import agree

__all__ = [
    "GrowPlan",
    "Source",
    "apply_grow",
    "apply_layout",
    "copy_used",
    "plan_grow",
    "plan_shrink",
    "scratch_places",
    "shrunk_summary",
]

MIB = 1024 * 1024
SCRATCH_MARGIN = 64 * MIB  # left free beside chosen scratch files for everyone else
PIECE = 4 * MIB
THREADS = 8


@dataclass(frozen=True)
class GrowPlan:
    table: PartitionTable | None  # the table to write; None: a filesystem on the whole target
    number: int
    offset: int
    size: int  # the partition's new size
    fs: str
    moves: LayoutPlan | None = None  # partitions after it move to the end first


def plan_grow(
    table: PartitionTable | None,
    filesystems: dict[int, str],
    source_size: int,
    target_size: int,
    number: int | None,
) -> GrowPlan:
    """What growing partition ``number`` (None: the last one) on the target means."""
    if target_size <= source_size:
        raise UsageError(
            f"the target ({target_size} bytes) is not larger than the source ({source_size}); "
            "nothing to grow"
        )
    if table is None:
        fs = filesystems.get(1, "")
        plan = GrowPlan(None, 1, 0, target_size, fs)
    else:
        number = number if number is not None else last_partition(table)
        moves = None
        part = table.partition(number)
        if part is not None and any(p.start >= part.end for p in table.data_partitions):
            moves = moved_layout(table, target_size, number)
            new = moves.table
        else:
            new = grown_table(table, target_size, number)
        part = new.partition(number)
        assert part is not None
        fs = filesystems.get(number, "")
        plan = GrowPlan(new, number, part.start, part.size, fs, moves)
    reason = can_grow(plan.fs)
    if reason:
        raise UsageError(f"cannot grow partition {plan.number}: {reason}; nothing was written")
    return plan


def apply_grow(device: Device, plan: GrowPlan, boot_sector: bytes) -> str:
    """Write the grown table, then grow the filesystem into it; a report line."""
    if plan.table is not None:
        write_table(device, plan.table, boot_sector)
    device.sync()
    done = grow_filesystem(device.path, plan.offset, plan.size, plan.fs)
    return f"partition {plan.number}: {done}"


def fs_minimum(fs: str, used: int) -> int | None:
    """A filesystem's smallest size, estimated from its used bytes before anything is
    written (the tool's own figure is checked on the scratch copy); None: cannot shrink."""
    if not can_shrink(fs):
        return None
    return used + used // 8 + (8 if fs == "ntfs" else 4) * MIB


def plan_shrink(
    table: PartitionTable | None,
    filesystems: dict[int, str],
    used: dict[int, int],
    target_size: int,
    scratch: str | None,
) -> tuple[LayoutPlan, str | None]:
    """The layout on a smaller target and the directory for its scratch files (None:
    no filesystem shrinks). Refuses (nothing written) when the used data cannot fit or
    no directory has room; without ``scratch`` the first of ``scratch_places()`` with
    room is taken."""
    if table is None:
        raise UsageError(
            "the target is smaller than the source, which has no partition table to lay "
            "out anew; nothing was written"
        )
    minimums = {n: fs_minimum(filesystems.get(n, ""), used.get(n, 0)) for n in filesystems}
    try:
        plan = shrunk_layout(table, target_size, minimums)
    except DoesNotFit as exc:  # say which partitions held their size, and why
        kept = [n for n in sorted(minimums) if minimums[n] is None and table.partition(n)]
        if not kept:
            raise
        what = ", ".join(f"{n} ({filesystems.get(n) or 'unknown content'})" for n in kept)
        why = [
            f"{agree(len(kept), 'partition')} {what} cannot shrink (XFS has no way to "
            "shrink, unknown content is kept whole; ext2/3/4 and NTFS can)"
        ]
        why += [f"partition {n}: {r}" for n in kept if (r := kept_size(filesystems.get(n, "")))]
        raise DoesNotFit(exc.missing, exc.have, "; ".join(why)) from None
    shrinking = [p.number for p in plan.placements if p.action == "shrink"]
    if not shrinking:
        return plan, None
    need = sum(used.get(n, 0) for n in shrinking)
    names = f"{agree(len(shrinking), 'partition')} {', '.join(map(str, shrinking))}"
    if scratch is not None:
        if not Path(scratch).is_dir():
            raise UsageError(f"--scratch {scratch} is not a directory; nothing was written")
        free = shutil.disk_usage(scratch).free
        if free < need:
            raise UsageError(
                f"--scratch {scratch} has {free} bytes free, shrinking {names} "
                f"needs about {need}; nothing was written"
            )
        return plan, scratch
    for place in scratch_places():
        if _free(place) >= need + SCRATCH_MARGIN:
            return plan, place
    raise UsageError(
        f"the target is smaller than the source: {names} must shrink in "
        f"sparse scratch files, which need about {need} bytes free, and none of "
        f"{', '.join(scratch_places())} has that; pass --scratch DIR; nothing was written"
    )


def scratch_places() -> list[str]:
    """Where scratch files may go without --scratch: the temporary directory
    (TMPDIR), then /var/tmp (on disk where /tmp is a tmpfs in memory)."""
    places = [tempfile.gettempdir(), "/var/tmp"]
    return [p for i, p in enumerate(places) if p not in places[:i]]


def _free(path: str) -> int:
    try:
        return shutil.disk_usage(path).free if os.access(path, os.W_OK) else 0
    except OSError:
        return 0


class Source(Protocol):
    """Where the source's bytes come from: clone reads its disk, restore its snapshot."""

    def write_partition(self, number: int, dest: Device, shift: int, fresh: bool) -> int:
        """Write partition ``number``'s used bytes to ``dest``, ``shift`` bytes from its place."""
        ...

    def write(self, dest: Device, within: ExtentMap, fresh: bool, reporter: Reporter) -> int:
        """Write the used bytes that lie ``within`` (disk offsets) to the same offsets."""
        ...


def copy_used(source: Device, base: int, used: ExtentMap, target: Device, target_base: int) -> int:
    """Copy the ``used`` bytes (relative to ``base`` on ``source``) to ``target_base``."""
    size = used.end if used else 0

    def move(offset: int) -> int:
        length = min(PIECE, size - offset)
        piece = used.clip(offset, length)
        data = read_chunk(source, base, offset, length, piece)
        return write_used(target, target_base, offset, data, piece, through_gaps=READ_THROUGH_GAP)

    offsets = [o for o in range(0, size, PIECE) if used.clip(o, min(PIECE, size - o))]
    return sum(ordered_map(move, offsets, THREADS))


def apply_layout(
    device: Device,
    plan: LayoutPlan,
    filesystems: dict[int, str],
    source: Source,
    *,
    fresh: bool,
    scratch: str | None,
    skip: ExtentMap,
    used_bytes: int,
    reporter: Reporter,
) -> int:
    """Write the source onto ``device`` laid out as ``plan``, all but the table (the
    caller writes it last) and the boot-area bytes in ``skip``; bytes written.
    ``used_bytes`` (the source's) sizes the progress bar, advanced per partition.

    Every filesystem that shrinks is first written to a sparse file in ``scratch``,
    checked and shrunk there by its own tool (a refusal then still leaves the target
    unwritten), and its used blocks, read by our own probe, go to its new start.
    Scratch files are removed afterwards, also on failure."""
    shrinking = [p for p in plan.placements if p.action == "shrink"]
    files: dict[int, Path] = {}
    reporter(TaskStarted("lay out", used_bytes, str(device.path)))
    try:
        for p in shrinking:
            assert scratch is not None
            path = Path(scratch) / f"blockvault-{os.getpid()}-partition-{p.number}.img"
            files[p.number] = path
            path.unlink(missing_ok=True)
            with open_device(path, write=True, create_size=p.old_size) as copy:
                source.write_partition(p.number, copy, -p.old_start, True)
                copy.sync()
            shrink_filesystem(path, p.size, filesystems.get(p.number, ""))
        head = ExtentMap.span(0, plan.first_start) - skip
        written = source.write(device, head, fresh, quiet_reporter)
        reporter(TaskAdvanced("lay out", written))
        for p in plan.placements:
            before = written
            if p.number in files:
                with open_device(files[p.number]) as copy:
                    used = probe(Region(copy, 0, p.size)).used
                    if filesystems.get(p.number) == "ntfs":  # ntfsresize's backup boot sector
                        used = used | ExtentMap.span(p.size - 512, 512)
                    written += copy_used(copy, 0, used, device, p.start)
            else:
                written += source.write_partition(p.number, device, p.shift, fresh)
            reporter(TaskAdvanced("lay out", written - before))
    finally:
        for path in files.values():
            with contextlib.suppress(OSError):
                path.unlink()
    for p in plan.placements:
        if p.shift:
            move_hidden_sectors(device, p.start, p.size, plan.table.sector_size)
    reporter(TaskFinished("lay out"))
    return written


def shrunk_summary(plan: LayoutPlan, scratch: str | None = None) -> str:
    """A report line: which partitions shrank or moved, and where they were shrunk."""
    done = [
        f"partition {p.number} {'shrunk' if p.action == 'shrink' else 'moved'} "
        f"to {p.size} bytes at byte {p.start}"
        for p in plan.placements
        if p.action == "shrink" or p.shift
    ]
    where = f" (shrunk in scratch files in {scratch})" if scratch and done else ""
    return ("; ".join(done) or "laid out anew") + where
