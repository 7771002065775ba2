"""Remote operations end to end with real processes: ``center serve`` (HTTPS, pinned
certificate) and an enrolled ``blockvault agent`` taking jobs over its own outgoing
connection, on a real repository holding a snapshot of a disk built by sfdisk +
mkfs.ext4. Browse page by page, download a file, restore files into a directory and
the disk onto a loop device (typed confirmation; refused without it).

SQLite only, as the fleet test: the API tests run every query on PostgreSQL too.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import blockvault
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.center import test_agents_e2e as fleet
from tests.center.server import running_center
from tests.center.test_agents_e2e import DEADLINE, Agent
from tests.center.test_jobs_agent import _same_tree
from tests.conftest import needs_root, sh

pytestmark = [needs_root, pytest.mark.root]
agents = fleet.agents  # the fleet test's fixture: agent processes, killed at the end

MiB = 1 << 20


def finished(api: httpx.Client, kind: str, params: dict[str, Any], host: str) -> dict[str, Any]:
    made = api.post("/api/v1/jobs", json={"kind": kind, "host": host, "params": params})
    assert made.status_code == 201, made.text
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(f"/api/v1/jobs/{made.json()['id']}").json()
        if job["state"] in {"done", "failed", "cancelled"}:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {made.json()['id']} ({kind}) did not end in {DEADLINE}s")


def test_a_real_agent_browses_downloads_and_restores_for_the_center(
    tmp_path: Path, loop: Callable[..., str], agents: Callable[[str], Agent]
) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, 512 * 1024, seed=11)
    (tree / "docs").mkdir(exist_ok=True)
    for n in range(5):
        (tree / "docs" / f"note{n}.txt").write_text(f"note {n}\n" * (n + 1))
    spec = DiskSpec("gpt", 16 * MiB, [PartitionSpec("ext4", 0, "data", tree)])
    image = build_disk(spec, tmp_path / "disk.img").path
    repo = blockvault.Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)
    blockvault.backup(repo, str(image))

    with running_center(tmp_path / "center", f"sqlite:///{tmp_path / 'center.db'}") as server:
        admin = server.client(server.api_token())
        made = server.blockvault("token", "create", "--json")
        assert made.returncode == 0, made.stderr
        agent = agents("pc1")
        enrolled = agent.enrol(server, json.loads(made.stdout)["token"], server.fingerprint)
        assert enrolled.returncode == 0, enrolled.stderr
        agent.start()
        where = {"repo": repo.location, "snapshot": "latest"}

        names = []
        for page in (0, 1):
            params = {**where, "path": "1/docs", "page": page, "page_size": 3}
            job = finished(admin, "browse", params, "pc1")
            assert job["state"] == "done", (job["error"], agent.log.read_text()[-2000:])
            names += [e["name"] for e in job["result"]["entries"]]
        assert names == sorted(os.listdir(tree / "docs"))

        job = finished(admin, "download", {**where, "path": "1/docs/note4.txt"}, "pc1")
        assert job["state"] == "done", job["error"]
        got = admin.get(f"/api/v1/jobs/{job['id']}/download")
        assert got.content == (tree / "docs" / "note4.txt").read_bytes()

        destination = tmp_path / "restored"
        params = {**where, "path": "1/docs", "destination": str(destination)}
        job = finished(admin, "restore-files", params, "pc1")
        assert job["state"] == "done", job["error"]
        _same_tree(tree / "docs", destination / "docs")

        target_image = tmp_path / "target.img"
        target_image.write_bytes(b"")
        os.truncate(target_image, image.stat().st_size)
        target = loop(target_image)
        params = {**where, "target": target}
        refused = admin.post(
            "/api/v1/jobs", json={"kind": "restore-disk", "host": "pc1", "params": params}
        )
        assert refused.status_code == 422
        job = finished(admin, "restore-disk", {**params, "confirm": Path(target).name}, "pc1")
        assert job["state"] == "done", job["error"]
        assert job["progress"]["done"] == job["progress"]["total"] > 0
        with open(target, "rb") as restored:
            assert restored.read() == image.read_bytes()
        start = json.loads(sh("sfdisk", "--json", target))["partitiontable"]["partitions"][0]
        partition = loop(target_image, offset=start["start"] * 512, size=start["size"] * 512)
        sh("e2fsck", "-fn", partition)
        assert agent.alive()
        assert agent.stop() in (0, 143)
