"""``blockvault center`` subcommands: enrolment tokens, groups and hosts (center-agents).

They work on the center's state directly (run them on the center's machine, as the
user that owns its state), with the same code the API runs, and write the same audit
rows, the actor being ``local:USER``.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import click
from sqlalchemy import select

from blockvault.cli import render
from blockvault.cli.commands import json_option
from blockvault.cli.commands.center_core import center_database, state_option
from blockvault.errors import UsageError

__all__ = ["register"]


def _actor() -> str:
    """Changes made on the server's shell are audited as ``local:<login>``."""
    return f"local:{getpass.getuser()}"


def register(center: click.Group) -> None:
    @center.group()
    def token() -> None:
        """Enrolment tokens: what a machine shows once to enrol ('agent enrol')."""

    @token.command("create")
    @click.option("--group", metavar="GROUP", help="Hosts enrolled with it join GROUP.")
    @click.option(
        "--ttl",
        default="1h",
        show_default=True,
        metavar="DURATION",
        help="How long the token stays valid (m, h, d: 30m, 1h, 7d; at most 30d).",
    )
    @click.option(
        "--uses",
        type=click.IntRange(1, 10000),
        default=1,
        show_default=True,
        help="How many machines may enrol with it.",
    )
    @json_option
    @state_option
    def token_create(group: str | None, ttl: str, uses: int, as_json: bool, state: Path) -> None:
        """Print a new enrolment token (shown this once; the center keeps its hash)."""
        from blockvault.center.api.hosts import MAX_TOKEN_TTL, create_enrol_token
        from blockvault.center.auth import audit
        from blockvault.center.db import now
        from blockvault.center.models import Group
        from blockvault.plans.retention import parse_duration

        lifetime = parse_duration(ttl)
        if not lifetime or lifetime > MAX_TOKEN_TTL:
            raise UsageError(f"--ttl {ttl}: from 1m to 30d")
        with center_database(state) as session:
            found = None
            if group is not None:
                found = session.scalar(select(Group).where(Group.name == group))
                if found is None:
                    raise UsageError(f"no group named {group}: add it with 'center group add'")
            at = now()
            secret, row = create_enrol_token(
                session, _actor(), at, group=found, ttl=lifetime, uses=uses
            )
            detail: dict[str, object] = {"group": group, "uses": uses, "ttl": ttl}
            audit(session, _actor(), "enrol-token.create", str(row.id), detail, at=at)
            expires = row.expires
        if as_json:
            render.emit_json({"token": secret, "group": group, "uses": uses, "expires": expires})
        else:
            click.echo(secret)
            click.echo(f"valid until {expires:%Y-%m-%d %H:%M} UTC for {uses} use(s)", err=True)

    @center.group()
    def group() -> None:
        """Host groups: plans and users' access are given per group."""

    @group.command("add")
    @click.argument("name", metavar="NAME")
    @click.option("--description", default="", metavar="TEXT", help="What the group is for.")
    @state_option
    def group_add(name: str, description: str, state: Path) -> None:
        """Add the host group NAME."""
        import re

        from blockvault.center.auth import audit
        from blockvault.center.db import now
        from blockvault.center.link.identity import HOST_NAME
        from blockvault.center.models import Group

        if not re.fullmatch(HOST_NAME, name):
            raise UsageError(f"group {name!r}: 1-63 letters, digits, '.', '_' or '-'")
        with center_database(state) as session:
            if session.scalar(select(Group).where(Group.name == name)) is not None:
                raise UsageError(f"a group named {name} exists")
            session.add(Group(name=name, description=description))
            audit(session, _actor(), "group.create", name, at=now())
        click.echo(f"group {name} added", err=True)

    @group.command("list")
    @json_option
    @state_option
    def group_list(as_json: bool, state: Path) -> None:
        """List the host groups."""
        from blockvault.center.models import Group

        with center_database(state) as session:
            rows = [
                (g.name, g.description) for g in session.scalars(select(Group).order_by(Group.name))
            ]
        if as_json:
            render.emit_json([{"name": n, "description": d} for n, d in rows])
        else:
            render.table(None, ["Name", "Description"], rows)
