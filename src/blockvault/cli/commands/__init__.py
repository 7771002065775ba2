"""One module per command; ``register`` adds one to the top-level group when it is used."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from blockvault.errors import NewPassphraseRequired, PassphraseRequired, UsageError
from blockvault.repo import Repository, Selector, Snapshot
from blockvault.storage.bundle import is_bundle

if TYPE_CHECKING:
    from blockvault.browse.volume import Address, Volume

__all__ = [
    "COMMANDS",
    "grow_partition_option",
    "json_option",
    "luks_key_for",
    "luks_key_option",
    "luks_key_source",
    "luks_keys",
    "new_ids_option",
    "open_address",
    "open_browsed",
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


F = Callable[..., object]


def luks_key_option(f: F) -> F:
    return click.option(
        "--luks-key-file",
        "luks_key_files",
        multiple=True,
        metavar="[PART=]FILE",
        help="Open LUKS containers with FILE's bytes (as cryptsetup --key-file), on partition "
        "PART only or on every one (repeatable): only their used sectors are then stored, "
        "still encrypted. Without it, on a terminal, a passphrase is asked for each LUKS "
        "partition.",
    )(f)


MAX_LUKS_KEY_FILE = 8 * 1024 * 1024  # cryptsetup's default keyfile-size limit


def luks_keys(values: tuple[str, ...]) -> dict[int | None, bytes]:
    """``--luks-key-file`` values as partition number (None: any) -> key bytes."""
    keys: dict[int | None, bytes] = {}
    for value in values:
        head, sep, tail = value.partition("=")
        number, path = (int(head), tail) if sep and head.isdigit() else (None, value)
        try:
            with open(path, "rb") as file:
                key = file.read(MAX_LUKS_KEY_FILE + 1)
        except OSError as exc:
            raise UsageError(f"LUKS key file {path}: {exc.strerror}") from None
        if not key or len(key) > MAX_LUKS_KEY_FILE:
            raise UsageError(f"LUKS key file {path}: empty or larger than 8 MiB")
        keys[number] = key
    return keys


def _luks_prompt(number: int) -> bytes | None:
    text: str = click.prompt(
        f"LUKS passphrase for partition {number} (empty: image it whole, encrypted)",
        hide_input=True,
        default="",
        show_default=False,
        err=True,
    )
    return text.encode() or None


def luks_key_source(
    values: tuple[str, ...],
) -> dict[int | None, bytes] | Callable[[int], bytes | None]:
    """The keys of ``--luks-key-file``; without any, on a terminal, a prompt asked only
    for partitions that hold a LUKS container."""
    if values or not sys.stdin.isatty():
        return luks_keys(values)
    return _luks_prompt


def luks_key_for(values: tuple[str, ...], snap: Snapshot, number: int | None) -> bytes | None:
    """The ``--luks-key-file`` key for partition ``number`` (or the one for every one);
    without any, on a terminal, asked for when that partition holds LUKS."""
    keys = luks_keys(values)
    key = keys.get(number, keys.get(None)) if number is not None else keys.get(None)
    record = snap.partition(number) if number is not None else None
    encrypted = record is not None and any(v.encrypted for v in record.volumes)
    if key is None and not values and encrypted and number is not None and sys.stdin.isatty():
        return _luks_prompt(number)
    return key


def open_browsed(
    repo: Repository, snap: Snapshot, address: Address, number: int, key_files: tuple[str, ...]
) -> Volume:
    """The filesystem ``address`` names in partition ``number``: the partition's, the
    one in its LUKS container, or a logical volume's (``SNAPSHOT:VG/LV:``)."""
    from blockvault.browse.volume import open_volume  # only the browse commands need it

    key = luks_key_for(key_files, snap, number)
    return open_volume(repo, snap, number, volume=address.volume, luks_key=key)


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
    "diff",
    "versions",
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
    "center",
    "pxe",
)


def register(group: click.Group, name: str) -> None:
    """Add command ``name`` to ``group``, importing its module only now: a command
    pulls in only what it needs, and startup stays short."""
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    module.register(group)
