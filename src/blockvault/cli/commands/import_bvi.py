"""``blockvault -r REPO import x.bvi``: a one-file image's snapshot enters the repository
(the ``bvi`` row of ``import.SOURCES``), deduplicated against what it holds."""

from __future__ import annotations

import os
from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands import open_repo, passphrase_source
from blockvault.pipeline.copy import copy_snapshot
from blockvault.repo import Repository

__all__ = ["IMAGE_PASSWORD_ENV", "image_password_option", "run"]

IMAGE_PASSWORD_ENV = "BLOCKVAULT_IMAGE_PASSWORD"

image_password_option = click.option(
    "--image-password-file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="bvi: the passphrase of an encrypted image, from FILE (first line); else "
    f"${IMAGE_PASSWORD_ENV}; else the repository's (--password-file, $BLOCKVAULT_PASSWORD, "
    "a prompt).",
)


def run(
    ctx: click.Context,
    source: str,
    *,
    image_password_file: str | None = None,
    **_: Any,
) -> None:
    target = open_repo(ctx)
    if image_password_file or IMAGE_PASSWORD_ENV in os.environ:
        ask = passphrase_source(ctx, file=image_password_file or "", env=IMAGE_PASSWORD_ENV)
    else:  # most often the same passphrase as the repository's
        ask = passphrase_source(ctx, prompt=f"Passphrase of {source}", location=source)
    image = Repository.open(source, passphrase=ask)
    snap = image.resolve("latest")
    with render.progress(False) as reporter:
        result = copy_snapshot(image, snap, target, reporter=reporter)
    click.echo(
        f"imported snapshot {snap.id[:12]} from {source} as {result.snapshot.id[:12]}: "
        f"{render.plural(result.copied_chunks, 'new chunk')} of {result.chunks} "
        f"({render.size(result.copied_bytes)} stored) in {result.seconds:.1f}s"
    )
