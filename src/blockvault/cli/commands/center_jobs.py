"""``blockvault center`` subcommands: repositories the center maintains (center-jobs)."""

from __future__ import annotations

import click


def register(center: click.Group) -> None:
    """Adds this part's subcommands to the ``center`` group."""
