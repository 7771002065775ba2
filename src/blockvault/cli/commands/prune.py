"""``blockvault prune``: remove the snapshots a retention policy does not keep."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo
from blockvault.errors import UsageError
from blockvault.plans import Policy, prune
from blockvault.plans.retention import parse_duration
from blockvault.repo import Selector


def register(group: click.Group) -> None:
    @group.command("prune")
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
        hidden=True,  # deprecated: the global --host (blockvault --host H prune)
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
    def prune_command(
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

        Snapshots are grouped by origin: host, disk (by its identity, so two disks
        seen as /dev/sda at different times are two groups) and imaged partitions;
        in each group every --keep-PERIOD N keeps the newest snapshot of each of the
        last N periods that have snapshots (days and weeks in this machine's time
        zone, ISO weeks). A snapshot kept by any rule is kept. Only the snapshots the
        global --host and --source select (blockvault --host H prune ...) and --tag
        selects are considered; a damaged snapshot is never removed."""
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
        if hosts:
            repo.selector = _with_deprecated_host(repo.selector, hosts)
        now = datetime.now(UTC)
        tz = now.astimezone().tzinfo or UTC
        result = prune(repo, policy, now=now, tz=tz, tags=tags, dry_run=dry_run)
        if as_json:
            render.emit_json(
                {
                    "dry_run": dry_run,
                    "kept": len(result.kept),
                    "removed": len(result.removed),
                    "damaged": dict(result.damaged),
                    "snapshots": [
                        {
                            "id": d.snapshot.id,
                            "time": d.snapshot.time,
                            "host": d.snapshot.host,
                            "source": d.snapshot.source,
                            "source_id": d.snapshot.source_id,
                            "action": "keep" if d.keep else "remove",
                            "reasons": list(d.reasons),
                        }
                        for d in result.decisions
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
                for d in result.decisions
            ],
        )
        for snapshot_id, why in result.damaged.items():
            render.warn(
                f"snapshot {snapshot_id[:12]} is left alone: it is damaged ({why}); "
                "'blockvault check' says more"
            )
        verb = "would remove" if dry_run else "removed"
        removed = len(result.removed)
        click.echo(
            f"{verb} {removed} of {render.plural(len(result.decisions), 'snapshot')}"
            + ("; run 'blockvault gc' to free their space" if removed and not dry_run else "")
        )


def _with_deprecated_host(selector: Selector, hosts: tuple[str, ...]) -> Selector:
    """``prune --host H``, from before the global ``--host``: the same selection,
    with a warning; several hosts, or one that contradicts the global, are refused."""
    if len(set(hosts)) > 1 or (selector.host is not None and selector.host != hosts[0]):
        raise UsageError(
            f"prune --host {' --host '.join(hosts)}: prune considers one host, the one "
            "the global option names; use 'blockvault --host H prune ...' once per host"
        )
    render.warn(f"'prune --host' is deprecated: use 'blockvault --host {hosts[0]} prune ...'")
    return replace(selector, host=hosts[0])
