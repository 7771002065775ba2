"""FAT12/16/32 through dissect.fat: long names, DOS times, no owners or symlinks.

Times are stored in local time without a zone, as mtools and Linux's vfat (with
the system time zone) write them; they are read back in this machine's zone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any, BinaryIO, Final

from dissect.fat import FATFS

from blockvault.browse.filesystem import (
    Entry,
    Filesystem,
    Kind,
    synthesized_mode,
    without_dots,
)

__all__ = ["FatFilesystem"]

Node = Any  # dissect.fat DirectoryEntry or RootDirectory (untyped library)

# DIR_NTRes bits: the 8.3 name's base / extension is shown in lower case (Windows NT
# and mtools store short-only names such as "readme.txt" this way).
_LOWER_BASE: Final = 0x08
_LOWER_EXT: Final = 0x10


def _name(node: Node) -> str:
    if node.ldirents:
        return str(node.name)
    base, dot, ext = str(node.short_name).partition(".")
    flags = int(node.dirent.DIR_NTRes)
    if flags & _LOWER_BASE:
        base = base.lower()
    if flags & _LOWER_EXT:
        ext = ext.lower()
    return base + dot + ext


def _ns(moment: datetime) -> int:
    return int(time.mktime(moment.timetuple())) * 1_000_000_000


class FatFilesystem(Filesystem[Node]):
    separators = "/\\"  # Windows separates paths with either

    def __init__(self, file: BinaryIO, fs_type: str = "fat32") -> None:
        self._fs = FATFS(file)
        self.type = fs_type

    def _root(self) -> Node:
        return self._fs.root

    def _children(self, node: Node) -> Iterable[tuple[str, Node]]:
        return without_dots(
            (_name(child), child) for child in node.iterdir() if not child.is_volume_id()
        )

    def _lookup(self, node: Node, name: str) -> Node | None:
        # FAT names are case-insensitive; an exact match wins over a folded one
        folded = None
        for child_name, child in self._children(node):
            if child_name == name:
                return child
            if folded is None and child_name.casefold() == name.casefold():
                folded = child
        return folded

    def _kind(self, node: Node) -> Kind:
        return "dir" if node.is_directory() else "file"

    def _entry(self, node: Node, path: str) -> Entry:
        kind = self._kind(node)
        root = path == "/"
        return Entry(
            path=path,
            kind=kind,
            size=0 if kind == "dir" else int(node.size),
            mode=synthesized_mode(kind, not root and node.is_readonly()),
            uid=None,
            gid=None,
            mtime_ns=0 if root else _ns(node.mtime),
            atime_ns=None if root else _ns(node.atime),
        )

    def _open(self, node: Node) -> BinaryIO:
        stream: BinaryIO = node.open()
        return stream
