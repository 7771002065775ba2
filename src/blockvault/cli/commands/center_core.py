"""``blockvault center`` subcommands: init, serve, users and the systemd unit (center-core)."""

from __future__ import annotations

import contextlib
import getpass
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from blockvault.cli.commands import json_option, read_password_file
from blockvault.cli.render import emit_json

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from blockvault.center.users import Actor

__all__ = ["center_database", "register"]

state_option = click.option(
    "--state",
    envvar="BLOCKVAULT_CENTER",
    type=click.Path(file_okay=False, path_type=Path),
    default="/var/lib/blockvault/center",
    show_default=True,
    metavar="DIR",
    help="The center's state directory (also $BLOCKVAULT_CENTER).",
)


def _actor() -> Actor:
    """Changes made on the server's shell are audited as ``local:<login>``."""
    from blockvault.center.db import now
    from blockvault.center.users import Actor

    return Actor(f"local:{getpass.getuser()}", now())


def register(center: click.Group) -> None:
    @center.command("init")
    @state_option
    @click.option(
        "--database",
        metavar="URL",
        help="postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME for a larger site. "
        "Default: SQLite in the state directory.",
    )
    @click.option("--admin", default="admin", show_default=True, help="The first admin's name.")
    @click.option(
        "--admin-password-file",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="The first admin's password (first line). Default: a generated one, printed once.",
    )
    @click.option(
        "--cert",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        metavar="FILE",
        help="Serve this PEM certificate (chain, leaf first) instead of a self-signed one.",
    )
    @click.option(
        "--key",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        metavar="FILE",
        help="The PEM private key of --cert.",
    )
    @click.option(
        "--hostname",
        "hostnames",
        multiple=True,
        metavar="NAME",
        help="A name agents and browsers use to reach the center (repeatable): the "
        "self-signed certificate carries them. Default: this machine's name.",
    )
    @click.option(
        "--listen",
        default="0.0.0.0:8443",
        show_default=True,
        metavar="HOST:PORT",
        help="Where 'center serve' listens (HTTPS).",
    )
    @click.option(
        "--force",
        is_flag=True,
        help="Set up an existing center again: new configuration and certificate (agents "
        "must pin the new fingerprint), a new password for the admin; the database stays.",
    )
    @json_option
    def init(
        state: Path,
        database: str | None,
        admin: str,
        admin_password_file: str | None,
        cert: Path | None,
        key: Path | None,
        hostnames: tuple[str, ...],
        listen: str,
        force: bool,
        as_json: bool,
    ) -> None:
        """Set up a Backup Center in DIR: configuration (center.toml), database, a TLS
        certificate and the first admin; prints the certificate's fingerprint, which
        agents pin when they enrol."""
        from blockvault.center.state import init_state

        password = read_password_file(admin_password_file) if admin_password_file else None
        done = init_state(
            state,
            actor=_actor(),
            database=database,
            admin=admin,
            password=password,
            certificate=cert,
            key=key,
            hostnames=list(hostnames),
            listen=listen,
            force=force,
        )
        if as_json:
            emit_json(
                {
                    "state": str(done.state),
                    "url": done.url,
                    "fingerprint": done.fingerprint,
                    "admin": done.admin,
                    "password": done.password,
                    "certificate": str(done.certificate),
                    "self_signed": done.self_signed,
                }
            )
            return
        click.echo(f"center set up in {done.state}")
        click.echo(f"certificate {done.certificate}: {done.fingerprint}")
        if done.password is not None:
            click.echo(f"admin {done.admin}, password (shown once): {done.password}")
        click.echo(f"start it: blockvault center serve --state {done.state}")
        click.echo("enrol a machine: blockvault center token create, then on that machine:")
        click.echo(
            f"  blockvault agent enrol {done.url} --token TOKEN --fingerprint {done.fingerprint}"
        )

    @center.command("serve")
    @state_option
    @click.option(
        "--listen",
        metavar="HOST:PORT",
        help="Listen here instead of where center.toml says.",
    )
    def serve(state: Path, listen: str | None) -> None:
        """Run the center: the HTTPS API, the agent API, the dashboard and the
        background workers, in this process, until SIGTERM or Ctrl-C."""
        from blockvault.center.context import open_configured
        from blockvault.center.serve import serve as run

        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per migration step
        center = open_configured(state)
        try:
            run(center, listen)
        finally:
            center.engine.dispose()

    @center.command("install")
    @state_option
    @click.option(
        "--unit-dir",
        type=click.Path(file_okay=False, path_type=Path),
        metavar="DIR",
        help="Write the unit into DIR instead of /etc/systemd/system.",
    )
    @click.option("--dry-run", "-n", is_flag=True, help="Print the unit; write and enable nothing.")
    def install(state: Path, unit_dir: Path | None, dry_run: bool) -> None:
        """Write a hardened systemd unit that runs 'blockvault center serve' on DIR,
        and enable and start it where systemd runs."""
        from blockvault.center.context import load_config
        from blockvault.center.service import CENTER_UNIT, center_unit
        from blockvault.plans.service import install_unit

        load_config(state)  # refused now, not when the service starts
        text = center_unit(state)
        if dry_run:
            click.echo(text, nl=False)
            return
        done = install_unit(text, directory=unit_dir, name=CENTER_UNIT)
        click.echo(f"wrote {done.unit}")
        if done.enabled:
            click.echo(f"{CENTER_UNIT} enabled and started")
        else:
            steps = "; ".join(" ".join(c) for c in done.commands)
            click.echo(
                f"systemd is not running on this machine: nothing started; where it runs: {steps}"
            )

    _register_users(center)


