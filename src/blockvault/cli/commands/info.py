"""``blockvault info SNAPSHOT``: layout, used bytes, chunks, dedup and compression."""

from __future__ import annotations

from dataclasses import dataclass

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_snapshot
from blockvault.repo import Index, Repository, Snapshot
from blockvault.repo import format as fmt
from blockvault.text import shown


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
    """Sizes of one snapshot, each counted once, from its index and the stored chunks.

    The dedup ratio compares the bytes the snapshot's chunks hold (a chunk used twice
    counted twice) with those of its distinct chunks: 1.0 when no chunk repeats. Used
    bytes that are all zero are holes, not chunks: they count in neither (an earlier
    version divided used bytes by distinct bytes and so called skipped zeros "dedup")."""

    snapshot: Snapshot
    regions: tuple[RegionSummary, ...]
    used_bytes: int  # bytes the filesystems use, boot areas included
    hole_bytes: int  # used bytes that are all zero: no chunk stored for them
    chunk_bytes: int  # bytes of the chunks the index references, repeats included
    unique_chunks: int
    plaintext_bytes: int  # bytes of the distinct chunks before compression
    stored_bytes: int  # bytes those chunks take in the repository
    compression_ratio: float  # plaintext_bytes / stored_bytes
    dedup_ratio: float  # chunk_bytes / plaintext_bytes, within this snapshot


def summarize(repo: Repository, snap: Snapshot, index: Index) -> SnapshotInfo:
    regions = []
    hole_bytes = chunk_bytes = 0
    sizes: dict[str, int] = {}
    for r in index.regions:
        ids = [c for c in r.chunk_ids if c != fmt.HOLE]
        regions.append(
            RegionSummary(
                r.name, r.size, r.used.total, len(ids), len(r.chunk_ids) - len(ids), len(set(ids))
            )
        )
        for ref in r.chunks(index.chunk_size):
            if ref.chunk_id is None:
                hole_bytes += ref.used.total
            else:
                chunk_bytes += ref.length
                sizes[ref.chunk_id] = ref.length
    plain = sum(sizes.values())
    stored = repo.stored_size(set(sizes))
    return SnapshotInfo(
        snap,
        tuple(regions),
        sum(r.used.total for r in index.regions),
        hole_bytes,
        chunk_bytes,
        len(sizes),
        plain,
        stored,
        round(plain / stored, 2) if stored else 0.0,
        round(chunk_bytes / plain, 2) if plain else 0.0,
    )


def register(group: click.Group) -> None:
    @group.command()
    @click.argument("snapshot")
    @json_option
    @click.pass_context
    def info(ctx: click.Context, snapshot: str, as_json: bool) -> None:
        """Show SNAPSHOT (an id, a unique id prefix, or 'latest'): its layout, each
        partition's filesystem and used bytes, chunk counts, dedup and compression."""
        repo, snap = open_snapshot(ctx, snapshot)
        if snap.kind == "files":
            files_info(repo, snap, repo.load_index(snap), as_json)
            return
        summary = summarize(repo, snap, repo.load_index(snap))
        if as_json:
            render.emit_json(summary)
            return
        # host, source and tags come from the manifest, which a repository may forge
        host, source, tags = shown(snap.host), shown(snap.source), shown(", ".join(snap.tags))
        click.echo(
            f"snapshot {snap.id}\n  time {snap.time}  host {host}  source {source}\n"
            f"  disk {render.size(snap.disk_size)}, {snap.table} table, "
            f"{snap.sector_size}-byte sectors, id {snap.disk_id or '-'}"
            + (f"\n  tags {tags}" if snap.tags else "")
        )
        if snap.parent:  # an id: the manifest reader refuses anything but hex
            click.echo(f"  parent {snap.parent}")
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
        chunks = sum(r.chunks for r in summary.regions)
        click.echo(
            f"used {render.size(summary.used_bytes)}: "
            f"{render.plural(chunks, 'chunk')} of {render.size(summary.chunk_bytes)}, "
            f"{render.size(summary.hole_bytes)} of zeros kept as holes (nothing stored)\n"
            f"{render.plural(summary.unique_chunks, 'distinct chunk')}: "
            f"{render.size(summary.plaintext_bytes)} -> {render.size(summary.stored_bytes)} "
            f"stored (compression {summary.compression_ratio:.2f}x, "
            f"dedup within the snapshot {summary.dedup_ratio:.2f}x)"
        )


def files_info(repo: Repository, snap: Snapshot, index: Index, as_json: bool) -> None:
    """A file snapshot: what was backed up, how much, what it stores, what went wrong."""
    objects = index.chunk_ids()
    stored = repo.stored_size(objects)
    if as_json:
        render.emit_json({"snapshot": snap, "objects": len(objects), "stored_bytes": stored})
        return
    s = snap.stats
    host, source = shown(snap.host), shown(snap.source)
    click.echo(
        f"snapshot {snap.id}\n  time {snap.time}  host {host}  source {source}\n"
        f"  files {' '.join(shown(p) for p in snap.paths)}"
        + (f"\n  tags {shown(', '.join(snap.tags))}" if snap.tags else "")
    )
    if snap.parent:
        click.echo(f"  parent {snap.parent}")
    click.echo(
        f"{render.plural(s.files, 'file')}, {render.size(s.used_bytes)}; "
        f"{render.plural(len(objects), 'object')} (trees and content) take "
        f"{render.size(stored)} in the repository; this backup read "
        f"{render.size(s.read_bytes)} and added {render.size(s.stored_bytes)} "
        f"in {s.seconds:.1f}s"
    )
    if snap.warning_count:
        click.echo(f"{render.plural(snap.warning_count, 'warning')}:")
        for warning in snap.warnings:
            click.echo(f"  {shown(warning)}")
        if snap.warning_count > len(snap.warnings):
            click.echo(f"  ... and {snap.warning_count - len(snap.warnings)} more")
