"""Where plans and their runs are kept: the plans file and the history database.

The plans file is TOML a person can read and edit: one ``[plan.NAME]`` table per plan,
and other top-level tables (``[smtp]``, ``[agent]``) kept as they are for the parts
that own them. Every field is validated when the file is read (``PlanBook.load``), so
a typo is one clear error naming the plan and the field before anything runs; what
depends on the machine (the repository opens, the disk is there, the hooks can run)
is ``plans.preflight``'s, checked when a plan is added or edited and before each run.

The history database (SQLite, beside the plans file: ``plans.toml`` -> ``plans.db``,
run logs in ``plans.logs/``) holds one row per run. A run is "running" from ``start``
to ``finish``; the row names the process running it (boot id, pid and the process's
start time), so ``interrupted_leftovers`` can tell a run whose process died (SIGKILL,
power loss) from one still going, and mark it interrupted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Self, cast, get_args

import tomli_w

from blockvault.disk.live import LIVE_METHODS
from blockvault.errors import PlanError, PlanNotFound, ScheduleError, UsageError
from blockvault.files.select import Selection
from blockvault.plans.model import (
    CheckSpec,
    Plan,
    PreFailure,
    RunKind,
    RunRecord,
    RunStatus,
    SourceKind,
    Trigger,
    VerifySpec,
)
from blockvault.plans.notify import parse_target, smtp_settings
from blockvault.plans.retention import Policy, duration_text, parse_duration
from blockvault.plans.schedule import parse_schedule

__all__ = [
    "DEFAULT_PLANS",
    "PLANS_ENV",
    "SKIPPED_WHY",
    "History",
    "PlanBook",
    "Reckoning",
    "check_spec_text",
    "parse_check_spec",
    "plan_from_table",
    "plan_to_table",
]

DEFAULT_PLANS: Final = Path("/etc/blockvault/plans.toml")
PLANS_ENV: Final = "BLOCKVAULT_PLANS"
MAX_PLANS_FILE: Final = 1 << 20  # bytes: a plans file is a few kB; refuse a huge one unread
MAX_TEXT: Final = 4096  # characters in any one string field (a hook, a path, a spec)
NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # also a log file's name
KEEP_RULES: Final = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
# one key per source kind; exactly one in each plan
SOURCE_KEYS: Final[dict[str, SourceKind]] = {
    "disk": "disk",
    "partitions": "partition",
    "system": "system",
    "paths": "files",
}
PLAN_KEYS: Final = {
    *SOURCE_KEYS,
    "repo",
    "schedule",
    "window",
    "keep",
    "verify",
    "check",
    "pre",
    "post",
    "pre_failure",
    "notify",
    "enabled",
    "timeout",
    "password_file",
    "exclude",
    "live",
}
KEEP_RUNS: Final = 100  # history rows (and logs) kept per plan; older ones are removed


# --- the plans file -------------------------------------------------------------


def plan_from_table(name: str, table: Mapping[str, Any]) -> Plan:
    """A ``Plan`` from its TOML table, every field checked; ``PlanError`` names the
    plan and the field at fault."""
    where = f"plan {name}"
    if not NAME.fullmatch(name):
        raise PlanError(
            "a plan name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            where=f"plan {name[:70]!r}",
        )
    unknown = sorted(set(table) - PLAN_KEYS)
    if unknown:
        raise PlanError(
            f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(PLAN_KEYS))}",
            where=where,
        )
    field = _Fields(where, table)
    given = [key for key in SOURCE_KEYS if key in table]
    if len(given) != 1:
        raise PlanError(
            "give exactly one source: disk = DEV, partitions = [DEV, ...], system = true "
            "or paths = [PATH, ...]",
            where=where,
        )
    key = given[0]
    kind = SOURCE_KEYS[key]
    sources: tuple[str, ...]
    if kind == "disk":
        sources = (field.text(key),)
    elif kind == "system":
        if field.flag(key) is not True:
            raise PlanError("system = true is the only value system takes", where=where)
        sources = ()
    else:
        sources = field.texts(key)
        if not sources:
            raise PlanError(
                f"{key} names no {'partition' if key == 'partitions' else 'path'}", where=where
            )
    exclude, live = _file_and_live_options(where, field, table, kind)
    timeout = field.optional_text("timeout")
    verify = field.optional_text("verify")
    if verify is not None and verify not in get_args(VerifySpec):
        raise PlanError(
            f"verify = {verify!r}: use 'snapshot' (re-read the new snapshot) or 'source' "
            "(also compare it with the disk)",
            where=where,
        )
    pre_failure = field.optional_text("pre_failure") or "abort"
    if pre_failure not in get_args(PreFailure):
        raise PlanError(f"pre_failure = {pre_failure!r}: use 'abort' or 'continue'", where=where)
    notify = field.texts("notify") if "notify" in table else ()
    for target in notify:
        try:
            parse_target(target)  # syntax, events, a webhook's template
        except UsageError as exc:
            raise PlanError(str(exc), where=where) from None
    schedule = field.text("schedule")
    window = field.optional_text("window")
    _check_schedule(where, schedule, window)
    plan = Plan(
        name=name,
        repo=field.text("repo"),
        source_kind=kind,
        sources=sources,
        schedule=schedule,
        window=window,
        retention=_policy(where, table.get("keep")),
        verify=cast(VerifySpec | None, verify),
        check=_check(where, table.get("check")),
        pre=field.optional_text("pre"),
        post=field.optional_text("post"),
        pre_failure=cast(PreFailure, pre_failure),
        notify=notify,
        enabled=True if "enabled" not in table else field.flag("enabled"),
        timeout=None if timeout is None else _seconds(where, "timeout", timeout),
        password_file=field.optional_text("password_file"),
        exclude=exclude,
        live=live,
    )
    return plan


def _file_and_live_options(
    where: str, field: _Fields, table: Mapping[str, Any], kind: SourceKind
) -> tuple[tuple[str, ...], str | None]:
    """``exclude`` (files plans: absolute paths, gitignore-style patterns) and ``live``
    (disk plans: how a source in use is read), each refused where it means nothing."""
    if kind == "files":
        relative = [p for p in field.texts("paths") if not p.startswith("/")]
        if relative:
            raise PlanError(f"paths: {relative[0]!r} is not an absolute path", where=where)
        if table.get("verify") == "source":
            raise PlanError(
                "verify = 'source' compares a disk; a file backup takes verify = 'snapshot'",
                where=where,
            )
    exclude = field.texts("exclude") if "exclude" in table else ()
    if exclude and kind != "files":
        raise PlanError("exclude = [...] is for file backups (paths = [...])", where=where)
    try:
        Selection(exclude=exclude).matchers()
    except UsageError as exc:
        raise PlanError(str(exc), where=where) from None
    live = field.optional_text("live")
    if live is not None and (kind == "files" or live not in LIVE_METHODS):
        raise PlanError(
            f"live = {live!r}: a disk, partitions or system plan takes one of "
            f"{', '.join(LIVE_METHODS)}",
            where=where,
        )
    return exclude, live


def _check_schedule(where: str, spec: str, window: str | None) -> None:
    """The schedule parser's error, naming the plan."""
    try:
        parse_schedule(spec, window)
    except ScheduleError as exc:
        raise PlanError(str(exc), where=where) from None


