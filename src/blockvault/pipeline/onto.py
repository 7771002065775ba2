"""Write a source disk onto a target: the one path restore and clone share.

A ``DiskSource`` says what the disk looks like (size, sector size, table, filesystems,
used bytes) and writes its used bytes onto a device; where they come from (a
snapshot's chunks, a live disk's blocks, later a multicast stream) is its own
business. ``write_onto`` does everything else, in this order:

1. plan   open the target (every refusal: pipeline.target), lay the partitions out
          anew when it is smaller (adapt.plan_shrink), check a sector-size conversion
          and --grow. Nothing is written before all of this passed.
2. mark   wipe the target's keystones, the bytes that make a disk look whole: the
          MBR, the GPT header at LBA 1, the backup GPT header at the end, a bare
          filesystem's superblocks. From here on sfdisk and blkid find nothing.
3. copy   every used byte of the source but its own keystones (one to one, or laid
          out anew by adapt.apply_layout).
4. close  the keystones (and a rebuilt table) last, then the sector conversion, new
          ids, verification and growing, each of which needs a whole disk.

An exception after step 2 (a damaged chunk, a failed write, an interruption)
propagates unchanged in type, its message extended to say the target is incomplete:
a half-written disk never looks like a copy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from blockvault.disk import ids, sectors
from blockvault.disk.device import Device, Reader
from blockvault.disk.plan import LayoutPlan
from blockvault.disk.table import PartitionTable, gpt
from blockvault.disk.table.probe import read_table
from blockvault.disk.table.write import write_table
from blockvault.errors import BlockvaultError, Interrupted, TargetTooSmall, UsageError
from blockvault.events import Reporter, quiet
from blockvault.extents import ExtentMap
from blockvault.pipeline.adapt import (
    GrowPlan,
    Source,
    apply_grow,
    apply_layout,
    plan_grow,
    plan_shrink,
    shrunk_summary,
)
from blockvault.pipeline.stages import zero_fill
from blockvault.pipeline.target import Confirm, OpenedTarget, open_target
from blockvault.text import shown

__all__ = ["DiskSource", "Onto", "OntoResult", "failure_says", "keystones", "write_onto"]

# a bare filesystem's superblocks lie in its first 128 KiB (FAT, NTFS and XFS at 0,
# ext at 1 KiB, ISO 9660 at 32 KiB, btrfs at 64 KiB): blkid looks there
BARE_HEAD = 128 * 1024
# the backup GPT header is the last sector: 512 or 4096 bytes
TAIL = 4096


class DiskSource(Source, Protocol):
    """A disk to write, seen the same way whatever holds it. Offsets are the source
    disk's; a source without a table is one filesystem (or raw bytes) on the whole disk."""

    @property
    def size(self) -> int: ...

    @property
    def sector_size(self) -> int: ...

    @property
    def table(self) -> PartitionTable | None: ...

    @property
    def filesystems(self) -> dict[int, str]:
        """Filesystem per partition number; "" for one not to grow or shrink."""
        ...

    @property
    def used(self) -> dict[int, int]:
        """Used bytes per partition (plans how small a filesystem may shrink)."""
        ...

    @property
    def used_bytes(self) -> int: ...

    def reader(self) -> Reader:
        """The disk by offset (unused bytes read as zeros): boot code, sector checks."""
        ...

    def unused(self, target_size: int) -> ExtentMap:
        """Target bytes the source covers but does not use (what --zero-unused zeroes)."""
        ...


@dataclass(frozen=True)
class Onto:
    """What the caller asked for, besides the source and the target."""

    what: str  # "restoring the disk", "cloning": names the job in refusals
    confirm: Confirm
    repository_path: str | None = None
    new_ids: bool = False
    grow: bool = False
    grow_partition: int | None = None
    scratch: str | None = None
    zero_unused: bool = False
    # compares the target's used bytes with the source's, minus the disk bytes given
    # (rebuilt on purpose); None: no verification
    verify: Callable[[Device, ExtentMap], bool] | None = None


@dataclass(frozen=True)
class OntoResult:
    target: str
    written_bytes: int
    seconds: float
    gpt_moved: bool = False
    grown: str | None = None  # what --grow did, or how the partitions were laid out
    verified: bool | None = None


