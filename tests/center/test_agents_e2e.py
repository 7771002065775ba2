"""A real ``center serve`` process and real ``blockvault agent`` processes, each with
its own plans file and loop-device disk, backing up into one real repository:
enrolment (a wrong fingerprint refused before the token is spent), central plans
pushed and run, runs and snapshots seen in the API, the center stopped while the
agents go on backing up and report afterwards, an agent revoked and refused.

Time is shortened as the agent and center allow it (``every 2s`` plans, a heartbeat
each second from ``center.toml``), not faked. SQLite only: the API tests run every
query on PostgreSQL too, and this test's cost is the processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk
from tests.center.server import CenterServer, running_center
from tests.conftest import blockvault, needs_root

pytestmark = [needs_root, pytest.mark.root]

MiB = 1024 * 1024
DEADLINE = 120.0  # seconds any one awaited state may take on a busy machine


def wait_for(what: str, done: Callable[[], Any], *logs: Path) -> Any:
    deadline = time.monotonic() + DEADLINE
    while not (found := done()):
        if time.monotonic() > deadline:
            tails = "\n".join(p.read_text(errors="replace")[-2000:] for p in logs if p.exists())
            raise AssertionError(f"no {what} in {DEADLINE}s\n{tails}")
        time.sleep(0.2)
    return found


class Agent:
    """One ``blockvault agent`` process with its own plans file (empty: its plans
    come from the center) and log."""

    def __init__(self, name: str, workdir: Path) -> None:
        workdir.mkdir(parents=True)
        self.name = name
        self.plans = workdir / "plans.toml"
        self.log = workdir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"BLOCKVAULT_PLANS": str(self.plans)}

    def enrol(self, server: CenterServer, token: str, fingerprint: str) -> Any:
        return blockvault(
            "agent", "enrol", server.url, "--token", token, "--fingerprint", fingerprint,
            "--name", self.name, env=self.env,
        )  # fmt: skip

    def start(self) -> None:
        command = ["blockvault", "agent", "--jitter", "0", "--startup-delay", "0"]
        self.proc = subprocess.Popen(
            [*command, "--log-file", str(self.log)],
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def ok_runs(self) -> dict[int, str]:
        """The agent's own history: run id -> snapshot of each good backup."""
        database = self.plans.with_suffix(".db")
        if not database.exists():
            return {}
        db = sqlite3.connect(database, timeout=30)
        try:
            rows = db.execute(
                "SELECT run_id, snapshot FROM runs WHERE status = 'ok' AND kind = 'backup'"
            ).fetchall()
        except sqlite3.OperationalError:
            return {}
        finally:
            db.close()
        return dict(rows)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[[str], Agent]]:
    made: list[Agent] = []

    def make(name: str) -> Agent:
        made.append(Agent(name, tmp_path / name))
        return made[-1]

    yield make
    for agent in made:
        if agent.alive():
            assert agent.proc is not None
            agent.proc.kill()
            agent.proc.wait()


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    tmp = tmp_path_factory.mktemp("fleet")
    content = tmp / "content"
    content.mkdir()
    for n in range(8):
        (content / f"file{n}.bin").write_bytes(random.Random(n).randbytes(256 * 1024))
    spec = DiskSpec("gpt", 16 * MiB, [PartitionSpec("ext4", 0, "data", content)])
    return build_disk(spec, tmp / "disk.img")


def serve_again(server: CenterServer, **config: int) -> CenterServer:
    """Start ``center serve`` again on the same state and port (after ``stop``), with
    ``config`` written into its center.toml first."""
    toml = server.state / "center.toml"
    lines = [line for line in toml.read_text().splitlines() if line.split(" =")[0] not in config]
    toml.write_text("\n".join([*lines, *(f"{k} = {v}" for k, v in config.items())]) + "\n")
    with server.log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "blockvault", "center", "serve", "--state", str(server.state)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    again = replace(server, process=process)
    with again.client() as http:

        def healthy() -> bool:
            assert process.poll() is None, again.log_text()
            try:
                return http.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for("healthy center", healthy, server.log)
    return again


def test_a_fleet_enrols_backs_up_offline_reports_later_and_a_revoked_agent_is_refused(
    tmp_path: Path, disk: BuiltDisk, loop: Callable[..., str], agents: Callable[[str], Agent]
) -> None:
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    with running_center(tmp_path / "center", f"sqlite:///{tmp_path / 'center.db'}") as first:
        first.stop()
        server = serve_again(first, heartbeat_interval=1)
        try:
            _fleet(server, repo, disk, loop, agents, tmp_path)
        finally:
            server.stop()


