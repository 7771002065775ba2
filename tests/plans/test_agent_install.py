"""``blockvault agent install`` / ``uninstall`` and the agent's own wiring of metrics
and notifications, as a user runs them. The unit's oracle is systemd's own parser
(``systemd-analyze verify``, which must print nothing: it only warns on lines it
ignores) and Python's configparser for what each line says."""

from __future__ import annotations

import configparser
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from blockvault.plans.model import Plan
from blockvault.plans.store import History, PlanBook
from blockvault_demo.servers import free_port
from tests.conftest import blockvault, need_tools

SYSTEMD_RUNS = Path("/run/systemd/system").is_dir()


def read_unit(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser["Service"]


def plans_with(tmp_path: Path, *plans: Plan) -> Path:
    path = tmp_path / "etc" / "plans.toml"
    path.parent.mkdir()
    PlanBook(path, {p.name: p for p in plans}).save()
    return path


def plan(name: str, repo: str) -> Plan:
    return Plan(name, repo, "disk", ("/dev/sdz",), "daily 02:00")


@pytest.mark.skipif(SYSTEMD_RUNS, reason="would enable a real service on this machine")
def test_install_writes_a_hardened_unit_systemd_accepts(tmp_path: Path) -> None:
    need_tools("systemd-analyze")
    repo = tmp_path / "repo"
    plans = plans_with(tmp_path, plan("root", str(repo)), plan("far", "sftp://backup@nas/srv/repo"))
    units = tmp_path / "units"
    done = blockvault(
        "--plans", plans, "agent", "install", "--unit-dir", units, "--metrics", "127.0.0.1:9750"
    )
    assert done.returncode == 0, done.stderr
    unit = units / "blockvault-agent.service"
    assert done.stdout.splitlines() == [
        f"wrote {unit}",
        "systemd is not running on this machine: nothing enabled and started; where it "
        "runs: systemctl daemon-reload; systemctl enable --now blockvault-agent.service",
    ]
    verify = subprocess.run(
        ["systemd-analyze", "verify", unit], capture_output=True, text=True, check=False
    )
    assert (verify.returncode, verify.stderr) == (0, "")
    service = read_unit(unit)
    assert service["ProtectSystem"] == "strict"
    # the state beside the plans file, and the local repository only (sftp is remote)
    assert service["ReadWritePaths"].split() == [str(plans.parent), f"-{repo}"]
    assert service["CapabilityBoundingSet"] == "CAP_DAC_READ_SEARCH"
    for key in ("PrivateTmp", "NoNewPrivileges", "ProtectKernelModules", "ProtectClock"):
        assert service[key] == "yes", key
    assert service["Restart"] == "on-failure"
    assert service["SuccessExitStatus"] == "143"
    assert service["ExecStart"].split()[-5:] == [
        "--plans",
        str(plans),
        "agent",
        "--metrics",
        "127.0.0.1:9750",
    ]
    # a dry run prints the same unit and writes nothing
    dry = blockvault(
        "--plans", plans, "agent", "install", "--dry-run", "--metrics", "127.0.0.1:9750"
    )
    assert dry.returncode == 0 and dry.stdout == unit.read_text()

    gone = blockvault("agent", "uninstall", "--unit-dir", units)
    assert gone.returncode == 0, gone.stderr
    assert not unit.exists()
    again = blockvault("agent", "uninstall", "--unit-dir", units)
    assert again.returncode == 2
    assert again.stderr == f"blockvault: error: no agent unit at {unit}: nothing to uninstall\n"


def test_user_unit_has_no_capabilities_to_bound(tmp_path: Path) -> None:
    need_tools("systemd-analyze")
    plans = plans_with(tmp_path, plan("root", str(tmp_path / "repo")))
    dry = blockvault("--plans", plans, "agent", "install", "--user", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    unit = tmp_path / "blockvault-agent.service"
    unit.write_text(dry.stdout)
    assert "CapabilityBoundingSet" not in read_unit(unit)
    assert "WantedBy=default.target" in dry.stdout
    verify = subprocess.run(
        ["systemd-analyze", "verify", unit], capture_output=True, text=True, check=False
    )
    assert (verify.returncode, verify.stderr) == (0, "")


@pytest.mark.parametrize(
    ("repo", "metrics", "why"),
    [
        ("/srv/my repo", None, "may not hold spaces"),
        ("/srv/repo", "9750", "--metrics 9750: give HOST:PORT"),
    ],
)
def test_install_refuses_what_a_unit_cannot_say(
    tmp_path: Path, repo: str, metrics: str | None, why: str
) -> None:
    plans = plans_with(tmp_path, plan("root", repo))
    more = ["--metrics", metrics] if metrics else []
    done = blockvault("--plans", plans, "agent", "install", "--unit-dir", tmp_path, *more)
    assert done.returncode == 2 and why in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "blockvault-agent.service").exists()


def test_the_agent_serves_metrics_and_stops_cleanly(tmp_path: Path) -> None:
    """The real daemon with --metrics: its endpoint shows a run recorded before it
    started; SIGTERM ends it with 143 and the endpoint goes away."""
    plans = plans_with(tmp_path, plan("root", str(tmp_path / "repo")))
    history = History.beside(plans)
    record = history.start("root", "manual")
    history.finish(replace(record, status="ok", bytes_read=4096, bytes_stored=1234))
    address = f"127.0.0.1:{free_port()}"
    agent = subprocess.Popen(
        ["blockvault", "--plans", str(plans), "agent", "--metrics", address],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        text = ""
        deadline = time.monotonic() + 60
        while not text:
            try:
                with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
                    text = answer.read().decode()
            except OSError:
                assert agent.poll() is None, agent.communicate()
                assert time.monotonic() < deadline, "the agent never served metrics"
                time.sleep(0.1)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert (
            samples[("blockvault_plan_last_run_bytes", (("kind", "read"), ("plan", "root")))]
            == 4096
        )
        assert samples[("blockvault_plan_last_run_success", (("plan", "root"),))] == 1
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 143, err
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{address}/metrics", timeout=5)
