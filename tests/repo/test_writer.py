"""The writer session through its Python API, with chunks from no disk at all (as file
backup, agents and imports will use it): commit, and what an interruption leaves."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from blockvault.errors import Interrupted, SessionExpired
from blockvault.repo import Repository, Snapshot
from blockvault.repo import format as fmt
from blockvault.repo.check import check_repository
from blockvault.repo.writer import WriterSession
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import blockvault
from tests.repo.records import records

CHUNKS = [bytes([n]) * 4096 for n in (1, 2, 1, 3)]  # one repeated: stored once


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(str(tmp_path / "repo"), chunk_size=4096)


def markers(repo: Repository) -> list[str]:
    return list(repo.backend.list(fmt.SESSION_DIR + "/"))


def test_a_session_commits_chunks_from_any_source(repo: Repository) -> None:
    snapshot, index = records(repo, CHUNKS, "2024-01-01T00:00:00+00:00")
    with WriterSession(repo) as writer:
        assert len(markers(repo)) == 1  # up before anything is listed or stored
        for data in CHUNKS:
            writer.put_chunk(data, repo.chunk_id(data).hex())
        committed = writer.commit(snapshot, index, store_again=lambda missing: None)
    assert (writer.stored_chunks, markers(repo)) == (3, [])
    assert repo.snapshot_ids() == [committed.id]
    assert check_repository(Repository.open(repo.location), read_data=True).ok


def test_missing_chunks_are_asked_of_the_source_before_commit(repo: Repository) -> None:
    """A chunk found in storage at the start but gone at commit (a gc took it) is
    stored again through ``store_again``."""
    snapshot, index = records(repo, CHUNKS, "2024-01-01T00:00:00+00:00")
    asked: list[set[str]] = []
    with WriterSession(repo) as writer:
        for data in CHUNKS:
            writer.put_chunk(data, repo.chunk_id(data).hex())
        gone = repo.chunk_id(CHUNKS[1]).hex()
        writer.repo.flush()
        repo.backend.delete(fmt.chunk_name(gone))

        def store_again(missing: set[str]) -> None:
            asked.append(missing)
            writer.put_chunk(CHUNKS[1], gone)

        writer.commit(snapshot, index, store_again)
    assert asked == [{gone}]
    assert check_repository(Repository.open(repo.location), read_data=True).ok


@pytest.mark.parametrize("stored", [0, 2])
def test_interrupted_session_says_what_it_left(repo: Repository, stored: int) -> None:
    with pytest.raises(Interrupted) as caught, WriterSession(repo) as writer:
        for data in CHUNKS[:stored]:
            writer.put_chunk(data, repo.chunk_id(data).hex())
        raise Interrupted("SIGTERM", 15)
    assert caught.value.exit_code == 143
    assert markers(repo) == []
    durable = Repository.open(repo.location).stored_chunk_ids()  # a fresh listing
    assert len(durable) == stored
    if stored:
        assert str(caught.value) == (
            "interrupted by SIGTERM: no snapshot was written; 2 chunks (0.0 MiB) were "
            "stored and will be reused by the next backup or removed by gc"
        )
    else:
        assert str(caught.value).endswith("no chunk was stored; the repository is unchanged")


def test_a_session_whose_marker_was_taken_commits_nothing(repo: Repository) -> None:
    snapshot, index = records(repo, CHUNKS, "2024-01-01T00:00:00+00:00")
    with pytest.raises(SessionExpired), WriterSession(repo) as writer:
        for data in CHUNKS:
            writer.put_chunk(data, repo.chunk_id(data).hex())
        repo.backend.delete(writer.marker.name)  # what 'unlock --older-than 0' would do
        writer.commit(snapshot, index, store_again=lambda missing: None)
    assert repo.snapshot_ids() == []


def commit_session(repo: Repository, draft: Snapshot) -> Snapshot:
    """One session over CHUNKS that chooses its parent for ``draft`` and commits it."""
    _, index = records(repo, CHUNKS, draft.time)
    with WriterSession(repo) as writer:
        writer.choose_parent(draft)
        for data in CHUNKS:
            writer.put_chunk(data, repo.chunk_id(data).hex())
        return writer.commit(draft, index, store_again=lambda missing: None)


def test_the_parent_is_the_newest_snapshot_of_the_same_origin(repo: Repository) -> None:
    draft, _ = records(repo, CHUNKS, "2024-01-01T00:00:00+00:00")
    first = commit_session(repo, draft)
    other_host = commit_session(repo, replace(draft, time="2024-01-02T00:00:00+00:00", host="g"))
    second = commit_session(repo, replace(draft, time="2024-01-03T00:00:00+00:00"))
    third = commit_session(repo, replace(draft, time="2024-01-04T00:00:00+00:00"))
    assert (first.parent, other_host.parent) == ("", "")  # first of their origin
    assert (second.parent, third.parent) == (first.id, second.id)
    reread = Repository.open(repo.location)
    assert [s.parent for s in reread.snapshots()] == ["", "", first.id, second.id]
    # a manifest without a parent is stored as before the field existed
    assert b'"parent"' not in repo.backend.read(fmt.snapshot_name(first.id))


def test_a_damaged_snapshot_is_never_a_parent(repo: Repository) -> None:
    draft, _ = records(repo, CHUNKS, "2024-01-01T00:00:00+00:00")
    first = commit_session(repo, draft)
    damaged = commit_session(repo, replace(draft, time="2024-01-02T00:00:00+00:00"))
    repo.backend.write(fmt.snapshot_name(damaged.id), b"BVSN damaged")  # unreadable now
    assert commit_session(repo, replace(draft, time="2024-01-03T00:00:00+00:00")).parent == (
        first.id
    )


@pytest.mark.parametrize("parent", ["../../config", "ABC", 7])
def test_a_hostile_parent_makes_the_manifest_damaged(repo: Repository, parent: object) -> None:
    """A parent is only ever a snapshot id: anything else (a path, a number) is
    refused as damage, not used to name an object."""
    draft, _ = records(repo, CHUNKS, "2024-01-01T00:00:00+00:00")
    manifest = json.loads(draft.to_json())
    manifest["parent"] = parent
    with pytest.raises(ValueError, match="parent"):
        Snapshot.from_json(json.dumps(manifest).encode(), "0" * 64)


def test_backup_records_its_parent_shown_by_info_and_snapshots(tmp_path: Path) -> None:
    """Real backups of a real disk image through the CLI: the second names the first."""
    make_tree(tmp_path / "tree", 1 << 20, seed=3)
    parts = [PartitionSpec("ext4", 8 << 20, "one", tmp_path / "tree"), PartitionSpec("ext4", 0)]
    spec = DiskSpec("gpt", 20 << 20, parts)
    disk = build_disk(spec, tmp_path / "disk.img").path
    location = tmp_path / "repo"
    assert blockvault("-r", location, "init", "--chunk-size", "64KiB").returncode == 0
    made = []
    for options in ([], [], ["--partition", "1"]):  # the last is another origin
        proc = blockvault("-r", location, "backup", "--json", *options, disk)
        assert proc.returncode == 0, proc.stderr
        made.append(json.loads(proc.stdout)["id"])
    listed = json.loads(blockvault("-r", location, "snapshots", "--json").stdout)
    assert [(s["id"], s["parent"]) for s in listed] == [
        (made[0], ""),
        (made[1], made[0]),
        (made[2], ""),
    ]
    info = blockvault("-r", location, "info", made[1])
    assert info.returncode == 0, info.stderr
    assert f"  parent {made[0]}\n" in info.stdout
    assert "\n  parent " not in blockvault("-r", location, "info", made[0]).stdout
