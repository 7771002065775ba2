"""``blockvault center`` subcommands: enrolment tokens, groups and hosts (center-agents).

They work on the center's state directly (run them on the center's machine, as the
user that owns its state), with the same code the API runs, and write the same audit
rows, the actor being ``cli:USER``.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from blockvault.cli import render
from blockvault.cli.commands import json_option
from blockvault.errors import UsageError

__all__ = ["register"]

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_STATE = Path("/var/lib/blockvault/center")


def state_options(command: F) -> F:
    """Where the center's state is: its directory and, if not SQLite there, its database."""
    command = click.option(
        "--database",
        envvar="BLOCKVAULT_CENTER_DATABASE",
        metavar="URL",
        help="The center's database (postgresql://...). Default: SQLite in the state directory.",
    )(command)
    return click.option(
        "--state",
        envvar="BLOCKVAULT_CENTER_STATE",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_STATE,
        show_default=True,
        metavar="DIR",
        help="The center's state directory (as 'center init' made it).",
    )(command)


@contextmanager
def _database(state: Path, database: str | None) -> Iterator[Session]:
    from blockvault.center.context import open_center
    from blockvault.center.db import transaction

    if not state.is_dir():
        raise UsageError(f"{state}: no center state here; give --state, or run 'center init'")
    center = open_center(state, database)
    try:
        with transaction(center.sessions) as session:
            yield session
    finally:
        center.engine.dispose()


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


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
    @state_options
    def token_create(
        group: str | None, ttl: str, uses: int, as_json: bool, state: Path, database: str | None
    ) -> None:
        """Print a new enrolment token (shown this once; the center keeps its hash)."""
        from blockvault.center.api.hosts import MAX_TOKEN_TTL, create_enrol_token
        from blockvault.center.auth import audit
        from blockvault.center.db import now
        from blockvault.center.models import Group
        from blockvault.plans.retention import parse_duration

        lifetime = parse_duration(ttl)
        if not lifetime or lifetime > MAX_TOKEN_TTL:
            raise UsageError(f"--ttl {ttl}: from 1m to 30d")
        with _database(state, database) as session:
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
    @state_options
    def group_add(name: str, description: str, state: Path, database: str | None) -> None:
        """Add the host group NAME."""
        import re

        from blockvault.center.auth import audit
        from blockvault.center.db import now
        from blockvault.center.link.identity import HOST_NAME
        from blockvault.center.models import Group

        if not re.fullmatch(HOST_NAME, name):
            raise UsageError(f"group {name!r}: 1-63 letters, digits, '.', '_' or '-'")
        with _database(state, database) as session:
            if session.scalar(select(Group).where(Group.name == name)) is not None:
                raise UsageError(f"a group named {name} exists")
            session.add(Group(name=name, description=description))
            audit(session, _actor(), "group.create", name, at=now())
        click.echo(f"group {name} added", err=True)

    @group.command("list")
    @json_option
    @state_options
    def group_list(as_json: bool, state: Path, database: str | None) -> None:
        """List the host groups."""
        from blockvault.center.models import Group

        with _database(state, database) as session:
            rows = [
                (g.name, g.description) for g in session.scalars(select(Group).order_by(Group.name))
            ]
        if as_json:
            render.emit_json([{"name": n, "description": d} for n, d in rows])
        else:
            render.table(None, ["Name", "Description"], rows)
