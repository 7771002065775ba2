"""``blockvault center`` subcommands: init, serve, users and the systemd unit (center-core)."""

from __future__ import annotations

import click


def register(center: click.Group) -> None:
    """Adds this part's subcommands to the ``center`` group."""
