"""``blockvault demo``: build a sample disk, back it up, restore and verify it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option


def register(group: click.Group) -> None:
    @group.command()
    @click.option(
        "--workdir",
        default="demo-work",
        show_default=True,
        type=click.Path(file_okay=False),
        help="Where the sample disk and the restored copy are written.",
    )
    @json_option
    @click.pass_context
    def demo(ctx: click.Context, workdir: str, as_json: bool) -> None:
        """Build a sample GPT disk (EFI System FAT32, ext4, swap, NTFS, with real files),
        back it up twice into REPO (default ./demo-repo), restore it into a new image,
        verify it and run each filesystem's checker. Exits 1 if any check fails."""
        from blockvault_demo.demo import run_demo  # fixtures load only for the demo

        repository = (ctx.obj or {}).get("repo") or "demo-repo"
        with render.progress(as_json) as reporter:
            result = run_demo(Path(workdir), repository, reporter)
        if as_json:
            render.emit_json(result)
        else:
            s = result.snapshot
            click.echo(f"sample disk   {result.disk} ({render.size(s.disk_size)}, {s.table})")
            click.echo(f"repository    {result.repository}")
            click.echo(
                f"snapshot      {s.id[:12]}: {render.size(s.stats.used_bytes)} used, "
                f"{render.size(s.stats.stored_bytes)} stored, {s.stats.seconds:.2f}s"
            )
            click.echo(
                f"second backup {result.second.id[:12]}: "
                f"{render.size(result.second.stats.stored_bytes)} added"
            )
            click.echo(f"restored to   {result.restored}")
            render.table(
                "Checks",
                ["Check", "Result", "Detail"],
                [(c.name, "ok" if c.ok else "FAILED", c.detail) for c in result.checks],
            )
            click.echo(f"demo {'passed' if result.ok else 'FAILED'} in {result.seconds:.1f}s")
        if not result.ok:
            sys.exit(1)
