"""Pruning the rescue build cache: stale roots and layers go, the root this
blockvault builds on and the recently used stay, nothing goes while a build runs.
The entries are folders as the build leaves them (its JSON records, touched on use);
building real ones takes minutes each (test_qemu.py builds in the user's cache)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from blockvault.rescue.build import base_name, cache_lock
from blockvault.rescue.cache import cache_entries, prune_cache
from tests.conftest import blockvault

HOUR = 3600.0


def entry(cache: Path, name: str, age_hours: float, base: str | None = None) -> None:
    """A cache entry as the build leaves it, last used ``age_hours`` ago."""
    folder = cache / name
    folder.mkdir(parents=True)
    (folder / "payload.squashfs").write_bytes(os.urandom(4096))
    if name.startswith("."):
        return
    info = folder / ("base.json" if name.startswith("base-") else "layer.json")
    info.write_text(json.dumps({"base": base} if base else {"kernel": "6.1"}))
    used = time.time() - age_hours * HOUR
    os.utime(info, (used, used))


def test_prune_keeps_the_current_root_and_the_layers_used_last(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    current = base_name()
    entry(cache, current, 30)  # the oldest of all, but the one this blockvault needs
    entry(cache, "base-0000000000000001", 1)  # used last: a branch built an hour ago
    entry(cache, "base-0000000000000002", 10)
    entry(cache, "layer-000000000000000a", 2, base=current)
    entry(cache, "layer-000000000000000b", 5, base=current)
    entry(cache, "layer-000000000000000c", 1, base="base-0000000000000001")
    entry(cache, "layer-000000000000000d", 3, base="base-0000000000000002")
    entry(cache, "layer-000000000000000e", 0.5)  # from before layers named their base
    entry(cache, ".layer-000000000000000f-x1y2", 0)  # an interrupted build's
    (cache / "pip").mkdir()
    (cache / "notes.txt").write_text("the user's")

    listed = {e.name: e for e in cache_entries(cache)}
    assert listed[current].current and listed[current].kind == "base"
    assert listed["layer-000000000000000a"].base == current
    assert listed[".layer-000000000000000f-x1y2"].kind == "partial"
    assert all(e.size >= 4096 for e in listed.values() if e.kind != "pip")

    removed = {e.name for e in prune_cache(cache, keep=1)}
    assert removed == {
        "base-0000000000000002",
        "layer-000000000000000b",
        "layer-000000000000000d",
        "layer-000000000000000e",
        ".layer-000000000000000f-x1y2",
    }
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [
            ".lock",
            current,
            "base-0000000000000001",
            "layer-000000000000000a",
            "layer-000000000000000c",
            "notes.txt",
            "pip",
        ]
    )
    assert prune_cache(cache, keep=1) == []  # nothing left to remove


def test_prune_refuses_while_a_build_uses_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    entry(cache, "base-0000000000000002", 10)
    entry(cache, "base-0000000000000003", 20)
    with cache_lock(cache):  # as build_iso holds it
        done = blockvault("rescue", "cache", "prune", "--cache", cache)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"blockvault: error: rescue media {cache}: a rescue build is using this cache; "
        "prune it when the build is done"
    ]
    assert (cache / "base-0000000000000003").is_dir()
    done = blockvault("rescue", "cache", "prune", "--cache", cache)
    assert done.returncode == 0, done.stderr
    assert "removed 1 entries" in done.stdout + done.stderr
    assert not (cache / "base-0000000000000003").exists()
    listed = blockvault("rescue", "cache", "list", "--cache", cache, "--json")
    assert [e["name"] for e in json.loads(listed.stdout)] == ["base-0000000000000002"]
