"""A file snapshot's directory trees: one object per directory, restic's model.

A tree object is a chunk like any other (``BVCK``, content-addressed, compressed,
encrypted, deduplicated): an unchanged directory is an unchanged object, so an
unchanged subtree costs one id in the next snapshot. Its plaintext is UTF-8 JSON::

    {"version": 1, "nodes": [NODE, ...], "next": "<id>"}   # "next" only when split

Nodes are sorted by name (as bytes). A directory too large for one object
(``fmt.MAX_FILE_OBJECT``) continues in the object ``next`` names. The format is
written out in docs/FORMAT.md, "File snapshots".

Glossary:
  slice      ``[chunk_id, offset, length]``: ``length`` bytes at ``offset`` of a chunk's
             plaintext; a file's ``content`` is its slices in order. A ``null`` id is a
             hole: ``length`` zero bytes (sparse files). Small files share chunks
             (packs), so a slice need not start at 0.
  name       a file name as Linux gives it (bytes); one that is not UTF-8 is kept with
             ``os.fsdecode``'s surrogate escapes and read back with ``os.fsencode``.

Every value read back is checked and bounded: a tree may come from an attacker.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

from blockvault.repo import format as fmt

__all__ = [
    "KINDS",
    "MAX_NODES",
    "MAX_TREE_DEPTH",
    "Node",
    "Slice",
    "TreeRefs",
    "decode_tree",
    "encode_tree",
    "load_tree",
    "reachable",
    "store_tree",
]

KINDS: Final = ("file", "dir", "symlink", "chardev", "blockdev", "fifo")
MAX_NODES: Final = 10_000_000  # entries of one directory, over all its pieces
MAX_TREE_DEPTH: Final = 1024  # directories nested deeper are damage (PATH_MAX is 4096)
MAX_XATTRS: Final = 1024
MAX_XATTR_BYTES: Final = 64 << 10  # Linux's own limit for one value
MAX_SLICES: Final = 1 << 24
# the numeric fields in the order Node.from_json passes them on (mode first)
_ALL_NUMBERS: Final = (
    "mode", "uid", "gid", "mtime_ns", "atime_ns", "ctime_ns", "size", "inode", "device", "rdev"
)  # fmt: skip
_INT_ONLY: Final = {int}
_LIMIT: Final = 1 << 64
_MAX_TEXT: Final = 65536


@dataclass(frozen=True, slots=True)
class Slice:
    chunk_id: str | None  # None: a hole of ``length`` zero bytes
    offset: int
    length: int


@dataclass(frozen=True, slots=True)  # slots: a parent tree's nodes are held by the million
class Node:
    """One directory entry with everything needed to recreate it on Linux."""

    name: str  # surrogate-escaped where not UTF-8; never "", ".", ".." nor with "/"
    kind: str  # one of KINDS
    mode: int  # permission bits, setuid/setgid/sticky included (no type bits)
    uid: int = 0
    gid: int = 0
    user: str = ""  # names at backup time ("" when the id had none)
    group: str = ""
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0  # bytes of a file's content (holes included)
    inode: int = 0  # with ``device``: hard links and the incremental comparison
    device: int = 0
    links: int = 1
    content: tuple[Slice, ...] = ()  # files
    subtree: str = ""  # directories: the id of their tree object
    target: str = ""  # symlinks, surrogate-escaped
    rdev: int = 0  # character and block devices
    xattrs: tuple[tuple[str, bytes], ...] = field(default=())  # sorted; ACLs are xattrs

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "type": self.kind, "mode": self.mode}
        for key in ("uid", "gid", "mtime_ns", "atime_ns", "ctime_ns", "inode", "device"):
            data[key] = getattr(self, key)
        for key in ("user", "group", "subtree", "target"):
            if value := getattr(self, key):
                data[key] = value
        if self.links != 1:
            data["links"] = self.links
        if self.kind == "file":
            data["size"] = self.size
            data["content"] = [[s.chunk_id, s.offset, s.length] for s in self.content]
        if self.rdev:
            data["rdev"] = self.rdev
        if self.xattrs:
            data["xattrs"] = {k: base64.b64encode(v).decode() for k, v in self.xattrs}
        return data

    @classmethod
    def from_json(cls, data: Any) -> Node:
        """Parse one node; ``ValueError`` says what is wrong. Each check runs inline or
        over all the numbers at once (restores and incremental backups decode every
        node of the parent's trees); the helpers only word the error."""
        if not isinstance(data, dict):
            raise ValueError("a node is not an object")
        get = data.get
        name = get("name")
        kind = get("type")
        if type(name) is not str or len(name) > _MAX_TEXT:
            name = _text(data, "name")  # raises
        if name in ("", ".", "..") or "/" in name or "\0" in name:
            raise ValueError(f"node name {name!r} cannot be a file name")
        if kind not in KINDS:
            raise ValueError(f"{name!r}: unknown type {kind!r}")
        values = [get(key, 0) for key in _ALL_NUMBERS]
        links = get("links", 1)
        values.append(links)
        # every value an int (not a bool) from 0 to 2^64, checked in bulk
        if set(map(type, values)) != _INT_ONLY or min(values) < 0 or max(values) >= _LIMIT:
            for key in _ALL_NUMBERS:
                _number(data, key, name)
            _number(data, "links", name, default=1)
        mode = values[0]
        if mode > 0o7777:
            raise ValueError(f"{name!r}: mode {mode:o} has bits beyond 7777")
        content: tuple[Slice, ...] = ()
        subtree = target = ""
        if kind == "file":
            raw = get("content", [])
            if type(raw) is not list or len(raw) > MAX_SLICES:
                raise ValueError(f"{name!r}: content is not a list of slices")
            content = tuple([_slice(s, name) for s in raw])
            if sum([s.length for s in content]) != values[6]:
                raise ValueError(f"{name!r}: its slices do not add up to its size")
        elif kind == "dir":
            subtree = get("subtree", "")
            if type(subtree) is not str or not fmt.is_object_id(subtree):
                raise ValueError(f"{name!r}: subtree {subtree!r} is not an object id")
        elif kind == "symlink":
            target = _text(data, "target", "")
        user = get("user", "")
        group = get("group", "")
        if not (type(user) is type(group) is str and max(len(user), len(group)) <= _MAX_TEXT):
            _text(data, "user", "")  # one of these raises
            _text(data, "group", "")
        return cls(
            name=name,
            kind=kind,
            mode=mode,
            uid=values[1],
            gid=values[2],
            user=user,
            group=group,
            mtime_ns=values[3],
            atime_ns=values[4],
            ctime_ns=values[5],
            size=values[6],
            inode=values[7],
            device=values[8],
            links=links,
            content=content,
            subtree=subtree,
            target=target,
            rdev=values[9],
            xattrs=_xattrs(data["xattrs"], name) if "xattrs" in data else (),
        )


def encode_tree(nodes: list[Node], next_id: str = "") -> bytes:
    """The plaintext of one tree object (``nodes`` must be sorted by name bytes)."""
    return _join([_node_json(n) for n in nodes], next_id)


def _node_json(node: Node) -> bytes:
    text = json.dumps(node.to_json(), separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def _join(encoded: list[bytes], next_id: str) -> bytes:
    """What ``json.dumps`` of ``{"version": 1, "nodes": [...], "next": ...}`` (compact,
    not ASCII-escaped) gives, from the nodes already encoded: each is encoded once."""
    tail = b',"next":' + json.dumps(next_id).encode() if next_id else b""
    return b'{"version":1,"nodes":[' + b",".join(encoded) + b"]" + tail + b"}"


def decode_tree(plain: bytes) -> tuple[list[Node], str]:
    """The nodes of one tree object and the id of its continuation ("" when none)."""
    try:
        data = json.loads(plain.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"a tree object is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ValueError("a tree object of an unknown version")
    raw = data.get("nodes")
    if not isinstance(raw, list):
        raise ValueError("a tree object without a node list")
    nodes = [Node.from_json(n) for n in raw]
    names = [os.fsencode(n.name) for n in nodes]
    if any(a >= b for a, b in pairwise(names)):
        raise ValueError("a tree object's nodes are not sorted and unique")
    next_id = data.get("next", "")
    if next_id and not fmt.is_object_id(next_id):
        raise ValueError(f"a tree object's next {next_id!r} is not an object id")
    return nodes, next_id


def store_tree(nodes: list[Node], put: Callable[[bytes], str]) -> str:
    """Store a directory's nodes as one tree object, or a chain when too large for one;
    ``put`` stores a plaintext object and returns its id. Returns the first object's id."""
    nodes = sorted(nodes, key=lambda n: os.fsencode(n.name))
    pieces: list[list[bytes]] = [[]]
    size = 64
    for node in nodes:
        encoded = _node_json(node)
        if pieces[-1] and size + len(encoded) + 1 > fmt.MAX_FILE_OBJECT - 256:
            pieces.append([])
            size = 64
        pieces[-1].append(encoded)
        size += len(encoded) + 1
    next_id = ""
    for piece in reversed(pieces):  # the tail first: each piece names the one after it
        next_id = put(_join(piece, next_id))
    return next_id


def load_tree(
    tree_id: str, get: Callable[[str], bytes], pieces: list[str] | None = None
) -> Iterator[Node]:
    """A directory's nodes in name order, following continuations; ``get`` returns an
    object's verified plaintext. At most ``MAX_NODES`` nodes and one visit per object.
    ``pieces``, if given, receives the id of each object read (the continuations too)."""
    seen: set[str] = set()
    count = 0
    last = b""
    while tree_id:
        if tree_id in seen:
            raise ValueError(f"tree {tree_id[:12]} continues into itself")
        seen.add(tree_id)
        if pieces is not None:
            pieces.append(tree_id)
        nodes, tree_id = decode_tree(get(tree_id))
        count += len(nodes)
        if count > MAX_NODES:
            raise ValueError(f"a directory of more than {MAX_NODES} entries")
        if nodes and os.fsencode(nodes[0].name) <= last:
            raise ValueError("a tree's continuation is not sorted after it")
        if nodes:
            last = os.fsencode(nodes[-1].name)
        yield from nodes


@dataclass(frozen=True)
class TreeRefs:
    """What one directory's tree references: its own objects (continuations included),
    its subdirectories' trees and its files' chunks."""

    pieces: tuple[str, ...]
    subtrees: tuple[str, ...]
    chunks: frozenset[str]


def reachable(
    root: str,
    get: Callable[[str], bytes],
    cache: dict[str, TreeRefs],
    skip: set[str] | frozenset[str] = frozenset(),
) -> tuple[set[str], list[tuple[str, str]]]:
    """Every object reachable from the tree ``root`` (trees and content), and the trees
    that could not be read, as ``(id, what is wrong)``. ``cache`` keeps what each tree
    references across calls (snapshots share most trees); ids in ``skip`` (known bad)
    are counted but not read. Iterative: a deep tree costs no recursion."""
    reached: set[str] = set()
    problems: list[tuple[str, str]] = []
    todo = [root]
    while todo:
        tree_id = todo.pop()
        if tree_id in reached:
            continue
        reached.add(tree_id)
        if tree_id in skip:
            continue
        refs = cache.get(tree_id)
        if refs is None:
            pieces: list[str] = []
            try:
                nodes = list(load_tree(tree_id, get, pieces))
            except Exception as exc:  # any damage: reported, the walk goes on
                problems.append((tree_id, f"tree {tree_id}: {exc}"))
                continue
            refs = TreeRefs(
                tuple(pieces),
                tuple(n.subtree for n in nodes if n.kind == "dir"),
                frozenset(s.chunk_id for n in nodes for s in n.content if s.chunk_id),
            )
            cache[tree_id] = refs
        reached.update(refs.pieces)
        reached.update(refs.chunks)
        todo.extend(refs.subtrees)
    return reached, problems


def _text(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise ValueError(f"{key}: a string is expected")
    return value


def _number(data: dict[str, Any], key: str, name: str, default: int = 0) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ValueError(f"{name!r}: {key} {value!r} is not a number from 0 to 2^64")
    return value


def _slice(raw: Any, name: str) -> Slice:
    if type(raw) is list and len(raw) == 3:  # the common case, checked inline
        chunk_id, offset, length = raw
        if type(offset) is int and type(length) is int and offset >= 0 and length >= 0:
            if chunk_id is None:
                return Slice(None, offset, length)
            if (
                type(chunk_id) is str
                and offset + length <= fmt.MAX_FILE_OBJECT
                and fmt.is_object_id(chunk_id)
            ):
                return Slice(chunk_id, offset, length)
    return _bad_slice(raw, name)


def _xattrs(xattrs: Any, name: str) -> tuple[tuple[str, bytes], ...]:
    if not isinstance(xattrs, dict) or len(xattrs) > MAX_XATTRS:
        raise ValueError(f"{name!r}: xattrs is not a map of at most {MAX_XATTRS}")
    pairs = []
    for key, value in sorted(xattrs.items()):
        if not isinstance(value, str) or len(value) > MAX_XATTR_BYTES * 4 // 3 + 4:
            raise ValueError(f"{name!r}: xattr {key!r} is not a bounded base64 string")
        try:
            pairs.append((key, base64.b64decode(value, validate=True)))
        except ValueError:
            raise ValueError(f"{name!r}: xattr {key!r} is not base64") from None
    return tuple(pairs)


def _bad_slice(raw: Any, name: str) -> Slice:
    """What is wrong with a slice that the fast check refused (it raises)."""
    if not isinstance(raw, list) or len(raw) != 3:
        raise ValueError(f"{name!r}: a slice is not [id, offset, length]")
    chunk_id, offset, length = raw
    if chunk_id is not None and (type(chunk_id) is not str or not fmt.is_object_id(chunk_id)):
        raise ValueError(f"{name!r}: slice id {chunk_id!r} is not an object id")
    for value in (offset, length):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name!r}: slice offset or length {value!r} is not a count")
    if chunk_id is not None and offset + length > fmt.MAX_FILE_OBJECT:
        raise ValueError(f"{name!r}: slice passes the end of any chunk")
    return Slice(chunk_id, offset, length)
