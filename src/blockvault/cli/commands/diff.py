"""``blockvault diff SNAP1 SNAP2``: what changed between two file snapshots."""

from __future__ import annotations

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo
from blockvault.errors import UsageError
from blockvault.files.compare import diff
from blockvault.files.trees import TreeSource
from blockvault.text import shown

_SIGNS = {"added": "+", "removed": "-", "changed": "M"}


def register(group: click.Group) -> None:
    @group.command("diff")
    @click.argument("older")
    @click.argument("newer")
    @json_option
    @click.pass_context
    def diff_command(ctx: click.Context, older: str, newer: str, as_json: bool) -> None:
        """List the paths added (+), removed (-) and changed (M) from file snapshot
        OLDER to NEWER, with sizes and what changed: type, content, mode, owner,
        xattrs, target (symlinks, devices), mtime. Unchanged directories are skipped
        by their tree ids, without being read."""
        repo = open_repo(ctx)
        snaps = [repo.resolve(older), repo.resolve(newer)]
        for snap in snaps:
            if snap.kind != "files":
                raise UsageError(
                    f"snapshot {snap.id[:12]} is a disk image: diff compares file snapshots"
                )
        source = TreeSource(repo)
        with render.progress(True) as reporter:
            changes = list(diff(source, snaps[0], snaps[1], reporter))
        if as_json:
            render.emit_json({"older": snaps[0].id, "newer": snaps[1].id, "changes": changes})
            return
        for c in changes:
            sizes = (
                f"{c.size_before} -> {c.size_after}"
                if c.change == "changed"
                else str(c.size_after or c.size_before)
            )
            what = f" ({', '.join(c.what)})" if c.what else ""
            kind = "/" if c.kind == "dir" else ""
            click.echo(f"{_SIGNS[c.change]} {shown(c.path)}{kind}  {sizes}{what}")
        counts = {k: sum(1 for c in changes if c.change == k) for k in _SIGNS}
        click.echo(
            f"{counts['added']} added, {counts['removed']} removed, {counts['changed']} changed",
            err=True,
        )
