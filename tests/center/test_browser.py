"""The dashboard in a real Chromium: logging in (a wrong password, the rate limit),
every page without a console error, the plan editor's live preview, the enrol page,
and live updates arriving by server-sent events. Screenshots of the overview and a
host's page are kept in the test's directory (``tmp_path``) to look at."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

import blockvault
from blockvault.center.context import Center
from blockvault.center.db import transaction
from blockvault.center.models import CentralPlan, Group, Host, Run
from blockvault.center.web.login import MAX_FAILURES
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk
from tests.center import browser, test_agents_e2e, test_alerts
from tests.center.browser import Served, Watched
from tests.center.conftest import add_user
from tests.center.test_agents_e2e import Agent
from tests.center.test_alerts import Mailbox
from tests.conftest import needs_root

served = browser.served  # the fixtures
chromium = browser.chromium
browser_page = browser.browser_page
mailbox = test_alerts.mailbox  # a real SMTP server on loopback
agents = test_agents_e2e.agents  # real agent processes, killed at the end
MiB = 1 << 20

NAV = [
    "Overview",
    "Hosts",
    "Plans",
    "Runs",
    "Jobs",
    "Snapshots",
    "Repositories",
    "Deployments",
    "Alerts",
    "Users",
    "Audit",
    "Settings",
]
INVENTORY = {
    "disks": [
        {
            "path": "/dev/sda",
            "model": "QEMU HARDDISK",
            "size": 64 * 2**30,
            "layout": {
                "table": {"kind": "gpt"},
                "partitions": [
                    {
                        "partition": {"number": 1, "size": 512 * 2**20, "name": "EFI"},
                        "fs": {"type": "fat32", "label": "ESP"},
                    },
                    {
                        "partition": {"number": 2, "size": 60 * 2**30, "name": "root"},
                        "fs": {"type": "ext4", "label": "root"},
                    },
                ],
            },
        }
    ]
}


def _fleet(center: Center) -> int:
    """A few hosts with a month of backups, for the pages to show something."""
    now = center.clock()
    with transaction(center.sessions) as session:
        lab = Group(name="lab")
        session.add(lab)
        session.flush()
        hosts = []
        for i, name in enumerate(["web-1", "db-1", "build-1", "kiosk-1"]):
            host = Host(
                name=name,
                group_id=lab.id,
                public_key="k" * 43,
                os="Debian 13",
                agent_version="0.9",
                enrolled=now - timedelta(days=40),
                last_seen=now - timedelta(minutes=1 if i < 3 else 90),
                inventory=INVENTORY,
            )
            session.add(host)
            session.flush()
            hosts.append(host)
        session.add(
            CentralPlan(
                name="nightly",
                group_id=lab.id,
                updated_by="user:alice",
                spec={"repo": "/srv/repo", "system": True, "schedule": "daily 02:00"},
            )
        )
        for day in range(30):
            for n, host in enumerate(hosts[:3]):
                ended = now - timedelta(days=day, hours=n)
                failed = host.name == "db-1" and day == 0
                session.add(
                    Run(
                        host_id=host.id,
                        agent_run_id=day,
                        plan="center:nightly",
                        kind="backup",
                        trigger="schedule",
                        status="failed" if failed else "ok",
                        started=ended - timedelta(minutes=5 + (day * 7 + n * 3) % 20),
                        ended=ended,
                        received=ended,
                        bytes_stored=(2 + (day * 13 + n * 5) % 9) * 2**28,
                        error="repository unreachable" if failed else None,
                    )
                )
        return hosts[0].id


def _log_in(page: Watched, served: Served, name: str, password: str) -> None:
    page.page.fill("input[name=name]", name)
    page.page.fill("input[name=password]", password)
    page.page.click("button[type=submit]")


def test_log_in_and_visit_every_page(
    center: Center, served: Served, browser_page: Watched, tmp_path: Path
) -> None:
    add_user(center, "alice", "admin")
    host = _fleet(center)
    page = browser_page.page
    page.goto(served.url + "/hosts")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fhosts$"))
    _log_in(browser_page, served, "alice", "wrong")
    expect(page.locator("#login-error")).to_have_text("Wrong name or password.")
    browser_page.problems.clear()  # the 401 of the wrong password is logged as an error
    _log_in(browser_page, served, "alice", "alice-password")
    expect(page).to_have_url(served.url + "/hosts")  # back where it was going
    expect(page.locator("#hosts-table")).to_contain_text("kiosk-1")
    nav = page.get_by_role("navigation", name="Main")
    for label in NAV:
        nav.get_by_role("link", name=label, exact=True).click()
        expect(page.locator("h1")).to_be_visible()
        expect(nav.get_by_role("link", name=label, exact=True)).to_have_attribute(
            "aria-current", "page"
        )
        page.screenshot(path=str(tmp_path / f"{label.lower()}.png"), full_page=True)
    page.goto(served.url + "/")
    expect(page.locator("#count-failing")).to_have_text("1")
    expect(page.locator("#count-offline")).to_have_text("1")
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    page.goto(f"{served.url}/hosts/{host}")
    expect(page.locator("h1")).to_contain_text("web-1")
    expect(page.get_by_text("QEMU HARDDISK")).to_be_visible()
    page.screenshot(path=str(tmp_path / "host.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto(served.url + "/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing overflows
    page.screenshot(path=str(tmp_path / "overview-phone.png"), full_page=True)
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(served.url + "/login")
    assert browser_page.problems == []


def test_the_login_limit_in_the_browser(
    center: Center, served: Served, browser_page: Watched
) -> None:
    add_user(center, "alice", "admin")
    page = browser_page.page
    page.goto(served.url + "/login")
    for _ in range(MAX_FAILURES):
        _log_in(browser_page, served, "alice", "guess")
        expect(page.locator("#login-error")).to_have_text("Wrong name or password.")
    _log_in(browser_page, served, "alice", "alice-password")
    expect(page.locator("#login-error")).to_contain_text("Too many failed logins for 'alice'")
    expect(page).to_have_url(served.url + "/login")


def test_create_a_plan_with_the_live_preview(
    center: Center, served: Served, browser_page: Watched
) -> None:
    add_user(center, "alice", "admin")
    _fleet(center)
    page = browser_page.page
    page.goto(served.url + "/plans/new")
    _log_in(browser_page, served, "alice", "alice-password")
    expect(page).to_have_url(served.url + "/plans/new")
    page.fill("input[name=name]", "hourly-files")
    page.select_option("select[name=target]", label="host web-1")
    page.fill("input[name=repo]", "/srv/repo")
    page.select_option("select[name=source]", "paths")
    page.fill("textarea[name=sources]", "/etc\n/home")
    page.fill("input[name=schedule]", "every 7")
    expect(page.locator("#preview .error")).to_contain_text("schedule")
    page.fill("input[name=schedule]", "every 6h")  # the preview follows the typing
    runs = page.locator("#next-runs li")
    expect(runs).to_have_count(5)
    first = page.locator("#next-runs time").first.get_attribute("datetime")
    assert first is not None
    page.fill("input[name=window]", "22:00-23:00")
    expect(page.locator("#next-runs time").first).to_contain_text("22:00")
    page.get_by_role("button", name="Save plan").click()
    expect(page).to_have_url(re.compile(r"/plans\?saved=\d+$"))
    expect(page.locator("#plans-table")).to_contain_text("hourly-files")
    with transaction(center.sessions) as session:
        plan = session.scalars(select(CentralPlan).where(CentralPlan.name == "hourly-files")).one()
    assert plan.spec["paths"] == ["/etc", "/home"]
    assert plan.spec["window"] == "22:00-23:00"
    assert browser_page.problems == []


def test_live_updates_arrive_without_a_reload(
    center: Center, served: Served, browser_page: Watched
) -> None:
    add_user(center, "alice", "admin")
    host = _fleet(center)
    page = browser_page.page
    page.goto(served.url + "/runs")
    _log_in(browser_page, served, "alice", "alice-password")
    expect(page.locator("#running")).to_contain_text("Nothing is running.")
    page.wait_for_function("() => window.sseOpen === true")  # subscribed: events reach it
    with transaction(center.sessions) as session:
        session.add(
            Run(
                host_id=host,
                agent_run_id=999,
                plan="center:nightly",
                kind="backup",
                trigger="manual",
                status="running",
                started=center.clock(),
                bytes_read=5 * 2**30,
            )
        )
    center.bus.publish("run", id=999, host_id=host, state="running")
    expect(page.locator("#running")).to_contain_text("5.0 GiB")
    expect(page.locator("#running")).to_contain_text("web-1")
    assert browser_page.problems == []


def test_enrol_a_real_agent_with_the_command_shown(
    center: Center, served: Served, browser_page: Watched, tmp_path: Path
) -> None:
    add_user(center, "alice", "admin")
    page = browser_page.page
    page.goto(served.url + "/enrol")
    _log_in(browser_page, served, "alice", "alice-password")
    page.fill("input[name=group]", "lab")
    page.fill("input[name=uses]", "3")
    page.get_by_role("button", name="Create enrolment token").click()
    command = shlex.split(page.locator("#enrol-command").inner_text())
    assert command[:4] == ["blockvault", "agent", "enrol", served.url]
    fingerprint = command[command.index("--fingerprint") + 1]
    der = subprocess.run(
        ["openssl", "x509", "-in", str(served.cert), "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout  # the fingerprint reckoned by another tool
    assert fingerprint == "SHA256:" + base64.b64encode(
        hashlib.sha256(der).digest()
    ).decode().rstrip("=")
    page.goto(served.url + "/hosts")
    page.wait_for_function("() => window.sseOpen === true")
    env = {**os.environ, "BLOCKVAULT_PLANS": str(tmp_path / "plans.toml")}
    enrolled = subprocess.run(
        [*command, "--name", "lab-7"], env=env, capture_output=True, text=True, timeout=60
    )
    assert enrolled.returncode == 0, enrolled.stderr
    row = page.locator("#hosts-table tr", has_text="lab-7")
    expect(row).to_contain_text("lab")  # arrived live, in the token's group
    agent = subprocess.Popen(
        [
            "blockvault",
            "agent",
            "--jitter",
            "0",
            "--startup-delay",
            "0",
            "--log-file",
            str(tmp_path / "agent.log"),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        expect(row.locator(".badge")).to_have_text("ok", timeout=60_000)  # its heartbeat
    finally:
        agent.terminate()
        agent.wait(30)
    assert browser_page.problems == []


def test_an_alert_arrives_at_a_real_smtp_server(
    center: Center, served: Served, browser_page: Watched, mailbox: Mailbox
) -> None:
    add_user(center, "alice", "admin")
    host = _fleet(center)
    page = browser_page.page
    page.goto(served.url + "/alerts/targets")
    _log_in(browser_page, served, "alice", "alice-password")
    page.fill("input[name=name]", "ops")
    page.fill("input[name=address]", "mailto:ops@example.org")
    page.get_by_role("button", name="Add").click()
    page.locator("#main tr", has_text="ops").get_by_role("button", name="Send a test").click()
    expect(page.locator("output")).not_to_be_empty()
    assert [m["To"] for m in mailbox.messages] == ["ops@example.org"]  # the test button's
    page.goto(served.url + "/alerts/rules")
    page.select_option("select[name=event]", "run-failed")
    page.select_option("select[name=target]", "ops")
    page.get_by_role("button", name="Add").click()
    page.goto(served.url + "/alerts")
    page.wait_for_function("() => window.sseOpen === true")
    with transaction(center.sessions) as session:
        session.add(
            Run(
                host_id=host,
                agent_run_id=1000,
                plan="center:nightly",
                kind="backup",
                trigger="schedule",
                status="failed",
                started=center.clock(),
                ended=center.clock(),
                error="disk on fire",
            )
        )
    for worker in center.workers:  # a round now, not at the next tick
        if worker.name.startswith("alerts-"):
            worker.wake()
    expect(page.locator("#open-alerts")).to_contain_text("web-1", timeout=30_000)
    deadline = time.monotonic() + 30
    while len(mailbox.messages) < 2 and time.monotonic() < deadline:
        for worker in center.workers:
            if worker.name == "alerts-deliver":
                worker.wake()
        time.sleep(0.5)
    alert = mailbox.messages[1]
    assert alert["To"] == "ops@example.org" and "web-1" in str(alert["Subject"])
    assert browser_page.problems == []


@pytest.mark.root
@needs_root
def test_a_plan_runs_live_and_a_file_is_restored(
    center: Center,
    served: Served,
    browser_page: Watched,
    tmp_path: Path,
    loop: Callable[..., str],
    agents: Callable[[str], Agent],
) -> None:
    """A real agent on a loop disk built by sfdisk + mkfs.ext4: a plan made in the
    editor, the host turning ok and its run arriving live, a file restored from the
    Snapshots page (a job whose page follows it live)."""
    center.config = replace(center.config, heartbeat_interval=1)
    content = tmp_path / "content"
    content.mkdir()
    (content / "report.txt").write_bytes(b"quarterly figures\n" * 1000)
    spec = DiskSpec("gpt", 16 * MiB, [PartitionSpec("ext4", 0, "data", content)])
    disk = loop(build_disk(spec, tmp_path / "disk.img").path)
    repo = blockvault.Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)
    add_user(center, "alice", "admin")
    page = browser_page.page
    page.goto(served.url + "/enrol")
    _log_in(browser_page, served, "alice", "alice-password")
    page.fill("input[name=group]", "lab")
    page.get_by_role("button", name="Create enrolment token").click()
    command = shlex.split(page.locator("#enrol-command").inner_text())
    agent = agents("pc1")
    token = command[command.index("--token") + 1]
    fingerprint = command[command.index("--fingerprint") + 1]
    enrolled = agent.enrol(served, token, fingerprint)  # type: ignore[arg-type]
    assert enrolled.returncode == 0, enrolled.stderr
    page.goto(served.url + "/plans/new")
    page.fill("input[name=name]", "nightly")
    page.select_option("select[name=target]", label="group lab")
    page.fill("input[name=repo]", repo.location)
    page.fill("textarea[name=sources]", disk)
    # half a day away: the run below is the "Run now" button's, not the schedule's
    later = datetime.now() + timedelta(hours=12)
    page.fill("input[name=schedule]", f"daily {later:%H:%M}")
    page.get_by_role("button", name="Save plan").click()
    expect(page).to_have_url(re.compile(r"/plans\?saved=\d+$"))
    agent.start()
    page.goto(served.url + "/hosts")
    page.get_by_role("link", name="pc1").click()
    expect(page.locator("h1 .badge")).to_have_text("ok", timeout=60_000)
    # the host caches the central plan at a heartbeat; then "Run now" queues a
    # run-plan job, whose page follows it live until the agent ran the plan
    expect(page.get_by_role("button", name="Run nightly now")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Run nightly now").click()
    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    expect(page.locator("#main")).to_contain_text("done", timeout=120_000)
    page.get_by_role("link", name="Runs", exact=True).click()
    history = page.locator("#runs-table")
    # the run the job made reaches the center at the agent's next heartbeat
    expect(history).to_contain_text("center:nightly", timeout=90_000)
    expect(history).to_contain_text("manual", timeout=30_000)
    expect(history.locator(".badge").first).to_have_text("ok", timeout=30_000)
    page.get_by_role("link", name="Snapshots", exact=True).click()
    restore = page.locator("form", has=page.get_by_role("button", name="Restore files"))
    restore.locator("input[name=host]").fill("pc1")
    restore.locator("input[name=repo]").fill(repo.location)
    restore.locator("input[name=path]").fill("1/report.txt")
    restore.locator("input[name=destination]").fill(str(tmp_path / "restored"))
    restore.get_by_role("button", name="Restore files").click()
    expect(page.locator("#main")).to_contain_text("done", timeout=120_000)
    restored = tmp_path / "restored" / "report.txt"
    assert restored.read_bytes() == (content / "report.txt").read_bytes()
    assert browser_page.problems == []
