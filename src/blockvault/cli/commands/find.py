"""``blockvault find PATTERN``: which snapshots hold a file, newest first."""

from __future__ import annotations

import click

from blockvault.browse.find import find
from blockvault.cli import render
from blockvault.cli.commands import (
    json_option,
    luks_key_option,
    luks_keys,
    open_repo,
    open_snapshot,
)
from blockvault.cli.commands.ls import timestamp
from blockvault.repo import Snapshot
from blockvault.text import shown


def register(group: click.Group) -> None:
    @group.command("find")
    @click.argument("pattern")
    @click.option("-s", "--snapshot", metavar="S", help="Search snapshot S only.")
    @click.option("-p", "--partition", type=int, metavar="N", help="Search partition N only.")
    @luks_key_option
    @json_option
    @click.pass_context
    def find_command(
        ctx: click.Context,
        pattern: str,
        snapshot: str | None,
        partition: int | None,
        luks_key_files: tuple[str, ...],
        as_json: bool,
    ) -> None:
        """List files whose name matches PATTERN (a glob such as '*.conf'; with a '/',
        matched against the whole path, such as 'etc/*.conf') in every snapshot,
        newest first, with size and modification time (UTC); each line starts with
        the address to give to cat or extract."""
        if snapshot:
            repo, snap = open_snapshot(ctx, snapshot)
            snaps: list[Snapshot] | None = [snap]
        else:
            repo, snaps = open_repo(ctx), None
        with render.progress(True) as reporter:
            matches = find(
                repo,
                pattern,
                snapshots=snaps,
                partition=partition,
                luks_keys=luks_keys(luks_key_files),
                reporter=reporter,
            )
            if as_json:
                render.emit_json(
                    [
                        {
                            "snapshot": m.snapshot,
                            "time": m.time,
                            "partition": m.partition,
                            "volume": m.volume,
                            "path": m.path,
                            "kind": m.kind,
                            "size": m.size,
                            "mtime": timestamp(m.mtime_ns),
                            "target": m.target,
                        }
                        for m in matches
                    ]
                )
                return
            for m in matches:
                kind = "" if m.kind == "file" else f" ({m.kind})"
                when = timestamp(m.mtime_ns)
                click.echo(f"{shown(m.address)}  {m.size:>12}  {when}  snapshot {m.time}{kind}")
