"""Reading a file snapshot's trees: look a path up, list a directory, walk a subtree.

Restore, browse, ``diff`` and ``versions`` all read trees through :class:`TreeSource`,
so every tree object is fetched, verified, parsed and bounded in one place. A tree
may come from an attacker: one that does not parse (``repo/tree.py`` refuses names
with ``/``, ``..``, NUL, unsorted or duplicate entries) raises :class:`BadTree`,
which names the directory, and its readers skip that directory and report it.

Glossary:
  names    a path inside the snapshot as a tuple of stored names (``()`` is its root);
           the text form ``/home/ann`` is for people and for lookups only.
  root     a synthetic directory node (name ``""``) whose subtree is the snapshot's
           root tree: file snapshots keep absolute paths, so ``/home/ann`` of a backup of
           ``/home`` is ``home`` -> ``ann`` below the root.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Final

from blockvault.errors import BlockvaultError, ChunkCorrupt, IntegrityError
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository
from blockvault.repo.tree import MAX_TREE_DEPTH, Node, Slice, load_tree

__all__ = ["BadTree", "TreeSource", "root_node", "show", "slice_of"]

TREE_CACHE: Final = 256  # parsed directories kept; a walk needs only its current path


class BadTree(Exception):
    """A directory whose tree object is missing, damaged or malformed."""

    def __init__(self, names: tuple[str, ...], detail: str, damaged: bool) -> None:
        super().__init__(f"{show(names)}: {detail}")
        self.names = names
        self.detail = detail
        self.damaged = damaged  # its data is missing or damaged (not merely hostile)


def show(names: tuple[str, ...]) -> str:
    """The path of ``names`` for people (``/`` for the root)."""
    return "/" + "/".join(names)


def slice_of(chunk: bytes, piece: Slice, node: Node, repo: Repository) -> memoryview:
    """The bytes ``piece`` (a slice of ``node``'s content) names in ``chunk``; a slice
    past the chunk's end is damage, named."""
    if piece.chunk_id is None or piece.offset + piece.length > len(chunk):
        raise ChunkCorrupt(
            f"a slice of {node.name!r} passes its end ({len(chunk)} bytes)",
            chunk=piece.chunk_id,
            repo=repo.location,
            where="",
        )
    return memoryview(chunk)[piece.offset : piece.offset + piece.length]


def root_node(snapshot: Snapshot) -> Node:
    return Node(name="", kind="dir", mode=0o755, subtree=snapshot.tree)


class TreeSource:
    """The trees of one repository, with a small cache of parsed directories.
    Thread-safe (the cache is locked; fetching is the repository's)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._cache: OrderedDict[str, tuple[Node, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.fetched = 0  # tree objects read from the repository

    def nodes(self, directory: Node, names: tuple[str, ...] = ()) -> tuple[Node, ...]:
        """The entries of ``directory`` (a dir node) in name order."""
        tree_id = directory.subtree
        with self._lock:
            if tree_id in self._cache:
                self._cache.move_to_end(tree_id)
                return self._cache[tree_id]
        try:
            nodes = tuple(load_tree(tree_id, self._get))
        except IntegrityError as exc:
            raise BadTree(names, str(exc), damaged=True) from None
        except BlockvaultError as exc:
            raise BadTree(names, str(exc), damaged=True) from None
        except ValueError as exc:
            raise BadTree(names, f"its tree object is malformed: {exc}", damaged=True) from None
        with self._lock:
            self._cache[tree_id] = nodes
            while len(self._cache) > TREE_CACHE:
                self._cache.popitem(last=False)
        return nodes

    def _get(self, tree_id: str) -> bytes:
        self.fetched += 1
        return self.repo.get_chunk(tree_id)

    def child(self, directory: Node, name: str, names: tuple[str, ...] = ()) -> Node | None:
        return next((n for n in self.nodes(directory, names) if n.name == name), None)

    def lookup(self, snapshot: Snapshot, names: tuple[str, ...]) -> Node | None:
        """The node at ``names`` (symlinks on the way are not followed), or None."""
        node = root_node(snapshot)
        for depth, name in enumerate(names):
            if node.kind != "dir":
                return None
            found = self.child(node, name, names[:depth])
            if found is None:
                return None
            node = found
        return node

    def walk(
        self,
        top: Node,
        names: tuple[str, ...] = (),
        on_bad: Callable[[BadTree], None] | None = None,
    ) -> Iterator[tuple[tuple[str, ...], Node]]:
        """``top`` then everything below it, parents first, in name order. A directory
        whose tree cannot be read goes to ``on_bad`` and is skipped (without it,
        :class:`BadTree` ends the walk). Iterative: depth is bounded, not the stack."""
        yield names, top
        if top.kind != "dir":
            return
        stack: list[tuple[tuple[str, ...], Iterator[Node]]] = []

        def enter(directory: Node, where: tuple[str, ...]) -> None:
            try:
                if len(where) >= MAX_TREE_DEPTH:
                    raise BadTree(where, f"is nested deeper than {MAX_TREE_DEPTH} levels", True)
                stack.append((where, iter(self.nodes(directory, where))))
            except BadTree as exc:
                if on_bad is None:
                    raise
                on_bad(exc)

        enter(top, names)
        while stack:
            where, entries = stack[-1]
            node = next(entries, None)
            if node is None:
                stack.pop()
                continue
            below = (*where, node.name)
            yield below, node
            if node.kind == "dir":
                enter(node, below)
