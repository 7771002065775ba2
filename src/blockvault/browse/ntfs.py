"""NTFS through dissect.ntfs: long names, 100 ns times, Interix and reparse symlinks.

ntfs-3g stores symlinks made on Linux as Interix files (system attribute, content
``IntxLNK\\x01`` + UTF-16LE target); Windows makes symlink reparse points. Both
read as symlinks. The metafiles in the root (``$MFT``, ``$Bitmap``, ...) are
hidden, as ntfs-3g hides them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, BinaryIO, Final

from dissect.ntfs import NTFS
from dissect.ntfs.c_ntfs import ATTRIBUTE_TYPE_CODE, IO_REPARSE_TAG

from blockvault.browse.filesystem import Entry, Filesystem, Kind, synthesized_mode

__all__ = ["NtfsFilesystem"]

Node = Any  # dissect.ntfs MftRecord (untyped library)

_INTERIX_LINK: Final = b"IntxLNK\x01"
_SYSTEM: Final = 0x4  # FILE_ATTRIBUTE_SYSTEM
_READONLY: Final = 0x1
_FIRST_USER_RECORD: Final = 16  # records 0-15 are metafiles ($MFT ... $Extend)
_FILE_NAME_DOS: Final = 2


class NtfsFilesystem(Filesystem[Node]):
    separators = "/\\"  # Windows separates paths with either

    def __init__(self, file: BinaryIO, fs_type: str = "ntfs") -> None:
        self._fs = NTFS(file)
        self.type = fs_type
        self._links: dict[int, str | None] = {}

    def _root(self) -> Node:
        return self._fs.mft.root

    def _children(self, node: Node) -> Iterable[tuple[str, Node]]:
        root = node.segment == self._fs.mft.root.segment
        for item in node.iterdir():
            attribute = item.attribute
            if attribute.flags == _FILE_NAME_DOS:
                continue
            name = str(attribute.file_name)
            if name == ".":
                continue
            child = item.dereference()
            if root and child.segment < _FIRST_USER_RECORD:
                continue
            yield name, child

    def _lookup(self, node: Node, name: str) -> Node | None:
        try:
            found = node.index("$I30").search(name)
        except KeyError:
            return None
        if found.attribute.file_name == name:
            return found.dereference()
        # the index collates case-insensitively; POSIX names may differ only in case
        return super()._lookup(node, name)

    def _target(self, node: Node) -> str | None:
        key = int(node.segment)
        if key not in self._links:
            self._links[key] = self._read_target(node)
        return self._links[key]

    def _read_target(self, node: Node) -> str | None:
        if node.is_dir():
            return None
        if node.is_reparse_point():
            point = node.attributes[ATTRIBUTE_TYPE_CODE.REPARSE_POINT][0]
            if point.tag == IO_REPARSE_TAG.SYMLINK:
                target = str(point.print_name or point.substitute_name or "")
                return target.replace("\\", "/")
            return None
        info = node.attributes[ATTRIBUTE_TYPE_CODE.STANDARD_INFORMATION]
        if not info or not info[0].file_attributes & _SYSTEM:
            return None
        if not 8 < node.size() < 8 + 2 * 4096:
            return None
        data = node.open().read(8 + 2 * 4096)
        if not data.startswith(_INTERIX_LINK):
            return None
        return bytes(data[len(_INTERIX_LINK) :]).decode("utf-16-le", "surrogatepass")

    def _kind(self, node: Node) -> Kind:
        if node.is_dir():
            return "dir"
        return "symlink" if self._target(node) is not None else "file"

    def _entry(self, node: Node, path: str) -> Entry:
        kind = self._kind(node)
        info = node.attributes[ATTRIBUTE_TYPE_CODE.STANDARD_INFORMATION]
        si = info[0] if info else None
        target = self._target(node) if kind == "symlink" else None
        if kind == "dir":
            size = 0
        elif kind == "symlink":
            size = len((target or "").encode("utf-8", "surrogateescape"))
        else:
            size = int(node.size()) if node.has_stream("") else 0
        return Entry(
            path=path,
            kind=kind,
            size=size,
            mode=synthesized_mode(kind, bool(si and si.file_attributes & _READONLY)),
            uid=None,
            gid=None,
            mtime_ns=int(si.last_modification_time_ns) if si else 0,
            atime_ns=int(si.last_access_time_ns) if si else None,
            target=target,
        )

    def _link(self, node: Node) -> str:
        return self._target(node) or ""

    def _open(self, node: Node) -> BinaryIO:
        stream: BinaryIO = node.open()
        return stream
