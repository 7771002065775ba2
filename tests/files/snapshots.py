"""File snapshots made for tests without the backup command: from a real directory
(``snapshot_of``) or from hand-written, possibly hostile, tree objects (``hand_built``).

``snapshot_of`` is a small, independent backup: ``os.lstat``, ``os.listxattr`` and
``SEEK_DATA``/``SEEK_HOLE`` on the source, fixed 1 MiB content chunks, every object
stored through the writer session as ``repo/tree.py`` and docs/FORMAT.md say. Tests
then check what restore wrote against the source with the system's own tools.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blockvault.files.backup import commit_files, files_manifest, files_origin
from blockvault.repo.manifest import Snapshot, Stats
from blockvault.repo.repository import Repository
from blockvault.repo.tree import Node, Slice, store_tree
from blockvault.repo.writer import WriterSession
from tests.files.trees import KINDS

CHUNK = 1 << 20


def _name(ids: int, lookup: Callable[[int], Any]) -> str:
    try:
        return str(lookup(ids)[0])
    except KeyError:
        return ""


def _content(path: Path, size: int, put: Callable[[bytes], str]) -> tuple[Slice, ...]:
    slices: list[Slice] = []
    with open(path, "rb") as f:
        fd = f.fileno()
        at = 0
        while at < size:
            try:
                data = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:
                data = size
            if data > at:
                slices.append(Slice(None, 0, data - at))
                at = data
                continue
            hole = min(os.lseek(fd, at, os.SEEK_HOLE), size)
            while at < hole:
                piece = os.pread(fd, min(CHUNK, hole - at), at)
                slices.append(Slice(put(piece), 0, len(piece)))
                at += len(piece)
    return tuple(slices)


def _node(path: Path, put: Callable[[bytes], str], subtree: str = "") -> Node | None:
    st = os.lstat(path)
    kind = KINDS.get(stat.S_IFMT(st.st_mode))
    if kind is None:  # sockets
        return None
    xattrs = tuple(
        sorted(
            (key, os.getxattr(path, key, follow_symlinks=False))
            for key in os.listxattr(path, follow_symlinks=False)
        )
    )
    return Node(
        name=path.name,
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=_name(st.st_uid, pwd.getpwuid),
        group=_name(st.st_gid, grp.getgrgid),
        mtime_ns=st.st_mtime_ns,
        atime_ns=st.st_atime_ns,
        ctime_ns=st.st_ctime_ns,
        size=st.st_size if kind == "file" else 0,
        inode=st.st_ino,
        device=st.st_dev,
        links=st.st_nlink if kind != "dir" else 1,
        content=_content(path, st.st_size, put) if kind == "file" else (),
        subtree=subtree,
        target=os.readlink(path) if kind == "symlink" else "",
        rdev=st.st_rdev if kind in ("chardev", "blockdev") else 0,
        xattrs=xattrs,
    )


def _directory(path: Path, put: Callable[[bytes], str]) -> str:
    nodes = []
    for child in sorted(path.iterdir()):
        subtree = _directory(child, put) if child.is_dir() and not child.is_symlink() else ""
        node = _node(child, put, subtree)
        if node is not None:
            nodes.append(node)
    return store_tree(nodes, put)


def commit(
    repo: Repository, build: Callable[[Callable[[bytes], str]], str], paths: tuple[str, ...]
) -> Snapshot:
    """A file snapshot whose root tree ``build`` stores with the ``put`` it is given."""
    ids: set[str] = set()
    with WriterSession(repo) as writer:

        def put(plain: bytes) -> str:
            chunk_id = repo.chunk_id(plain).hex()
            writer.put_chunk(plain, chunk_id)
            ids.add(chunk_id)
            return chunk_id

        root = build(put)
        source, origin = "files: " + " ".join(paths), files_origin(paths)
        draft = files_manifest(repo, paths, source, origin, (), "")
        writer.choose_parent(draft)
        return commit_files(writer, draft, root, ids, Stats())


def snapshot_of(repo: Repository, *paths: Path) -> Snapshot:
    """A file snapshot of ``paths`` (absolute directories), kept under their absolute
    paths as file backups keep them: the root tree leads to each by its names."""

    def build(put: Callable[[bytes], str]) -> str:
        return _wrap([(p.resolve(), _directory(p, put)) for p in paths], put)

    return commit(repo, build, tuple(str(p.resolve()) for p in paths))


def _wrap(tops: list[tuple[Path, str]], put: Callable[[bytes], str]) -> str:
    """The root tree holding each top directory under its absolute path's names."""

    def level(prefix: tuple[str, ...]) -> str:
        nodes = []
        names = sorted(
            {
                p.parts[1:][len(prefix)]
                for p, _ in tops
                if p.parts[1:][: len(prefix)] == prefix and len(p.parts) - 1 > len(prefix)
            }
        )
        for name in names:
            here = (*prefix, name)
            full = Path("/", *here)
            own = next((tree for p, tree in tops if p == full), None)
            node = _node(full, put, own or level(here))
            assert node is not None
            nodes.append(node)
        return store_tree(nodes, put)

    return level(())


def hand_built(repo: Repository, root: list[dict[str, Any]]) -> Snapshot:
    """A file snapshot whose root tree object is exactly ``root`` (node JSON, not
    validated: hostile on purpose); ``{"tree": [...]}`` in a directory node's
    ``subtree`` becomes a tree object of those nodes, ``{"data": b"..."}`` in a
    ``content`` a slice of a stored chunk."""

    def build(put: Callable[[bytes], str]) -> str:
        def store(nodes: list[dict[str, Any]]) -> str:
            out = []
            for node in nodes:
                node = dict(node)
                if isinstance(node.get("subtree"), list):
                    node["subtree"] = store(node["subtree"])
                if isinstance(node.get("content"), bytes):
                    data = node["content"]
                    node["content"] = [[put(data), 0, len(data)]]
                    node.setdefault("size", len(data))
                out.append(node)
            out.sort(key=lambda n: os.fsencode(n["name"]))  # hostile, yet in order
            body = {"version": 1, "nodes": out}
            return put(json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"))

        return store(root)

    return commit(repo, build, ("/hostile",))
