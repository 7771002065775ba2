"""``blockvault export SNAPSHOT x.bvi [--split SIZE]``: a one-file image (the ``bvi`` row
of ``export.FORMATS``)."""

from __future__ import annotations

from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands import open_snapshot
from blockvault.pipeline.copy import export_bundle
from blockvault.repo import parse_compression
from blockvault.storage.bundle import parse_split

__all__ = ["recompress_option", "run", "split_option"]

split_option = click.option(
    "--split",
    metavar="SIZE",
    help="bvi: write numbered pieces DEST.001, DEST.002… of at most SIZE bytes each: "
    "fat32 or 4G (4 GiB - 1 MiB: FAT32 holds no file of 4 GiB), dvd (4480 MiB, one per "
    "single-layer DVD), or a size such as 700M. clonezilla: cut each partition image "
    "into pieces of SIZE named .aa .ab ... as Clonezilla does (fat32: its 4096 MB).",
)

recompress_option = click.option(
    "--recompress",
    metavar="zstd:LEVEL",
    help="bvi: compress each chunk again at LEVEL (1-22), keeping it when smaller (a "
    "smaller image for more time); default: chunks as the repository stores them.",
)


def run(
    ctx: click.Context,
    snapshot: str,
    dest: str,
    *,
    split: str | None = None,
    recompress: str | None = None,
    **_: Any,
) -> None:
    repo, snap = open_snapshot(ctx, snapshot)
    size = parse_split(split) if split else None
    if recompress:
        parse_compression(recompress)  # a bad spelling fails before anything is written
    with render.progress(False) as reporter:
        result = export_bundle(
            repo, snap, dest, split=size, compression=recompress, reporter=reporter
        )
    pieces = result.pieces
    where = pieces[0] if len(pieces) == 1 else f"{pieces[0]} … {pieces[-1]} ({len(pieces)} pieces)"
    click.echo(
        f"exported snapshot {snap.id[:12]} to {where}: {render.size(result.copied_bytes)} "
        f"({render.plural(result.chunks, 'chunk')}) in {result.seconds:.1f}s, "
        f"{render.size(result.rate)}/s"
    )