def keystones(size: int, sector_size: int, table: PartitionTable | None) -> ExtentMap:
    """The bytes of a disk that make it look whole to sfdisk and blkid: its MBR and
    GPT headers, or a bare filesystem's superblocks."""
    if table is None:
        return ExtentMap.span(0, min(BARE_HEAD, size))
    marks = ExtentMap.span(0, 2 * sector_size)
    if table.kind == "gpt":
        marks = marks | ExtentMap.span(size - sector_size, sector_size)
    return marks


def write_onto(
    source: DiskSource, target: str, onto: Onto, *, reporter: Reporter = quiet
) -> OntoResult:
    """Write ``source`` onto ``target`` (see the module docstring for the order)."""
    started = time.monotonic()
    plan = _plan(source, target, onto)
    out, table = plan.opened.device, source.table
    with plan.opened.refusals():  # boot code for the tables written last
        head = source.reader().read_at(0, source.sector_size) if table else b""
    rebuilt = ExtentMap()  # target bytes that differ from the source's on purpose
    with out:
        with _incomplete_on_failure(out):
            if not plan.opened.fresh:
                _mark_incomplete(out)
            if plan.moves is not None:
                written = _copy_laid_out(source, out, plan, head, reporter)
            else:
                written, rebuilt = _copy_one_to_one(source, out, plan, onto, head, reporter)
            out.sync()
        verified = None
        if onto.verify is not None and plan.new_ss is None and not onto.new_ids:
            # a converted or renamed copy differs from its source by design
            verified = onto.verify(out, rebuilt)
        grown = apply_grow(out, plan.growing, head) if plan.growing is not None else None
        if onto.new_ids:  # last: growing rewrites the table with the source's ids
            ss = plan.new_ss or source.sector_size
            ids.renew_ids(out, read_table(out, ss) if table else None)
        out.sync()
    if plan.moves is not None and grown is None:
        grown = shrunk_summary(plan.moves, plan.scratch)
    return OntoResult(
        str(out.path),
        written,
        round(time.monotonic() - started, 3),
        gpt_moved=plan.gpt_moved(source),
        grown=grown,
        verified=verified,
    )


def _copy_one_to_one(
    source: DiskSource, out: Device, plan: _Plan, onto: Onto, head: bytes, reporter: Reporter
) -> tuple[int, ExtentMap]:
    """Every byte where it was; the keystones last. Returns the bytes written and the
    target bytes rebuilt on purpose (a GPT moved to a larger disk's end)."""
    table = source.table
    marks = keystones(source.size, source.sector_size, table)
    old_gpt = _moving_gpt(source, out.size)
    fresh = plan.opened.fresh
    written = source.write(out, ExtentMap.span(0, source.size) - marks - old_gpt, fresh, reporter)
    if onto.zero_unused and not fresh:
        zero_fill(out, 0, source.unused(out.size) - marks - old_gpt)
    # last the keystones, the backup GPT header before the primary one and the MBR
    for mark in reversed(list(marks - old_gpt)):
        written += source.write(out, ExtentMap.span(mark.offset, mark.length), fresh, quiet)
    rebuilt = ExtentMap()
    if old_gpt and table is not None:
        rebuilt = old_gpt | ExtentMap.span(0, table.first_usable_lba * table.sector_size)
        if plan.new_ss is None:  # a conversion rebuilds the table anyway
            write_table(out, table, head)
    if plan.new_ss is not None:
        assert table is not None
        sectors.convert_disk(out, table, plan.new_ss)
    return written, rebuilt


def _copy_laid_out(
    source: DiskSource, out: Device, plan: _Plan, head: bytes, reporter: Reporter
) -> int:
    """Partitions at their new places (adapt.apply_layout), then the new table."""
    assert plan.moves is not None
    marks = keystones(source.size, source.sector_size, source.table)
    written = apply_layout(
        out,
        plan.moves,
        source.filesystems,
        source,
        fresh=plan.opened.fresh,
        scratch=plan.scratch,
        skip=marks,
        used_bytes=source.used_bytes,
        reporter=reporter,
    )
    # keystones that are no table structure (an MBR disk's LBA 1 holds GRUB's), then the table
    before = marks.clip(0, plan.moves.first_start)
    written += source.write(out, before, plan.opened.fresh, quiet)
    write_table(out, plan.moves.table, head)
    return written


