"""``blockvault center repository``: the repositories the center scans and maintains
(center-jobs). They work on the center's state directly, with the code the API runs,
audited as ``local:USER``."""

from __future__ import annotations

import getpass
from pathlib import Path

import click
from sqlalchemy import select

from blockvault.cli import render
from blockvault.cli.commands import json_option, read_password_file
from blockvault.cli.commands.center_core import state_option
from blockvault.errors import UsageError

__all__ = ["register"]


def register(center: click.Group) -> None:
    """Adds this part's subcommands to the ``center`` group."""

    @center.group()
    def repository() -> None:
        """Repositories the center scans (sizes, snapshots) and maintains (prune by
        the times the center recorded, gc, check)."""

    @repository.command("add")
    @click.argument("name")
    @click.argument("location")
    @click.option(
        "--password-file",
        metavar="FILE",
        help="Store the repository's password (first line of FILE), sealed with the "
        "center's key: the center can then open it and hands it to agents in jobs. "
        "Without it the password stays on the machines.",
    )
    @click.option(
        "--keep-daily", type=click.IntRange(0, 100_000), default=0, help="prune keeps N days."
    )
    @click.option(
        "--keep-weekly", type=click.IntRange(0, 100_000), default=0, help="prune keeps N weeks."
    )
    @click.option(
        "--keep-monthly", type=click.IntRange(0, 100_000), default=0, help="prune keeps N months."
    )
    @click.option(
        "--keep-within", metavar="DURATION", help="prune keeps everything newer (7d, 2w)."
    )
    @state_option
    def repository_add(
        name: str,
        location: str,
        password_file: str | None,
        keep_daily: int,
        keep_weekly: int,
        keep_monthly: int,
        keep_within: str | None,
        state: Path,
    ) -> None:
        """Register repository NAME at LOCATION, with a retention policy for prune
        (ages counted from when the center first saw each snapshot)."""
        from blockvault.center import maintenance
        from blockvault.center.auth import audit
        from blockvault.center.context import open_configured
        from blockvault.center.db import transaction

        counts = {"daily": keep_daily, "weekly": keep_weekly, "monthly": keep_monthly}
        keep: dict[str, object] = {k: v for k, v in counts.items() if v}
        if keep_within:
            keep["within"] = keep_within
        password = read_password_file(password_file) if password_file else None
        center = open_configured(state)
        actor = f"local:{getpass.getuser()}"
        try:
            with transaction(center.sessions) as session:
                maintenance.register(session, center, name, location, password, keep or None)
                detail: dict[str, object] = {
                    "location": location,
                    "password_stored": bool(password),
                }
                audit(session, actor, "repository.add", name, detail, at=center.clock())
        except maintenance.RepositoryRefused as refused:
            raise UsageError(str(refused)) from None
        finally:
            center.engine.dispose()
        click.echo(f"repository {name} registered; the center scans it within minutes")

    @repository.command("list")
    @json_option
    @state_option
    def repository_list(as_json: bool, state: Path) -> None:
        """The registered repositories with their figures from the last scan."""
        from blockvault.center.context import open_configured
        from blockvault.center.maintenance import repository_view
        from blockvault.center.models import Repository

        center = open_configured(state)
        try:
            with center.sessions() as session:
                rows = [repository_view(r) for r in session.scalars(select(Repository))]
        finally:
            center.engine.dispose()
        if as_json:
            render.emit_json(rows)
            return
        render.table(
            None,
            ["Name", "Location", "Snapshots", "Stored", "Dedup", "Scanned"],
            [
                (
                    r["name"],
                    r["location"],
                    r["snapshot_count"],
                    r["stored_bytes"] and render.size(r["stored_bytes"]),
                    r["dedup_ratio"],
                    (r["scanned"] or "")[:19],
                )
                for r in rows
            ],
        )
