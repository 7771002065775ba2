"""``blockvault unlock``: remove the markers of backups and gcs that died uncleanly."""

from __future__ import annotations

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, repo_location
from blockvault.plans.retention import parse_duration
from blockvault.repo.sessions import MarkerInfo, marker_storage, unlock
from blockvault.text import shown


def register(group: click.Group) -> None:
    @group.command("unlock")
    @click.option(
        "--older-than",
        metavar="DURATION",
        help="Also remove markers silent for longer than DURATION (30m, 2h, 1d), "
        "whichever machine wrote them. A running backup rewrites its marker every 30s.",
    )
    @click.option("--dry-run", "-n", is_flag=True, help="Say what would go; remove nothing.")
    @json_option
    @click.pass_context
    def unlock_command(
        ctx: click.Context, older_than: str | None, dry_run: bool, as_json: bool
    ) -> None:
        """Remove the session markers that a backup or gc killed without cleaning up
        (SIGKILL, power loss) left behind, so that gc frees what they kept. On this
        machine a marker goes as soon as its process is gone (pid and process start
        time are recorded); markers of other machines go only with --older-than."""
        seconds = parse_duration(older_than).total_seconds() if older_than else None
        result = unlock(marker_storage(repo_location(ctx)), older_than=seconds, dry_run=dry_run)
        if as_json:
            render.emit_json(result)
            return
        verb = "would remove" if dry_run else "removed"
        for marker, reason in result.removed:
            click.echo(
                f"{verb} {marker.kind or 'unknown'} marker {shown(marker.name)}: {shown(reason)}"
            )
        for marker, reason in result.kept:
            click.echo(
                f"kept {marker.kind or 'unknown'} marker {shown(marker.name)}: {shown(reason)}"
            )
        if not result.removed and not result.kept:
            click.echo("no markers: nothing is running and nothing was left behind")


def _described(marker: MarkerInfo, reason: str) -> str:
    """A marker as one line; its name comes from a storage listing: shown escaped."""
    return f"{marker.kind or 'unknown'} marker {shown(marker.name)}: {shown(reason)}"
