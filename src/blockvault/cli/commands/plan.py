"""``blockvault plan ...``: add, list, show, edit, remove, enable, disable, run and
show the history of backup plans (the plans file and its history database)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, plans_file
from blockvault.errors import PlanError, PlanRunFailed
from blockvault.plans.alerts import Alerts
from blockvault.plans.model import Plan, RunRecord
from blockvault.plans.preflight import preflight
from blockvault.plans.runner import run_plan
from blockvault.plans.store import (
    KEEP_RULES,
    History,
    PlanBook,
    check_spec_text,
    parse_check_spec,
    plan_from_table,
    plan_to_table,
)
from blockvault.text import shown

F = TypeVar("F", bound=Callable[..., Any])
NONE = "none"  # the word that clears an optional setting in 'plan edit'


def plan_options(command: F) -> F:
    """The options of 'plan add' and 'plan edit' (edit changes only those given)."""
    options = [
        click.argument("paths", nargs=-1, metavar="[PATH...]"),
        click.option("--repo", metavar="REPO", help="The repository the plan backs up into."),
        click.option("--disk", metavar="DEV", help="Back up this whole disk (or image file)."),
        click.option(
            "--partition",
            "partitions",
            multiple=True,
            metavar="DEV",
            help="Back up this partition device (repeatable; all on one disk).",
        ),
        click.option(
            "--system",
            is_flag=True,
            help="Back up what the running system needs (as backup --system).",
        ),
        click.option(
            "--schedule",
            metavar="SPEC",
            help="When to run: cron fields ('0 2 * * *'), 'daily 02:00', 'weekly sun 03:00', "
            "'monthly', or 'every 6h'.",
        ),
        click.option(
            "--window",
            metavar="SPEC",
            help="When runs may start, e.g. 'Mon-Fri 08:00-20:00' ('none' to clear).",
        ),
        *[
            click.option(
                f"--keep-{rule}",
                type=click.IntRange(0, 100_000),
                metavar="N",
                help=f"Retention: keep the newest snapshot of each of the last N {rule} periods"
                if rule != "last"
                else "Retention: keep the N newest snapshots of the plan.",
            )
            for rule in KEEP_RULES
        ],
        click.option(
            "--keep-within",
            metavar="DURATION",
            help="Retention: keep every snapshot younger than DURATION (7d, 12h, 2w).",
        ),
        click.option(
            "--keep-all",
            is_flag=True,
            help="No retention: keep every snapshot (clears the --keep-* rules).",
        ),
        click.option(
            "--verify",
            type=click.Choice(["snapshot", "source", NONE]),
            help="After each backup re-read the new snapshot (snapshot), also compare it "
            "with the disk (source), or not (none).",
        ),
        click.option(
            "--check",
            metavar="SPEC",
            help="A scheduled 'check --read-data' of the repository: 'SCHEDULE [subset N%]' "
            "('none' to clear).",
        ),
        click.option("--pre", metavar="CMD", help="Command run before the backup ('' to clear)."),
        click.option(
            "--post",
            metavar="CMD",
            help="Command run after every run, with BLOCKVAULT_STATUS etc. ('' to clear).",
        ),
        click.option(
            "--pre-failure",
            type=click.Choice(["abort", "continue"]),
            help="When the pre-hook fails: abort the run (default) or continue.",
        ),
        click.option(
            "--notify",
            multiple=True,
            metavar="TARGET",
            help="Tell mailto:ADDRESS or an http(s):// webhook about the runs (repeatable; "
            "replaces the list; 'none' clears it).",
        ),
        click.option(
            "--timeout",
            metavar="DURATION",
            help="Stop a run that takes longer (6h, 90m; 'none' for no limit).",
        ),
        click.option(
            "--password-file",
            metavar="FILE",
            help="The repository's passphrase for the plan's runs (first line of FILE).",
        ),
        click.option(
            "--exclude",
            multiple=True,
            metavar="PATTERN",
            help="File plans: leave out what matches this gitignore-style pattern "
            "(repeatable; replaces the list; 'none' clears it).",
        ),
        click.option(
            "--live",
            metavar="METHOD",
            help="Disk plans: how a disk in use is read: auto, lvm or unsafe-reread "
            "(see 'backup --live'; 'none' for the default).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def changed_table(table: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``table`` (a plan's TOML table) with the options given on the command line."""
    table = dict(table)
    if given["paths"]:
        table.pop("disk", None)
        table["paths"] = list(given["paths"])
    sources = [k for k in ("disk", "partitions", "system") if given[k]]
    if len(sources) + bool(given["paths"]) > 1:
        raise PlanError(
            "give one source: --disk DEV, --partition DEV..., --system or PATH...",
            where=f"plan {given['name']}",
        )
    if sources:
        for key in ("disk", "partitions", "system", "paths"):
            table.pop(key, None)
        key = sources[0]
        table[key] = list(given[key]) if key == "partitions" else given[key]
    for key in ("repo", "schedule", "pre_failure", "password_file"):
        if given[key] is not None:
            table[key] = given[key]
    for key in ("window", "timeout", "verify", "live"):
        if given[key] is not None:
            _set(table, key, None if given[key] == NONE else given[key])
    for key in ("pre", "post"):
        if given[key] is not None:
            _set(table, key, given[key] or None)
    if given["check"] is not None:
        check = None if given["check"] == NONE else parse_check_spec(given["check"])
        _set(table, "check", check and {"schedule": check.schedule, "subset": check.subset})
    if given["notify"]:
        _set(table, "notify", None if given["notify"] == (NONE,) else list(given["notify"]))
    if given["exclude"]:
        _set(table, "exclude", None if given["exclude"] == (NONE,) else list(given["exclude"]))
    rules = {r: given[f"keep_{r}"] for r in KEEP_RULES if given[f"keep_{r}"] is not None}
    if given["keep_within"] is not None:
        rules["within"] = given["keep_within"]
    if given["keep_all"] and rules:
        raise PlanError(
            "--keep-all and --keep-* contradict each other", where=f"plan {given['name']}"
        )
    if given["keep_all"]:
        table.pop("keep", None)
    elif rules:
        table["keep"] = rules
    return table


