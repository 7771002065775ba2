"""Comparing file snapshots: ``diff`` (what changed between two) and ``versions``
(every stored version of one file).

Both walk trees through ``files/trees.py``. ``diff`` walks the two trees in step and
never enters a directory whose tree id is the same on both sides: an unchanged
subtree costs one comparison, whatever its size.

Content identity (:func:`content_digest`): a file's content is named by its slices.
Large files are cut by content-defined chunking, so the same bytes give the same
chunks and slices; small files are packed, and the same bytes may sit in another
pack after a touch. So a file up to ``SMALL`` bytes is compared by its bytes (read,
hashed), a larger one by its slices: equal digests mean equal content.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import blake3

from blockvault.events import Reporter, Warned, quiet
from blockvault.files.trees import BadTree, TreeSource, root_node, show, slice_of
from blockvault.repo.manifest import Snapshot
from blockvault.repo.tree import Node

__all__ = ["SMALL", "Difference", "Version", "content_digest", "diff", "versions"]

SMALL: Final = 1 << 20


@dataclass(frozen=True)
class Difference:
    path: str
    change: str  # "added", "removed", "changed"
    kind: str  # the newer side's type (the older one's when removed)
    size_before: int
    size_after: int
    what: tuple[str, ...] = ()  # for "changed": type, content, mode, owner, xattrs, target, mtime


@dataclass(frozen=True)
class Version:
    snapshot: str
    time: str
    host: str
    size: int
    mtime_ns: int
    digest: str  # content_digest, hex
    kind: str


def content_digest(source: TreeSource, node: Node) -> str:
    """A hex digest equal for equal contents (see the module docstring)."""
    digest = blake3.blake3(max_threads=1)
    if node.size <= SMALL:
        digest.update(b"bytes")
        for piece in node.content:
            if piece.chunk_id is None:
                digest.update(bytes(piece.length))
            else:
                digest.update(
                    slice_of(source.repo.get_chunk(piece.chunk_id), piece, node, source.repo)
                )
    else:
        slices = [[p.chunk_id, p.offset, p.length] for p in node.content]
        digest.update(b"slices" + json.dumps(slices).encode())
    return digest.hexdigest()


def _changes(source: TreeSource, old: Node, new: Node) -> tuple[str, ...]:
    if old.kind != new.kind:
        return ("type",)
    what = []
    if new.kind == "file" and (
        old.size != new.size
        or (
            old.content != new.content
            and content_digest(source, old) != content_digest(source, new)
        )
    ):
        what.append("content")
    if old.mode != new.mode:
        what.append("mode")
    if (old.uid, old.gid, old.user, old.group) != (new.uid, new.gid, new.user, new.group):
        what.append("owner")
    if old.xattrs != new.xattrs:
        what.append("xattrs")
    if old.target != new.target or old.rdev != new.rdev:
        what.append("target")
    if old.mtime_ns != new.mtime_ns and new.kind != "dir":
        what.append("mtime")
    return tuple(what)


def diff(
    source: TreeSource, older: Snapshot, newer: Snapshot, reporter: Reporter = quiet
) -> Iterator[Difference]:
    """Added, removed and changed paths from ``older`` to ``newer``, in path order; a
    directory added or removed is listed with everything below it."""
    stack: list[tuple[tuple[str, ...], Node | None, Node | None]] = [
        ((), root_node(older), root_node(newer))
    ]
    while stack:
        names, old, new = stack.pop()
        if old is not None and new is not None and old.subtree == new.subtree:
            continue  # the same tree object: nothing below differs
        try:
            before = {n.name: n for n in source.nodes(old, names)} if old else {}
            after = {n.name: n for n in source.nodes(new, names)} if new else {}
        except BadTree as exc:
            reporter(Warned(f"{exc}; not compared below it"))
            continue
        below: list[tuple[tuple[str, ...], Node | None, Node | None]] = []
        for name in sorted(before.keys() | after.keys(), key=_order):
            a, b = before.get(name), after.get(name)
            here = (*names, name)
            if a is None and b is not None:
                yield Difference(show(here), "added", b.kind, 0, b.size)
            elif b is None and a is not None:
                yield Difference(show(here), "removed", a.kind, a.size, 0)
            elif a is not None and b is not None:
                what = _changes(source, a, b)
                if what and not (a.kind == b.kind == "dir" and what == ("mtime",)):
                    yield Difference(show(here), "changed", b.kind, a.size, b.size, what)
            dirs = (a if a and a.kind == "dir" else None, b if b and b.kind == "dir" else None)
            if dirs != (None, None):
                below.append((here, *dirs))
        stack.extend(reversed(below))


def _order(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def versions(
    source: TreeSource,
    snapshots: list[Snapshot],
    names: tuple[str, ...],
    reporter: Reporter = quiet,
) -> list[Version]:
    """The entry at ``names`` in each of ``snapshots`` that has one, newest first."""
    found = []
    for snap in sorted(snapshots, key=lambda s: s.time, reverse=True):
        try:
            node = source.lookup(snap, names)
        except BadTree as exc:
            reporter(Warned(f"snapshot {snap.id[:12]}: {exc}; skipped"))
            continue
        if node is None:
            continue
        digest = content_digest(source, node) if node.kind == "file" else ""
        found.append(
            Version(snap.id, snap.time, snap.host, node.size, node.mtime_ns, digest, node.kind)
        )
    return found
