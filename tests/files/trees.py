"""Two descriptions of a directory tree to compare: one read from the filesystem with
``os`` alone (the oracle), one read back from a file snapshot through ``repo/tree.py``.

Each maps a path relative to the backed-up directory (bytes, as Linux names it) to
what a restore must recreate: type, permission bits, owner, mtime, size, a digest of
the content, symlink target, device number, xattrs, and the hard-link group.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from blockvault.repo import Repository
from blockvault.repo.tree import Node, load_tree

KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFIFO: "fifo",
}


def on_disk(root: Path) -> dict[bytes, dict[str, Any]]:
    """The tree under ``root`` as the filesystem has it (sockets left out, as backed up)."""
    found: dict[bytes, dict[str, Any]] = {}
    top = os.fsencode(root)
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            kind = KINDS.get(stat.S_IFMT(st.st_mode))
            if kind is None:
                continue
            entry: dict[str, Any] = {
                "kind": kind,
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime_ns": st.st_mtime_ns,
                "inode": st.st_ino if st.st_nlink > 1 and kind == "file" else 0,
            }
            if kind == "file":
                entry["size"] = st.st_size
                entry["sha"] = hashlib.sha256(Path(os.fsdecode(path)).read_bytes()).hexdigest()
            if kind == "symlink":
                entry["target"] = os.readlink(path)
            if kind in ("chardev", "blockdev"):
                entry["rdev"] = st.st_rdev
            entry["xattrs"] = {
                n: os.getxattr(path, n, follow_symlinks=False)
                for n in os.listxattr(path, follow_symlinks=False)
            }
            found[os.path.relpath(path, top)] = entry
    return found


def in_snapshot(
    repo_path: Path | str, ref: str, root: Path, passphrase: str | None = None
) -> dict[bytes, dict[str, Any]]:
    """The tree under ``root`` as snapshot ``ref`` holds it, content read from its chunks."""
    repo = Repository.open(str(repo_path), passphrase=passphrase)
    snap = repo.resolve(ref)
    tree = snap.tree
    for name in root.parts[1:]:
        node = next(n for n in load_tree(tree, repo.get_chunk) if n.name == name)
        tree = node.subtree
    found: dict[bytes, dict[str, Any]] = {}
    _walk(repo, tree, b"", found)
    return found


def _walk(repo: Repository, tree: str, prefix: bytes, found: dict[bytes, dict[str, Any]]) -> None:
    for node in load_tree(tree, repo.get_chunk):
        path = os.path.join(prefix, os.fsencode(node.name))
        entry: dict[str, Any] = {
            "kind": node.kind,
            "mode": node.mode,
            "uid": node.uid,
            "gid": node.gid,
            "mtime_ns": node.mtime_ns,
            "inode": node.inode if node.links > 1 and node.kind == "file" else 0,
        }
        if node.kind == "file":
            entry["size"] = node.size
            entry["sha"] = hashlib.sha256(content(repo, node)).hexdigest()
        if node.kind == "symlink":
            entry["target"] = os.fsencode(node.target)
        if node.kind in ("chardev", "blockdev"):
            entry["rdev"] = node.rdev
        entry["xattrs"] = dict(node.xattrs)
        found[path] = entry
        if node.kind == "dir":
            _walk(repo, node.subtree, path, found)


def content(repo: Repository, node: Node) -> bytes:
    parts = []
    for s in node.content:
        if s.chunk_id is None:
            parts.append(bytes(s.length))
        else:
            parts.append(repo.get_chunk(s.chunk_id)[s.offset : s.offset + s.length])
    return b"".join(parts)


def nodes(repo_path: Path | str, ref: str, root: Path) -> dict[bytes, Node]:
    """Every node under ``root`` in snapshot ``ref``, by relative path."""
    repo = Repository.open(str(repo_path))
    tree = repo.resolve(ref).tree
    for name in root.parts[1:]:
        tree = next(n for n in load_tree(tree, repo.get_chunk) if n.name == name).subtree
    found: dict[bytes, Node] = {}
    todo = [(tree, b"")]
    while todo:
        tree, prefix = todo.pop()
        for node in load_tree(tree, repo.get_chunk):
            path = os.path.join(prefix, os.fsencode(node.name))
            found[path] = node
            if node.kind == "dir":
                todo.append((node.subtree, path))
    return found
