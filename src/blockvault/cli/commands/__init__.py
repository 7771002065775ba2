"""One module per command; ``register`` adds one to the top-level group when it is used."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from blockvault.errors import NewPassphraseRequired, PassphraseRequired, UsageError
from blockvault.repo import Repository, Selector, Snapshot
from blockvault.storage.bundle import is_bundle

__all__ = [
    "COMMANDS",
    "grow_partition_option",
    "json_option",
    "new_ids_option",
    "open_address",
    "open_repo",
    "open_snapshot",
    "passphrase_source",
    "plans_file",
    "raw_option",
    "read_password_file",
    "register",
    "repo_location",
    "scratch_option",
    "system_root_option",
]

PASSWORD_ENV = "BLOCKVAULT_PASSWORD"


def repo_location(ctx: click.Context) -> str:
    location: str | None = ctx.obj.get("repo") if ctx.obj else None
    if not location:
        raise UsageError("no repository given: use -r REPO or set BLOCKVAULT_REPO")
    return location


def plans_file(ctx: click.Context) -> Path:
    """The plans file: the global --plans (or $BLOCKVAULT_PLANS), else the default."""
    from blockvault.plans.store import DEFAULT_PLANS  # only the commands that use plans

    given: str | None = (ctx.obj or {}).get("plans")
    return Path(given) if given else DEFAULT_PLANS


def read_password_file(path: str) -> str:
    """The first line of ``path``, without its line ending."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"password file {path}: {reason}") from None


def passphrase_source(
    ctx: click.Context,
    *,
    new: str | None = None,
    file: str | None = None,
    env: str = PASSWORD_ENV,
    option: str = "--password-file",
    prompt: str = "Passphrase",
    location: str | None = None,
) -> Callable[[], str]:
    """Where a passphrase comes from, asked only when the repository needs one:
    ``file`` (default: the global --password-file), else ``$env``, else a prompt that
    never echoes when stdin is a terminal. ``new`` says what a new passphrase is for
    (such as "creating encrypted repository R"): it is typed twice, and without a
    terminal the error says how to give it (``$env`` or ``option``)."""

    def ask() -> str:
        path = file if file is not None else (ctx.obj or {}).get("password_file")
        if path:
            return read_password_file(path)
        if env in os.environ:
            return os.environ[env]
        if not sys.stdin.isatty():
            if new is not None:
                raise NewPassphraseRequired(what=new, env=env, option=option)
            raise PassphraseRequired(repo=location or repo_location(ctx))
        text: str = click.prompt(
            prompt, hide_input=True, confirmation_prompt=new is not None, err=True, type=str
        )
        return text

    return ask


def open_location(ctx: click.Context, location: str) -> Repository:
    """The repository (or one-file image) at ``location``, with 'latest' narrowed by
    --host and --source."""
    passphrase = passphrase_source(ctx, location=location)
    repo = Repository.open(location, passphrase=passphrase)
    obj = ctx.obj or {}
    repo.selector = Selector(obj.get("host"), obj.get("source"))
    return repo


def open_repo(ctx: click.Context) -> Repository:
    """The repository of -r, with 'latest' narrowed by --host and --source."""
    return open_location(ctx, repo_location(ctx))


def snapshot_location(ctx: click.Context, ref: str) -> tuple[str, str]:
    """Where a SNAPSHOT argument lives and how to resolve it there: a one-file image's
    path names the image and its one snapshot ('latest'; no -r needed), anything
    else a snapshot of the repository of -r."""
    if is_bundle(ref):
        return ref, "latest"
    return repo_location(ctx), ref


def open_snapshot(ctx: click.Context, ref: str) -> tuple[Repository, Snapshot]:
    """The repository and snapshot a SNAPSHOT argument names (see ``snapshot_location``)."""
    location, ref = snapshot_location(ctx, ref)
    repo = open_location(ctx, location)
    return repo, repo.resolve(ref)


def open_address(ctx: click.Context, address: str) -> tuple[Repository, str]:
    """The repository a browse address reads and the address to resolve there. An
    address may start with a one-file image's path in place of SNAPSHOT,
    ``IMAGE[:PART][/PATH]``: the shortest prefix ending before a ``:`` or ``/`` (or
    the whole address) that is an image. Its one snapshot then stands for it."""
    for end in range(1, len(address) + 1):
        if (end == len(address) or address[end] in ":/") and is_bundle(address[:end]):
            repo = open_location(ctx, address[:end])
            return repo, repo.resolve("latest").id + address[end:]
    return open_repo(ctx), address


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")

# options that backup and inspect, and restore and clone, share
system_root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, exists=True),
    default="/",
    show_default=True,
    help="With --system: the directory to treat as the system's /.",
)
new_ids_option = click.option(
    "--new-ids",
    is_flag=True,
    help="Give the copy new GPT disk/partition GUIDs (MBR signature) and filesystem "
    "UUIDs/serials, to live beside the original. Default: keep them (a replacement boots).",
)
grow_partition_option = click.option(
    "--grow-partition",
    type=int,
    metavar="N",
    help="Like --grow, for partition N; the partitions after it move to the disk's end.",
)
raw_option = click.option(
    "--raw",
    is_flag=True,
    help="Take a regular file with neither a partition table nor a filesystem as a disk "
    "anyway (its bytes are copied raw, all-zero runs skipped).",
)
scratch_option = click.option(
    "--scratch",
    type=click.Path(file_okay=False, exists=True, writable=True),
    metavar="DIR",
    help="On a smaller target: a directory for sparse scratch files in which ext2/3/4 "
    "and NTFS filesystems are shrunk before they are written (needs about their used "
    "bytes free; the files are removed afterwards). Default: the first of $TMPDIR (or "
    "/tmp) and /var/tmp with room.",
)


# every command, each in the module of its name (imported only when that command runs)
COMMANDS = (
    "disks",
    "inspect",
    "init",
    "key",
    "backup",
    "snapshots",
    "info",
    "restore",
    "clone",
    "verify",
    "ls",
    "cat",
    "extract",
    "find",
    "mount",
    "umount",
    "prune",
    "gc",
    "unlock",
    "check",
    "demo",
    "cast",
    "export",
    "import",
    "serve-nbd",
    "plan",
    "status",
    "boot",
    "agent",
    "rescue",
)


def register(group: click.Group, name: str) -> None:
    """Add command ``name`` to ``group``, importing its module only now: a command
    pulls in only what it needs, and startup stays short."""
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    module.register(group)
