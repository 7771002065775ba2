"""Tree decoding: the fast path of ``Node.from_json`` reads back exactly what was
encoded, and refuses every malformed field the field-by-field checks refused."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import pytest

from blockvault.repo.tree import Node, Slice, decode_tree, encode_tree

ID = "ab" * 32


def every_kind() -> list[Node]:
    big = 1 << 63
    return [
        Node("blk", "blockdev", 0o660, rdev=2049, user="root", group="disk"),
        Node("chr", "chardev", 0o600, rdev=big),
        Node("dir", "dir", 0o1777, uid=big, gid=7, subtree=ID, xattrs=(("user.a", b"\0\xff"),)),
        Node("fifo", "fifo", 0o644, mtime_ns=big, atime_ns=3, ctime_ns=4),
        Node(
            "file\udcff",
            "file",
            0o4755,
            size=10,
            inode=big,
            device=9,
            links=3,
            content=(Slice(None, 0, 4), Slice(ID, 100, 6)),
        ),
        Node("link", "symlink", 0o777, target="../x\udc80", user="u" * 65536),
    ]


def test_round_trip_is_exact() -> None:
    nodes = every_kind()
    decoded, next_id = decode_tree(encode_tree(nodes, ID))
    assert decoded == nodes and next_id == ID
    for got, want in zip(decoded, nodes, strict=True):
        for f in fields(Node):
            assert getattr(got, f.name) == getattr(want, f.name)
        assert hash(got) == hash(want)


def good_file() -> dict[str, Any]:
    return every_kind()[4].to_json()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"name": None}, "name"),
        ({"name": "a/b"}, "cannot be a file name"),
        ({"name": ".."}, "cannot be a file name"),
        ({"name": "x" * 65537}, "name"),
        ({"type": "socket"}, "unknown type"),
        ({"type": None}, "type"),
        ({"mode": 0o10000}, "bits beyond"),
        ({"mode": -1}, "mode"),
        ({"uid": True}, "uid"),
        ({"gid": 1.0}, "gid"),
        ({"inode": 1 << 64}, "inode"),
        ({"rdev": "1"}, "rdev"),
        ({"links": False}, "links"),
        ({"links": -1}, "links"),
        ({"size": 11}, "do not add up"),
        ({"content": None}, "not a list"),
        ({"content": [[ID, 0]]}, "a slice is not"),
        ({"content": [[ID.upper(), 0, 10]]}, "not an object id"),
        ({"content": [[7, 0, 10]]}, "not an object id"),
        ({"content": [[ID, True, 10]]}, "not a count"),
        ({"content": [[ID, -1, 11]], "size": 10}, "not a count"),
        ({"content": [[ID, 1 << 40, 10]]}, "passes the end"),
        ({"user": 5}, "user"),
        ({"group": "g" * 65537}, "group"),
        ({"xattrs": None}, "xattrs"),
        ({"xattrs": {"user.a": "!!"}}, "not base64"),
        ({"xattrs": {"user.a": 1}}, "bounded base64"),
    ],
)
def test_malformed_fields_are_refused(change: dict[str, Any], words: str) -> None:
    data = good_file() | change
    with pytest.raises(ValueError, match=words):
        Node.from_json(data)
    with pytest.raises(ValueError):  # and inside a whole tree object
        decode_tree(json.dumps({"version": 1, "nodes": [data]}).encode())


@pytest.mark.parametrize(
    "data",
    [
        {"name": "d", "type": "dir", "mode": 0o755},  # no subtree
        {"name": "d", "type": "dir", "mode": 0o755, "subtree": None},
        {"name": "d", "type": "dir", "mode": 0o755, "subtree": ID[:-1]},
        {"name": "l", "type": "symlink", "mode": 0o777, "target": 5},
        ["not", "an", "object"],
    ],
)
def test_malformed_nodes_of_other_kinds_are_refused(data: Any) -> None:
    with pytest.raises(ValueError):
        Node.from_json(data)