def plan_to_table(plan: Plan) -> dict[str, Any]:
    """The TOML table of ``plan``: what ``plan_from_table`` reads back equal."""
    table: dict[str, Any] = {"repo": plan.repo}
    key = next(k for k, kind in SOURCE_KEYS.items() if kind == plan.source_kind)
    if plan.source_kind == "disk":
        table[key] = plan.sources[0]
    elif plan.source_kind == "system":
        table[key] = True
    else:
        table[key] = list(plan.sources)
    table["schedule"] = plan.schedule
    optional: dict[str, Any] = {
        "window": plan.window,
        "verify": plan.verify,
        "pre": plan.pre,
        "post": plan.post,
        "password_file": plan.password_file,
        "live": plan.live,
        "timeout": None if plan.timeout is None else duration_text(timedelta(seconds=plan.timeout)),
    }
    table.update({k: v for k, v in optional.items() if v is not None})
    if plan.pre_failure != "abort":
        table["pre_failure"] = plan.pre_failure
    if plan.notify:
        table["notify"] = list(plan.notify)
    if plan.exclude:
        table["exclude"] = list(plan.exclude)
    if not plan.enabled:
        table["enabled"] = False
    if plan.retention is not None:
        keep: dict[str, Any] = {
            f.name: getattr(plan.retention, f.name)
            for f in fields(plan.retention)
            if f.name != "within" and getattr(plan.retention, f.name)
        }
        if plan.retention.within is not None:
            keep["within"] = duration_text(plan.retention.within)
        table["keep"] = keep
    if plan.check is not None:
        table["check"] = {"schedule": plan.check.schedule, "subset": plan.check.subset}
    return table


