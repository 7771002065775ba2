"""Jobs end to end: a real center served over HTTP (uvicorn on a free port) and the
agent's job runner (``serve_jobs``) talking to it, on a real repository holding a
snapshot of a disk image built by sfdisk + mkfs.ext4; restores go onto loop devices.

Expected values come from outside the code under test: the tree the image was built
from, the image's bytes, ``fsck``.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import blockvault
from blockvault.center.app import create_app
from blockvault.center.context import Center
from blockvault.center.link.jobs import AgentContext, serve_jobs
from blockvault.errors import CenterUnreachable
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.center.test_jobs import add_host, operator
from tests.conftest import needs_root, sh

MiB = 1 << 20


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A GPT disk image with one ext4 partition built from a tree, and a repository
    holding one snapshot of it: (tree, image, repository location)."""
    work = tmp_path_factory.mktemp("jobs")
    tree = work / "tree"
    make_tree(tree, 1 * MiB, seed=7)
    for n in range(7):  # a directory whose listing takes several pages
        (tree / "many").mkdir(exist_ok=True)
        (tree / "many" / f"f{n}").write_bytes(os.urandom(100 + n))
    image = build_disk(
        DiskSpec("gpt", 24 * MiB, [PartitionSpec("ext4", 0, "root", tree)]), work / "disk.img"
    ).path
    repo = blockvault.Repository.init(str(work / "repo"), chunk_size=64 * 1024)
    blockvault.backup(repo, str(image))
    return tree, image, repo.location


class HttpLink:
    """The agent's link as the jobs runner sees it: real HTTP, the agent's token."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self._client = httpx.Client(base_url=url, headers=headers)

    def call(
        self, method: str, path: str, *, json: Any = None, timeout: float = 30
    ) -> httpx.Response:
        try:
            return self._client.request(method, path, json=json, timeout=timeout)
        except httpx.TransportError as error:
            raise CenterUnreachable(url=str(self._client.base_url), detail=str(error)) from None


class Served:
    def __init__(self, center: Center, url: str, user: dict[str, str]) -> None:
        self.center, self.url, self.user = center, url, user
        self.api = httpx.Client(base_url=url, headers=user, timeout=30)

    def run(
        self, kind: str, params: dict[str, Any], host: str = "pc1", timeout: float = 120
    ) -> dict[str, Any]:
        """Queue a job and wait for its end."""
        made = self.api.post("/api/v1/jobs", json={"kind": kind, "host": host, "params": params})
        assert made.status_code == 201, made.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.api.get(f"/api/v1/jobs/{made.json()['id']}").json()
            if job["state"] in {"done", "failed", "cancelled"}:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {made.json()} did not end")


@contextlib.contextmanager
def serving(center: Center, context: AgentContext) -> Iterator[Served]:
    """The center on a free port, and one agent's job runner connected to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(center), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    user = operator(center)
    link = HttpLink(url, add_host(center, "pc1"))
    stop = threading.Event()
    agent = threading.Thread(target=serve_jobs, args=(link, stop, context))
    agent.start()
    try:
        yield Served(center, url, user)
    finally:
        stop.set()
        server.should_exit = True
        agent.join(60)
        thread.join(30)
        sock.close()


@pytest.fixture
def served(center: Center, tmp_path: Path) -> Iterator[Served]:
    with serving(center, AgentContext(tmp_path / "plans.toml", poll_wait=2)) as running:
        yield running


