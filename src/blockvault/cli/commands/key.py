"""``blockvault -r REPO key ...``: export, import and re-wrap an encrypted repository's key."""

from __future__ import annotations

import os

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo, passphrase_source, repo_location
from blockvault.errors import UsageError
from blockvault.repo import Repository


def register(group: click.Group) -> None:
    @group.group("key")
    def key() -> None:
        """Manage the key of an encrypted repository (see 'init --encryption repokey')."""

    @key.command("export")
    @click.argument("file", type=click.Path(dir_okay=False))
    @json_option
    @click.pass_context
    def export_command(ctx: click.Context, file: str, as_json: bool) -> None:
        """Write the repository's key file (wrapped by the passphrase) to FILE, which
        must not exist. Keep it elsewhere: with it and the passphrase, 'key import'
        makes the repository readable again if its keys/ folder is lost."""
        repo = open_repo(ctx)
        data = repo.export_key()
        _write_new(file, data)
        if as_json:
            render.emit_json({"repository": repo.config.id, "key": repo.key_id, "file": file})
        else:
            click.echo(f"exported key {(repo.key_id or '')[:12]} of {repo.location} to {file}")

    @key.command("import")
    @click.argument("file", type=click.Path(dir_okay=False, exists=True))
    @json_option
    @click.pass_context
    def import_command(ctx: click.Context, file: str, as_json: bool) -> None:
        """Store the key file FILE (from 'key export') in the repository. It must be
        this repository's key and open with the passphrase (--password-file,
        $BLOCKVAULT_PASSWORD or asked)."""
        location = repo_location(ctx)
        try:
            with open(file, "rb") as source:
                data = source.read()
        except OSError as exc:
            raise UsageError(f"key file {file}: {exc.strerror or exc}") from None
        key_id = Repository.import_key(location, data, passphrase_source(ctx), origin=file)
        if as_json:
            render.emit_json({"repository": location, "key": key_id, "file": file})
        else:
            click.echo(f"imported key {key_id[:12]} from {file} into {location}")

    @key.command("change-passphrase")
    @click.option(
        "--new-password-file",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Read the new passphrase from FILE (first line). Else $BLOCKVAULT_NEW_PASSWORD, "
        "else it is asked twice.",
    )
    @json_option
    @click.pass_context
    def change_command(ctx: click.Context, new_password_file: str | None, as_json: bool) -> None:
        """Wrap the repository's key with a new passphrase. The new key object is
        written before the old one is deleted; the old passphrase stops working.
        Key files exported before keep opening with the old passphrase."""
        repo = open_repo(ctx)
        old = repo.key_id
        ask = passphrase_source(
            ctx,
            new=f"changing the passphrase of {repo.location}",
            file=new_password_file or "",
            env="BLOCKVAULT_NEW_PASSWORD",
            option="--new-password-file",
            prompt="New passphrase",
        )
        new = repo.change_passphrase(ask())
        if as_json:
            render.emit_json({"repository": repo.config.id, "old_key": old, "key": new})
        else:
            click.echo(f"changed the passphrase of {repo.location} (key {new[:12]})")


def _write_new(path: str, data: bytes) -> None:
    """Create ``path`` readable by its owner only; refuse to replace a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists; choose another file name") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
