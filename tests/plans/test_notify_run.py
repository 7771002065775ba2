"""Notifications from a real run: ``blockvault plan run`` of a loop-device disk into a
real repository tells a webhook on loopback, while its mail server is dead. The run
must succeed all the same, and what the webhook hears must agree with the history
(``plan history --json``) and the snapshot the repository holds."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault.plans.store import PlanBook
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from blockvault_demo.servers import free_port
from tests.conftest import Hook, blockvault, needs_root, sh

pytestmark = [needs_root, pytest.mark.root]
MiB = 1 << 20


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[str]:
    make_tree(tmp_path / "tree", 1 * MiB, seed=16)
    spec = DiskSpec("gpt", 16 * MiB, [PartitionSpec("ext4", 0, "root", tmp_path / "tree")])
    image = build_disk(spec, tmp_path / "disk.img").path
    device = sh("losetup", "--read-only", "--find", "--show", image).strip()
    yield device
    subprocess.run(["losetup", "-d", device], check=False)


def test_a_run_tells_its_webhook_though_the_mail_server_is_dead(
    tmp_path: Path, disk: str, hook: Hook
) -> None:
    url = hook.url
    repo = tmp_path / "repo"
    env = {"BLOCKVAULT_PLANS": str(tmp_path / "etc" / "plans.toml")}
    assert blockvault("-r", repo, "init").returncode == 0
    added = blockvault(
        "plan", "add", "nightly", "--repo", repo, "--disk", disk, "--schedule", "daily 02:00",
        "--notify", "mailto:ops@example.org#events=all", "--notify", f"{url}#events=all", env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    with PlanBook.editing(Path(env["BLOCKVAULT_PLANS"])) as book:
        book.settings["smtp"] = {"host": "127.0.0.1", "port": free_port(), "security": "none"}

    done = blockvault("plan", "run", "nightly", env=env)
    assert done.returncode == 0, done.stderr
    snapshot = done.stdout.strip()
    assert "could not send success notice to mailto:ops@example.org#events=all" in done.stderr

    (row,) = json.loads(blockvault("plan", "history", "nightly", "--json", env=env).stdout)
    (body,) = (json.loads(raw) for _, raw in hook.bodies)
    assert body["event"] == "success" and body["plan"] == "nightly"
    assert body["snapshot"] == row["snapshot"] and row["snapshot"] == snapshot
    assert body["run_id"] == row["run_id"] and body["status"] == "ok"
    for field in ("bytes_read", "bytes_new", "bytes_stored"):
        assert body[field] == row[field], field
    assert body["bytes_read"] > 0 and body["host"] == os.uname().nodename
    listed = blockvault("-r", repo, "snapshots", "--json")
    assert row["snapshot"] in listed.stdout
    log = Path(row["log"]).read_text()
    assert f"notify: sent success notice to {url}#events=all" in log
    assert "notify: could not send success notice to mailto:ops@example.org#events=all" in log
