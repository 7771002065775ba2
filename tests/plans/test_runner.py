"""``run_plan`` on real disks (sfdisk + mkfs, attached as loop devices) and real
repositories: the steps and their order, hooks' environment and failure policies, a
stop and a timeout, and the history row each outcome leaves.

The sample disk is built in a fresh sparse file, so a restore into a fresh file must
reproduce it byte for byte: the oracle is the image itself, not our maps.
"""

from __future__ import annotations

import filecmp
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from blockvault.errors import PlanError
from blockvault.events import Event, TaskAdvanced
from blockvault.files.restore import restore_files
from blockvault.pipeline.backup import backup
from blockvault.pipeline.restore import restore
from blockvault.plans.model import CheckSpec, Plan, RunRecord
from blockvault.plans.retention import Policy
from blockvault.plans.runner import MAX_LOG, check_plan, plan_tag, run_plan
from blockvault.plans.store import History
from blockvault.repo import Repository
from blockvault.repo.check import check_repository
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import needs_root, sh

MiB = 1 << 20
pytestmark = needs_root


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT with an ext4 and a FAT partition, both holding files."""
    work = tmp_path_factory.mktemp("runner")
    make_tree(work / "tree", 2 * MiB, seed=16)
    spec = DiskSpec(
        "gpt",
        32 * MiB,
        [PartitionSpec("ext4", 16 * MiB, "root", work / "tree"), PartitionSpec("fat16", 0, "DATA")],
    )
    return build_disk(spec, work / "disk.img").path


@pytest.fixture
def disk(image: Path) -> Iterator[str]:
    """The sample disk as a read-only loop device, its partitions known to the kernel."""
    device = sh("losetup", "--read-only", "--partscan", "--find", "--show", image).strip()
    first = Path(f"/sys/class/block/{Path(device).name}/{Path(device).name}p1")
    for _ in range(50):  # the scan may lag, or not happen at all in a container
        if first.exists():
            break
        subprocess.run(["partx", "--add", device], capture_output=True, check=False)
        time.sleep(0.1)
    yield device
    subprocess.run(["losetup", "-d", device], check=False)


def partition_node(disk: str, number: int, where: Path) -> str:
    """A device node for partition ``number`` of ``disk`` under ``where`` (containers
    have no udev to make /dev/loopNpM), from the kernel's numbers in sysfs."""
    name = Path(disk).name
    sysfs = Path(f"/sys/class/block/{name}/{name}p{number}/dev")
    major, minor = sysfs.read_text().split(":")
    node = where / f"{name}p{number}"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(int(major), int(minor)))
    return str(node)


@pytest.fixture
def repo_path(tmp_path: Path) -> str:
    path = str(tmp_path / "repo")
    Repository.init(path, chunk_size=64 * 1024)
    return path


@pytest.fixture
def history(tmp_path: Path) -> History:
    return History(tmp_path / "state" / "plans.db")


def quiet(event: Event) -> None:
    pass


def plan_for(disk: str, repo: str, **fields: object) -> Plan:
    values: dict[str, object] = {
        "name": "nightly",
        "repo": repo,
        "source_kind": "disk",
        "sources": (disk,),
        "schedule": "daily 02:00",
    }
    values.update(fields)
    return Plan(**values)  # type: ignore[arg-type]


def hook_script(tmp_path: Path, name: str, body: str) -> str:
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_run_backs_up_keeps_by_policy_and_restores_identical(
    disk: str, image: Path, repo_path: str, history: History, tmp_path: Path
) -> None:
    repo = Repository.open(repo_path)
    manual = backup(repo, disk)  # not the plan's: its retention must leave it alone
    plan = plan_for(disk, repo_path, retention=Policy(last=1), verify="snapshot")
    first = run_plan(plan, history, trigger="manual", reporter=quiet)
    second = run_plan(plan, history, trigger="schedule", reporter=quiet)
    assert (first.status, second.status) == ("ok", "ok"), (first.error, second.error)
    assert first.snapshot and second.snapshot and first.snapshot != second.snapshot
    remaining = {s.id for s in Repository.open(repo_path).snapshots()}
    assert remaining == {manual.id, second.snapshot}  # keep last 1 of the plan's own
    snap = Repository.open(repo_path).resolve(second.snapshot)
    assert plan_tag("nightly") in snap.tags
    assert second.bytes_read == snap.stats.read_bytes > 0
    assert second.bytes_new == 0  # nothing changed since the first run: all deduplicated
    restored = tmp_path / "restored.img"
    restore(Repository.open(repo_path), snap, str(restored))
    assert filecmp.cmp(restored, image, shallow=False)
    assert [r.run_id for r in history.runs("nightly")] == [second.run_id, first.run_id]
    assert history.last_good("nightly") == second
    log = Path(second.log or "").read_text()
    assert "retention kept 1 snapshot, removed 1" in log
    assert f"verify of snapshot {second.snapshot[:12]}: OK" in log


