"""``blockvault cat SNAPSHOT:PART/PATH``: write one file of a snapshot to stdout."""

from __future__ import annotations

import os
import sys
from typing import Final

import click

from blockvault.browse.volume import locate, open_volume, require_partition
from blockvault.cli.commands import luks_key_for, luks_key_option, open_address

BLOCK: Final = 1024 * 1024


def register(group: click.Group) -> None:
    @group.command("cat")
    @click.argument("address", metavar="SNAPSHOT:PART/PATH")
    @luks_key_option
    @click.pass_context
    def cat(ctx: click.Context, address: str, luks_key_files: tuple[str, ...]) -> None:
        """Write the file at PATH in partition PART of SNAPSHOT to standard output,
        fetching only the chunks it occupies (symlinks are followed). No root needed.
        The output is the file itself, so there is no --json."""
        repo, address = open_address(ctx, address)
        snap, addr, number = locate(repo, address)
        number = require_partition(snap, address, number)
        volume = open_volume(
            repo, snap, number, volume=addr.volume, luks_key=luks_key_for(luks_key_files, number)
        )
        entry = volume.entry(addr.path, follow=True)
        stream = volume.open(addr.path)
        out = sys.stdout.buffer
        done = 0
        try:
            while done < entry.size:
                block = volume.read_all(stream, addr.path, min(BLOCK, entry.size - done))
                if not block:
                    break
                out.write(block)
                done += len(block)
            out.flush()
        except BrokenPipeError:  # the reader (head, less) has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