@contextlib.contextmanager
def center_database(state: Path) -> Iterator[Session]:
    """A transaction on the center's database in ``state`` (for every center command
    that changes its tables from the command line)."""
    from blockvault.center.context import open_configured
    from blockvault.center.db import transaction

    opened = open_configured(state)
    try:
        with transaction(opened.sessions) as session:
            yield session
    finally:
        opened.engine.dispose()


def _new_password(password_file: str | None) -> tuple[str, bool]:
    """The password from the file, else a generated one (True: show it once)."""
    if password_file:
        return read_password_file(password_file), False
    return secrets.token_urlsafe(18), True


password_file_option = click.option(
    "--password-file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="The password (first line). Default: a generated one, printed once.",
)


def _register_users(center: click.Group) -> None:
    from blockvault.center import users

    @center.group("user")
    def user() -> None:
        """The center's user accounts: admin, operator and viewer, each maybe limited
        to host groups. Changes are audited as local:<your login>."""

    @user.command("add")
    @state_option
    @click.argument("name")
    @click.option(
        "--role",
        type=click.Choice(["admin", "operator", "viewer"]),
        required=True,
        help="viewer: reads; operator: also runs, restores, deploys; "
        "admin: also plans, users, agents, settings.",
    )
    @click.option(
        "--group",
        "groups",
        multiple=True,
        metavar="G",
        help="Limit the user to hosts of group G (repeatable). Default: every group.",
    )
    @password_file_option
    def add(
        state: Path, name: str, role: str, groups: tuple[str, ...], password_file: str | None
    ) -> None:
        """Add user NAME."""
        password, show = _new_password(password_file)
        with center_database(state) as session:
            users.add_user(session, _actor(), name, role, password, list(groups) or None)
        click.echo(
            f"added {role} {name}" + (f", password (shown once): {password}" if show else "")
        )

    @user.command("list")
    @state_option
    @json_option
    def list_(state: Path, as_json: bool) -> None:
        """List the users (never their password hashes)."""
        with center_database(state) as session:
            found = users.all_users(session)
        if as_json:
            emit_json([users.user_view(u) for u in found])
            return
        for one in found:
            groups = ",".join(one.groups) if one.groups is not None else "*"
            state_ = "disabled" if one.disabled else "enabled"
            click.echo(f"{one.name}\t{one.role}\tgroups={groups}\t{state_}")

    @user.command("passwd")
    @state_option
    @click.argument("name")
    @password_file_option
    def passwd(state: Path, name: str, password_file: str | None) -> None:
        """Set NAME's password (ends NAME's browser sessions)."""
        password, show = _new_password(password_file)
        with center_database(state) as session:
            users.update_user(session, _actor(), name, password=password)
        click.echo(f"password of {name} changed" + (f" (shown once): {password}" if show else ""))

    for verb, disabled in (("disable", True), ("enable", False)):

        @user.command(verb, help=f"{verb.capitalize()} user NAME's logins and API tokens.")
        @state_option
        @click.argument("name")
        def toggle(state: Path, name: str, disabled: bool = disabled, verb: str = verb) -> None:
            with center_database(state) as session:
                users.update_user(session, _actor(), name, disabled=disabled)
            click.echo(f"{verb}d {name}")

    @user.command("delete")
    @state_option
    @click.argument("name")
    def delete(state: Path, name: str) -> None:
        """Delete user NAME with its sessions and API tokens."""
        with center_database(state) as session:
            users.delete_user(session, _actor(), name)
        click.echo(f"deleted {name}")
