"""``blockvault plan ...`` and ``status`` as a user runs them: the plans file read
back with ``tomllib`` (not our reader), bad input refused before anything is saved or
run, runs into local and SFTP repositories restored byte for byte, a clock that
jumped back refused by retention (``faketime`` moves the clock of real processes),
overdue, and the history row of each outcome.
"""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from blockvault_demo.servers import SSHServer, start_sshd, stop
from tests.conftest import blockvault, need_tools, needs_root, sh

MiB = 1 << 20


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("plan-cli")
    make_tree(work / "tree", 1 * MiB, seed=7)
    spec = DiskSpec("gpt", 16 * MiB, [PartitionSpec("ext4", 0, "root", work / "tree")])
    return build_disk(spec, work / "disk.img").path


@pytest.fixture
def place(tmp_path: Path, image: Path) -> dict[str, str]:
    """A repository and a plans file of this test's own (the env of every call)."""
    repo = tmp_path / "repo"
    done = blockvault("-r", repo, "init")
    assert done.returncode == 0, done.stderr
    return {"BLOCKVAULT_PLANS": str(tmp_path / "etc" / "plans.toml"), "REPO": str(repo)}


def cli(place: dict[str, str], *args: object, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in place.items() if k != "REPO"}
    env.update(kw.pop("env", {}))  # type: ignore[arg-type]
    return blockvault(*map(str, args), env=env)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def plans(place: dict[str, str]) -> dict[str, object]:
    with open(place["BLOCKVAULT_PLANS"], "rb") as file:
        return tomllib.load(file)["plan"]  # type: ignore[no-any-return]


def test_add_list_show_edit_remove_round_trip_through_the_file(
    place: dict[str, str], image: Path
) -> None:
    ok(
        cli(
            place,
            "plan", "add", "nightly", "--repo", place["REPO"], "--disk", image,
            "--schedule", "daily 02:00", "--window", "Mon-Fri 01:00-05:00",
            "--keep-daily", "7", "--keep-weekly", "4", "--keep-within", "2d",
            "--verify", "snapshot", "--check", "weekly sun 04:00 subset 5%",
            "--pre", "/bin/true", "--post", "/bin/echo done", "--pre-failure", "continue",
            "--notify", "mailto:ann@example.org", "--notify", "https://hooks.example.org/x",
            "--timeout", "6h",
        )
    )  # fmt: skip
    expected = {
        "repo": place["REPO"],
        "disk": str(image),
        "schedule": "daily 02:00",
        "window": "Mon-Fri 01:00-05:00",
        "verify": "snapshot",
        "pre": "/bin/true",
        "post": "/bin/echo done",
        "timeout": "6h",
        "pre_failure": "continue",
        "notify": ["mailto:ann@example.org", "https://hooks.example.org/x"],
        "keep": {"daily": 7, "weekly": 4, "within": "2d"},
        "check": {"schedule": "weekly sun 04:00", "subset": 5},
    }
    assert plans(place) == {"nightly": expected}
    assert oct(os.stat(place["BLOCKVAULT_PLANS"]).st_mode & 0o777) == "0o600"
    shown = json.loads(ok(cli(place, "plan", "show", "nightly", "--json")))
    assert shown == {"name": "nightly", **expected}
    listed = json.loads(ok(cli(place, "plan", "list", "--json")))
    assert [p["name"] for p in listed] == ["nightly"]
    assert "nightly" in ok(cli(place, "plan", "list"))

    # edit changes what is given, clears what says so, keeps the rest
    ok(
        cli(
            place, "plan", "edit", "nightly", "--schedule", "0 3 * * *", "--window", "none",
            "--keep-last", "3", "--post", "", "--notify", "none", "--timeout", "none",
        )
    )  # fmt: skip
    after = plans(place)["nightly"]
    assert after == {
        **{k: v for k, v in expected.items() if k not in ("window", "post", "notify", "timeout")},
        "schedule": "0 3 * * *",
        "keep": {"last": 3},
    }
    ok(cli(place, "plan", "disable", "nightly"))
    assert plans(place)["nightly"]["enabled"] is False  # type: ignore[index]
    assert "disabled" in ok(cli(place, "status"))
    ok(cli(place, "plan", "enable", "nightly"))
    assert "enabled" not in plans(place)["nightly"]  # type: ignore[operator]
    ok(cli(place, "plan", "remove", "nightly"))
    assert plans(place) == {}
    gone = cli(place, "plan", "show", "nightly")
    assert gone.returncode == 2
    assert gone.stderr == (
        f"blockvault: error: no plan named 'nightly' in {place['BLOCKVAULT_PLANS']}; "
        "'blockvault plan list' shows the plans\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--schedule", "fortnightly"], "plan p: schedule 'fortnightly': not a schedule"),
        (["--window", "sometimes"], "plan p: window 'sometimes'"),
        (["--repo", "/nonexistent/repo"], "no repository at /nonexistent/repo"),
        (["--disk", "/dev/no-such-disk"], "plan p: source /dev/no-such-disk: No such file"),
        (["--pre", "/etc/passwd"], "plan p: pre hook '/etc/passwd' is not an executable"),
        (["--post", "'unclosed"], 'plan p: post hook "\'unclosed": No closing quotation'),
        (["--keep-within", "soon"], "plan p: keep.within: duration 'soon'"),
        (["--notify", "ftp://x"], "plan p: notify target 'ftp://x': use mailto:"),
        (["--timeout", "0m"], "plan p: timeout must be longer than 0"),
        (["--check", "every 1d subset 500%"], "subset is a percentage from 1 to 100"),
        (["--disk", "/etc", "--system"], "plan p: give one source"),
        (["/no/such/path"], "plan p: path /no/such/path does not exist"),
        (["/etc", "--exclude", "a/[z-a]"], "plan p: exclude pattern not understood"),
        (["--live", "sometimes"], "plan p: live = 'sometimes': a disk, partitions or system"),
    ],
)
def test_bad_input_is_one_clear_line_and_nothing_is_saved(
    place: dict[str, str], image: Path, args: list[str], message: str
) -> None:
    base = {"--repo": place["REPO"], "--disk": str(image), "--schedule": "daily"}
    for key in args:
        base.pop(key, None)
    if args[0].startswith("/") or "--system" in args:
        base.pop("--disk", None)
    done = cli(place, "plan", "add", "p", *[x for kv in base.items() for x in kv], *args)
    assert done.returncode == (3 if "no repository" in message else 2), done.stderr
    assert done.stderr.startswith("blockvault: error: ")
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not Path(place["BLOCKVAULT_PLANS"]).exists() or plans(place) == {}