def parse_check_spec(text: str) -> CheckSpec:
    """``SCHEDULE [subset N%]``, as ``--check`` takes it: ``weekly sun 04:00 subset 10%``."""
    match = re.fullmatch(r"(.*?)(?:\s+subset\s+(\d{1,3})%)?", text.strip())
    if match is None or not match[1]:
        raise UsageError(f"--check {text!r}: give a schedule, then optionally 'subset N%'")
    spec = CheckSpec(match[1]) if match[2] is None else CheckSpec(match[1], int(match[2]))
    _check_subset(f"--check {text!r}", spec.subset)
    return spec


def check_spec_text(spec: CheckSpec) -> str:
    return f"{spec.schedule} subset {spec.subset}%"


class _Fields:
    """Typed reads of one plan's table, each failure naming the field."""

    def __init__(self, where: str, table: Mapping[str, Any]) -> None:
        self.where = where
        self.table = table

    def _fail(self, key: str, wanted: str) -> PlanError:
        return PlanError(f"{key} must be {wanted}", where=self.where)

    def text(self, key: str) -> str:
        value = self.table.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self._fail(key, "a non-empty string")
        if len(value) > MAX_TEXT or "\0" in value:
            raise self._fail(key, f"at most {MAX_TEXT} characters, without NUL")
        return value

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if key in self.table else None

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.table.get(key)
        if not isinstance(value, list) or len(value) > 64:
            raise self._fail(key, "a list of at most 64 strings")
        return tuple(_Fields(self.where, {key: v}).text(key) for v in value)

    def flag(self, key: str) -> bool:
        value = self.table.get(key)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value


def _seconds(where: str, key: str, text: str) -> int:
    try:
        seconds = int(parse_duration(text).total_seconds())
    except UsageError as exc:
        raise PlanError(f"{key}: {exc}", where=where) from None
    if seconds <= 0:
        raise PlanError(f"{key} must be longer than 0", where=where)
    return seconds


