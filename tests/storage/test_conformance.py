"""The storage contract every backend must keep (see blockvault.storage).

Each test runs against a local directory, a ``file://`` URL, a real OpenSSH server
(``sftp://``) and a real S3 server process (``s3://``), all on this machine.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from blockvault.errors import ObjectNotFound, ObjectTooLarge, StorageError, UsageError
from blockvault.storage import Backend, open_backend


@pytest.fixture(params=["local", "file-url", "sftp", "s3"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    location = str(tmp_path / "store")
    if request.param == "local":
        b = open_backend(location)
    elif request.param == "file-url":
        b = open_backend(f"file://{location}")
    elif request.param == "sftp":
        server = request.getfixturevalue("sshd")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
        b = open_backend(server.url(f"store-{uuid.uuid4().hex[:8]}"))
    else:
        server = request.getfixturevalue("s3_server")
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            monkeypatch.delenv(key)
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        b = open_backend(f"s3://bv-{uuid.uuid4().hex[:12]}/some/prefix")
        b.inner.page_size = 50  # type: ignore[attr-defined]  # exercise pagination
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
    assert list(backend.list("data/12/")) == ["data/12/1234"]
    # local and SFTP (whose server is this machine) keep files we can look at directly
    inner = getattr(backend, "inner", backend)
    root = backend.capabilities.local_path or getattr(inner, "root", None)
    if root is not None:
        assert [p.name for p in (Path(root) / "data" / "12").iterdir()] == ["1234"]


def test_batched_writes_are_readable_at_once_and_listed_after_flush(backend: Backend) -> None:
    """Chunks go through write_batched: this process reads them back at once, and
    after flush every one is listed, whole, with no temporary file left."""
    payloads = {f"data/{i:02x}/{i:064x}": os.urandom(100_000 + i) for i in range(40)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: backend.write_batched(*item), payloads.items()))
        assert dict(zip(payloads, pool.map(backend.read, payloads), strict=True)) == payloads
    assert all(backend.exists(name) for name in payloads)
    backend.flush()
    assert set(backend.list("data/")) == set(payloads)
    assert {name: backend.read(name) for name in payloads} == payloads
    root = backend.capabilities.local_path
    if root is not None:
        assert not list(Path(root).rglob(".tmp-*"))


def test_unknown_scheme() -> None:
    with pytest.raises(UsageError, match="unknown scheme"):
        open_backend("gopher://host/path")


def test_empty_and_large_objects(backend: Backend) -> None:
    backend.write("indexes/empty", b"")
    assert backend.read("indexes/empty") == b""
    assert backend.size("indexes/empty") == 0
    big = os.urandom(6 * 1024 * 1024 + 123)
    backend.write("data/bi/big", big)
    assert backend.size("data/bi/big") == len(big)
    assert backend.read("data/bi/big") == big


def test_a_bounded_read_returns_objects_up_to_the_bound(backend: Backend) -> None:
    data = os.urandom(100_000)
    backend.write("data/bo/exact", data)
    assert backend.read("data/bo/exact", limit=len(data)) == data
    with pytest.raises(ObjectTooLarge, match=r"object data/bo/exact is 100000 bytes.* 99999 "):
        backend.read("data/bo/exact", limit=len(data) - 1)
    with pytest.raises(ObjectNotFound):
        backend.read("data/bo/missing", limit=10)


def plant_huge(backend: Backend, name: str) -> int:
    """An object too large to read into memory, the cheapest way the backend allows: a
    sparse 8 GiB file where the objects are files (local, SFTP to this machine), else
    (S3) a real 48 MiB object. Returns its size."""
    local = backend.capabilities.local_path
    if local is None and backend.location.startswith("sftp://"):
        local = urlsplit(backend.location).path
    if local is None:
        backend.write(name, bytes(48 << 20))
        return 48 << 20
    path = Path(local) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(8 << 30)
    return 8 << 30


def test_an_oversized_object_is_refused_without_reading_it(backend: Backend) -> None:
    size = plant_huge(backend, "data/hu/huge")
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ObjectTooLarge) as refused:
            backend.read("data/hu/huge", limit=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.fields["size"] == size
    assert f"object data/hu/huge is {size} bytes, more than the {1 << 20}" in str(refused.value)
    assert peak < 4 << 20, f"{peak} bytes held to refuse the object"
    assert time.monotonic() - started < 5  # refused at once, not after a retry or a download


def test_parallel_writes_and_reads(backend: Backend) -> None:
    """The pipelines call one backend from a thread pool."""
    payloads = {f"data/{i:02x}/{i:064x}": os.urandom(200_000 + i) for i in range(32)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: backend.write(*item), payloads.items()))
        back = dict(zip(payloads, pool.map(backend.read, payloads), strict=True))
    assert back == payloads
    assert set(backend.list("data/")) == set(payloads)


def test_many_objects_are_all_listed(backend: Backend) -> None:
    names = {f"data/{i % 7:02x}/{i:08x}" for i in range(130)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: backend.write(n, n.encode()), names))
    assert sorted(backend.list("data/")) == sorted(names)
    assert sorted(backend.list()) == sorted(names)


def test_replacing_is_atomic_for_readers(backend: Backend) -> None:
    """A reader racing with writers that replace an object sees one whole version."""
    versions = [os.urandom(700_000), os.urandom(900_000)]
    backend.write("snapshots/s", versions[0])
    seen: list[bytes] = []
    stop = threading.Event()

    def read_loop() -> None:
        while not stop.is_set():
            seen.append(backend.read("snapshots/s"))

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for i in range(12):
            backend.write("snapshots/s", versions[i % 2])
    finally:
        stop.set()
        reader.join()
    assert seen
    assert all(data in versions for data in seen)
    assert list(backend.list("snapshots/")) == ["snapshots/s"]


def test_sizes_come_with_the_listing(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """``info`` sums a snapshot's chunks from ``list_sizes``: every backend gives each
    object's size from the listing itself, never by asking for the objects one by one."""
    backend.write("data/0a/0a", b"abc")
    backend.write("data/0b/0b", b"")
    backend.write("locks/a", b"x" * 1000)
    backend.write("data/0c/0c", b"gone")
    backend.delete("data/0c/0c")
    store = getattr(backend, "inner", backend)  # under the retry wrapper, if any

    def one_by_one(name: str) -> int:
        raise AssertionError(f"size({name!r}) asked on its own")

    monkeypatch.setattr(store, "size", one_by_one)
    assert dict(backend.list_sizes()) == {"data/0a/0a": 3, "data/0b/0b": 0, "locks/a": 1000}
    assert sorted(backend.list_sizes("data/")) == [("data/0a/0a", 3), ("data/0b/0b", 0)]
    assert list(backend.list_sizes("snapshots/")) == []


def test_modification_times_come_from_the_storage(backend: Backend) -> None:
    """Garbage collection compares these times; they are the storage's, in Unix seconds
    (the servers here run on this machine, so its clock is the oracle)."""
    before = time.time()
    backend.write("locks/a", b"a")
    backend.write("data/0a/0a", b"b")
    after = time.time()
    stamp = backend.modified("locks/a")
    assert before - 2 <= stamp <= after + 2
    listed = dict(backend.list_modified())
    assert set(listed) == {"locks/a", "data/0a/0a"}
    assert abs(listed["locks/a"] - stamp) < 1e-3
    assert list(backend.list_modified("data/")) == [("data/0a/0a", listed["data/0a/0a"])]
    with pytest.raises(ObjectNotFound):
        backend.modified("locks/nope")
