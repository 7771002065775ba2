"""``blockvault backup SOURCE``: image a disk or chosen partitions (or back up files:
``backup_files.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo, raw_option, system_root_option
from blockvault.cli.commands.backup_files import files_options, is_file_mode, run_file_backup
from blockvault.disk.layout import refuse_plain_path
from blockvault.disk.system import choose_system
from blockvault.errors import UsageError
from blockvault.pipeline.backup import backup


def register(group: click.Group) -> None:
    @group.command("backup")
    @click.argument("sources", metavar="SOURCE", nargs=-1)
    @click.option(
        "-p",
        "--partition",
        "partitions",
        type=int,
        multiple=True,
        metavar="N",
        help="Image only partition N (repeatable); the table and boot areas are always kept.",
    )
    @click.option(
        "--tag", "tags", multiple=True, metavar="T", help="Tag the snapshot (repeatable)."
    )
    @click.option(
        "--compression",
        metavar="zstd:LEVEL",
        help="Compression for new chunks: zstd:LEVEL (1-22) or none. Default: the repository's.",
    )
    @click.option(
        "--system",
        is_flag=True,
        help="Image what the running system needs instead of SOURCE: the disk holding / "
        "and the partitions of /, /boot, /boot/efi, EFI System and BIOS boot.",
    )
    @system_root_option
    @raw_option
    @files_options
    @json_option
    @click.pass_context
    def backup_command(
        ctx: click.Context,
        /,
        sources: tuple[str, ...],
        partitions: tuple[int, ...],
        tags: tuple[str, ...],
        compression: str | None,
        system: bool,
        root: str,
        raw: bool,
        as_json: bool,
        **file_options: Any,
    ) -> None:
        """Image SOURCE (a block device or disk image file) into the repository, reading
        only the blocks its filesystems use; or, when SOURCE is a directory (or with
        --files), back up the files and directories given. Prints the new snapshot's id."""
        if not system and is_file_mode(sources, file_options):
            repo = open_repo(ctx)
            if compression:
                repo = repo.with_compression(compression)
            run_file_backup(repo, sources, tags, file_options, as_json)
            return
        if len(sources) > 1:
            raise UsageError("a disk backup takes one SOURCE (directories mean a file backup)")
        source = sources[0] if sources else None
        if system == (source is not None):
            raise UsageError("give either SOURCE or --system, not both or neither")
        if source is None:
            choice = choose_system(Path(root))
            source, partitions = str(choice.disk), partitions or choice.partitions
        if not raw:
            refuse_plain_path(source)
        repo = open_repo(ctx)
        if compression:
            repo = repo.with_compression(compression)
        with render.progress(as_json) as reporter:
            snap = backup(repo, source, partitions=partitions, tags=tags, reporter=reporter)
        if as_json:
            render.emit_json(snap)
            return
        s = snap.stats
        click.echo(
            f"snapshot {snap.id[:12]} saved: {render.size(s.used_bytes)} used of "
            f"{render.size(snap.disk_size)}, {render.plural(s.new_chunks, 'new chunk')}, "
            f"{render.size(s.stored_bytes)} added to the repository in {s.seconds:.1f}s",
            err=True,
        )
        click.echo(snap.id)
