"""Single-file restore: copy a file or a directory tree out of a snapshot.

Contents are written sparse (all-zero blocks are skipped, so holes stay holes);
then modes, owners (when running as root and the filesystem stores them) and
times are applied, directories last so their times survive their children.
Nothing existing is overwritten unless asked.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from blockvault.browse.filesystem import Entry
from blockvault.browse.volume import Volume
from blockvault.errors import TargetNotEmpty

__all__ = ["ExtractResult", "extract", "write_sparse"]

BLOCK: Final = 1024 * 1024
HOLE_GRAIN: Final = 64 * 1024  # zero runs this long (and aligned) become holes


@dataclass(frozen=True)
class ExtractResult:
    source: str
    target: str
    files: int
    directories: int
    symlinks: int
    bytes: int
    chunks_fetched: int


def write_sparse(volume: Volume, path: str, size: int, target: Path) -> None:
    """Write the file ``path`` of ``volume`` to ``target``, leaving holes for zeros."""
    stream = volume.open(path)
    zero = bytes(HOLE_GRAIN)
    with open(target, "wb") as out:
        done = 0
        while done < size:
            block = volume.read_all(stream, path, min(BLOCK, size - done))
            if not block:
                break
            view = memoryview(block)
            for start in range(0, len(block), HOLE_GRAIN):
                piece = view[start : start + HOLE_GRAIN]
                if piece == zero[: len(piece)]:
                    out.seek(len(piece), os.SEEK_CUR)
                else:
                    out.write(piece)
            done += len(block)
        out.truncate(done)


def _apply(entry: Entry, target: Path, posix: bool, owners: bool) -> None:
    if owners and entry.uid is not None and entry.gid is not None:
        os.lchown(target, entry.uid, entry.gid)
    if entry.kind != "symlink" and posix:
        os.chmod(target, stat.S_IMODE(entry.mode))
    atime = entry.atime_ns if entry.atime_ns is not None else entry.mtime_ns
    with contextlib.suppress(NotImplementedError):  # lutimes missing on some systems
        os.utime(target, ns=(atime, entry.mtime_ns), follow_symlinks=False)


def _clear(target: Path, entry: Entry, overwrite: bool) -> None:
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise TargetNotEmpty("it exists", path=str(target))
    if entry.kind == "dir" and target.is_dir() and not target.is_symlink():
        return  # merge into the existing directory
    if target.is_dir() and not target.is_symlink():
        raise TargetNotEmpty(
            f"a directory is in the way of {entry.kind} {entry.path}", path=str(target)
        )
    target.unlink()


def extract(
    volume: Volume,
    path: str,
    dest: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    owners: bool | None = None,
) -> ExtractResult:
    """Copy ``path`` (file, symlink or directory tree) of ``volume`` to ``dest``.

    ``dest`` names the copy; when it is an existing directory the copy goes inside it
    under its own name (as ``cp`` does). An existing file is replaced, and an existing
    directory merged into, only with ``overwrite``. ``owners``: set owners
    (default: when running as root)."""
    top = volume.entry(path)
    target = Path(dest)
    if target.is_dir():
        target = target / (top.name if top.path != "/" else f"p{volume.number}")
    owners = os.geteuid() == 0 if owners is None else owners
    posix = volume.fs.posix
    files = dirs = links = total = 0
    directories: list[tuple[Entry, Path]] = []
    for entry in volume.walk(path):
        rel = posixpath.relpath(entry.path, top.path)
        out = target if rel == "." else target / rel
        _clear(out, entry, overwrite)
        if entry.kind == "dir":
            out.mkdir(exist_ok=True)
            directories.append((entry, out))
            dirs += 1
            continue
        if entry.kind == "symlink":
            os.symlink(entry.target or "", out)
            links += 1
        elif entry.kind == "file":
            write_sparse(volume, entry.path, entry.size, out)
            files += 1
            total += entry.size
        else:
            continue  # devices, fifos, sockets: not recreated
        _apply(entry, out, posix, owners)
    for entry, out in reversed(directories):
        _apply(entry, out, posix, owners)
    return ExtractResult(
        f"{volume.snapshot.id[:12]}:{volume.number}{top.path}",
        str(target),
        files,
        dirs,
        links,
        total,
        volume.fetched,
    )
