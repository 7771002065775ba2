"""CLI glue for ``blockvault export SNAPSHOT DIR --format clonezilla``."""

from __future__ import annotations

from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands import open_snapshot
from blockvault.cli.commands.init import parse_size
from blockvault.interop.clonezilla_export import FAT32_PIECE, export_clonezilla

__all__ = ["parse_split", "run"]


def parse_split(text: str | None) -> int | None:
    """``--split``: a size (4G, 700M), or ``fat32`` for Clonezilla's 4096 MB pieces."""
    if text is None:
        return None
    return FAT32_PIECE if text.strip().lower() == "fat32" else parse_size(text)


def run(ctx: click.Context, snapshot: str, dest: str, **options: Any) -> None:
    repo, snap = open_snapshot(ctx, snapshot)
    with render.progress(bool(options.get("as_json"))) as reporter:
        result = export_clonezilla(
            repo,
            snap,
            dest,
            disk_name=options.get("disk_name"),
            split=parse_split(options.get("split")),
            reporter=reporter,
        )
    if options.get("as_json"):
        render.emit_json(result)
        return
    click.echo(
        f"exported snapshot {snap.id[:12]} as Clonezilla image {dest} "
        f"(disk {result.disk_name}, partitions {' '.join(result.parts) or 'none'}): "
        f"{render.size(result.payload_bytes)} in {result.seconds:.1f}s"
    )
