"""``blockvault import`` rows for other imaging tools' images: Clonezilla/Rescuezilla
and FOG directories, bare partclone images, raw dd images. Each probe is cheap (a marker
file, a magic number); each runner calls one library function per disk and prints one
summary line per snapshot (or the snapshots as JSON)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands import open_repo
from blockvault.disk.layout import refuse_plain_path
from blockvault.errors import ImageDamaged, SourceError
from blockvault.interop.image_dirs import (
    is_clonezilla,
    is_fog,
    is_redo,
    read_clonezilla,
    read_fog,
    read_redo,
)
from blockvault.interop.importer import ForeignDisk, import_disk, partclone_disk
from blockvault.interop.payload import Payload
from blockvault.pipeline.backup import backup
from blockvault.repo import Snapshot

__all__ = [
    "probe_clonezilla",
    "probe_fog",
    "probe_partclone",
    "probe_raw",
    "probe_redo",
    "run_clonezilla",
    "run_fog",
    "run_partclone",
    "run_raw",
    "run_redo",
]


def probe_clonezilla(source: str) -> bool:
    return is_clonezilla(source)


def probe_fog(source: str) -> bool:
    return is_fog(source)


def probe_redo(source: str) -> bool:
    return is_redo(source)


def probe_partclone(source: str) -> bool:
    """A file (or the first piece of one) whose plain stream starts with partclone's magic."""
    path = Path(source)
    if not path.is_file():
        return False
    try:
        with Payload([path]) as payload:
            return payload.peek(15) == b"partclone-image"
    except (ImageDamaged, OSError):  # unreadable or foreign: simply not this kind
        return False


def probe_raw(source: str) -> bool:
    """A disk image file: a partition table or a filesystem at its start."""
    if not Path(source).is_file():
        return False
    try:
        refuse_plain_path(source)
    except SourceError:
        return False
    return True


def _run(
    ctx: click.Context, disks: Sequence[ForeignDisk], options: dict[str, Any]
) -> list[Snapshot]:
    repo = open_repo(ctx)
    tags = tuple(options.get("tags") or ())
    with render.progress(bool(options.get("as_json"))) as reporter:
        return [import_disk(repo, disk, tags=tags, reporter=reporter) for disk in disks]


def _report(
    snapshots: Sequence[Snapshot], options: dict[str, Any], what: Callable[[Snapshot], str]
) -> None:
    if options.get("as_json"):
        render.emit_json(list(snapshots))
        return
    for snap in snapshots:
        s = snap.stats
        click.echo(
            f"snapshot {snap.id[:12]} imported from {what(snap)}: {render.size(s.used_bytes)} "
            f"used of {render.size(snap.disk_size)}, {render.plural(s.new_chunks, 'new chunk')}, "
            f"{render.size(s.stored_bytes)} added to the repository in {s.seconds:.1f}s",
            err=True,
        )
        click.echo(snap.id)


def run_clonezilla(ctx: click.Context, source: str, **options: Any) -> None:
    disks = read_clonezilla(Path(source))
    _report(_run(ctx, disks, options), options, lambda s: s.source)


def run_fog(ctx: click.Context, source: str, **options: Any) -> None:
    disks = read_fog(Path(source))
    _report(_run(ctx, disks, options), options, lambda s: s.source)


def run_redo(ctx: click.Context, source: str, **options: Any) -> None:
    _report(_run(ctx, read_redo(Path(source)), options), options, lambda s: s.source)


def run_partclone(ctx: click.Context, source: str, **options: Any) -> None:
    disk = partclone_disk(Path(source))
    _report(_run(ctx, [disk], options), options, lambda s: s.source)


def run_raw(ctx: click.Context, source: str, **options: Any) -> None:
    repo = open_repo(ctx)
    tags = tuple(options.get("tags") or ())
    with render.progress(bool(options.get("as_json"))) as reporter:
        snap = backup(repo, source, tags=tags, reporter=reporter)
    _report([snap], options, lambda s: s.source)
