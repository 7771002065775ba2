"""``blockvault prune``: remove the snapshots a retention policy does not keep."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo
from blockvault.errors import UsageError
from blockvault.plans import Policy, apply_policy

_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``2w``, ``1y6m``... (m = minutes)."""
    parts = re.findall(r"(\d+)([mhdwy])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UsageError(f"duration {text!r}: use a number and a unit m, h, d, w or y (e.g. 7d)")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


def register(group: click.Group) -> None:
    @group.command()
    @click.option("--keep-last", default=0, metavar="N", help="Keep the N newest snapshots.")
    @click.option(
        "--keep-hourly", default=0, metavar="N", help="Keep the newest of each of the last N hours."
    )
    @click.option(
        "--keep-daily", default=0, metavar="N", help="Keep the newest of each of the last N days."
    )
    @click.option(
        "--keep-weekly",
        default=0,
        metavar="N",
        help="Keep the newest of each of the last N ISO weeks.",
    )
    @click.option(
        "--keep-monthly",
        default=0,
        metavar="N",
        help="Keep the newest of each of the last N months.",
    )
    @click.option(
        "--keep-yearly", default=0, metavar="N", help="Keep the newest of each of the last N years."
    )
    @click.option(
        "--keep-within",
        metavar="DURATION",
        help="Keep every snapshot newer than DURATION before now (7d, 12h, 2w, 1y).",
    )
    @click.option(
        "--host",
        "hosts",
        multiple=True,
        metavar="H",
        help="Only consider snapshots of host H (repeatable).",
    )
    @click.option(
        "--tag",
        "tags",
        multiple=True,
        metavar="T[,T...]",
        help="Only consider snapshots with all these tags (repeatable: any of the lists).",
    )
    @click.option(
        "--dry-run", "-n", is_flag=True, help="Show what would be removed; remove nothing."
    )
    @json_option
    @click.pass_context
    def prune(
        ctx: click.Context,
        keep_last: int,
        keep_hourly: int,
        keep_daily: int,
        keep_weekly: int,
        keep_monthly: int,
        keep_yearly: int,
        keep_within: str | None,
        hosts: tuple[str, ...],
        tags: tuple[str, ...],
        dry_run: bool,
        as_json: bool,
    ) -> None:
        """Remove the snapshots the policy does not keep (their manifests; run
        'blockvault gc' afterwards to free the space).

        Snapshots are grouped by host, source and imaged partitions; in each group
        every --keep-PERIOD N keeps the newest snapshot of each of the last N periods
        that have snapshots (days and weeks in this machine's time zone, ISO weeks).
        A snapshot kept by any rule is kept. Snapshots not selected by --host/--tag
        are left alone, and so are snapshots whose manifest is damaged."""
        policy = Policy(
            last=keep_last,
            hourly=keep_hourly,
            daily=keep_daily,
            weekly=keep_weekly,
            monthly=keep_monthly,
            yearly=keep_yearly,
            within=parse_duration(keep_within) if keep_within else None,
        )
        repo = open_repo(ctx)
        listing = repo.listing()
        now = datetime.now(UTC)
        decisions = apply_policy(
            list(listing.snapshots),
            policy,
            now=now,
            tz=now.astimezone().tzinfo or UTC,
            hosts=hosts,
            tags=tags,
        )
        removed = [d for d in decisions if not d.keep]
        unreadable = listing.unreadable()  # no time, host or source to judge: left alone
        if not dry_run:
            for d in removed:
                repo.delete_snapshot(d.snapshot.id)
        if as_json:
            render.emit_json(
                {
                    "dry_run": dry_run,
                    "kept": len(decisions) - len(removed),
                    "removed": len(removed),
                    "unreadable": unreadable,
                    "snapshots": [
                        {
                            "id": d.snapshot.id,
                            "time": d.snapshot.time,
                            "host": d.snapshot.host,
                            "source": d.snapshot.source,
                            "action": "keep" if d.keep else "remove",
                            "reasons": list(d.reasons),
                        }
                        for d in decisions
                    ],
                }
            )
            return
        render.table(
            None,
            ["ID", "Time", "Host", "Source", "Action", "Reasons"],
            [
                (
                    d.snapshot.id[:12],
                    d.snapshot.time[:19].replace("T", " "),
                    d.snapshot.host,
                    d.snapshot.source,
                    "keep" if d.keep else "remove",
                    ", ".join(d.reasons),
                )
                for d in decisions
            ],
        )
        for snapshot_id in unreadable:
            render.warn(
                f"snapshot {snapshot_id[:12]} is left alone: its manifest is damaged "
                "('blockvault check' names the damage)"
            )
        verb = "would remove" if dry_run else "removed"
        click.echo(
            f"{verb} {len(removed)} of {render.plural(len(decisions), 'snapshot')}"
            + ("; run 'blockvault gc' to free their space" if removed and not dry_run else "")
        )