@dataclass
class _Plan:
    opened: OpenedTarget
    moves: LayoutPlan | None = None  # partitions laid out anew; None: one to one
    scratch: str | None = None  # where filesystems shrink
    new_ss: int | None = None  # sector size to convert to
    growing: GrowPlan | None = None

    def gpt_moved(self, source: DiskSource) -> bool:
        """Whether the GPT's backup moved to the end of a larger target."""
        table = self.moves.table if self.moves is not None else source.table
        larger = self.opened.device.size > source.size
        return larger and table is not None and table.kind == "gpt"


def _plan(source: DiskSource, target: str, onto: Onto) -> _Plan:
    """Every refusal, before a byte is written."""
    table = source.table
    try:
        plan = _Plan(_open(target, source.size, onto))
    except TargetTooSmall as exc:  # lay the partitions out anew, if they fit
        if table is None:
            raise
        have = exc.fields["have"]
        moves, scratch = plan_shrink(table, source.filesystems, source.used, have, onto.scratch)
        plan = _Plan(_open(target, have, onto), moves, scratch)
    with plan.opened.refusals():
        plan.new_ss = _sector_conversion(source, plan.opened.device)
        if onto.grow or onto.grow_partition is not None:
            if plan.new_ss is not None:
                raise UsageError(
                    "growing while converting the sector size is not supported yet; "
                    "nothing was written"
                )
            plan.growing = plan_grow(
                table,
                source.filesystems,
                source.size,
                plan.opened.device.size,
                onto.grow_partition,
            )
            plan.moves = plan.growing.moves
        if plan.moves is not None and (plan.new_ss is not None or onto.zero_unused or onto.verify):
            raise UsageError(
                "moving or shrinking partitions does not go with converting the sector "
                "size, --zero-unused or --verify yet; nothing was written"
            )
    return plan


def _open(target: str, need: int, onto: Onto) -> OpenedTarget:
    return open_target(
        target, need, repository_path=onto.repository_path, confirm=onto.confirm, what=onto.what
    )


def _sector_conversion(source: DiskSource, target: Device) -> int | None:
    """The target's sector size when the copy must be converted to it; checked on the
    source before anything is written, so a copy that cannot convert is refused."""
    new_ss = target.logical_sector_size
    if not target.is_block or source.table is None or new_ss == source.sector_size:
        return None
    reason = sectors.check_disk(source.reader(), source.table, new_ss)
    if reason is not None:
        raise UsageError(
            f"target {target.path} has {new_ss}-byte sectors, the source "
            f"{source.sector_size}-byte ones, and the copy cannot be converted: {reason}; "
            "nothing was written"
        )
    return new_ss


def _moving_gpt(source: DiskSource, target_size: int) -> ExtentMap:
    """The source's backup GPT area when the target is larger (it would land mid-disk)."""
    table = source.table
    if table is None or table.kind != "gpt" or target_size <= source.size:
        return ExtentMap()
    return ExtentMap.span(*gpt.backup_area(table, source.size))


def _mark_incomplete(device: Device) -> None:
    """Zero whatever makes the target look like a disk now: an old table's MBR and
    GPT headers (primary and backup, in 512- or 4096-byte sectors), a bare
    filesystem's superblocks."""
    size = device.size
    zero_fill(
        device,
        0,
        ExtentMap.span(0, min(BARE_HEAD, size))
        | ExtentMap.span(max(0, size - TAIL), min(TAIL, size)),
    )
    device.sync()


def _incomplete_on_failure(device: Device) -> contextlib.AbstractContextManager[None]:
    return failure_says(
        f"target {device.path} is left incomplete, without a partition table "
        "or filesystem signature; run the command again to complete it"
    )


@contextlib.contextmanager
def failure_says(consequence: str) -> Iterator[None]:
    """Let any exception through, a :class:`BlockvaultError`'s message ending with
    ``consequence`` (what the failure left on the target): same class and exit code,
    only the one line the user reads grows."""
    try:
        yield
    except BlockvaultError as exc:
        exc.args = (shown(f"{exc}; {consequence}"),)
        raise
    except Interrupted as exc:  # a signal: its one line says what it left
        exc.outcome = consequence
        raise
