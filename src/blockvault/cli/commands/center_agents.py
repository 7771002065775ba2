"""``blockvault center`` subcommands: enrolment tokens and hosts (center-agents)."""

from __future__ import annotations

import click


def register(center: click.Group) -> None:
    """Adds this part's subcommands to the ``center`` group."""