def test_plan_add_names_what_it_needs(place: dict[str, str], image: Path) -> None:
    done = cli(place, "plan", "add", "p", "--repo", place["REPO"], "--disk", image)
    assert (done.returncode, done.stderr) == (
        2,
        "blockvault: error: plan p: plan add needs --repo REPO, a source (--disk DEV, "
        "--partition DEV... or --system) and --schedule SPEC\n",
    )
    assert not Path(place["BLOCKVAULT_PLANS"]).exists()


def test_a_hand_edited_plans_file_is_checked_field_by_field(place: dict[str, str]) -> None:
    path = Path(place["BLOCKVAULT_PLANS"])
    path.parent.mkdir(parents=True)
    for text, message in [
        ('[plan.a]\nrepo = "/r"\ndisk = "/d"\nschedule = "daily"\nkeep = { dayly = 3 }\n',
         "plan a: keep.dayly is not a rule"),
        ('[plan.a]\nrepo = "/r"\ndisk = "/d"\nschedul = "daily"\n',
         "plan a: unknown field 'schedul'"),
        ('[plan.a]\nrepo = "/r"\ndisk = "/d"\nschedule = "daily"\nenabled = "yes"\n',
         "plan a: enabled must be true or false"),
        ('[plan."../x"]\nrepo = "/r"\ndisk = "/d"\nschedule = "daily"\n',
         "plan '../x': a plan name"),
        ("[plan.a\n", f"plans file {path}: not valid TOML"),
    ]:  # fmt: skip
        path.write_text(text)
        done = cli(place, "plan", "list")
        assert done.returncode == 2 and message in done.stderr, (text, done.stderr)


def test_status_of_an_empty_plans_file(place: dict[str, str]) -> None:
    assert json.loads(ok(cli(place, "status", "--json"))) == []
    assert not Path(place["BLOCKVAULT_PLANS"]).parent.exists()  # nothing made by looking


def add_plan(
    place: dict[str, str], source: str, *more: object, env: dict[str, str] | None = None
) -> None:
    ok(
        cli(
            place, "plan", "add", "nightly", "--repo", place["REPO"], "--disk", source,
            "--schedule", "daily 02:00", *more, env=env or {},
        )
    )  # fmt: skip


def history(place: dict[str, str], env: dict[str, str] | None = None) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(
        ok(cli(place, "plan", "history", "nightly", "--json", env=env or {}))
    )
    return rows


