"""The real ``blockvault agent`` process against a real loop-device disk and a real
local or SFTP repository: killed (SIGKILL) at random points and restarted, stopped by
SIGTERM in the middle of a backup, told to reload by SIGHUP.

Time is shortened the way the agent allows it (an ``every 2s`` schedule, no jitter,
no start-up delay), not by a fake clock. Kill points inside a backup are chosen by
``$BLOCKVAULT_FAULTS`` (storage/faulty.py freezes the process with SIGSTOP at the
N-th chunk, index or manifest write), so each is hit for sure, not by a sleep; a
few kills land at a random moment on top. The oracles are the repository's own
``check --read-data``, a byte comparison of every restored snapshot with the disk,
and the history database read with sqlite3.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockvault.repo import format as fmt
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk
from tests.conftest import blockvault as run
from tests.conftest import needs_root, process_state
from tests.storage.conftest import sshd  # noqa: F401 - the OpenSSH server fixture

pytestmark = [needs_root, pytest.mark.root]

MiB = 1024 * 1024
DEADLINE = 90.0  # seconds any one awaited state may take on a busy machine


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    tmp = tmp_path_factory.mktemp("agent")
    content = tmp / "content"
    content.mkdir()
    # 24 MiB that do not compress: chunks for a backup to be killed amid, and more
    # than one read unit (16 MiB), so a stopped backup has progress left to stop at
    for n in range(64):
        (content / f"file{n}.bin").write_bytes(random.Random(n).randbytes(384 * 1024))
    spec = DiskSpec(
        "gpt",
        48 * MiB,
        [PartitionSpec("fat32", 36 * MiB, "ESP", content), PartitionSpec("ext4", 0, "root")],
    )
    return build_disk(spec, tmp / "disk.img")


@dataclass
class Repo:
    """A repository the agent's plans write to, and the environment that reaches it."""

    location: str
    env: dict[str, str]

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return run("-r", self.location, *args, env=self.env)


