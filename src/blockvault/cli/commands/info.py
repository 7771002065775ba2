"""``blockvault info SNAPSHOT``: layout, used bytes, chunks, dedup and compression."""

from __future__ import annotations

from dataclasses import dataclass

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo
from blockvault.repo import Index, Repository, Snapshot
from blockvault.repo import format as fmt


@dataclass(frozen=True)
class RegionSummary:
    region: str
    size: int
    used_bytes: int
    chunks: int
    holes: int
    unique_chunks: int


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot: Snapshot
    regions: tuple[RegionSummary, ...]
    unique_chunks: int
    plaintext_bytes: int  # bytes of the distinct chunks before compression
    stored_bytes: int  # bytes those chunks take in the repository
    compression_ratio: float
    dedup_ratio: float  # used bytes per distinct plaintext byte


def summarize(repo: Repository, snap: Snapshot, index: Index) -> SnapshotInfo:
    regions = []
    for r in index.regions:
        ids = [c for c in r.chunk_ids if c != fmt.HOLE]
        regions.append(
            RegionSummary(
                r.name, r.size, r.used.total, len(ids), len(r.chunk_ids) - len(ids), len(set(ids))
            )
        )
    unique = index.chunk_ids()
    sizes = {
        raw.hex(): min(index.chunk_size, r.size - k * index.chunk_size)
        for r in index.regions
        for k, raw in enumerate(r.chunk_ids)
        if raw != fmt.HOLE
    }
    plain = sum(sizes.values())
    stored = repo.stored_size(unique)
    used = sum(r.used.total for r in index.regions)
    return SnapshotInfo(
        snap,
        tuple(regions),
        len(unique),
        plain,
        stored,
        round(plain / stored, 2) if stored else 0.0,
        round(used / plain, 2) if plain else 0.0,
    )


def register(group: click.Group) -> None:
    @group.command()
    @click.argument("snapshot")
    @json_option
    @click.pass_context
    def info(ctx: click.Context, snapshot: str, as_json: bool) -> None:
        """Show SNAPSHOT (an id, a unique id prefix, or 'latest'): its layout, each
        partition's filesystem and used bytes, chunk counts, dedup and compression."""
        repo = open_repo(ctx)
        snap = repo.resolve(snapshot)
        summary = summarize(repo, snap, repo.load_index(snap))
        if as_json:
            render.emit_json(summary)
            return
        click.echo(
            f"snapshot {snap.id}\n  time {snap.time}  host {snap.host}  source {snap.source}\n"
            f"  disk {render.size(snap.disk_size)}, {snap.table} table, "
            f"{snap.sector_size}-byte sectors, id {snap.disk_id or '-'}"
            + (f"\n  tags {', '.join(snap.tags)}" if snap.tags else "")
        )
        render.table(
            "Partitions",
            ["#", "Start", "Size", "Type", "Filesystem", "Label", "Used", "Imaged"],
            [
                (
                    p.number,
                    p.start,
                    render.size(p.size),
                    p.name or p.type,
                    p.filesystem,
                    p.label,
                    render.size(p.used_bytes),
                    "yes" if p.imaged else "no",
                )
                for p in snap.partitions
            ],
        )
        render.table(
            "Regions",
            ["Region", "Size", "Used", "Chunks", "Holes", "Unique"],
            [
                (
                    r.region,
                    render.size(r.size),
                    render.size(r.used_bytes),
                    r.chunks,
                    r.holes,
                    r.unique_chunks,
                )
                for r in summary.regions
            ],
        )
        click.echo(
            f"distinct chunks {summary.unique_chunks}: {render.size(summary.plaintext_bytes)} "
            f"-> {render.size(summary.stored_bytes)} stored "
            f"(compression {summary.compression_ratio}x, dedup {summary.dedup_ratio}x)"
        )
