"""The storage contract every backend must keep (see blockvault.storage)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault.errors import ObjectNotFound, StorageError, UsageError
from blockvault.storage import Backend, open_backend


@pytest.fixture(params=["local", "file-url"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    location = str(tmp_path / "store")
    b = open_backend(location if request.param == "local" else f"file://{location}")
    b.create()
    yield b
    b.close()


def test_write_read_replace(backend: Backend) -> None:
    assert backend.is_empty()
    backend.write("data/ab/abcd", b"one")
    assert backend.read("data/ab/abcd") == b"one"
    backend.write("data/ab/abcd", memoryview(b"two!"))
    assert backend.read("data/ab/abcd") == b"two!"
    assert backend.size("data/ab/abcd") == 4
    assert backend.exists("data/ab/abcd")
    assert not backend.is_empty()


def test_missing_objects(backend: Backend) -> None:
    with pytest.raises(ObjectNotFound):
        backend.read("snapshots/nope")
    with pytest.raises(ObjectNotFound):
        backend.size("snapshots/nope")
    assert not backend.exists("snapshots/nope")
    backend.delete("snapshots/nope")  # not an error


def test_list_by_prefix(backend: Backend) -> None:
    names = {"config", "data/00/00aa", "data/ff/ffbb", "snapshots/s1", "indexes/i1"}
    for name in names:
        backend.write(name, name.encode())
    assert set(backend.list()) == names
    assert set(backend.list("data/")) == {"data/00/00aa", "data/ff/ffbb"}
    assert set(backend.list("snapshots/")) == {"snapshots/s1"}
    backend.delete("snapshots/s1")
    assert set(backend.list("snapshots/")) == set()


def test_names_cannot_escape(backend: Backend) -> None:
    with pytest.raises(StorageError):
        backend.write("../escape", b"x")
    with pytest.raises(StorageError):
        backend.read("/etc/passwd")


def test_no_partial_object_is_ever_visible(backend: Backend, tmp_path: Path) -> None:
    """A write leaves no temporary file behind and lists only whole objects."""
    backend.write("data/12/1234", b"x" * 1_000_000)
    root = Path(backend.capabilities.local_path or "")
    assert [p.name for p in (root / "data" / "12").iterdir()] == ["1234"]


def test_unknown_scheme() -> None:
    with pytest.raises(UsageError, match="unknown scheme"):
        open_backend("gopher://host/path")