def _fleet(
    server: CenterServer,
    repo: Path,
    disk: BuiltDisk,
    loop: Callable[..., str],
    agents: Callable[[str], Agent],
    tmp_path: Path,
) -> None:
    admin = server.client(server.api_token())
    assert admin.post("/api/v1/groups", json={"name": "lab"}).status_code == 201
    made = server.blockvault("token", "create", "--group", "lab", "--uses", "3", "--json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]

    # a wrong fingerprint: refused before the token is sent, nothing written
    mallory = agents("mallory")
    wrong = "SHA256:" + "A" * 43
    refused = mallory.enrol(server, token, wrong)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert f"presented certificate {server.fingerprint}, not {wrong}" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not mallory.plans.with_suffix(".center.json").exists()
    (listed,) = admin.get("/api/v1/enrol-tokens").json()
    assert listed["uses_left"] == 3

    fleet = [agents("alpha"), agents("beta")]
    devices = {}
    for agent in fleet:
        enrolled = agent.enrol(server, token, server.fingerprint)
        assert enrolled.returncode == 0, enrolled.stderr
        key = agent.plans.with_suffix(".center.key")
        assert key.stat().st_mode & 0o077 == 0  # owner-only
        image = tmp_path / f"{agent.name}.img"
        image.write_bytes(disk.path.read_bytes())
        devices[agent.name] = loop(image)
        spec = {"disk": devices[agent.name], "repo": str(repo), "schedule": "every 2s"}
        # retention is the center's: agents must not prune, so this keep is dropped
        spec["keep"] = {"last": 1}
        plan = {"name": "nightly", "host": agent.name, "spec": spec}
        assert admin.post("/api/v1/plans", json=plan).status_code == 201
    assert admin.get("/api/v1/enrol-tokens").json()[0]["uses_left"] == 1
    for agent in fleet:
        agent.start()

    hosts = {h["name"]: h for h in admin.get("/api/v1/hosts").json()}
    ids = {name: hosts[name]["id"] for name in ("alpha", "beta")}

    def good_runs(name: str) -> dict[int, str]:
        runs = admin.get(f"/api/v1/runs?host={ids[name]}&status=ok&limit=500").json()["runs"]
        return {r["agent_run_id"]: r["snapshot"] for r in runs if r["kind"] == "backup"}

    logs = [a.log for a in fleet] + [server.log]
    for agent in fleet:
        wait_for(
            f"a good run of {agent.name} at the center", lambda a=agent: good_runs(a.name), *logs
        )
    snapshots = json.loads(blockvault("-r", repo, "snapshots", "--json").stdout)
    in_repo = {s["id"] for s in snapshots}
    for agent in fleet:
        reported = good_runs(agent.name)
        assert set(reported.values()) <= in_repo
        assert all(r["plan"] == "center:nightly" for r in admin.get(
            f"/api/v1/runs?host={ids[agent.name]}").json()["runs"])  # fmt: skip
    # agents kept every snapshot: retention is not theirs (keep last 1 was dropped)
    assert len(in_repo) >= 2
    detail = admin.get(f"/api/v1/hosts/{ids['alpha']}").json()
    assert detail["online"] and detail["group"] == "lab" and not detail["overdue"]

    def inventory_disks() -> list[str]:
        found = admin.get(f"/api/v1/hosts/{ids['alpha']}").json()["inventory"]
        return [d["path"] for d in found["disks"]]

    # the disks are read at start and then every 10 minutes, again sooner if a reading
    # failed (on a shared machine a device may vanish amid one)
    wait_for("alpha's disk in its inventory", lambda: devices["alpha"] in inventory_disks())
    assert "center:nightly" in [p["name"] for p in detail["inventory"]["plans"]]

    # the center goes away: the agents go on backing up from their cached plans
    server.stop()
    offline_from = {a.name: max(a.ok_runs(), default=0) for a in fleet}
    for agent in fleet:
        wait_for(
            f"two good runs of {agent.name} while the center is down",
            lambda a=agent: len([i for i in a.ok_runs() if i > offline_from[a.name]]) >= 2,
            *logs,
        )
        assert agent.alive()
    made_offline = {
        a.name: {i: s for i, s in a.ok_runs().items() if i > offline_from[a.name]} for a in fleet
    }
    server = serve_again(server)
    try:
        admin = server.client(server.api_token())
        for agent in fleet:  # ... and report them once it is back
            wait_for(
                f"{agent.name}'s offline runs at the center",
                lambda a=agent: made_offline[a.name].items() <= good_runs(a.name).items(),
                *logs,
            )
        assert any("cannot reach the center" in a.log.read_text() for a in fleet)

        # revoked: beta's agent is refused from now on; its heartbeats stop counting
        assert admin.post(f"/api/v1/hosts/{ids['beta']}/revoke").status_code == 200
        wait_for("beta refused", lambda: "refused" in fleet[1].log.read_text(), *logs)
        seen = admin.get(f"/api/v1/hosts/{ids['beta']}").json()["last_seen"]
        time.sleep(3)  # three heartbeat intervals
        assert admin.get(f"/api/v1/hosts/{ids['beta']}").json()["last_seen"] == seen
        with server.client() as anonymous:
            challenge = anonymous.post("/agent/v1/challenge", json={"host": "beta"})
            assert challenge.status_code == 403
        assert fleet[1].alive()  # refused by the center, it still runs its plans
        for agent in fleet:
            assert agent.stop() == 143
            assert "Traceback" not in agent.log.read_text()
    finally:
        server.stop()
