"""``blockvault check``: the repository's structure, and with --read-data its data."""

from __future__ import annotations

import dataclasses
import sys

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo
from blockvault.errors import IntegrityError
from blockvault.repo.check import check_repository, parse_subset
from blockvault.text import command_word


def register(group: click.Group) -> None:
    @group.command()
    @click.option("--read-data", is_flag=True, help="Also read back and re-hash every chunk.")
    @click.option(
        "--subset",
        metavar="N%|n/t",
        help="With --read-data, read a random N% of the chunks, or part n of t "
        "(the same chunks each time; t runs cover all).",
    )
    @json_option
    @click.pass_context
    def check(ctx: click.Context, read_data: bool, subset: str | None, as_json: bool) -> None:
        """Check that every manifest and index parses and agrees, and that every
        referenced chunk exists; with --read-data that every chunk is intact. Damage
        is named by snapshot and partition. Exits 4 when anything is wrong."""
        chosen = parse_subset(subset) if subset else None
        if chosen is not None:
            read_data = True
        repo = open_repo(ctx)
        with render.progress(as_json) as reporter:
            result = check_repository(repo, read_data=read_data, subset=chosen, reporter=reporter)
        if as_json:
            render.emit_json(
                {
                    "ok": result.ok,
                    "damaged_snapshots": list(result.damaged_snapshots),
                    **dataclasses.asdict(result),
                }
            )
        else:
            for p in result.problems:
                where = (
                    f"{p.region} @ {p.offset}"
                    if p.offset or p.region.startswith(("p", "b"))
                    else p.region
                )
                click.echo(f"{p.snapshot[:12] or '-'} {where}: {p.detail}", err=True)
            read = (
                f", read {render.plural(result.chunks_read, 'chunk')} "
                f"({render.size(result.bytes_read)})"
                if read_data
                else ""
            )
            verdict = (
                "no problems"
                if result.ok
                else f"{render.plural(len(result.problems), 'problem')} in "
                f"{render.plural(len(result.damaged_snapshots), 'snapshot')}"
            )
            click.echo(
                f"checked {render.plural(result.snapshots, 'snapshot')}, "
                f"{render.plural(result.chunks, 'chunk')}{read} "
                f"in {result.seconds:.1f}s: {verdict}"
            )
            if result.unreferenced:
                click.echo(
                    f"{render.plural(result.unreferenced, 'unreferenced chunk')}; "
                    f"'blockvault -r {command_word(repo.location)} gc' frees them"
                )
        if not result.ok:
            sys.exit(IntegrityError.exit_code)
