"""``blockvault snapshots``: the snapshots in a repository."""

from __future__ import annotations

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo


def register(group: click.Group) -> None:
    @group.command()
    @json_option
    @click.pass_context
    def snapshots(ctx: click.Context, as_json: bool) -> None:
        """List snapshots, oldest first: id, time, host, source, disk size, used bytes,
        and the bytes each one added to the repository."""
        snaps = open_repo(ctx).snapshots()
        if as_json:
            render.emit_json(snaps)
            return
        render.table(
            None,
            ["ID", "Time", "Host", "Source", "Size", "Used", "Stored", "Tags"],
            [
                (
                    s.id[:12],
                    s.time[:19].replace("T", " "),
                    s.host,
                    s.source,
                    render.size(s.disk_size),
                    render.size(s.stats.used_bytes),
                    render.size(s.stats.stored_bytes),
                    ",".join(s.tags),
                )
                for s in snaps
            ],
        )
