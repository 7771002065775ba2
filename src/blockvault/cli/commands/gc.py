"""``blockvault gc``: delete the chunks and indexes no snapshot references."""

from __future__ import annotations

from dataclasses import replace

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo
from blockvault.repo.gc import collect_garbage
from blockvault.repo.sessions import DEFAULT_TIMING
from blockvault.text import command_word


def register(group: click.Group) -> None:
    @group.command()
    @click.option(
        "--dry-run", "-n", is_flag=True, help="Count what would be deleted; delete nothing."
    )
    @click.option(
        "--margin",
        type=click.FloatRange(min=0),
        default=DEFAULT_TIMING.margin,
        show_default=True,
        metavar="SECONDS",
        help="Keep unreferenced objects written less than this long before the oldest "
        "running backup started (or before now).",
    )
    @json_option
    @click.pass_context
    def gc(ctx: click.Context, dry_run: bool, margin: float, as_json: bool) -> None:
        """Delete every chunk and index that no snapshot references, freeing the space
        of pruned snapshots and of interrupted backups. Safe while backups run:
        what a running backup may still reference is kept (see docs/FORMAT.md)."""
        repo = open_repo(ctx)
        timing = replace(DEFAULT_TIMING, margin=margin)
        with render.progress(as_json) as reporter:
            result = collect_garbage(repo, dry_run=dry_run, timing=timing, reporter=reporter)
        if as_json:
            render.emit_json(result)
            return
        verb = "would delete" if dry_run else "deleted"
        click.echo(
            f"{render.plural(result.referenced_chunks, 'chunk')} referenced by "
            f"{render.plural(result.snapshots, 'snapshot')}; {verb} "
            f"{render.plural(result.deleted_chunks, 'chunk')} "
            f"({render.size(result.deleted_bytes)}) and "
            f"{render.plural(result.deleted_indexes, 'index')} in {result.seconds:.1f}s"
        )
        if result.kept_young:
            hosts = ", ".join(result.kept_by_session)
            running = (
                f" ({render.plural(result.live_sessions, 'backup')} running on {hosts})"
                if result.live_sessions
                else ""
            )
            click.echo(
                f"kept {render.plural(result.kept_young, 'unreferenced object')} too new to "
                f"delete{running}; "
                "a later gc frees them"
            )
        for marker in result.blockers:
            click.echo(
                f"kept back by {marker.kind or 'backup'} marker {marker.name} (pid {marker.pid} "
                f"on {marker.host or '?'}): if that process is gone, "
                f"'blockvault -r {command_word(repo.location)} unlock' removes the marker"
            )
        if result.stale_sessions:
            click.echo(
                f"removed {render.plural(result.stale_sessions, 'marker')} of backups that died"
            )