def test_a_cancel_stops_the_running_operation(center: Center, tmp_path: Path) -> None:
    """The agent's child process is terminated once the center answers a progress
    report with the cancel. The child stands in for a long ``blockvault check``: it
    records its pid and blocks until it is killed (no timing decides the outcome)."""
    pid_file = tmp_path / "child.pid"
    child = ("sh", "-c", f"echo $$ > {pid_file}; exec sleep 600", "blockvault")
    context = AgentContext(tmp_path / "plans.toml", command=child, poll_wait=2)
    with serving(center, context) as served:
        made = served.api.post(
            "/api/v1/jobs", json={"kind": "check", "host": "pc1", "params": {"repo": "/r"}}
        ).json()
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.1)
        pid = int(pid_file.read_text())
        os.kill(pid, 0)  # running
        cancelled = served.api.post(f"/api/v1/jobs/{made['id']}/cancel").json()
        assert cancelled["state"] == "cancelled"
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
            assert time.monotonic() < deadline, "the child was not stopped"
            time.sleep(0.1)
        job = served.api.get(f"/api/v1/jobs/{made['id']}").json()
        assert job["state"] == "cancelled" and job["error"] == "cancelled by a user"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def test_browse_page_by_page_and_download_a_file(
    served: Served, disk: tuple[Path, Path, str]
) -> None:
    tree, _image, repo = disk
    params = {"repo": repo, "snapshot": "latest", "path": "1/many", "page_size": 3}
    names: list[str] = []
    for page in range(3):
        job = served.run("browse", {**params, "page": page})
        assert job["state"] == "done", job["error"]
        assert job["result"]["total"] == 7 and len(job["result"]["entries"]) <= 3
        names += [e["name"] for e in job["result"]["entries"]]
        assert all(e["type"] == "file" and e["size"] >= 100 for e in job["result"]["entries"])
    assert names == sorted(os.listdir(tree / "many"))

    top = served.run("browse", {**params, "path": "1/", "page_size": 500})["result"]["entries"]
    assert {e["name"] for e in top} == {*os.listdir(tree), "lost+found"}

    biggest = max(
        (p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()),
        key=lambda p: p.stat().st_size,
    )
    inside = "1/" + str(biggest.relative_to(tree))
    job = served.run("download", {"repo": repo, "snapshot": "latest", "path": inside})
    assert job["state"] == "done", job["error"]
    got = served.api.get(f"/api/v1/jobs/{job['id']}/download")
    assert got.status_code == 200 and got.content == biggest.read_bytes()

    missing = served.run("browse", {**params, "path": "1/no/such/dir"})
    assert missing["state"] == "failed"
    assert missing["error"].startswith("/no does not exist in partition 1")


def _same_tree(left: Path, right: Path) -> None:
    compared = filecmp.dircmp(left, right)
    assert not compared.left_only and not compared.right_only and not compared.funny_files
    _, mismatch, errors = filecmp.cmpfiles(left, right, compared.common_files, shallow=False)
    assert not mismatch and not errors
    for sub in compared.common_dirs:
        _same_tree(left / sub, right / sub)


def test_restore_files_to_a_directory(
    served: Served, disk: tuple[Path, Path, str], tmp_path: Path
) -> None:
    tree, _image, repo = disk
    destination = tmp_path / "restored"
    job = served.run(
        "restore-files",
        {"repo": repo, "snapshot": "latest", "path": "1/many", "destination": str(destination)},
    )
    assert job["state"] == "done", job["error"]
    _same_tree(tree / "many", destination / "many")


@needs_root
def test_restore_a_disk_onto_a_loop_device_with_its_typed_name(
    served: Served, disk: tuple[Path, Path, str], tmp_path: Path, loop: Any, mounted: Any
) -> None:
    _tree, image, repo = disk
    blank = tmp_path / "target.img"
    blank.write_bytes(b"")
    os.truncate(blank, image.stat().st_size)
    target = loop(blank)
    params = {"repo": repo, "snapshot": "latest", "target": target}

    refused = served.api.post(
        "/api/v1/jobs", json={"kind": "restore-disk", "host": "pc1", "params": params}
    )
    assert refused.status_code == 422  # no typed confirmation
    job = served.run("restore-disk", {**params, "confirm": os.path.basename(target)})
    assert job["state"] == "done", job["error"]
    assert job["progress"]["done"] > 0 and job["progress"]["done"] == job["progress"]["total"]
    with open(target, "rb") as restored, open(image, "rb") as original:
        assert restored.read() == original.read()
    partition = tmp_path / "p1.img"  # the restored partition, copied out for fsck
    sh("sh", "-c", f"sfdisk --dump {target} >/dev/null")
    start = int(sh("sfdisk", "--json", str(blank)).split('"start":')[1].split(",")[0].strip())
    with open(target, "rb") as source, open(partition, "wb") as out:
        source.seek(start * 512)
        out.write(source.read())
    sh("e2fsck", "-fn", partition)

    # a mounted target is refused by the agent, whatever the center says
    fs_image = tmp_path / "fs.img"
    os.truncate(fs_image, 16 * MiB) if fs_image.exists() else fs_image.write_bytes(b"\0" * 16 * MiB)
    sh("mkfs.ext4", "-q", fs_image)
    busy = loop(fs_image)
    mounted(busy, tmp_path / "mnt")
    before = (tmp_path / "mnt").stat().st_ino
    job = served.run(
        "restore-disk",
        {**params, "target": busy, "confirm": os.path.basename(busy), "partition": 1},
    )
    assert job["state"] == "failed" and "mounted" in job["error"]
    assert (tmp_path / "mnt").stat().st_ino == before
    sh("umount", tmp_path / "mnt")
    sh("e2fsck", "-fn", busy)