def test_partition_plan_images_only_its_partition(
    disk: str, repo_path: str, history: History, tmp_path: Path
) -> None:
    node = partition_node(disk, 2, tmp_path)
    plan = plan_for(disk, repo_path, source_kind="partition", sources=(node,))
    record = run_plan(plan, history, trigger="manual", reporter=quiet)
    assert record.status == "ok", record.error
    snap = Repository.open(repo_path).resolve(record.snapshot or "")
    assert snap.imaged_partitions_numbers == (2,)


def test_files_plan_backs_up_its_paths_without_the_excluded_and_restores_them(
    repo_path: str, history: History, tmp_path: Path
) -> None:
    """A plan of paths is a file backup: incremental, kept by its policy, verified,
    and what its exclude patterns name is left out."""
    source = tmp_path / "home"
    (source / "ann" / "cache").mkdir(parents=True)
    (source / "ann" / "thesis.txt").write_text("chapter one\n" * 1000)
    (source / "ann" / "cache" / "big.tmp").write_bytes(os.urandom(4096))
    plan = plan_for(
        "",
        repo_path,
        source_kind="files",
        sources=(str(source),),
        exclude=("*.tmp",),
        retention=Policy(last=1),
        verify="snapshot",
    )
    first = run_plan(plan, history, trigger="manual", reporter=quiet)
    (source / "ann" / "notes.txt").write_text("new\n")
    second = run_plan(plan, history, trigger="schedule", reporter=quiet)
    assert (first.status, second.status) == ("ok", "ok"), (first.error, second.error)
    repo = Repository.open(repo_path)
    assert [s.id for s in repo.snapshots()] == [second.snapshot]  # keep last 1
    snap = repo.resolve(second.snapshot or "")
    assert snap.kind == "files" and snap.parent == first.snapshot
    assert second.bytes_read < first.bytes_read  # the unchanged file was not read again
    out = tmp_path / "out"
    restore_files(repo, snap, str(source), out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "ann",
        "ann/cache",
        "ann/notes.txt",
        "ann/thesis.txt",
    ]
    assert (out / "ann" / "thesis.txt").read_bytes() == (source / "ann" / "thesis.txt").read_bytes()
    log = Path(second.log or "").read_text()
    assert f"verify of snapshot {second.snapshot[:12]}: OK" in log


