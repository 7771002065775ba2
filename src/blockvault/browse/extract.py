"""Single-file restore: copy a file or a directory tree out of a snapshot.

Every entry goes through the safe tree writer (``pipeline/tree.py``), because the
names come from the snapshot and may be hostile: an entry it refuses (a name with
``/``, ``..``, NUL, too long, a path through a symlink, a duplicate) is reported as
a warning, skipped with everything under it, and counted in the result. A file
whose data cannot be read (a missing or damaged chunk) is reported by name and
left out; the rest is still written. Files are written sparse under a temporary
name and renamed when complete; modes, owners (as root, where the filesystem
stores them) and times are applied, directories last so their times survive
their children. Nothing existing is overwritten unless asked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from blockvault.browse.filesystem import Entry
from blockvault.browse.volume import Volume, format_address
from blockvault.errors import FilesystemError, IntegrityError, UnsafeName
from blockvault.events import Reporter, Warned, quiet
from blockvault.pipeline.tree import Metadata, TreeWriter

__all__ = ["ExtractResult", "Skipped", "extract"]

BLOCK: Final = 1024 * 1024


@dataclass(frozen=True)
class Skipped:
    """An entry extract did not write: refused as unsafe, or its data unreadable."""

    path: str  # inside the partition, as the snapshot names it
    reason: str
    damaged: bool = False  # its data is missing or damaged in the repository


@dataclass(frozen=True)
class ExtractResult:
    source: str
    target: str
    files: int
    directories: int
    symlinks: int
    bytes: int
    chunks_fetched: int
    skipped: tuple[Skipped, ...] = field(default=())


def _blocks(volume: Volume, entry: Entry) -> Iterator[bytes]:
    stream = volume.open(entry.path)
    done = 0
    while done < entry.size:
        block = volume.read_all(stream, entry.path, min(BLOCK, entry.size - done))
        if not block:
            return
        yield block
        done += len(block)


def _metadata(entry: Entry) -> Metadata:
    return Metadata(entry.mode, entry.uid, entry.gid, entry.atime_ns, entry.mtime_ns)


def _place(volume: Volume, top: Entry, dest: Path) -> tuple[Path, str]:
    """The directory the copy goes in and the copy's name: ``dest`` itself names the
    copy, unless it is an existing directory (then the copy goes inside, as ``cp``)."""
    if dest.is_dir():
        if top.path == "/":  # a partition's root, or a file snapshot's
            whole = volume.snapshot.id[:12] if volume.snapshot.kind == "files" else None
            return dest, whole or f"p{volume.number}"
        return dest, top.name
    return dest.parent, dest.name


def extract(
    volume: Volume,
    path: str,
    dest: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    owners: bool | None = None,
    reporter: Reporter = quiet,
) -> ExtractResult:
    """Copy ``path`` (file, symlink or directory tree) of ``volume`` to ``dest``.

    ``dest`` names the copy; when it is an existing directory the copy goes inside it
    under its own name (as ``cp`` does). An existing file is replaced, and an existing
    directory merged into, only with ``overwrite``. ``owners``: set owners
    (default: when running as root). Entries not written are warned about through
    ``reporter`` and listed in the result's ``skipped``."""
    top = volume.entry(path)
    parent, name = _place(volume, top, Path(dest))
    owners = os.geteuid() == 0 if owners is None else owners
    files = dirs = links = total = 0
    skipped: list[Skipped] = []
    left_out: set[tuple[str, ...]] = set()  # directories skipped: their contents go too
    made_dirs: list[tuple[tuple[str, ...], Metadata]] = []

    def skip(names: tuple[str, ...], reason: str, damaged: bool = False) -> None:
        stored = top.path.rstrip("/") + "".join("/" + n for n in names)  # as the names are
        skipped.append(Skipped(stored or "/", reason, damaged))
        reporter(Warned(reason))

    with TreeWriter(
        parent, overwrite=overwrite, owners=owners, separators=volume.fs.separators
    ) as writer:
        try:
            for names, entry in volume.walk_names(path):
                if any(names[:depth] in left_out for depth in range(1, len(names))):
                    continue
                where = (name, *names)
                try:
                    if entry.kind == "dir":
                        writer.make_dir(where)
                        made_dirs.append((where, _metadata(entry)))
                        dirs += 1
                    elif entry.kind == "symlink":
                        writer.make_symlink(where, entry.target or "", _metadata(entry))
                        links += 1
                    elif entry.kind == "file":
                        total += writer.write_file(where, _blocks(volume, entry), _metadata(entry))
                        files += 1
                    # devices, fifos, sockets: not recreated
                except UnsafeName as exc:
                    skip(names, str(exc))
                    if entry.kind == "dir":
                        left_out.add(names)
                except (IntegrityError, FilesystemError) as exc:
                    damaged = isinstance(exc, IntegrityError)
                    skip(names, f"{entry.path!r} could not be finished: {exc}", damaged)
        finally:
            for where, meta in reversed(made_dirs):
                writer.set_metadata(where, meta)
    return ExtractResult(
        format_address(volume.snapshot.id, volume.number, top.path),
        str(parent / name),
        files,
        dirs,
        links,
        total,
        volume.fetched,
        tuple(skipped),
    )
