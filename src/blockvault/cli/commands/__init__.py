"""One module per command; ``register_all`` adds them to the top-level group."""

from __future__ import annotations

import click

from blockvault.errors import UsageError
from blockvault.repo import Repository

__all__ = ["open_repo", "register_all", "repo_location"]


def repo_location(ctx: click.Context) -> str:
    location: str | None = ctx.obj.get("repo") if ctx.obj else None
    if not location:
        raise UsageError("no repository given: use -r REPO or set BLOCKVAULT_REPO")
    return location


def open_repo(ctx: click.Context) -> Repository:
    return Repository.open(repo_location(ctx))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def register_all(group: click.Group) -> None:
    from blockvault.cli.commands import (
        backup,
        demo,
        disks,
        info,
        init,
        inspect,
        restore,
        snapshots,
        verify,
    )

    for module in (disks, inspect, init, backup, snapshots, info, restore, verify, demo):
        module.register(group)