def test_hooks_run_in_order_with_the_outcome_in_their_environment(
    disk: str, repo_path: str, history: History, tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    pre = hook_script(
        tmp_path, "pre", f'echo "pre $BLOCKVAULT_PLAN $BLOCKVAULT_PHASE" >> {trace}\n'
    )
    post = hook_script(
        tmp_path, "post", f'echo "post $BLOCKVAULT_STATUS" >> {trace}; env > {tmp_path}/env\n'
    )
    plan = plan_for(disk, repo_path, pre=pre, post=post)
    record = run_plan(plan, history, trigger="manual", reporter=quiet)
    assert record.status == "ok", record.error
    assert trace.read_text().splitlines() == ["pre nightly pre", "post ok"]
    env = env_file(tmp_path / "env")
    assert env["BLOCKVAULT_PLAN"] == "nightly"
    assert env["BLOCKVAULT_SNAPSHOT"] == record.snapshot
    assert env["BLOCKVAULT_ERROR"] == ""
    assert env["BLOCKVAULT_LOG"] == record.log
    assert env["BLOCKVAULT_RUN_ID"] == str(record.run_id)
    assert env["BLOCKVAULT_BYTES_READ"] == str(record.bytes_read)
    # the snapshot existed when the post-hook ran
    assert record.snapshot in {s.id for s in Repository.open(repo_path).snapshots()}


def test_failing_pre_hook_aborts_and_the_post_hook_still_runs(
    disk: str, repo_path: str, history: History, tmp_path: Path
) -> None:
    post = hook_script(tmp_path, "post", f"env > {tmp_path}/env\n")
    plan = plan_for(disk, repo_path, pre="/bin/sh -c 'echo no database; exit 3'", post=post)
    record = run_plan(plan, history, trigger="schedule", reporter=quiet)
    assert record.status == "failed"
    assert record.error == "pre-hook exited with 3; the backup did not run"
    assert record.snapshot is None
    assert Repository.open(repo_path).snapshots() == []
    env = env_file(tmp_path / "env")
    assert (env["BLOCKVAULT_STATUS"], env["BLOCKVAULT_ERROR"]) == ("failed", record.error)
    assert "no database" in Path(record.log or "").read_text()  # the hook's output is logged
    assert history.last_good("nightly") is None
    assert history.last("nightly") == record


def test_failing_pre_hook_with_continue_backs_up(
    disk: str, repo_path: str, history: History
) -> None:
    plan = plan_for(disk, repo_path, pre="/bin/false", pre_failure="continue")
    record = run_plan(plan, history, trigger="manual", reporter=quiet)
    assert record.status == "ok", record.error
    assert [s.id for s in Repository.open(repo_path).snapshots()] == [record.snapshot]
    assert "pre-hook exited with 1; continuing" in Path(record.log or "").read_text()


def test_failing_post_hook_fails_a_good_run(disk: str, repo_path: str, history: History) -> None:
    plan = plan_for(disk, repo_path, post="/bin/false")
    record = run_plan(plan, history, trigger="manual", reporter=quiet)
    assert (record.status, record.error) == ("failed", "post-hook exited with 1")
    assert record.snapshot is not None  # the snapshot itself is good and kept


def test_stop_interrupts_the_backup_and_leaves_the_repository_consistent(
    disk: str, repo_path: str, history: History, tmp_path: Path
) -> None:
    stop = threading.Event()

    def stop_at_first_progress(event: Event) -> None:
        if isinstance(event, TaskAdvanced):
            stop.set()

    post = hook_script(tmp_path, "post", f"env > {tmp_path}/env\n")
    plan = plan_for(disk, repo_path, post=post)
    record = run_plan(plan, history, trigger="schedule", reporter=stop_at_first_progress, stop=stop)
    assert record.status == "interrupted"
    assert record.error and record.error.startswith("stopped")
    repo = Repository.open(repo_path)
    assert repo.snapshots() == []
    result = check_repository(repo)
    assert result.ok and result.live_sessions == 0  # the writer session ended cleanly
    assert env_file(tmp_path / "env")["BLOCKVAULT_STATUS"] == "interrupted"
    assert history.runs("nightly") == [record]


def test_timeout_stops_a_hanging_pre_hook(disk: str, repo_path: str, history: History) -> None:
    plan = plan_for(disk, repo_path, pre="/bin/sleep 60", timeout=1)
    started = time.monotonic()
    record = run_plan(plan, history, trigger="schedule", reporter=quiet)
    assert time.monotonic() - started < 20
    assert record.status == "failed"
    assert record.error and record.error.startswith("timed out after 1s")
    assert Repository.open(repo_path).snapshots() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sources": ("/dev/no-such-disk",)}, "source /dev/no-such-disk: No such file"),
        ({"pre": "/nonexistent/hook --now"}, "pre hook '/nonexistent/hook' is not an executable"),
        ({"post": "no-such-program-anywhere"}, "post hook 'no-such-program-anywhere' is not an"),
        ({"repo": "/nonexistent/repo"}, "no repository at /nonexistent/repo"),
    ],
)
def test_a_plan_that_cannot_run_here_fails_before_anything_runs(
    disk: str,
    repo_path: str,
    history: History,
    tmp_path: Path,
    change: dict[str, object],
    message: str,
) -> None:
    trace = tmp_path / "trace"
    fields = {"pre": f"/usr/bin/touch {trace}", **change}
    plan = replace(plan_for(disk, repo_path), **fields)
    record = run_plan(plan, history, trigger="manual", reporter=quiet)
    assert record.status == "failed"
    assert record.error and message in record.error
    assert not trace.exists()  # the pre-hook never ran


