"""``blockvault verify [SNAPSHOT]``: re-read and re-hash what snapshots reference."""

from __future__ import annotations

import sys

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo, open_snapshot
from blockvault.errors import IntegrityError
from blockvault.pipeline.verify import verify


def register(group: click.Group) -> None:
    @group.command("verify")
    @click.argument("snapshot", required=False)
    @click.option(
        "--against",
        metavar="SOURCE",
        type=click.Path(dir_okay=False),
        help="Also compare the snapshot's used blocks with this device or image.",
    )
    @json_option
    @click.pass_context
    def verify_command(
        ctx: click.Context, snapshot: str | None, against: str | None, as_json: bool
    ) -> None:
        """Re-read and re-hash every chunk SNAPSHOT references (all snapshots when none
        is given); with --against, also compare its used blocks with SOURCE.
        Exits 4 when anything is missing, damaged or different."""
        if snapshot:
            repo, snap = open_snapshot(ctx, snapshot)
            snaps = [snap]
        else:
            repo = open_repo(ctx)
            snaps = repo.snapshots()
        with render.progress(as_json) as reporter:
            result = verify(repo, snaps, against=against, reporter=reporter)
        if as_json:
            render.emit_json(result)
        else:
            for p in result.problems:
                click.echo(f"{p.snapshot[:12]} {p.region} @ {p.offset}: {p.detail}", err=True)
            verdict = (
                "OK" if result.ok else f"FAILED ({render.plural(len(result.problems), 'problem')})"
            )
            click.echo(
                f"verified {render.plural(len(result.snapshots), 'snapshot')}, "
                f"{render.plural(result.chunks, 'chunk')}, "
                f"{render.size(result.bytes)}"
                + (f", compared with {against}" if against else "")
                + f" in {result.seconds:.1f}s: {verdict}"
            )
        if not result.ok:
            sys.exit(IntegrityError.exit_code)
