"""The local backend's batched chunk writes: nothing is listed (or trusted by another
process) until a flush has made it durable, and a killed writer leaves only temporary
files, which ``sweep_partial`` removes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from blockvault.storage import local
from blockvault.storage.local import LocalBackend


def names(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_batched_objects_appear_only_after_a_flush(tmp_path: Path) -> None:
    writer = LocalBackend(tmp_path)
    writer.write_batched("data/ab/ab01", b"one")
    writer.write_batched("data/ab/ab02", b"two")
    other = LocalBackend(tmp_path)  # another process's view
    assert list(other.list("data/")) == []
    assert not other.exists("data/ab/ab01")
    assert writer.read("data/ab/ab02") == b"two"
    writer.flush()
    assert sorted(other.list("data/")) == ["data/ab/ab01", "data/ab/ab02"]
    assert names(tmp_path) == {"data/ab/ab01", "data/ab/ab02"}


def test_a_full_batch_is_flushed_without_being_asked(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    for i in range(local.BATCH_OBJECTS):
        backend.write_batched(f"data/{i % 5:02x}/{i:08x}", b"x")
    assert len(list(LocalBackend(tmp_path).list("data/"))) == local.BATCH_OBJECTS


def test_a_killed_writer_leaves_temporary_files_that_gc_sweeps(tmp_path: Path) -> None:
    killed = LocalBackend(tmp_path)
    killed.write_batched("data/cd/cd01", os.urandom(1000))
    killed.write("snapshots/s1", b"manifest")  # written durably at once
    del killed  # never flushed, as after SIGKILL
    survivor = LocalBackend(tmp_path)
    assert sorted(survivor.list()) == ["snapshots/s1"]
    leftovers = [p for p in tmp_path.rglob(".tmp-*")]
    assert len(leftovers) == 1
    assert survivor.sweep_partial(before=time.time() - 3600) == 0  # too young: may be live
    assert survivor.sweep_partial(before=time.time() + 1) == 1
    assert names(tmp_path) == {"snapshots/s1"}
