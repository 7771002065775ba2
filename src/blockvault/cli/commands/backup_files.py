"""The file-backup half of ``blockvault backup``: its options and how it runs.

``backup DIR...`` (or ``--files PATH...``) backs up files and directories; ``--stdin``
and ``--stdin-from-command`` store a stream. Kept apart from ``backup.py`` (disk
imaging) so that both grow without meeting.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands.init import parse_size
from blockvault.errors import UsageError
from blockvault.files.backup import backup_files
from blockvault.files.select import Selection, absolute
from blockvault.files.stream import backup_command_output, backup_stream
from blockvault.repo import Repository, Snapshot

__all__ = ["files_options", "is_file_mode", "run_file_backup"]

_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--files",
        "files_mode",
        is_flag=True,
        help="Back up SOURCE as files, even when it is a block device or an image file.",
    ),
    click.option(
        "--exclude",
        "exclude",
        multiple=True,
        metavar="PATTERN",
        help="Leave out paths matching PATTERN (gitignore-style; repeatable).",
    ),
    click.option(
        "--exclude-file",
        "exclude_files",
        multiple=True,
        metavar="FILE",
        help="Read exclude patterns from FILE, one a line (repeatable).",
    ),
    click.option(
        "--iexclude",
        "iexclude",
        multiple=True,
        metavar="PATTERN",
        help="Like --exclude, ignoring case.",
    ),
    click.option(
        "--one-file-system",
        is_flag=True,
        help="Do not descend into other filesystems (mount points are kept empty).",
    ),
    click.option(
        "--exclude-caches",
        is_flag=True,
        help="Leave out directories holding a CACHEDIR.TAG with its signature.",
    ),
    click.option(
        "--exclude-if-present",
        "exclude_if_present",
        multiple=True,
        metavar="NAME",
        help="Leave out directories that hold a file NAME (repeatable).",
    ),
    click.option(
        "--exclude-larger-than",
        metavar="SIZE",
        help="Leave out files larger than SIZE (such as 500MiB).",
    ),
    click.option(
        "--snapshot",
        "fs_snapshot",
        is_flag=True,
        help="Read from a read-only btrfs snapshot of each path's subvolume, deleted "
        "afterwards (btrfs only).",
    ),
    click.option(
        "--stdin",
        "from_stdin",
        is_flag=True,
        help="Store standard input as one file, named by --name (database dumps).",
    ),
    click.option(
        "--stdin-from-command",
        "command",
        metavar="CMD",
        help="Run CMD (split into words, no shell) and store its output as one file "
        "(--name, else the program's name); nothing is stored if CMD fails.",
    ),
    click.option("--name", metavar="NAME", help="The file name of --stdin's stream."),
    click.option(
        "--host",
        metavar="NAME",
        help="Record this host name instead of the machine's (file backups).",
    ),
]


def files_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the file-backup options to the backup command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def is_file_mode(sources: tuple[str, ...], options: dict[str, Any]) -> bool:
    """A directory among the sources (or ``--files``) means a file backup."""
    if options.get("from_stdin") or options.get("command"):
        return True
    return bool(options.get("files_mode")) or any(os.path.isdir(s) for s in sources)


def run_file_backup(
    repo: Repository,
    sources: tuple[str, ...],
    tags: tuple[str, ...],
    options: dict[str, Any],
    as_json: bool,
) -> None:
    host = options.get("host") or ""
    if options.get("from_stdin") or options.get("command"):
        if sources or (options.get("from_stdin") and options.get("command")):
            raise UsageError("--stdin and --stdin-from-command take no SOURCE, and not each other")
        with render.progress(as_json) as reporter:
            if options.get("command"):
                name = options.get("name") or ""
                snap = backup_command_output(
                    repo, options["command"], name, tags=tags, host=host, reporter=reporter
                )
            else:
                if not options.get("name"):
                    raise UsageError("--stdin needs --name NAME: the file name to store it as")
                stdin = sys.stdin.buffer.fileno()
                snap = backup_stream(
                    repo,
                    lambda n: os.read(stdin, n),
                    options["name"],
                    tags=tags,
                    host=host,
                    reporter=reporter,
                )
        report(snap, as_json)
        return
    if not sources:
        raise UsageError("give the files or directories to back up")
    larger = options.get("exclude_larger_than")
    selection = Selection(
        exclude=tuple(options.get("exclude", ())),
        iexclude=tuple(options.get("iexclude", ())),
        exclude_caches=bool(options.get("exclude_caches")),
        exclude_if_present=tuple(options.get("exclude_if_present", ())),
        exclude_larger_than=_size(larger) if larger else None,
        one_file_system=bool(options.get("one_file_system")),
    ).with_exclude_files(options.get("exclude_files", ()))
    paths = [absolute(s) for s in sources]
    with render.progress(as_json) as reporter:
        snap = backup_files(
            repo,
            paths,
            selection=selection,
            tags=tags,
            host=host,
            snapshot=bool(options.get("fs_snapshot")),
            reporter=reporter,
        )
    report(snap, as_json)


def report(snap: Snapshot, as_json: bool) -> None:
    """The closing line of a file backup (or the snapshot as JSON) and its id."""
    if as_json:
        render.emit_json(snap)
        return
    s = snap.stats
    warned = f", {render.plural(snap.warning_count, 'warning')}" if snap.warning_count else ""
    click.echo(
        f"snapshot {snap.id[:12]} saved: {render.plural(s.files, 'file')}, "
        f"{render.size(s.used_bytes)}, {render.size(s.read_bytes)} read, "
        f"{render.size(s.stored_bytes)} added to the repository in {s.seconds:.1f}s{warned}",
        err=True,
    )
    click.echo(snap.id)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except click.BadParameter:
        raise UsageError(f"--exclude-larger-than {text!r} is not a size such as 500MiB") from None
