"""Session-wide storage servers (one sshd, one moto S3 server, on 127.0.0.1), a small
disk to back up, and a way to run the CLI."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault_demo.sample import BuiltDisk, DiskSpec, MiB, PartitionSpec, build_disk, make_tree
from blockvault_demo.servers import S3Server, SSHServer, start_moto, start_sshd, stop
from tests.conftest import IS_ROOT


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        pytest.skip("missing tools: sshd (apt-get install openssh-server)")
    if not IS_ROOT:
        pytest.skip("needs root to run sshd with its own configuration and log in as root")
    pytest.importorskip("paramiko")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    if server.proc is not None:
        stop(server.proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    if server.proc is not None:
        stop(server.proc)


@pytest.fixture(scope="session")
def disk(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    """A small GPT disk with an ext4 filesystem holding about 12 MiB of files."""
    work = tmp_path_factory.mktemp("remote-disk")
    make_tree(work / "tree", 12 * MiB, seed=3)
    spec = DiskSpec("gpt", 48 * MiB, [PartitionSpec("ext4", 0, "root", work / "tree")])
    return build_disk(spec, work / "disk.img")


def blockvault(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["blockvault", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def ok(env: dict[str, str], *args: str) -> str:
    proc = blockvault(env, *args)
    assert proc.returncode == 0, f"blockvault {' '.join(args)}: {proc.stderr}"
    return proc.stdout
