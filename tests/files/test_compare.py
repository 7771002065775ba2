"""diff and versions over real file backups (``backup DIR``) of a changing tree."""

from __future__ import annotations

import json
import os
from pathlib import Path

from blockvault.repo.repository import Repository
from tests.conftest import blockvault
from tests.files.test_restore import MiB, small_tree


def bv(repo: Repository, *args: str | Path) -> str:
    out = blockvault("-r", repo.location, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def backup(repo: Repository, src: Path) -> str:
    out = json.loads(bv(repo, "backup", "--json", src))
    return str(out["snapshot"] if isinstance(out, dict) and "snapshot" in out else out["id"])


def test_diff_names_what_changed_and_versions_group_identical(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    src = small_tree(tmp_path / "src")
    (src / "big").write_bytes(os.urandom(3 * MiB))
    first = backup(repo, src)
    # second: one content change, a chmod, a touch (same bytes), an add, a removal,
    # and a symlink retargeted; docs/deep unchanged
    (src / "top.txt").write_bytes(b"top, edited\n")
    os.chmod(src / "docs" / "a.txt", 0o600)
    os.utime(src / "big", ns=(1, 2_000_000_000_000_000_000))
    (src / "new.txt").write_bytes(b"new\n")
    (src / "empty").rmdir()
    (src / "link").unlink()
    (src / "link").symlink_to("top.txt")
    second = backup(repo, src)
    out = json.loads(bv(repo, "diff", "--json", first, second))
    got = {
        (c["path"].removeprefix(str(src)), c["change"], tuple(c["what"])) for c in out["changes"]
    }
    assert got == {
        ("/top.txt", "changed", ("content", "mtime")),
        ("/docs/a.txt", "changed", ("mode",)),
        ("/big", "changed", ("mtime",)),  # touched: same bytes, not "content"
        ("/new.txt", "added", ()),
        ("/empty", "removed", ()),
        ("/link", "changed", ("target", "mtime")),
    }
    sizes = {c["path"].removeprefix(str(src)): c for c in out["changes"]}
    assert (sizes["/top.txt"]["size_before"], sizes["/top.txt"]["size_after"]) == (4, 12)
    text = bv(repo, "diff", first, second)
    assert f"+ {src}/new.txt  4" in text and f"- {src}/empty/" in text
    assert json.loads(bv(repo, "diff", "--json", second, second))["changes"] == []
    # versions: top.txt has two, big one content in two snapshots (mtime differs)
    (src / "top.txt").write_bytes(b"top\n")  # back to the first content
    third = backup(repo, src)
    found = json.loads(bv(repo, "versions", "--json", f"{src}/top.txt"))["versions"]
    assert [v["snapshot"] for v in found] == [third, second, first]
    assert found[0]["digest"] == found[2]["digest"] != found[1]["digest"]
    assert [v["size"] for v in found] == [4, 12, 4]
    unchanged = bv(repo, "versions", f"{src}/docs/deep/b.bin").splitlines()
    assert len(unchanged) == 1 and all(s[:12] in unchanged[0] for s in (first, second, third))
    other = bv(repo, "versions", "--host", "elsewhere", f"{src}/top.txt")
    assert "in none of 0 file snapshots" in other
