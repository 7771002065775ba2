"""Repositories are private by default (files 0600, folders 0700), locally and over
SFTP, whatever the umask; a repository whose config was made group-readable keeps
new files and folders group-readable. Checked on real files made by real backups."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from blockvault_demo.sample import BuiltDisk
from blockvault_demo.servers import SSHServer
from tests.conftest import blockvault
from tests.storage.conftest import ok

PASS = {"BLOCKVAULT_PASSWORD": "permissions"}


def modes(root: Path) -> tuple[set[int], set[int]]:
    """The permission bits of every file and of every folder under ``root``."""
    files, folders = set(), {stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        (folders if path.is_dir() else files).add(stat.S_IMODE(path.stat().st_mode))
    return files, folders


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """The umask the CLI subprocesses inherit."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def run(*args: str | Path) -> None:
    proc = blockvault(*args, env=PASS)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_a_new_local_repository_is_private(disk: BuiltDisk, tmp_path: Path, mask: int) -> None:
    repo = tmp_path / "repo"
    with umask(mask):
        run("-r", repo, "init", "--encryption", "repokey", "--chunk-size", "1MiB")
        run("-r", repo, "backup", disk.path)
    files, folders = modes(repo)
    assert (repo / "keys").is_dir() and any((repo / "data").iterdir())
    assert files == {0o600}
    assert folders == {0o700}


def test_a_group_readable_repository_stays_so(disk: BuiltDisk, tmp_path: Path) -> None:
    """The owner opened it to a group (chmod g+rX); the next backup's objects follow,
    even under a umask that would take the group's bits away."""
    repo = tmp_path / "repo"
    run("-r", repo, "init", "--chunk-size", "1MiB")
    for path in [repo, *repo.rglob("*")]:
        path.chmod(0o750 if path.is_dir() else 0o640)
    with umask(0o077):
        run("-r", repo, "backup", disk.path)
    files, folders = modes(repo)
    assert len(list((repo / "snapshots").iterdir())) == 1 and len(folders) == 1
    assert files == {0o640}
    assert folders == {0o750}


def test_an_existing_folder_keeps_its_mode_but_the_repository_inside_is_private(
    disk: BuiltDisk, tmp_path: Path
) -> None:
    repo = tmp_path / "given"
    repo.mkdir(mode=0o755)
    repo.chmod(0o755)
    run("-r", repo, "init", "--chunk-size", "1MiB")
    run("-r", repo, "backup", disk.path)
    files, folders = modes(repo)
    assert files == {0o600}
    assert folders == {0o700, 0o755}
    assert stat.S_IMODE(repo.stat().st_mode) == 0o755


def test_a_new_sftp_repository_is_private(sshd: SSHServer, disk: BuiltDisk) -> None:
    name = f"private-{uuid.uuid4().hex[:8]}"
    env = {**sshd.env(), **PASS}
    ok(env, "-r", sshd.url(name), "init", "--encryption", "repokey", "--chunk-size", "1MiB")
    ok(env, "-r", sshd.url(name), "backup", str(disk.path))
    files, folders = modes(sshd.data / name)
    assert any((sshd.data / name / "data").iterdir())
    assert files == {0o600}
    assert folders == {0o700}


def test_a_group_readable_sftp_repository_stays_so(sshd: SSHServer, disk: BuiltDisk) -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}"
    env = sshd.env()
    ok(env, "-r", sshd.url(name), "init", "--chunk-size", "1MiB")
    root = sshd.data / name
    for path in [root, *root.rglob("*")]:
        path.chmod(0o750 if path.is_dir() else 0o640)
    ok(env, "-r", sshd.url(name), "backup", str(disk.path))
    files, folders = modes(root)
    assert len(list((root / "snapshots").iterdir())) == 1
    assert files == {0o640}
    assert folders == {0o750}
