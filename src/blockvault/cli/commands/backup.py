"""``blockvault backup SOURCE``: image a disk or chosen partitions."""

from __future__ import annotations

from pathlib import Path

import click

from blockvault.cli import render
from blockvault.cli.commands import (
    json_option,
    luks_key_option,
    luks_keys,
    open_repo,
    raw_option,
    system_root_option,
)
from blockvault.disk.layout import refuse_plain_path
from blockvault.disk.live import LIVE_METHODS
from blockvault.disk.system import choose_system
from blockvault.errors import UsageError
from blockvault.pipeline.backup import backup


def register(group: click.Group) -> None:
    @group.command("backup")
    @click.argument("source", type=click.Path(dir_okay=False), required=False)
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
    @click.option(
        "--live",
        is_flag=False,
        flag_value="auto",
        default=None,
        type=click.Choice(LIVE_METHODS),
        help="SOURCE is in use (implied when a filesystem on it is mounted read-write): read "
        "an LVM snapshot of it (lvm; auto picks it where it can), or read it and read again "
        "until two reads agree (unsafe-reread: not crash-consistent, recorded as such).",
    )
    @system_root_option
    @raw_option
    @luks_key_option
    @json_option
    @click.pass_context
    def backup_command(
        ctx: click.Context,
        source: str | None,
        partitions: tuple[int, ...],
        tags: tuple[str, ...],
        compression: str | None,
        system: bool,
        live: str | None,
        root: str,
        raw: bool,
        luks_key_files: tuple[str, ...],
        as_json: bool,
    ) -> None:
        """Image SOURCE (a block device or disk image file) into the repository, reading
        only the blocks its filesystems use. Prints the new snapshot's id."""
        if system == (source is not None):
            raise UsageError("give either SOURCE or --system, not both or neither")
        if source is None:
            choice = choose_system(Path(root))
            source, partitions = str(choice.disk), partitions or choice.partitions
        if not raw:
            refuse_plain_path(source)
        keys = luks_keys(luks_key_files)
        repo = open_repo(ctx)
        if compression:
            repo = repo.with_compression(compression)
        with render.progress(as_json) as reporter:
            snap = backup(
                repo,
                source,
                partitions=partitions,
                tags=tags,
                live=live,
                luks_keys=keys,
                reporter=reporter,
            )
        if as_json:
            render.emit_json(snap)
            return
        s = snap.stats
        click.echo(
            f"snapshot {snap.id[:12]} saved: {render.size(s.used_bytes)} used of "
            f"{render.size(snap.disk_size)}, {render.plural(s.new_chunks, 'new chunk')}, "
            f"{render.size(s.stored_bytes)} added to the repository in {s.seconds:.1f}s"
            + (f", read {render.live(snap)}" if snap.live else ""),
            err=True,
        )
        click.echo(snap.id)
