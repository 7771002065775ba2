"""The center's maintenance role on a real repository: scans record when the center
first saw each snapshot, and prune counts from that time, never from the time a
manifest claims; stored passwords are sealed and reach agents only inside jobs."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

import blockvault
from blockvault.center import maintenance
from blockvault.center.app import create_app
from blockvault.center.context import Center
from blockvault.center.models import Repository, SeenSnapshot
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.center.conftest import SteppedClock, add_user, api_token
from tests.center.test_jobs import add_host
from tests.conftest import blockvault as run_cli

MiB = 1 << 20
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("maintenance")
    make_tree(work / "tree", 256 * 1024, seed=3)
    spec = DiskSpec("gpt", 12 * MiB, [PartitionSpec("ext4", 0, "root", work / "tree")])
    return build_disk(spec, work / "disk.img").path


def admin(center: Center) -> dict[str, str]:
    add_user(center, "ada", "admin")
    return {"Authorization": f"Bearer {api_token(center, 'ada', ['admin'])}"}


def test_prune_counts_from_first_seen_not_from_a_forged_time(
    center: Center, image: Path, tmp_path: Path
) -> None:
    clock = SteppedClock(datetime.now(UTC))
    center.clock = clock
    client = TestClient(create_app(center))  # no lifespan: the test runs the rounds
    headers = admin(center)
    repo = blockvault.Repository.init(
        str(tmp_path / "repo"), chunk_size=64 * 1024, encryption="repokey", passphrase=PASSWORD
    )
    body: dict[str, Any] = {
        "name": "main",
        "location": repo.location,
        "password": PASSWORD,
        "retention": {"within": "2d"},
    }
    assert client.post("/api/v1/repositories", json=body, headers=headers).status_code == 201

    first = blockvault.backup(repo, str(image))
    # an agent writes a snapshot claiming to be 30 years old
    forged = repo.write_snapshot(
        replace(first, time="2001-01-01T00:00:00+00:00"), repo.load_index(first)
    )
    maintenance.maintain(center)
    shown = client.get("/api/v1/repositories", headers=headers).json()[0]
    assert shown["snapshot_count"] == 2 and shown["password_stored"] is True
    assert shown["stored_bytes"] > 0 and shown["dedup_ratio"] >= 1
    assert PASSWORD not in str(shown)
    with center.sessions() as session:
        seen = {s.snapshot: s for s in session.scalars(select(SeenSnapshot))}
        sealed = session.scalars(select(Repository)).one().password_sealed
    assert seen[forged.id].first_seen == clock.now
    assert seen[forged.id].claimed == datetime(2001, 1, 1, tzinfo=UTC)  # kept, not trusted
    assert sealed is not None and PASSWORD.encode() not in sealed

    # a day later the manifests' own times would prune the forged one; the center does not
    clock.now += timedelta(days=1)
    by_manifest = blockvault.prune(
        repo, blockvault.Policy(within=timedelta(days=2)), now=clock.now, tz=UTC, dry_run=True
    )
    assert [s.id for s in by_manifest.removed] == [forged.id]
    job = client.post(
        "/api/v1/jobs", json={"kind": "prune", "params": {"repository": "main"}}, headers=headers
    ).json()
    maintenance.maintain(center)
    done = client.get(f"/api/v1/jobs/{job['id']}", headers=headers).json()
    assert done["state"] == "done" and done["result"]["removed"] == []
    assert set(repo.snapshot_ids()) == {first.id, forged.id}

    # three days on, a new snapshot is seen; the two the center saw first have aged out
    clock.now += timedelta(days=2)
    newest = blockvault.backup(repo, str(image))
    maintenance.maintain(center)
    job = client.post(
        "/api/v1/jobs", json={"kind": "prune", "params": {"repository": "main"}}, headers=headers
    ).json()
    maintenance.maintain(center)
    done = client.get(f"/api/v1/jobs/{job['id']}", headers=headers).json()
    assert done["state"] == "done", done["error"]
    assert sorted(done["result"]["removed"]) == sorted([first.id, forged.id])
    assert blockvault.Repository.open(repo.location, passphrase=PASSWORD).snapshot_ids() == [
        newest.id
    ]
    with center.sessions() as session:
        assert list(session.scalars(select(SeenSnapshot.snapshot))) == [newest.id]

    gc = client.post(
        "/api/v1/jobs", json={"kind": "gc", "params": {"repository": "main"}}, headers=headers
    ).json()
    check = client.post(
        "/api/v1/jobs", json={"kind": "check", "params": {"repository": "main"}}, headers=headers
    ).json()
    maintenance.maintain(center)
    for job in (gc, check):
        ended = client.get(f"/api/v1/jobs/{job['id']}", headers=headers).json()
        assert ended["state"] == "done", ended["error"]
    shown = client.get("/api/v1/repositories", headers=headers).json()[0]
    assert shown["last_check_ok"] is True and shown["last_gc"] is not None


def test_a_stored_password_reaches_the_agent_inside_its_job(center: Center) -> None:
    client = TestClient(create_app(center))
    headers = admin(center)
    agent = add_host(center, "pc1")
    body = {"name": "vault", "location": "/srv/vault", "password": PASSWORD}
    assert client.post("/api/v1/repositories", json=body, headers=headers).status_code == 201
    assert client.post("/api/v1/repositories", json=body, headers=headers).status_code == 409
    bad = {**body, "name": "other", "retention": {"dayly": 3}}
    assert client.post("/api/v1/repositories", json=bad, headers=headers).status_code == 422
    params = {"repo": "vault", "snapshot": "latest"}
    made = client.post(
        "/api/v1/jobs", json={"kind": "verify", "host": "pc1", "params": params}, headers=headers
    ).json()
    assert PASSWORD not in str(made)
    (handed,) = client.get("/agent/v1/jobs", headers=agent).json()
    assert handed["params"]["repo"] == "/srv/vault" and handed["params"]["password"] == PASSWORD
    assert PASSWORD not in str(client.get(f"/api/v1/jobs/{made['id']}", headers=headers).json())


def test_the_repository_commands(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    made = run_cli("center", "init", "--state", state, "--admin-password-file", tmp_path / "pw")
    assert made.returncode == 0, made.stderr
    add = ["center", "repository", "add", "main", tmp_path / "repo", "--state", state]
    assert run_cli(*add, "--password-file", tmp_path / "pw", "--keep-daily", "7").returncode == 0
    again = run_cli(*add)
    assert again.returncode == 2 and again.stderr.strip().endswith("exists already")
    bad = run_cli(*add[:3], "other", tmp_path / "repo", "--keep-within", "7x", "--state", state)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    listed = json.loads(run_cli("center", "repository", "list", "--json", "--state", state).stdout)
    assert [(r["name"], r["password_stored"], r["retention"]) for r in listed] == [
        ("main", True, {"daily": 7})
    ]
