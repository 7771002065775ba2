"""``blockvault extract SNAPSHOT:PART/PATH DEST``: restore one file or directory tree."""

from __future__ import annotations

import click

from blockvault.browse.extract import extract
from blockvault.browse.volume import locate, open_volume, require_partition
from blockvault.cli import render
from blockvault.cli.commands import json_option, luks_key_for, luks_key_option, open_address
from blockvault.errors import TreeDamaged, TreeIncomplete
from blockvault.text import shown


def register(group: click.Group) -> None:
    @group.command("extract")
    @click.argument("address", metavar="SNAPSHOT:PART/PATH")
    @click.argument("dest", type=click.Path())
    @click.option(
        "-y", "--yes", is_flag=True, help="Replace existing files and merge into directories."
    )
    @click.option(
        "--no-owner", is_flag=True, help="Do not set owners (default: set them when root)."
    )
    @json_option
    @luks_key_option
    @click.pass_context
    def extract_command(
        ctx: click.Context,
        address: str,
        dest: str,
        yes: bool,
        no_owner: bool,
        luks_key_files: tuple[str, ...],
        as_json: bool,
    ) -> None:
        """Copy PATH (a file, symlink or whole directory) out of partition PART of
        SNAPSHOT to DEST, keeping modes, owners (as root), times and symlinks where
        the filesystem stores them, and holes of sparse files. DEST is the copy's
        name; if DEST is an existing directory the copy goes inside it. Nothing
        existing is replaced without --yes. No root or FUSE needed. Entries whose
        names would leave DEST (/, .., NUL, through a symlink) are skipped and named;
        then the exit code is 1 (4 when a file was lost to damaged data)."""
        repo, address = open_address(ctx, address)
        snap, addr, number = locate(repo, address)
        number = require_partition(snap, address, number)
        volume = open_volume(
            repo, snap, number, volume=addr.volume, luks_key=luks_key_for(luks_key_files, number)
        )
        with render.progress(as_json) as reporter:
            result = extract(
                volume,
                addr.path,
                dest,
                overwrite=yes,
                owners=False if no_owner else None,
                reporter=reporter,
            )
        if as_json:
            render.emit_json(result)
        else:
            click.echo(
                f"extracted {shown(result.source)} to {shown(result.target)}: "
                f"{render.plural(result.files, 'file')}, "
                f"{render.plural(result.directories, 'directory')}, "
                f"{render.plural(result.symlinks, 'symlink')}, "
                f"{render.size(result.bytes)}"
            )
        if result.skipped:
            damaged = any(s.damaged for s in result.skipped)
            raise (TreeDamaged if damaged else TreeIncomplete)(
                target=result.target, entries=render.plural(len(result.skipped), "entry")
            )
