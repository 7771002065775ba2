#!/usr/bin/env python3
"""The Backup Center's fleet pages at scale: ``--hosts`` hosts and ``--runs`` runs
(SQLite), filled through the real models, then each page timed in-process.

A center database is made in a temporary directory (``open_center``), filled with
hosts in ten groups (each with an inventory of two local plans and a next run), a
central plan per group, and runs spread over the hosts (mostly good backups, some
failed, some checks). Then ``fleet.host_statuses`` for every host and the overview
(``/``), hosts (``/hosts``) and ``/api/v1/hosts`` pages, as an admin, are each run
``--repeat`` times; the median and the SQL statements each ran are printed as
Markdown (the table of bench/BENCHMARKS.md "Backup Center").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event, select

from blockvault.center import fleet
from blockvault.center.app import create_app
from blockvault.center.auth import SESSION_COOKIE, create_user, start_session
from blockvault.center.context import Center, open_center
from blockvault.center.db import transaction
from blockvault.center.models import CentralPlan, Group, Host, Run, User

GROUPS = 10


def fill(center: Center, hosts: int, runs: int) -> None:
    now = center.clock()
    with transaction(center.sessions) as session:
        groups = [Group(name=f"group{g}") for g in range(GROUPS)]
        session.add_all(groups)
        session.flush()
        for g, group in enumerate(groups):
            spec = {"schedule": "daily 02:00", "source": "/dev/sda", "repo": "/srv/repo"}
            session.add(
                CentralPlan(
                    name=f"nightly{g}",
                    group_id=group.id,
                    spec=spec,
                    version=1,
                    updated=now,
                    updated_by="user:bench",
                )
            )
        next_run = (now + timedelta(hours=3)).isoformat()
        local = [{"name": n, "period_seconds": 86400, "next_run": next_run} for n in ("os", "data")]
        rows = [
            Host(
                name=f"host{h:05d}",
                public_key=f"k{h}",
                group_id=groups[h % GROUPS].id,
                last_seen=now - timedelta(seconds=30 if h % 20 else 7200),
                enrolled=now - timedelta(days=60),
                inventory={"os": "Debian 12", "plans": local},
            )
            for h in range(hosts)
        ]
        session.add_all(rows)
        session.flush()
        ids = [h.id for h in rows]
    per_host = runs // hosts
    for start in range(0, hosts, 100):
        with transaction(center.sessions) as session:
            for host_id in ids[start : start + 100]:
                for n in range(per_host):
                    began = now - timedelta(hours=24 * (per_host - n))
                    status = "failed" if (host_id + n) % 17 == 0 else "ok"
                    session.add(
                        Run(
                            host_id=host_id,
                            agent_run_id=n,
                            plan=("os", "data")[n % 2],
                            kind="check" if n % 10 == 9 else "backup",
                            trigger="schedule",
                            status=status,
                            started=began,
                            ended=began + timedelta(minutes=5),
                            received=began + timedelta(minutes=6),
                            bytes_read=10**9,
                            bytes_new=10**7,
                            bytes_stored=5 * 10**6,
                        )
                    )


def timed(step: Callable[[], Any], repeat: int, counter: list[int]) -> tuple[float, int]:
    """Median seconds of ``repeat`` runs and the statements one run sent."""
    times, statements = [], 0
    for _ in range(repeat):
        counter[0] = 0
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
        statements = counter[0]
    return statistics.median(times), statements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="center-bench-") as work:
        center = open_center(Path(work) / "state", f"sqlite:///{work}/center.db")
        began = time.perf_counter()
        fill(center, args.hosts, args.runs)
        filled = time.perf_counter() - began
        counter = [0]

        @event.listens_for(center.engine, "before_cursor_execute")
        def count(*_: Any) -> None:
            counter[0] += 1

        with transaction(center.sessions) as session:
            create_user(session, "ada", "ada-password-123", "admin", None)
            user = session.scalars(select(User).where(User.name == "ada")).one()
            cookie, _ = start_session(session, user, center.clock())

        def statuses() -> None:
            with center.sessions() as session:
                hosts = list(session.scalars(select(Host)))
                assert len(fleet.host_statuses(session, hosts, center.clock())) == args.hosts

        rows = [("fleet.host_statuses", *timed(statuses, args.repeat, counter))]
        with TestClient(create_app(center)) as client:
            client.cookies.set(SESSION_COOKIE, cookie)
            for path in ("/", "/hosts", "/api/v1/hosts"):

                def get(path: str = path) -> None:
                    answer = client.get(path)
                    assert answer.status_code == 200, answer.text[:200]

                rows.append((f"GET {path}", *timed(get, args.repeat, counter)))
        print(f"{args.hosts:,} hosts, {args.runs:,} runs, SQLite; filled in {filled:.1f} s\n")
        print("| step | median ms | SQL statements |\n|---|---:|---:|")
        for name, seconds, statements in rows:
            print(f"| {name} | {seconds * 1000:.0f} | {statements} |")
        center.engine.dispose()


if __name__ == "__main__":
    main()
