"""``blockvault import`` rows for other imaging tools' images: Clonezilla/Rescuezilla,
FOG and Redo Rescue directories, bare partclone images, raw dd images. Probes and
imports are the library's (``interop/sources.py``, ``pipeline/backup.py``); here each
runner calls one and prints one summary line per snapshot (or the records as JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands import open_repo
from blockvault.disk.layout import refuse_plain_path
from blockvault.errors import SourceError
from blockvault.interop.sources import IMAGE_KINDS, import_image
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
    return IMAGE_KINDS["clonezilla"].recognise(source)


def probe_fog(source: str) -> bool:
    return IMAGE_KINDS["fog"].recognise(source)


def probe_redo(source: str) -> bool:
    return IMAGE_KINDS["redo"].recognise(source)


def probe_partclone(source: str) -> bool:
    return IMAGE_KINDS["partclone"].recognise(source)


def probe_raw(source: str) -> bool:
    """A disk image file: a partition table or a filesystem at its start."""
    if not Path(source).is_file():
        return False
    try:
        refuse_plain_path(source)
    except SourceError:
        return False
    return True


def _imported(ctx: click.Context, source: str, kind: str, options: dict[str, Any]) -> None:
    repo = open_repo(ctx)
    tags = tuple(options.get("tags") or ())
    with render.progress(bool(options.get("as_json"))) as reporter:
        snapshots = import_image(repo, source, kind=kind, tags=tags, reporter=reporter)
    _report(snapshots, options)


def _report(snapshots: Sequence[Snapshot], options: dict[str, Any]) -> None:
    if options.get("as_json"):
        render.emit_json(list(snapshots))
        return
    for snap in snapshots:
        s = snap.stats
        click.echo(
            f"snapshot {snap.id[:12]} imported from {snap.source}: "
            f"{render.size(s.used_bytes)} used of {render.size(snap.disk_size)}, "
            f"{render.plural(s.new_chunks, 'new chunk')}, {render.size(s.stored_bytes)} "
            f"added to the repository in {s.seconds:.1f}s",
            err=True,
        )
        click.echo(snap.id)


def run_clonezilla(ctx: click.Context, source: str, **options: Any) -> None:
    _imported(ctx, source, "clonezilla", options)


def run_fog(ctx: click.Context, source: str, **options: Any) -> None:
    _imported(ctx, source, "fog", options)


def run_redo(ctx: click.Context, source: str, **options: Any) -> None:
    _imported(ctx, source, "redo", options)


def run_partclone(ctx: click.Context, source: str, **options: Any) -> None:
    _imported(ctx, source, "partclone", options)


def run_raw(ctx: click.Context, source: str, **options: Any) -> None:
    repo = open_repo(ctx)
    tags = tuple(options.get("tags") or ())
    with render.progress(bool(options.get("as_json"))) as reporter:
        snap = backup(repo, source, tags=tags, reporter=reporter)
    _report([snap], options)
