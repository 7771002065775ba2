"""The writer session through its Python API, with chunks from no disk at all (as file
backup, agents and imports will use it): commit, and what an interruption leaves."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockvault.errors import Interrupted, SessionExpired
from blockvault.repo import Repository
from blockvault.repo import format as fmt
from blockvault.repo.check import check_repository
from blockvault.repo.writer import WriterSession
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
            "interrupted by SIGTERM: no snapshot was written; 2 chunk(s) (0.0 MiB) were "
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