def test_a_plan_never_runs_twice_at_once(disk: str, repo_path: str, history: History) -> None:
    inner: list[BaseException] = []

    def run_again(event: Event) -> None:
        if isinstance(event, TaskAdvanced) and not inner:
            try:
                run_plan(plan, history, trigger="manual", reporter=quiet)
            except PlanError as exc:
                inner.append(exc)

    plan = plan_for(disk, repo_path)
    record = run_plan(plan, history, trigger="schedule", reporter=run_again)
    assert record.status == "ok"
    assert len(inner) == 1 and "is running already" in str(inner[0])
    assert len(history.runs("nightly")) == 1


def test_on_finished_gets_the_record_and_the_previous_one(
    disk: str, repo_path: str, history: History
) -> None:
    seen: list[tuple[RunRecord, RunRecord | None]] = []
    plan = plan_for(disk, repo_path)
    failed = run_plan(
        plan_for(disk, repo_path, pre="/bin/false"),
        history,
        trigger="manual",
        reporter=quiet,
        on_finished=lambda r, p: seen.append((r, p)),
    )
    good = run_plan(
        plan,
        history,
        trigger="manual",
        reporter=quiet,
        on_finished=lambda r, p: seen.append((r, p)),
    )
    assert seen == [(failed, None), (good, failed)]


def test_runs_left_running_by_a_dead_process_are_marked_interrupted(history: History) -> None:
    child = (
        "import sys; from pathlib import Path; from blockvault.plans.store import History; "
        "History(Path(sys.argv[1])).start('nightly', 'schedule')"
    )
    subprocess.run([sys.executable, "-c", child, str(history.path)], check=True)
    mine = history.start("weekly", "manual")  # this process lives: left alone
    (dead,) = history.running("nightly")
    leftovers = history.interrupted_leftovers()
    assert [r.run_id for r in leftovers] == [dead.run_id]
    assert leftovers[0].status == "interrupted" and leftovers[0].ended is not None
    assert history.last("nightly") == leftovers[0]
    assert history.running() == [mine]
    assert history.interrupted_leftovers() == []  # once only


def test_a_run_log_is_bounded(disk: str, repo_path: str, history: History) -> None:
    noisy = "/bin/sh -c 'head -c 3000000 /dev/zero | tr \"\\0\" x; exit 1'"
    record = run_plan(
        plan_for(disk, repo_path, pre=noisy), history, trigger="manual", reporter=quiet
    )
    assert record.error == "pre-hook exited with 1; the backup did not run"
    log = Path(record.log or "").read_bytes()
    assert MAX_LOG <= len(log) <= MAX_LOG + 100
    assert log.endswith(b"[log truncated: it reached its size limit]\n")


def test_ctrl_c_without_signal_handlers_is_recorded_then_raised(
    disk: str, repo_path: str, history: History
) -> None:
    """A program embedding the library without ``interrupts.install()`` gets Python's
    KeyboardInterrupt: the run is still finished in the history before it propagates."""

    def ctrl_c(event: Event) -> None:
        if isinstance(event, TaskAdvanced):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_plan(plan_for(disk, repo_path), history, trigger="manual", reporter=ctrl_c)
    (record,) = history.runs("nightly")
    assert (record.status, record.error) == ("interrupted", "interrupted by KeyboardInterrupt")
    assert history.running() == [] and Repository.open(repo_path).snapshots() == []


def test_the_plans_check_reads_its_subset_of_the_repository(
    disk: str, repo_path: str, history: History
) -> None:
    record = run_plan(plan_for(disk, repo_path), history, trigger="manual", reporter=quiet)
    assert record.status == "ok"
    everything = check_repository(Repository.open(repo_path), read_data=True)
    plan = plan_for(disk, repo_path, check=CheckSpec("weekly sun 04:00", 50))
    result = check_plan(plan, reporter=quiet)
    assert result.ok and result.chunks == everything.chunks > 1
    assert result.chunks_read == round(everything.chunks * 0.5)
    with pytest.raises(PlanError, match="has no check"):
        check_plan(plan_for(disk, repo_path), reporter=quiet)
