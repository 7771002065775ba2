"""``blockvault agent enrol``: register this machine with a Backup Center."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path

import click

from blockvault import __version__
from blockvault.cli.commands import plans_file
from blockvault.errors import UsageError

__all__ = ["register"]


def register(agent: click.Group) -> None:
    @agent.command("enrol")
    @click.argument("url", metavar="URL")
    @click.option(
        "--token",
        required=True,
        metavar="TOKEN",
        help="The one-time enrolment token from 'blockvault center token create' (or the "
        "dashboard's enrol page, or a host's re-key).",
    )
    @click.option(
        "--fingerprint",
        required=True,
        metavar="SHA256:...",
        help="The center certificate's fingerprint, as 'center init' printed it: the "
        "agent refuses any other certificate, before it sends the token.",
    )
    @click.option(
        "--name",
        metavar="NAME",
        help="This machine's name at the center. Default: its host name.",
    )
    @click.pass_context
    def enrol(ctx: click.Context, url: str, token: str, fingerprint: str, name: str | None) -> None:
        """Enrol this machine with the Backup Center at URL (https://HOST:PORT).

        Creates the agent's own Ed25519 key pair beside the plans file (the private
        key never leaves the machine), checks the center's certificate against
        --fingerprint, registers, and pins that certificate. Restart the agent
        afterwards: it then reports to the center and runs its central plans."""
        from blockvault.center.link.http import enrol as enrol_at
        from blockvault.center.link.identity import (
            HOST_NAME,
            AgentKey,
            enrolment_file,
            key_file,
        )

        name = name or socket.gethostname().split(".")[0]
        if not re.fullmatch(HOST_NAME, name):
            raise UsageError(
                f"--name {name!r}: 1-63 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit"
            )
        plans = plans_file(ctx)
        key = AgentKey.generate()
        enrolment = enrol_at(url, token, fingerprint, name, key, __version__)
        key.save(key_file(plans))  # the center holds its public half from now on
        enrolment.save(enrolment_file(plans))
        _drop_stale_cache(plans)
        group = f", group {enrolment.group}" if enrolment.group else ""
        click.echo(
            f"enrolled as {enrolment.host} (host {enrolment.host_id}{group}) at "
            f"{enrolment.url}; certificate {enrolment.fingerprint} pinned. Restart the "
            "agent to connect.",
            err=True,
        )


def _drop_stale_cache(plans: Path) -> None:
    """Central plans cached from an earlier enrolment are not this center's."""
    from blockvault.center.link.plans import central_plans_file

    with contextlib.suppress(FileNotFoundError):
        os.unlink(central_plans_file(plans))