def _policy(where: str, keep: Any) -> Policy | None:
    if keep is None:
        return None
    if not isinstance(keep, dict):
        raise PlanError("keep must be a table: keep = { daily = 7, weekly = 4 }", where=where)
    unknown = sorted(set(keep) - {*KEEP_RULES, "within"})
    if unknown:
        raise PlanError(
            f"keep.{unknown[0]} is not a rule; the rules are {', '.join(KEEP_RULES)} and within",
            where=where,
        )
    counts = {}
    for rule in KEEP_RULES:
        value = keep.get(rule, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100_000:
            raise PlanError(f"keep.{rule} must be a whole number from 0 to 100000", where=where)
        counts[rule] = value
    within = keep.get("within")
    if within is not None and not isinstance(within, str):
        raise PlanError("keep.within must be a duration such as '7d'", where=where)
    policy = Policy(
        **counts,
        within=None
        if within is None
        else timedelta(seconds=_seconds(where, "keep.within", within)),
    )
    if policy.empty:
        raise PlanError(
            "keep keeps nothing: give a rule above 0, or leave keep out to keep every snapshot",
            where=where,
        )
    return policy


def _check_subset(where: str, subset: int) -> None:
    if not 1 <= subset <= 100:
        raise PlanError("a check's subset is a percentage from 1 to 100", where=where)


def _check(where: str, check: Any) -> CheckSpec | None:
    if check is None:
        return None
    if not isinstance(check, dict) or set(check) - {"schedule", "subset"}:
        raise PlanError(
            "check must be a table: check = { schedule = 'weekly sun 04:00', subset = 10 }",
            where=where,
        )
    field = _Fields(where, check)
    _check_schedule(where, field.text("schedule"), None)
    subset = check.get("subset", CheckSpec("-").subset)
    if isinstance(subset, bool) or not isinstance(subset, int):
        raise PlanError("check.subset must be a whole number (percent)", where=where)
    _check_subset(where, subset)
    return CheckSpec(field.text("schedule"), subset)


def _check_smtp(where: str, table: Any) -> None:
    """The ``[smtp]`` table, when there is one, is checked with the plans (a mail
    target without one is reported when a notice is due: plans/notify.py)."""
    if table is None:
        return
    if not isinstance(table, dict):
        raise PlanError("'smtp' must be a table: [smtp]", where=where)
    try:
        smtp_settings(table)
    except UsageError as exc:
        raise PlanError(str(exc), where=where) from None


class PlanBook:
    """The plans of one plans file, in the order the file lists them, and its other
    top-level tables (``settings``), written back unchanged."""

    def __init__(
        self, path: Path, plans: dict[str, Plan], settings: dict[str, Any] | None = None
    ) -> None:
        self.path = path
        self.plans = plans
        self.settings: dict[str, Any] = settings or {}

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read and validate ``path``; a file that does not exist is an empty book."""
        where = f"plans file {path}"
        try:
            with open(path, "rb") as file:
                data = file.read(MAX_PLANS_FILE + 1)
        except FileNotFoundError:
            return cls(path, {})
        except OSError as exc:
            raise PlanError(exc.strerror or str(exc), where=where) from None
        if len(data) > MAX_PLANS_FILE:
            raise PlanError(f"larger than {MAX_PLANS_FILE} bytes; is it a plans file?", where=where)
        try:
            document = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise PlanError(f"not valid TOML: {exc}", where=where) from None
        tables = document.pop("plan", {})
        if not isinstance(tables, dict):
            raise PlanError("'plan' must hold tables: [plan.NAME]", where=where)
        plans = {}
        for name, table in tables.items():
            if not isinstance(table, dict):
                raise PlanError("must be a table: [plan.NAME]", where=f"plan {name}")
            plans[name] = plan_from_table(name, table)
        _check_smtp(where, document.get("smtp"))
        return cls(path, plans, document)

    @classmethod
    @contextlib.contextmanager
    def editing(cls, path: Path) -> Iterator[Self]:
        """Load ``path`` under a lock, yield the book, and save it if the block ends
        without an error: two ``plan`` commands at once do not lose each other's change."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            book = cls.load(path)
            yield book
            book.save()

    def get(self, name: str) -> Plan:
        try:
            return self.plans[name]
        except KeyError:
            raise PlanNotFound(plan=name, path=self.path) from None

    def add(self, plan: Plan) -> None:
        if plan.name in self.plans:
            raise PlanError(
                f"already exists in {self.path}; change it with 'blockvault plan edit'",
                where=f"plan {plan.name}",
            )
        self.plans[plan.name] = plan

    def replace(self, plan: Plan) -> None:
        self.get(plan.name)
        self.plans[plan.name] = plan

    def remove(self, name: str) -> Plan:
        return self.plans.pop(self.get(name).name)

    def save(self) -> None:
        """Write the file whole or not at all (a temporary file renamed over it),
        readable by root only: it names password files and runs hooks as root."""
        document = {**self.settings, "plan": {n: plan_to_table(p) for n, p in self.plans.items()}}
        text = tomli_w.dumps(document)
        fd, temporary = tempfile.mkstemp(prefix=".plans-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


# --- the history database -------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan TEXT NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    started TEXT NOT NULL,
    ended TEXT,
    bytes_read INTEGER NOT NULL DEFAULT 0,
    bytes_new INTEGER NOT NULL DEFAULT 0,
    bytes_stored INTEGER NOT NULL DEFAULT 0,
    snapshot TEXT,
    error TEXT,
    log TEXT,
    owner TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT 'backup'
);
CREATE INDEX IF NOT EXISTS runs_by_plan ON runs (plan, run_id);
"""
_COLUMNS = (
    "plan, run_id, trigger, status, started, ended, bytes_read, bytes_new, bytes_stored, "
    "snapshot, error, log, kind"
)


class History:
    """The runs of every plan of one plans file, in SQLite; safe to use from several
    processes (the agent and a ``plan run``) and threads (one connection per call)."""

    def __init__(self, path: Path, *, keep_runs: int = KEEP_RUNS) -> None:
        self.path = path
        self.logs = path.with_suffix(".logs")
        self.keep_runs = keep_runs
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            if "kind" not in columns:  # a history from before checks were recorded
                db.execute("ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'backup'")

    @classmethod
    def beside(cls, plans_file: Path) -> Self:
        """The history of ``plans_file``: ``plans.toml`` -> ``plans.db``."""
        return cls(plans_file.with_suffix(".db"))

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30)
            try:
                with db:  # one transaction: committed at the end, rolled back on error
                    yield db
            finally:
                db.close()
        except sqlite3.Error as exc:  # damaged, not a database, locked past the timeout
            raise PlanError(
                f"{exc}; move it aside and a new, empty history starts",
                where=f"history database {self.path}",
            ) from None

    def start(
        self,
        plan: str,
        trigger: Trigger,
        *,
        kind: RunKind = "backup",
        now: datetime | None = None,
    ) -> RunRecord:
        """A new run, "running", owned by this process; its log file's path is chosen
        (the file itself is the runner's)."""
        started = _utc(now)
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO runs (plan, trigger, status, started, owner, kind) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (plan, trigger, "running", started.isoformat(), _owner(os.getpid()), kind),
            )
            run_id = cursor.lastrowid
            assert run_id is not None
            log = str(self.logs / f"{plan}-{run_id}.log")
            db.execute("UPDATE runs SET log = ? WHERE run_id = ?", (log, run_id))
        return RunRecord(plan, run_id, trigger, "running", started, log=log, kind=kind)

    def finish(self, record: RunRecord, *, now: datetime | None = None) -> RunRecord:
        """Record how ``record`` ended (its status, bytes, snapshot, error) and drop the
        plan's runs beyond the newest ``keep_runs``, with their logs."""
        if record.status == "running":
            raise ValueError("finish needs a final status")
        done = replace(record, ended=record.ended or _utc(now))
        assert done.ended is not None
        with self._db() as db:
            db.execute(
                "UPDATE runs SET status = ?, ended = ?, bytes_read = ?, bytes_new = ?, "
                "bytes_stored = ?, snapshot = ?, error = ?, owner = '' WHERE run_id = ?",
                (
                    done.status,
                    done.ended.isoformat(),
                    done.bytes_read,
                    done.bytes_new,
                    done.bytes_stored,
                    done.snapshot,
                    done.error,
                    done.run_id,
                ),
            )
        self._trim(done.plan, done.kind)
        return done

    def runs(
        self,
        plan: str,
        limit: int = KEEP_RUNS,
        *,
        oldest_first: bool = False,
        kind: RunKind | None = None,
    ) -> list[RunRecord]:
        """The plan's runs, newest first (or oldest first); of one kind, or all."""
        order = "ASC" if oldest_first else "DESC"
        kinds = get_args(RunKind) if kind is None else (kind,)
        return self._select(
            f"WHERE plan = ? AND kind IN ({', '.join('?' * len(kinds))}) "
            f"ORDER BY run_id {order} LIMIT ?",
            (plan, *kinds, limit),
        )

    def last(self, plan: str, kind: RunKind = "backup") -> RunRecord | None:
        """The plan's newest backup (or check) that has ended."""
        found = self._select(
            "WHERE plan = ? AND kind = ? AND status != 'running' ORDER BY run_id DESC LIMIT 1",
            (plan, kind),
        )
        return found[0] if found else None

    def last_good(self, plan: str) -> RunRecord | None:
        found = self._select(
            "WHERE plan = ? AND kind = 'backup' AND status = 'ok' ORDER BY run_id DESC LIMIT 1",
            (plan,),
        )
        return found[0] if found else None

    def after(self, run_id: int, limit: int) -> list[RunRecord]:
        """Runs of every plan with a greater id than ``run_id``, oldest first: what an
        agent has not yet reported to its center."""
        return self._select("WHERE run_id > ? ORDER BY run_id LIMIT ?", (run_id, limit))

    def running(self, plan: str | None = None) -> list[RunRecord]:
        """Runs still marked running (by a live process, or by a dead one until
        ``interrupted_leftovers`` is called)."""
        if plan is None:
            return self._select("WHERE status = 'running' ORDER BY run_id", ())
        return self._select(
            "WHERE status = 'running' AND plan = ? AND kind = 'backup' ORDER BY run_id", (plan,)
        )

    def interrupted_leftovers(self, *, now: datetime | None = None) -> list[RunRecord]:
        """Mark every run left "running" by a process that no longer runs (killed,
        power lost) as interrupted, and return them: each plan among them is owed a run."""
        with self._db() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS}, owner FROM runs WHERE status = 'running' ORDER BY run_id"
            ).fetchall()
        dead = [_record(row[:-1]) for row in rows if not _alive(row[-1])]
        ended = []
        for record in dead:
            ended.append(
                self.finish(
                    replace(
                        record,
                        status="interrupted",
                        error="the process running it ended without finishing it "
                        "(killed, or the machine stopped)",
                    ),
                    now=now,
                )
            )
        return ended

    def _select(self, where: str, args: tuple[Any, ...]) -> list[RunRecord]:
        with self._db() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM runs {where}", args).fetchall()
        return [_record(row) for row in rows]

    def _trim(self, plan: str, kind: RunKind) -> None:
        """Keep the newest ``keep_runs`` of each kind: frequent checks do not push the
        plan's backups out of its history."""
        with self._db() as db:
            old = db.execute(
                "SELECT run_id, log FROM runs WHERE plan = ? AND kind = ? AND status != 'running' "
                "ORDER BY run_id DESC LIMIT -1 OFFSET ?",
                (plan, kind, self.keep_runs),
            ).fetchall()
            db.executemany("DELETE FROM runs WHERE run_id = ?", [(run_id,) for run_id, _ in old])
        for _, log in old:
            if log and Path(log).parent == self.logs:  # only logs this history made
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(log)


