"""``blockvault center alert``: alert targets, rules, the SMTP server and the alerts,
on the center's own state (run it on the center's machine, as its user). Each change
is audited as ``local:USER``."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy.orm import Session

from blockvault.cli import render
from blockvault.cli.commands import json_option
from blockvault.cli.commands.center_core import state_option
from blockvault.errors import UsageError

if TYPE_CHECKING:
    from blockvault.center.context import Center


def register(center: click.Group) -> None:
    @center.group()
    def alert() -> None:
        """Alerts: where they go (targets: mail or webhooks), which go where (rules),
        the SMTP server mail goes through, and the alerts themselves."""

    @alert.group()
    def target() -> None:
        """Where alerts go: mailto:ADDRESS or an http(s):// webhook."""

    @target.command("add")
    @click.argument("name")
    @click.argument("address")
    @click.option(
        "--secret-file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="Webhooks: sign each body with HMAC-SHA256 keyed by this file's first line "
        "(header X-Blockvault-Signature: sha256=HEX).",
    )
    @state_option
    def target_add(state: Path, name: str, address: str, secret_file: Path | None) -> None:
        """Add target NAME at ADDRESS (mailto:ann@example.org or https://...)."""
        from blockvault.center.alerting.config import add_target

        secret = _first_line(secret_file) if secret_file is not None else None
        with _session(state, "alert.target.create", name) as session:
            add_target(session, name, address, secret)
        click.echo(f"alert target {name} added; try it: blockvault center alert target test {name}")

    @target.command("list")
    @json_option
    @state_option
    def target_list(state: Path, as_json: bool) -> None:
        """The targets, and the last failure of each (if its last message failed)."""
        from blockvault.center.api.alerts import targets_shown

        with _session(state) as session:
            shown = [t.model_dump() for t in targets_shown(session)]
        if as_json:
            render.emit_json(shown)
            return
        columns = ["name", "kind", "address", "enabled", "signed", "last_error"]
        render.table("Alert targets", columns, [[t[c] for c in columns] for t in shown])

    @target.command("test")
    @click.argument("name")
    @state_option
    def target_test(state: Path, name: str) -> None:
        """Send a test message to target NAME now (exit 1 and the reason if it fails)."""
        from blockvault.center.alerting.config import find_target
        from blockvault.center.alerting.delivery import send_test

        with _session(state, "alert.target.test", name) as session:
            target_id = find_target(session, name).id
        with _opened(state) as center:
            send_test(center, target_id)
        click.echo(f"test message sent to {name}")

    @alert.group()
    def rule() -> None:
        """Which alerts go to which target."""

    @rule.command("add")
    @click.argument("event", type=click.Choice(_events()))
    @click.option("--target", "target_name", required=True, help="The target's name.")
    @click.option("--group", help="Only alerts of hosts in this group (default: all alerts).")
    @state_option
    def rule_add(state: Path, event: str, target_name: str, group: str | None) -> None:
        """Send alerts of kind EVENT to a target."""
        from blockvault.center.alerting.config import add_rule, find_target

        with _session(state, "alert.rule.create", event) as session:
            add_rule(session, event, find_target(session, target_name), group)
        click.echo(f"alerts {event}{f' of group {group}' if group else ''} go to {target_name}")

    @rule.command("list")
    @json_option
    @state_option
    def rule_list(state: Path, as_json: bool) -> None:
        """The rules."""
        from blockvault.center.api.alerts import rules_shown

        with _session(state) as session:
            shown = [r.model_dump() for r in rules_shown(session)]
        if as_json:
            render.emit_json(shown)
            return
        columns = ["id", "event", "group", "target", "enabled"]
        render.table("Alert rules", columns, [[r[c] for c in columns] for r in shown])

    @alert.command("smtp")
    @click.argument("host", required=False)
    @click.option("--port", type=click.IntRange(1, 65535), help="Default: by --security.")
    @click.option(
        "--security",
        type=click.Choice(["starttls", "tls", "none"]),
        default="starttls",
        show_default=True,
        help="STARTTLS on the submission port, TLS from the start, or none (no password then).",
    )
    @click.option("--from", "sender", metavar="ADDRESS", help="The From address.")
    @click.option("--user", help="Log in as USER (with --password-file).")
    @click.option(
        "--password-file",
        type=click.Path(dir_okay=False, exists=True),
        help="The SMTP password: the first line of this file, read at each sending.",
    )
    @click.option(
        "--ca-file",
        type=click.Path(dir_okay=False, exists=True),
        help="Trust this CA for the server's certificate instead of the system's.",
    )
    @click.option("--remove", is_flag=True, help="Forget the SMTP server: no mail goes out.")
    @state_option
    def smtp(state: Path, host: str | None, remove: bool, **options: Any) -> None:
        """Set the SMTP server that mail targets go through (HOST), or --remove it."""
        from blockvault.center.alerting.config import set_smtp

        if (host is None) != remove:
            raise UsageError("give the SMTP server's HOST, or --remove")
        table: dict[str, Any] | None = None
        if host is not None:
            names = {"sender": "from", "password_file": "password-file", "ca_file": "ca-file"}
            table = {"host": host} | {
                names.get(key, key): value for key, value in options.items() if value is not None
            }
        with _session(state, "alert.smtp", host) as session:
            set_smtp(session, table)
        click.echo("SMTP server removed" if table is None else f"mail goes through {host}")

    @alert.command("list")
    @click.option("--open", "only_open", is_flag=True, help="Only the open alerts.")
    @click.option(
        "--limit",
        type=click.IntRange(1, 1000),
        default=50,
        show_default=True,
        help="Show at most this many.",
    )
    @json_option
    @state_option
    def alert_list(state: Path, only_open: bool, limit: int, as_json: bool) -> None:
        """The alerts, newest first."""
        from blockvault.center.api.alerts import alerts_seen
        from blockvault.center.auth import Principal

        everyone = Principal(0, "cli", "admin", None, "token")
        with _session(state) as session:
            found = alerts_seen(session, everyone, "open" if only_open else "all", None, limit)
            shown = [a.model_dump() for a in found]
        if as_json:
            render.emit_json(shown)
            return
        columns = ["id", "event", "host", "message", "opened", "closed"]
        render.table("Alerts", columns, [[a[c] for c in columns] for a in shown])


def _events() -> list[str]:
    from blockvault.center.alerting.config import EVENTS

    return list(EVENTS)


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8") as file:
        return file.readline(4096).rstrip("\r\n")


@contextmanager
def _opened(state: Path) -> Iterator[Center]:
    from blockvault.center.context import open_configured

    center = open_configured(state)
    try:
        yield center
    finally:
        center.engine.dispose()


@contextmanager
def _session(
    state: Path, action: str | None = None, target: str | None = None
) -> Iterator[Session]:
    """A transaction on the center's database; ``action``: audited as done by this
    command's user (``local:USER``, as the other center commands do)."""
    from blockvault.center.auth import audit

    with _opened(state) as center, center.sessions() as session, session.begin():
        yield session
        if action is not None:
            audit(session, f"local:{getpass.getuser()}", action, target, at=center.clock())
