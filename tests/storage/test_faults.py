"""Transient storage failures: retried with backoff, or one clean error and no snapshot.

The wrapper is checked with injected faults; the whole product with a TCP proxy,
between the CLI and a real sshd or S3 server, that cuts connections mid-upload.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from blockvault.errors import ObjectNotFound, ObjectTooLarge, StorageError, TransientStorageError
from blockvault.storage.faulty import FaultyBackend
from blockvault.storage.local import LocalBackend
from blockvault.storage.retry import RetryingBackend, RetryPolicy
from blockvault_demo.sample import BuiltDisk
from blockvault_demo.servers import S3Server, SSHServer, dropping_proxy
from tests.storage.conftest import ok

# --- the wrapper ---------------------------------------------------------------------


def wrapped(tmp_path: Path, **faults: object) -> tuple[RetryingBackend, FaultyBackend, list[float]]:
    sleeps: list[float] = []
    faulty = FaultyBackend(LocalBackend(tmp_path / "store"), **faults)  # type: ignore[arg-type]
    return RetryingBackend(faulty, sleep=sleeps.append), faulty, sleeps


def test_transient_failures_are_retried(tmp_path: Path) -> None:
    backend, faulty, sleeps = wrapped(tmp_path, every=2, operations=frozenset({"write", "read"}))
    for i in range(10):
        backend.write(f"data/{i:02x}/x", bytes([i]) * 100)
    assert [backend.read(f"data/{i:02x}/x") for i in range(10)] == [
        bytes([i]) * 100 for i in range(10)
    ]
    # every second call failed: all operations but the first needed one retry
    assert faulty.failures == 19
    assert len(sleeps) == 19
    policy = RetryPolicy()
    assert all(0 <= s <= policy.base_delay for s in sleeps)  # the first backoff step


def test_backoff_grows_then_gives_up_naming_the_object(tmp_path: Path) -> None:
    backend, faulty, sleeps = wrapped(tmp_path, every=1)
    with pytest.raises(StorageError, match=r"writing data/ab/cd: gave up after 7 attempts"):
        backend.write("data/ab/cd", b"x")
    assert faulty.failures == 7
    caps = [min(8.0, 0.25 * 2**n) for n in range(6)]
    assert len(sleeps) == 6
    assert all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))
    assert not backend.exists("data/ab/cd")


def test_permanent_failures_and_missing_objects_are_not_retried(tmp_path: Path) -> None:
    backend, faulty, sleeps = wrapped(tmp_path, every=1, transient=False)
    with pytest.raises(StorageError, match="injected fault") as caught:
        backend.write("data/ab/cd", b"x")
    assert not isinstance(caught.value, TransientStorageError)
    assert faulty.failures == 1
    plain, _, sleeps = wrapped(tmp_path, every=10**9)
    with pytest.raises(ObjectNotFound):
        plain.read("snapshots/none")
    plain.write("data/ab/big", b"x" * 10)
    with pytest.raises(ObjectTooLarge, match="data/ab/big is 10 bytes, more than the 5"):
        plain.read("data/ab/big", limit=5)  # through both wrappers, and final
    assert sleeps == []


# --- the product through a connection-dropping proxy -----------------------------------


def ssh_home_for(sshd: SSHServer, tmp_path: Path, proxy_port: int) -> dict[str, str]:
    """A HOME that knows the server's key under the proxy's port too (as for a tunnel)."""
    home = tmp_path / "home"
    shutil.copytree(sshd.home, home)
    key_type, blob = sshd.host_key.split()[:2]
    with (home / ".ssh" / "known_hosts").open("a") as f:
        f.write(f"[127.0.0.1]:{proxy_port} {key_type} {blob}\n")
    env = sshd.env()
    env["HOME"] = str(home)
    return env


def assert_restores(env: dict[str, str], repo: str, disk: BuiltDisk, tmp_path: Path) -> None:
    ok(env, "-r", repo, "verify")
    ok(env, "-r", repo, "restore", "latest", str(tmp_path / "restored.img"))
    assert filecmp.cmp(disk.path, tmp_path / "restored.img", shallow=False)


def test_sftp_backup_survives_dropped_connections(
    sshd: SSHServer,
    disk: BuiltDisk,
    tmp_path: Path,
) -> None:
    name = f"drops-{uuid.uuid4().hex[:6]}"
    with dropping_proxy(sshd.port, after=1536 * 1024, drops=3) as proxy:
        env = ssh_home_for(sshd, tmp_path, proxy.port)
        direct, via_proxy = sshd.url(name), sshd.url(name, port=proxy.port)
        ok(env, "-r", direct, "init", "--chunk-size", "1MiB")
        ok(env, "-r", via_proxy, "backup", str(disk.path))
        assert proxy.cut == 3  # three connections died mid-upload, the backup went on
    assert_restores(env, direct, disk, tmp_path)


def test_s3_backup_survives_dropped_connections(
    s3_server: S3Server,
    disk: BuiltDisk,
    tmp_path: Path,
) -> None:
    repo = f"s3://bv-{uuid.uuid4().hex[:10]}/drops"
    # moto closes connections after each response: cut inside one chunk's PUT
    with dropping_proxy(s3_server.port, after=64 * 1024, drops=3) as proxy:
        ok(s3_server.env(), "-r", repo, "init", "--chunk-size", "1MiB")
        ok(s3_server.env(f"http://127.0.0.1:{proxy.port}"), "-r", repo, "backup", str(disk.path))
        assert proxy.cut == 3
    assert_restores(s3_server.env(), repo, disk, tmp_path)


def test_a_link_that_keeps_dropping_fails_cleanly_and_a_rerun_completes(
    sshd: SSHServer,
    disk: BuiltDisk,
    tmp_path: Path,
) -> None:
    name = f"dead-{uuid.uuid4().hex[:6]}"
    with dropping_proxy(sshd.port, after=384 * 1024, drops=None) as proxy:
        env = ssh_home_for(sshd, tmp_path, proxy.port)
        direct = sshd.url(name)
        ok(env, "-r", direct, "init", "--chunk-size", "1MiB")
        proc = subprocess.run(
            ["blockvault", "-r", sshd.url(name, port=proxy.port), "backup", str(disk.path)],
            env=env,
            capture_output=True,
            text=True,
        )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "gave up after 7 attempts" in proc.stderr
    assert "Traceback" not in proc.stderr
    repo_dir = sshd.data / name
    assert not any((repo_dir / "snapshots").glob("*"))  # no half-written snapshot
    # the rerun, on a good link, completes
    ok(env, "-r", direct, "backup", str(disk.path))
    assert_restores(env, direct, disk, tmp_path)