def _set(table: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value


def register(group: click.Group) -> None:
    @group.group("plan")
    def plan_group() -> None:
        """Backup plans: what to back up, where, when, how long to keep it, whom to tell.

        Plans live in one TOML file (global --plans, default /etc/blockvault/plans.toml);
        their run history in a database beside it. 'blockvault agent' runs them on
        schedule; 'plan run' runs one now."""

    @plan_group.command("add")
    @click.argument("name")
    @plan_options
    @click.pass_context
    def add(ctx: click.Context, /, name: str, **given: Any) -> None:
        """Add plan NAME (needs --repo, a source and --schedule). The repository must
        open, the source exist and the hooks be executable, or nothing is saved."""
        path = plans_file(ctx)
        has_source = given["disk"] or given["partitions"] or given["system"] or given["paths"]
        if not (given["repo"] and given["schedule"] and has_source):
            raise PlanError(
                "plan add needs --repo REPO, a source (--disk DEV, --partition DEV... or "
                "--system) and --schedule SPEC",
                where=f"plan {name}",
            )
        with PlanBook.editing(path) as book:
            plan = plan_from_table(name, changed_table({}, {"name": name, **given}))
            preflight(plan)
            book.add(plan)
        click.echo(f"plan {name} added to {path}", err=True)

    @plan_group.command("edit")
    @click.argument("name")
    @plan_options
    @click.pass_context
    def edit(ctx: click.Context, /, name: str, **given: Any) -> None:
        """Change the options given of plan NAME; the others stay as they are."""
        with PlanBook.editing(plans_file(ctx)) as book:
            old = book.get(name)
            plan = plan_from_table(name, changed_table(plan_to_table(old), {"name": name, **given}))
            preflight(plan)
            book.replace(plan)
        click.echo(f"plan {name} changed", err=True)

    @plan_group.command("remove")
    @click.argument("name")
    @click.pass_context
    def remove(ctx: click.Context, name: str) -> None:
        """Remove plan NAME from the plans file (its snapshots and history stay)."""
        with PlanBook.editing(plans_file(ctx)) as book:
            book.remove(name)
        click.echo(f"plan {name} removed", err=True)

    for verb, enabled in (("enable", True), ("disable", False)):

        @plan_group.command(verb)
        @click.argument("name")
        @click.pass_context
        def switch(ctx: click.Context, name: str, enabled: bool = enabled) -> None:
            with PlanBook.editing(plans_file(ctx)) as book:
                book.replace(replace(book.get(name), enabled=enabled))
            click.echo(f"plan {name} {'enabled' if enabled else 'disabled'}", err=True)

        switch.help = (
            "Let the agent run plan NAME on its schedule again."
            if enabled
            else "Keep the agent from running plan NAME ('plan run' still can)."
        )

    @plan_group.command("list")
    @json_option
    @click.pass_context
    def list_plans(ctx: click.Context, as_json: bool) -> None:
        """List the plans of the plans file."""
        book = PlanBook.load(plans_file(ctx))
        if as_json:
            render.emit_json([plan_json(p) for p in book.plans.values()])
            return
        render.table(
            None,
            ["Name", "Enabled", "Source", "Repository", "Schedule", "Keep"],
            [
                (
                    p.name,
                    "yes" if p.enabled else "no",
                    source_text(p),
                    p.repo,
                    p.schedule,
                    keep_text(p),
                )
                for p in book.plans.values()
            ],
        )

    @plan_group.command("show")
    @click.argument("name")
    @json_option
    @click.pass_context
    def show(ctx: click.Context, name: str, as_json: bool) -> None:
        """Show every setting of plan NAME."""
        plan = PlanBook.load(plans_file(ctx)).get(name)
        if as_json:
            render.emit_json(plan_json(plan))
            return
        rows = [
            ("name", plan.name),
            ("enabled", "yes" if plan.enabled else "no"),
            ("repository", plan.repo),
            ("source", source_text(plan)),
            ("schedule", plan.schedule),
            ("window", plan.window or "-"),
            ("keep", keep_text(plan)),
            ("verify", plan.verify or "-"),
            ("check", check_spec_text(plan.check) if plan.check else "-"),
            ("pre-hook", plan.pre or "-"),
            ("post-hook", plan.post or "-"),
            ("pre-hook failure", plan.pre_failure),
            ("notify", ", ".join(plan.notify) or "-"),
            ("timeout", plan_to_table(plan).get("timeout", "-")),
            ("password file", plan.password_file or "-"),
        ]
        for key, value in rows:
            click.echo(f"{key + ':':<18}{shown(str(value))}")

    @plan_group.command("run")
    @click.argument("name")
    @json_option
    @click.pass_context
    def run(ctx: click.Context, name: str, as_json: bool) -> None:
        """Run plan NAME now, in the foreground, recorded in its history like a
        scheduled run. Prints the new snapshot's id; exits 1 when the run fails."""
        path = plans_file(ctx)
        plan = PlanBook.load(path).get(name)
        history = History.beside(path)
        history.interrupted_leftovers()  # a killed runner's run is not "running" forever
        with render.progress(as_json) as reporter:
            alerts = Alerts(path, reporter)  # the plan's notify targets hear of it
            record = run_plan(
                plan, history, trigger="manual", reporter=reporter, on_finished=alerts.on_finished
            )
        if as_json:
            render.emit_json(record_json(record))
        if record.status != "ok":
            raise PlanRunFailed(
                record.error or "",
                plan=name,
                run=record.run_id,
                status=record.status,
                log=record.log,
            )
        if not as_json:
            click.echo(
                f"plan {name}: run {record.run_id} ok: snapshot {(record.snapshot or '')[:12]}, "
                f"{render.size(record.bytes_read)} read, {render.size(record.bytes_stored)} "
                "added to the repository",
                err=True,
            )
            click.echo(record.snapshot)

    @plan_group.command("history")
    @click.argument("name")
    @click.option(
        "--limit", default=20, show_default=True, metavar="N", help="Show the N newest runs."
    )
    @json_option
    @click.pass_context
    def history_command(ctx: click.Context, name: str, limit: int, as_json: bool) -> None:
        """The runs of plan NAME, newest first: when, how they ended, bytes read, new
        and stored, the snapshot, the error and the log file."""
        path = plans_file(ctx)
        runs = []
        if path.exists():
            history = History.beside(path)
            history.interrupted_leftovers()
            runs = history.runs(name, limit)
        if as_json:
            render.emit_json([record_json(r) for r in runs])
            return
        render.table(
            None,
            [
                "Run",
                "Kind",
                "Trigger",
                "Started",
                "Seconds",
                "Status",
                "Read",
                "New",
                "Stored",
                "Snapshot",
                "Error",
                "Log",
            ],
            [
                (
                    r.run_id,
                    r.kind,
                    r.trigger,
                    when(r.started),
                    "" if r.seconds is None else f"{r.seconds:.0f}",
                    r.status,
                    render.size(r.bytes_read),
                    render.size(r.bytes_new),
                    render.size(r.bytes_stored),
                    (r.snapshot or "")[:12],
                    r.error or "",
                    Path(r.log).name if r.log else "",
                )
                for r in runs
            ],
        )
        if runs:
            click.echo(f"logs in {History.beside(path).logs}", err=True)


def when(moment: Any) -> str:
    """A time for people: local, to the second."""
    return "" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def source_text(plan: Plan) -> str:
    if plan.source_kind == "system":
        return "the system"
    return f"{plan.source_kind} {', '.join(plan.sources)}"


def keep_text(plan: Plan) -> str:
    if plan.retention is None:
        return "everything"
    keep = plan_to_table(plan)["keep"]
    return ", ".join(f"{rule} {value}" for rule, value in keep.items())


def plan_json(plan: Plan) -> dict[str, Any]:
    return {"name": plan.name, **plan_to_table(plan)}


def record_json(record: RunRecord) -> dict[str, Any]:
    """A run for scripts: times in ISO 8601 (UTC)."""
    times = {
        "started": record.started.isoformat(),
        "ended": record.ended.isoformat() if record.ended else None,
    }
    return {**asdict(record), **times, "seconds": record.seconds}