def _utc(now: datetime | None) -> datetime:
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        raise ValueError("history times are aware")
    return moment.astimezone(UTC)


SKIPPED_WHY: Final = "could not start within"
_OLD_SKIPPED: Final = f"skipped: {SKIPPED_WHY} "


def _record(row: tuple[Any, ...]) -> RunRecord:
    plan, run_id, trigger, status, started, ended, read, new, stored, snap, error, log, kind = row
    if status == "failed" and (error or "").startswith(_OLD_SKIPPED):
        # written before "skipped" was a status of its own: read it as what it was
        status, error = "skipped", error.removeprefix("skipped: ")
    return RunRecord(
        plan=plan,
        run_id=run_id,
        trigger=cast(Trigger, trigger),
        status=cast(RunStatus, status),
        started=datetime.fromisoformat(started),
        ended=None if ended is None else datetime.fromisoformat(ended),
        bytes_read=read,
        bytes_new=new,
        bytes_stored=stored,
        snapshot=snap,
        error=error,
        log=log,
        kind=cast(RunKind, kind),
    )


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _started_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field
    22): a pid reused by another process has another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner(pid: int) -> str:
    return f"{_boot_id()}:{pid}:{_started_ticks(pid)}"


def _alive(owner: str) -> bool:
    boot, _, rest = owner.partition(":")
    pid, _, _ = rest.partition(":")
    if not pid.isdigit() or boot != _boot_id():
        return False
    return _owner(int(pid)) == owner


