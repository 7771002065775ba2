"""``blockvault versions PATH``: every stored version of one file across file snapshots."""

from __future__ import annotations

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo
from blockvault.cli.commands.ls import timestamp
from blockvault.files.compare import versions
from blockvault.files.restore import path_names
from blockvault.files.trees import TreeSource
from blockvault.text import shown


def register(group: click.Group) -> None:
    @group.command("versions")
    @click.argument("path")
    @click.option("--host", metavar="HOST", help="Only snapshots of HOST.")
    @click.option(
        "--path",
        "backed_up",
        metavar="DIR",
        help="Only snapshots that backed up DIR (as given to backup).",
    )
    @json_option
    @click.pass_context
    def versions_command(
        ctx: click.Context, path: str, host: str | None, backed_up: str | None, as_json: bool
    ) -> None:
        """List every version of PATH (absolute, as backed up) stored in the file
        snapshots, newest first: snapshot, time, size, mtime and a content digest
        (equal digests: equal contents). Consecutive identical versions are grouped
        on one line."""
        repo = open_repo(ctx)
        snaps = [
            s
            for s in repo.listing().usable()
            if s.kind == "files"
            and (host is None or s.host == host)
            and (backed_up is None or backed_up.rstrip("/") in s.paths)
        ]
        names = path_names(path)
        with render.progress(True) as reporter:
            found = versions(TreeSource(repo), snaps, names, reporter)
        if as_json:
            render.emit_json({"path": path, "versions": found})
            return
        if not found:
            click.echo(f"{shown(path)}: in none of {render.plural(len(snaps), 'file snapshot')}")
            return
        groups: list[list[int]] = []
        for k, v in enumerate(found):
            last = found[groups[-1][0]] if groups else None
            same = last is not None and (last.digest, last.size, last.mtime_ns, last.kind) == (
                v.digest,
                v.size,
                v.mtime_ns,
                v.kind,
            )
            if same:
                groups[-1].append(k)
            else:
                groups.append([k])
        for group in groups:
            v = found[group[0]]
            ids = ", ".join(found[k].snapshot[:12] for k in group)
            digest = v.digest[:12] if v.digest else v.kind
            click.echo(
                f"{digest}  {v.size:>12}  mtime {timestamp(v.mtime_ns)}  "
                f"{found[group[-1]].time[:19]} .. {v.time[:19]}  {v.host}  {ids}"
            )
