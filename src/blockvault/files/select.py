"""What a file backup leaves out: patterns, caches, marker files, sizes, other filesystems.

Patterns are gitignore-style (``pathspec``, the matcher git's rules are written
for), matched against the absolute path without its leading ``/`` and, for a
directory, with a trailing ``/``: ``*.o`` anywhere, ``/home/ann/tmp`` only there,
``node_modules/`` only directories. ``--iexclude`` patterns match case-insensitively
(pattern and path both folded). An excluded directory is left out whole; a directory
on another filesystem under ``--one-file-system`` is kept empty (a mount point that
a restored system needs).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import pathspec

from blockvault.errors import UsageError

__all__ = ["CACHEDIR_SIGNATURE", "MAX_PATTERNS", "Excluder", "Selection", "absolute"]

# https://bford.info/cachedir/: a directory holding CACHEDIR.TAG that starts with this
CACHEDIR_SIGNATURE: Final = b"Signature: 8a477f597d28d172789f06886806bc55"
MAX_PATTERNS: Final = 100_000
_MAX_EXCLUDE_FILE: Final = 16 << 20


@dataclass(frozen=True)
class Selection:
    """The options that leave entries out of a file backup (all off by default)."""

    exclude: tuple[str, ...] = ()
    iexclude: tuple[str, ...] = ()
    exclude_caches: bool = False
    exclude_if_present: tuple[str, ...] = ()
    exclude_larger_than: int | None = None
    one_file_system: bool = False

    def with_exclude_files(self, names: Sequence[str]) -> Selection:
        """This selection with the patterns of the files ``names`` (one a line; blank
        lines and ``#`` comments skipped, as in .gitignore) added to ``exclude``. A bad
        pattern is refused here, before anything is read."""
        patterns = list(self.exclude)
        for name in names:
            patterns.extend(_pattern_lines(name))
        selection = replace(self, exclude=tuple(patterns))
        selection.matchers()
        return selection

    def matchers(self) -> tuple[pathspec.PathSpec[Any] | None, pathspec.PathSpec[Any] | None]:
        return _spec(self.exclude), _spec(tuple(p.lower() for p in self.iexclude))


class Excluder:
    """``Selection`` made ready for one walk: asked once per entry."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.spec, self.ispec = selection.matchers()

    def excluded(self, path: str, st: os.stat_result) -> bool:
        """Whether the entry at absolute ``path`` (lstat ``st``) is left out."""
        is_dir = stat.S_ISDIR(st.st_mode)
        if self.spec or self.ispec:
            key = path.lstrip("/") + ("/" if is_dir else "")
            if self.spec and self.spec.match_file(key):
                return True
            if self.ispec and self.ispec.match_file(key.lower()):
                return True
        s = self.selection
        if is_dir:
            if s.exclude_caches and _is_cache(path):
                return True
            return any(os.path.lexists(os.path.join(path, name)) for name in s.exclude_if_present)
        return (
            s.exclude_larger_than is not None
            and stat.S_ISREG(st.st_mode)
            and st.st_size > s.exclude_larger_than
        )


def _is_cache(directory: str) -> bool:
    try:
        fd = os.open(os.path.join(directory, "CACHEDIR.TAG"), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as tag:
        return tag.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE


def _pattern_lines(name: str) -> Iterable[str]:
    try:
        with open(name, "rb") as file:
            data = file.read(_MAX_EXCLUDE_FILE + 1)
    except OSError as exc:
        raise UsageError(f"exclude file {name}: {exc.strerror}") from None
    if len(data) > _MAX_EXCLUDE_FILE:
        raise UsageError(f"exclude file {name} is larger than {_MAX_EXCLUDE_FILE >> 20} MiB")
    for line in os.fsdecode(data).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            yield line


def _spec(patterns: tuple[str, ...]) -> pathspec.PathSpec[Any] | None:
    if not patterns:
        return None
    if len(patterns) > MAX_PATTERNS:
        raise UsageError(f"more than {MAX_PATTERNS} exclude patterns")
    try:
        return pathspec.GitIgnoreSpec.from_lines(patterns)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"exclude pattern not understood: {exc}") from None


def absolute(path: str) -> str:
    """``path`` made absolute and normal, symlinks not followed (a symlink given is
    backed up as the symlink it is)."""
    return "/" + os.path.abspath(path).lstrip("/")