MAX_JITTER_SECONDS: Final = 366 * 86400  # a jitter is at most a tenth of a period


class Reckoning:
    """When each plan last fired, in table ``agent_reckoning`` of the plans database,
    and the jitter the agent gives it (``agent_jitter``): what ``status`` needs to show
    when the agent will fire it (``schedule.fire_time``)."""

    def __init__(self, database: Path) -> None:
        self._db = sqlite3.connect(database, isolation_level=None, timeout=30)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS agent_reckoning"
            " (plan TEXT PRIMARY KEY, since TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS agent_jitter (plan TEXT PRIMARY KEY, seconds REAL NOT NULL)"
        )

    def get(self, plan: str) -> datetime | None:
        row = self._db.execute(
            "SELECT since FROM agent_reckoning WHERE plan = ?", (plan,)
        ).fetchone()
        try:
            moment = datetime.fromisoformat(row[0]) if row is not None else None
        except (TypeError, ValueError):  # not ours, or damaged: as if it never fired
            return None
        if moment is None or moment.tzinfo is not None:
            return moment
        return moment.replace(tzinfo=UTC)

    def set(self, plan: str, since: datetime) -> None:
        self._db.execute(
            "INSERT INTO agent_reckoning (plan, since) VALUES (?, ?)"
            " ON CONFLICT (plan) DO UPDATE SET since = excluded.since",
            (plan, since.astimezone(UTC).isoformat()),
        )

    def jitter(self, plan: str) -> timedelta:
        """The delay after each fire time the agent last gave the plan (0 if none)."""
        row = self._db.execute(
            "SELECT seconds FROM agent_jitter WHERE plan = ?", (plan,)
        ).fetchone()
        seconds = row[0] if row is not None else 0
        if not isinstance(seconds, int | float) or not 0 <= seconds <= MAX_JITTER_SECONDS:
            return timedelta(0)  # not ours, or damaged
        return timedelta(seconds=seconds)

    def set_jitter(self, plan: str, jitter: timedelta) -> None:
        self._db.execute(
            "INSERT INTO agent_jitter (plan, seconds) VALUES (?, ?)"
            " ON CONFLICT (plan) DO UPDATE SET seconds = excluded.seconds",
            (plan, jitter.total_seconds()),
        )

    def close(self) -> None:
        self._db.close()
