"""``blockvault snapshots``: the snapshots in a repository, damaged ones named."""

from __future__ import annotations

import dataclasses
import shlex

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo
from blockvault.repo import Selector


def register(group: click.Group) -> None:
    @group.command()
    @json_option
    @click.pass_context
    def snapshots(ctx: click.Context, as_json: bool) -> None:
        """List snapshots, oldest first: id, time, host, source, disk size, used bytes,
        and the bytes each one added to the repository. A snapshot whose manifest
        or index is damaged is listed as damaged ('blockvault check' says more).
        The global --host and --source show only the snapshots they select."""
        repo = open_repo(ctx)
        listing = repo.listing()
        chosen = [s for s in listing.snapshots if repo.selector.matches(s)]
        if not as_json and not chosen and not listing.unreadable():
            click.echo(_nothing_listed(repo.location, len(listing.snapshots), repo.selector))
            return
        if as_json:
            render.emit_json(
                [{**dataclasses.asdict(s), "damaged": listing.damaged.get(s.id)} for s in chosen]
                + [{"id": i, "damaged": listing.damaged[i]} for i in listing.unreadable()]
            )
            return
        render.table(
            None,
            ["ID", "Time", "Host", "Source", "Size", "Used", "Stored", "Tags"],
            [
                (
                    s.id[:12],
                    "damaged" if s.id in listing.damaged else s.time[:19].replace("T", " "),
                    s.host,
                    s.source,
                    render.size(s.disk_size) if s.kind == "disk" else "files",
                    render.size(s.stats.used_bytes),
                    render.size(s.stats.stored_bytes),
                    ",".join(s.tags),
                )
                for s in chosen
            ]
            + [(i[:12], "damaged", "", "", "", "", "", "") for i in listing.unreadable()],
        )
        for snapshot_id, why in sorted(listing.damaged.items()):
            render.warn(f"snapshot {snapshot_id[:12]} is damaged: {why}")


def _nothing_listed(location: str, total: int, selector: Selector) -> str:
    """Instead of an empty table: how to make a first backup, or what hid the others."""
    repo = f"blockvault -r {shlex.quote(location)}"
    if not total:
        return (
            f"no snapshots in {location} yet ('blockvault disks' lists this machine's "
            f"disks); make the first with: {repo} backup /dev/sdX"
        )
    narrowed = " ".join(
        f"--{name} {shlex.quote(value)}"
        for name, value in (("host", selector.host), ("source", selector.source))
        if value is not None
    )
    return (
        f"no snapshot matches {narrowed}; the repository holds "
        f"{render.plural(total, 'snapshot')}; list them all with: {repo} snapshots"
    )