@pytest.fixture(params=["local", "sftp"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Repo:
    if request.param == "local":
        made = Repo(str(tmp_path / "repo"), {})
    else:
        server = request.getfixturevalue("sshd")
        made = Repo(server.url(f"repo-{uuid.uuid4().hex[:8]}"), server.env())
    initialised = made.run("init")
    assert initialised.returncode == 0, initialised.stderr
    return made


class AgentProcess:
    """One ``blockvault agent`` child with its plans file, history and log."""

    def __init__(self, workdir: Path) -> None:
        self.plans = workdir / "plans.toml"
        self.database = workdir / "plans.db"
        self.log = workdir / "agent.log"
        self.env: dict[str, str] = {}  # the repository's (HOME with the SSH keys)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, faults: str | None = None, *options: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env, "BLOCKVAULT_PLANS": str(self.plans)}
        env.pop("BLOCKVAULT_FAULTS", None)
        if faults:
            env["BLOCKVAULT_FAULTS"] = faults
        command = ["blockvault", "agent", "--jitter", "0", "--startup-delay", "0"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*command, "--log-file", str(self.log), *options],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        return self.proc

    def runs(self) -> list[dict[str, str]]:
        if not self.database.exists():
            return []
        db = sqlite3.connect(self.database, timeout=30)
        try:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT run_id, plan, trigger, status, snapshot, error, kind, bytes_read FROM runs "
                "ORDER BY run_id"
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # not created yet
                return []
            raise
        finally:
            db.close()
        return [dict(row) for row in rows]

    def wait_for(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE
        while not done():
            assert self.proc is None or self.proc.poll() is None, (
                f"agent exited {self.proc.returncode} waiting for {what}: {self.log_text()}"
            )
            assert time.monotonic() < deadline, f"no {what} in {DEADLINE}s: {self.log_text()}"
            time.sleep(0.05)

    def wait_frozen(self) -> None:
        assert self.proc is not None
        self.wait_for("freeze at the fault", lambda: process_state(self.proc.pid) == "T")  # type: ignore[union-attr]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    process = AgentProcess(tmp_path)
    yield process
    if process.proc is not None and process.proc.poll() is None:
        process.proc.send_signal(signal.SIGCONT)
        process.kill()


def write_plan(agent: AgentProcess, name: str, device: str, repo: Repo, schedule: str) -> None:
    agent.env = repo.env
    with open(agent.plans, "a", encoding="utf-8") as file:
        file.write(
            f'[plan.{name}]\ndisk = "{device}"\nrepo = "{repo.location}"\nschedule = "{schedule}"\n'
        )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def assert_repository_whole(repo: Repo, disk: BuiltDisk, tmp_path: Path) -> list[str]:
    """``check --read-data`` clean, and every snapshot restores the disk byte for byte."""
    checked = repo.run("check", "--read-data")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = repo.run("snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    ids = [s["id"] for s in json.loads(listed.stdout)]
    expected = sha256(disk.path)
    for snapshot in ids:
        target = tmp_path / "restored.img"
        restored = repo.run("restore", snapshot, target, "--yes")
        assert restored.returncode == 0, restored.stderr
        assert sha256(target) == expected, f"snapshot {snapshot} does not restore the disk"
        target.unlink()
    return ids


def test_killed_at_random_points_and_restarted(
    disk: BuiltDisk, repo: Repo, agent: AgentProcess, loop: Callable[..., str], tmp_path: Path
) -> None:
    seed = int(os.environ.get("AGENT_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"AGENT_KILL_SEED={seed}")  # shown when the test fails: rerun with it
    write_plan(agent, "fast", loop(disk.path), repo, "every 2s")
    # frozen inside the first backup: at its first chunk, some way into the chunks
    # left (a backup after a kill writes only the chunks it lacks), at the index, at
    # the manifest; in this order, as no backup completes until the manifest is let
    # through. Then twice at a random moment, wherever the agent is.
    points: list[str | None] = [
        f"every=1,under={fmt.DATA_DIR}/",
        f"every={rng.randint(2, 12)},under={fmt.DATA_DIR}/",
        f"every=1,under={fmt.INDEX_DIR}/",
        f"every=1,under={fmt.SNAPSHOT_DIR}/",
        None,
        None,
    ]
    frozen_runs = []
    for point in points:
        before = len(agent.runs())
        if point is None:
            agent.start()
            agent.wait_for("a run to start", lambda: len(agent.runs()) > before)  # noqa: B023
            time.sleep(rng.uniform(0, 3))  # the random moment itself
        else:
            agent.start(f"signal=STOP,operations=write,{point}")
            agent.wait_frozen()
            runs = agent.runs()
            assert len(runs) == before + 1, (point, runs, agent.log_text())
            frozen_runs.append(runs[-1]["run_id"])
        agent.kill()
    # back for good: the leftovers are recorded interrupted and the plan runs again
    agent.start()
    killed_at = len(agent.runs())
    agent.wait_for(
        "an ok run after the restart",
        lambda: any(r["status"] == "ok" for r in agent.runs()[killed_at:]),
    )
    agent.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert agent.proc.wait(timeout=DEADLINE) == 143  # type: ignore[union-attr]

    runs = agent.runs()
    assert [r for r in runs if r["status"] == "running"] == []
    statuses = {r["run_id"]: r["status"] for r in runs}
    for run_id in frozen_runs:  # killed inside its backup: recorded so by the next start
        assert statuses[run_id] == "interrupted", runs
    for earlier, later in itertools.pairwise(runs):
        if earlier["status"] == "interrupted" and earlier["run_id"] in frozen_runs:
            assert later["trigger"] == "missed", runs  # ran again at once, once
    ids = assert_repository_whole(repo, disk, tmp_path)
    made = [r["snapshot"] for r in runs if r["status"] == "ok"]
    assert made and set(made) <= set(ids)  # every snapshot history names exists, whole
    assert "Traceback" not in agent.log.read_text()


def test_sigterm_during_a_backup_records_it_interrupted_and_exits_143(
    disk: BuiltDisk, repo: Repo, agent: AgentProcess, loop: Callable[..., str], tmp_path: Path
) -> None:
    write_plan(agent, "fast", loop(disk.path), repo, "every 2s")
    proc = agent.start(f"signal=STOP,operations=write,every=1,under={fmt.DATA_DIR}/")
    agent.wait_frozen()  # the first chunk of the first backup is being written
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=DEADLINE) == 143
    [only] = agent.runs()
    assert only["status"] == "interrupted" and only["snapshot"] is None, only
    assert "stopped 1 running plan" in agent.log_text()
    assert assert_repository_whole(repo, disk, tmp_path) == []  # no half snapshot
    # the next start runs it again, once, and it completes
    agent.start()
    agent.wait_for(
        "the run owed", lambda: len(agent.runs()) > 1 and agent.runs()[1]["status"] == "ok"
    )
    assert agent.runs()[1]["trigger"] == "missed"


@pytest.mark.parametrize("repo", ["local"], indirect=True)
def test_sighup_picks_up_an_added_plan(
    disk: BuiltDisk, repo: Repo, agent: AgentProcess, loop: Callable[..., str]
) -> None:
    device = loop(disk.path)
    write_plan(agent, "yearly", device, repo, "0 3 1 1 *")  # will not fire during the test
    proc = agent.start()
    agent.wait_for("the agent to run", lambda: "agent: running 1 enabled" in agent.log_text())
    write_plan(agent, "added", device, repo, "every 2s")
    proc.send_signal(signal.SIGHUP)
    agent.wait_for("the added plan to run", lambda: any(r["status"] == "ok" for r in agent.runs()))
    assert {r["plan"] for r in agent.runs()} == {"added"}
    assert "reloaded, 2 enabled of 2 plans" in agent.log_text()
    # a broken file on SIGHUP keeps the plans as they were
    agent.plans.write_text(agent.plans.read_text() + "[plan.broken\n")
    proc.send_signal(signal.SIGHUP)
    agent.wait_for("the reload warning", lambda: "reload failed" in agent.log_text())
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=DEADLINE) == 143


def test_bad_plans_file_is_one_line_and_exit_2(agent: AgentProcess) -> None:
    agent.plans.write_text('[plan.x]\ndisk = "/dev/null"\nrepo = "/tmp"\nschedule = "sometimes"\n')
    proc = run("agent", env={"BLOCKVAULT_PLANS": str(agent.plans)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "blockvault: error: plan x: schedule 'sometimes': not a schedule: give 5 cron fields "
        "('0 2 * * *'), hourly, daily [HH:MM], weekly [DAY] [HH:MM], monthly [DAY] [HH:MM] "
        "or 'every 6h'"
    ]


@pytest.mark.parametrize("repo", ["local"], indirect=True)
def test_scheduled_check_reads_the_repository_and_reports_damage(
    disk: BuiltDisk, repo: Repo, agent: AgentProcess, loop: Callable[..., str]
) -> None:
    device = loop(disk.path)
    made = repo.run("backup", device, "--json")
    assert made.returncode == 0, made.stderr
    write_plan(agent, "fast", device, repo, "0 3 1 1 *")  # the backup itself: not now
    with open(agent.plans, "a", encoding="utf-8") as file:
        file.write('check = { schedule = "every 2s", subset = 100 }\n')
    proc = agent.start()
    agent.wait_for("a clean check", lambda: "plan fast:check: ok" in agent.log_text())
    chunks = sorted(p for p in (Path(repo.location) / fmt.DATA_DIR).rglob("*") if p.is_file())
    damaged = bytearray(chunks[len(chunks) // 2].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte in one chunk, as a disk might
    chunks[len(chunks) // 2].write_bytes(bytes(damaged))
    agent.wait_for(
        "the damage found", lambda: "plan fast:check: failed: 1 problem" in agent.log_text()
    )
    checks = agent.runs()  # each check is a run of its own kind in the plan's history
    assert {(r["plan"], r["kind"]) for r in checks} == {("fast", "check")}, checks
    assert checks[0]["status"] == "ok" and checks[0]["error"] is None
    assert checks[0]["bytes_read"] > 0 and checks[0]["snapshot"] is None  # it read, made none
    damage = [r for r in checks if r["status"] == "failed"]
    assert damage and damage[0]["error"].startswith("1 problem (damaged: "), damage
    shown = run("--plans", agent.plans, "plan", "history", "fast", "--json")
    assert shown.returncode == 0, shown.stderr
    assert {r["kind"] for r in json.loads(shown.stdout)} == {"check"}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=DEADLINE) == 143


@pytest.mark.parametrize("repo", ["local"], indirect=True)
def test_a_run_that_cannot_start_in_time_is_skipped_and_recorded(
    disk: BuiltDisk, repo: Repo, agent: AgentProcess, loop: Callable[..., str]
) -> None:
    device = loop(disk.path)
    write_plan(agent, "slow", device, repo, "every 2s")
    with open(agent.plans, "a", encoding="utf-8") as file:
        file.write('pre = "/bin/sleep 30"\n')  # holds the one place for the whole test
    write_plan(agent, "waiting", device, repo, "every 2s")
    proc = agent.start("", "--concurrency", "1", "--max-start-delay", "1")
    agent.wait_for("a skipped run", lambda: any(r["plan"] == "waiting" for r in agent.runs()))
    waiting = [r for r in agent.runs() if r["plan"] == "waiting"]
    assert waiting[0]["status"] == "skipped", waiting  # never ran: not a failure
    assert waiting[0]["error"].startswith("could not start within 0:00:01"), waiting
    shown = run("--plans", agent.plans, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    (state,) = (s for s in json.loads(shown.stdout) if s["plan"] == "waiting")
    assert state["last"]["status"] == "skipped" and state["last_good"] is None
    assert [r["status"] for r in agent.runs() if r["plan"] == "slow"] == ["running"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=DEADLINE) == 143
    assert [r["status"] for r in agent.runs() if r["plan"] == "slow"] == ["interrupted"]
