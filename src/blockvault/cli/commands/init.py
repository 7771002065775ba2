"""``blockvault -r REPO init``: create an empty repository."""

from __future__ import annotations

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, passphrase_source, repo_location
from blockvault.repo import Repository
from blockvault.repo.repository import ENCRYPTIONS
from blockvault.text import command_word


def register(group: click.Group) -> None:
    @group.command()
    @click.option(
        "--chunk-size",
        default="256KiB",
        show_default=True,
        help="Chunk size for disk images, a power of two from 4KiB to 64MiB. Smaller "
        "chunks store less for disks changed in place; larger ones make fewer objects.",
    )
    @click.option(
        "--compression",
        default="zstd:3",
        show_default=True,
        help="Default compression: zstd:LEVEL (1-22) or none.",
    )
    @click.option(
        "--encryption",
        type=click.Choice(ENCRYPTIONS),
        default="none",
        show_default=True,
        help="repokey: encrypt every object with AES-256-GCM under a random key kept in "
        "the repository, wrapped by your passphrase.",
    )
    @json_option
    @click.pass_context
    def init(
        ctx: click.Context, chunk_size: str, compression: str, encryption: str, as_json: bool
    ) -> None:
        """Create a new, empty repository at REPO (a directory; created if missing).

        With --encryption repokey the passphrase comes from --password-file,
        $BLOCKVAULT_PASSWORD, or is asked twice on the terminal."""
        location = repo_location(ctx)
        repo = Repository.init(
            location,
            chunk_size=parse_size(chunk_size),
            compression=compression,
            encryption=encryption,
            passphrase=passphrase_source(
                ctx, new=f"creating encrypted repository {location}", prompt="New passphrase"
            ),
        )
        if as_json:
            render.emit_json({**repo.config.__dict__, "key": repo.key_id})
        elif repo.encrypted:
            click.echo(
                f"created encrypted repository {repo.config.id[:12]} at {repo.location}; "
                "without the passphrase nothing in it can be read: keep it safe, and a copy "
                f"of the key ('blockvault -r {command_word(repo.location)} key export FILE')"
            )
        else:
            click.echo(f"created repository {repo.config.id[:12]} at {repo.location}")


def parse_size(text: str) -> int:
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1] if t and t[-1] in "kmg" else ""
    try:
        return int(t.removesuffix(unit)) * units[unit]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size such as 4MiB") from None