def at_clock(offset: str, place: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``blockvault ARGS`` in a process whose clock is ``offset`` (``+3d``, ``-31h``) off."""
    return subprocess.run(
        ["faketime", "-f", offset, "blockvault", *args],
        env={**os.environ, "BLOCKVAULT_PLANS": place["BLOCKVAULT_PLANS"]},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def disk(image: Path) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices")
    device = sh("losetup", "--read-only", "--find", "--show", image).strip()
    yield device
    subprocess.run(["losetup", "-d", device], check=False)


@needs_root
def test_plan_run_makes_a_snapshot_that_restores_identical(
    place: dict[str, str], disk: str, image: Path, tmp_path: Path
) -> None:
    add_plan(place, disk, "--keep-last", "2", "--verify", "source")
    snapshot = ok(cli(place, "plan", "run", "nightly")).strip()
    restored = tmp_path / "restored.img"
    ok(blockvault("-r", place["REPO"], "restore", snapshot, restored))
    assert filecmp.cmp(restored, image, shallow=False)
    (row,) = history(place)
    assert row["status"] == "ok" and row["snapshot"] == snapshot and row["trigger"] == "manual"
    assert row["bytes_read"] and row["error"] is None and Path(str(row["log"])).is_file()
    (state,) = json.loads(ok(cli(place, "status", "--json")))
    assert state["overdue"] is False and state["last_good"]["snapshot"] == snapshot
    assert state["period_seconds"] == 86400
    assert state["next_run"] > row["started"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    need_tools("sshd", "ssh-keygen")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    stop(server.proc)


@needs_root
def test_plan_run_into_an_sftp_repository(
    place: dict[str, str], disk: str, image: Path, tmp_path: Path, sshd: SSHServer
) -> None:
    env = sshd.env()
    url = sshd.url(f"repo-{tmp_path.name}")
    ok(blockvault("-r", url, "init", env=env))
    place = {**place, "REPO": url}
    add_plan(place, disk, "--keep-last", "1", env=env)
    first = ok(cli(place, "plan", "run", "nightly", env=env)).strip()
    second = ok(cli(place, "plan", "run", "nightly", env=env)).strip()
    listed = json.loads(ok(blockvault("-r", url, "snapshots", "--json", env=env)))
    assert [s["id"] for s in listed] == [second] != [first]  # keep-last 1, over SFTP
    restored = tmp_path / "restored.img"
    ok(blockvault("-r", url, "restore", second, restored, env=env))
    assert filecmp.cmp(restored, image, shallow=False)
    unreachable = cli(place, "plan", "edit", "nightly", "--repo", sshd.url("nowhere"), env=env)
    assert unreachable.returncode == 3 and "no repository at" in unreachable.stderr


@needs_root
def test_a_clock_that_jumped_back_refuses_to_prune(place: dict[str, str], disk: str) -> None:
    need_tools("faketime")
    add_plan(place, disk, "--keep-last", "1")
    for _ in range(2):  # made while the clock was 3 days ahead
        ok(at_clock("+3d", place, "plan", "run", "nightly"))
    before = {
        s["id"] for s in json.loads(ok(blockvault("-r", place["REPO"], "snapshots", "--json")))
    }
    assert len(before) == 1  # keep-last 1 pruned while the clock agreed with itself
    done = cli(place, "plan", "run", "nightly")  # the clock is back: "now" is before them
    assert done.returncode == 1
    assert "the clock may have jumped back, so nothing was pruned" in done.stderr
    after = {
        s["id"] for s in json.loads(ok(blockvault("-r", place["REPO"], "snapshots", "--json")))
    }
    assert before < after and len(after) == 2  # the new one made, none removed
    newest = history(place)[0]
    assert newest["status"] == "failed" and newest["snapshot"] in after


@needs_root
def test_overdue_when_the_last_good_backup_is_older_than_the_period(
    place: dict[str, str], disk: str
) -> None:
    need_tools("faketime")
    add_plan(place, disk)  # daily: overdue after 30 hours
    ok(at_clock("-31h", place, "plan", "run", "nightly"))
    (state,) = json.loads(ok(cli(place, "status", "--json")))
    assert state["overdue"] is True and state["last_good_age_seconds"] >= 31 * 3600 - 60
    assert "OVERDUE" in ok(cli(place, "status"))
    ok(at_clock("-29h", place, "plan", "run", "nightly"))
    (state,) = json.loads(ok(cli(place, "status", "--json")))
    assert state["overdue"] is False


@needs_root
def test_history_rows_for_each_outcome(place: dict[str, str], disk: str, tmp_path: Path) -> None:
    marker = tmp_path / "pre-started"
    post_env = tmp_path / "post-env"
    add_plan(
        place, disk, "--pre", f"/bin/sh -c 'touch {marker}; exec sleep 60'",
        "--post", f"/bin/sh -c 'env > {post_env}'",
    )  # fmt: skip
    # interrupted: SIGTERM while the pre-hook runs (the hook says when it has started)
    proc = subprocess.Popen(
        ["blockvault", "plan", "run", "nightly"],
        env={**os.environ, "BLOCKVAULT_PLANS": place["BLOCKVAULT_PLANS"]},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "BLOCKVAULT_STATUS=interrupted" in post_env.read_text()
    # failed: a pre-hook that fails (abort), then ok once it succeeds
    ok(cli(place, "plan", "edit", "nightly", "--pre", "/bin/false"))
    failed = cli(place, "plan", "run", "nightly")
    assert failed.returncode == 1
    assert "run 2 failed: pre-hook exited with 1; the backup did not run" in failed.stderr
    ok(cli(place, "plan", "edit", "nightly", "--pre", ""))
    good = ok(cli(place, "plan", "run", "nightly")).strip()
    rows = history(place)
    assert [(r["run_id"], r["status"]) for r in rows] == [
        (3, "ok"),
        (2, "failed"),
        (1, "interrupted"),
    ]
    assert [r["snapshot"] for r in rows] == [good, None, None]
    assert str(rows[2]["error"]).startswith("interrupted by SIGTERM")
    assert all(r["ended"] for r in rows)
    table = ok(cli(place, "plan", "history", "nightly", env={"COLUMNS": "300"}))
    assert "interrupted" in table and "failed" in table and good[:12] in table
