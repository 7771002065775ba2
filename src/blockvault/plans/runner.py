"""One run of a plan: preflight, pre-hook, backup, retention, verify, post-hook.

``run_plan`` is what ``plan run`` and the agent call. It records the run in the
history before anything happens and always finishes the record (ok, failed or
interrupted), writes a bounded log beside the history, and never raises for what
the run met (that is the record's ``error``), except ``Interrupted`` from a signal,
which it re-raises once the record is finished so the process stops as the CLI
expects. A run asked to stop through ``stop`` (or past its plan's timeout) stops at
the next progress event: the writer session leaves the repository consistent (a
snapshot is committed whole or not at all) and the run ends "interrupted" (or
"failed" for a timeout). A plan never runs twice at once: a second run of it, from
any process, is refused before it is recorded.

The post-hook always runs, with the outcome in its environment (``BLOCKVAULT_PLAN``,
``BLOCKVAULT_STATUS``, ``BLOCKVAULT_SNAPSHOT``, ``BLOCKVAULT_ERROR``,
``BLOCKVAULT_LOG``...). Retention applies the plan's policy to the snapshots this
plan made of this host's disk only (tagged ``plan=NAME``), counting ages from the
new snapshot's recorded time; a snapshot dated after it (a clock that jumped back)
makes prune refuse and the run fail, with nothing removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Final

from blockvault.errors import BlockvaultError, Interrupted, PlanError
from blockvault.events import Event, Noted, Reporter, TaskFinished, TaskStarted, Warned
from blockvault.files.backup import backup_files
from blockvault.files.select import Selection
from blockvault.pipeline.backup import backup
from blockvault.pipeline.verify import verify
from blockvault.plans.model import Plan, RunRecord, RunStatus, Trigger
from blockvault.plans.preflight import PASSWORD_ENV, open_repository, preflight, resolve_source
from blockvault.plans.prune import prune
from blockvault.plans.retention import duration_text, snapshot_time
from blockvault.plans.store import History
from blockvault.repo import Repository, Selector, Snapshot
from blockvault.repo.check import CheckResult, Subset, check_repository
from blockvault.text import plural

__all__ = [
    "MAX_LOG",
    "OnFinished",
    "check_plan",
    "damage_text",
    "plan_tag",
    "run_check",
    "run_plan",
]

MAX_LOG: Final = 1 << 20  # bytes of one run's log; the rest is dropped, with a note
POST_HOOK_GRACE: Final = 60.0  # seconds a post-hook may take after a stop or timeout
HOOK_OUTPUT: Final = 64 * 1024  # bytes read from a hook at a time

OnFinished = Callable[[RunRecord, RunRecord | None], None]


def plan_tag(plan: str) -> str:
    """The tag each snapshot of the plan carries: retention considers only these."""
    return f"plan={plan}"


def run_plan(
    plan: Plan,
    history: History,
    *,
    trigger: Trigger,
    reporter: Reporter,
    stop: threading.Event | None = None,
    on_finished: OnFinished | None = None,
) -> RunRecord:
    """Run ``plan`` once and return its finished record (see the module docstring).
    ``PlanError`` when the plan is running already (nothing is recorded then)."""
    with _plan_lock(history, plan.name):
        previous = history.last(plan.name)
        record = history.start(plan.name, trigger)
        assert record.log is not None
        raised: BaseException | None = None
        with _RunLog(Path(record.log)) as log:
            run = _Run(plan, record, log, reporter, stop or threading.Event())
            try:
                run.steps()
            except Interrupted as exc:  # a signal (the CLI's or the agent's handler)
                raised = exc
                run.ended("interrupted", f"interrupted by {exc.signal_name}{_colon(exc.outcome)}")
            except BaseException as exc:  # Ctrl-C without interrupts.install(), SystemExit
                raised = exc
                run.ended("interrupted", f"interrupted by {type(exc).__name__}")
            run.post_hook()
            log.line(f"run ended {run.record.status}{_colon(run.record.error)}")
        record = history.finish(run.record)
    if on_finished is not None:
        on_finished(record, previous)
    if raised is not None:
        raise raised
    return record


def check_plan(plan: Plan, *, reporter: Reporter) -> CheckResult:
    """The plan's scheduled check (``plan.check``, which the agent fires on its own
    schedule): ``check --read-data`` of a random ``subset`` percent of the repository's
    chunks, so that many runs together read all of it. ``PlanError`` when the plan
    has no check."""
    if plan.check is None:
        raise PlanError(
            "has no check; add one with 'plan edit --check SPEC'", where=f"plan {plan.name}"
        )
    repo = open_repository(plan)
    subset = Subset(fraction=plan.check.subset / 100)
    return check_repository(repo, read_data=True, subset=subset, reporter=reporter)


def run_check(
    plan: Plan,
    history: History,
    *,
    trigger: Trigger,
    reporter: Reporter,
    on_finished: OnFinished | None = None,
) -> RunRecord:
    """``check_plan``, recorded in the plan's history as a run of kind "check" (what it
    read, and the damage it found as the error), and told to ``on_finished`` like a
    backup, so a failed check notifies. ``Interrupted`` is recorded, then raised."""
    previous = history.last(plan.name, kind="check")
    record = history.start(plan.name, trigger, kind="check")
    assert record.log is not None
    raised: Interrupted | None = None
    with _RunLog(Path(record.log)) as log:
        try:
            result = check_plan(plan, reporter=reporter)
        except Interrupted as exc:
            raised = exc
            record = replace(
                record, status="interrupted", error=f"interrupted by {exc.signal_name}"
            )
        except BlockvaultError as exc:
            record = replace(record, status="failed", error=str(exc))
        else:
            record = replace(
                record,
                status="ok" if result.ok else "failed",
                bytes_read=result.bytes_read,
                error=None if result.ok else damage_text(result),
            )
        log.line(f"check ended {record.status}{_colon(record.error)}")
    record = history.finish(record)
    if on_finished is not None:
        on_finished(record, previous)
    if raised is not None:
        raise raised
    return record


def damage_text(result: CheckResult) -> str:
    """One line for a check that found damage: how many problems, which snapshots."""
    damaged = ", ".join(s[:12] for s in result.damaged_snapshots) or "no snapshot"
    return f"{plural(len(result.problems), 'problem')} (damaged: {damaged})"


def _colon(text: str | None) -> str:
    return f": {text}" if text else ""


@contextlib.contextmanager
def _plan_lock(history: History, name: str) -> Iterator[None]:
    history.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(history.logs / f".{name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PlanError(
                "is running already (see 'blockvault status'); a plan never runs twice at once",
                where=f"plan {name}",
            ) from None
        yield


class _RunLog:
    """The run's log file: timestamped lines, at most ``MAX_LOG`` bytes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.file: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed by __exit__
        os.fchmod(self.file.fileno(), 0o600)
        self.written = 0
        self.lock = threading.Lock()

    def __enter__(self) -> _RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def line(self, text: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        self.raw(f"{stamp} {text}\n".encode(errors="replace"))

    def raw(self, data: bytes) -> None:
        with self.lock:
            room = MAX_LOG - self.written
            if room <= 0:
                return
            if len(data) > room:
                data = data[:room] + b"\n[log truncated: it reached its size limit]\n"
            self.file.write(data)
            self.file.flush()
            self.written += len(data)


@dataclass
class _Run:
    plan: Plan
    record: RunRecord
    log: _RunLog
    reporter: Reporter
    stop: threading.Event
    deadline: float | None = None
    stopped: Interrupted | None = None  # raised by us when stop or the timeout came
    disk: str | None = None
    snapshot: Snapshot | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.plan.timeout is not None:
            self.deadline = time.monotonic() + self.plan.timeout

    # --- the steps ---------------------------------------------------------------

    def steps(self) -> None:
        plan = self.plan
        self.log.line(f"plan {plan.name}: run {self.record.run_id} ({self.record.trigger})")
        try:
            repo = preflight(plan)
            self._check_stop()  # asked to stop before it began: nothing is run
            if plan.pre is not None:
                code = self.hook("pre", plan.pre, self._environment("pre"))
                if code != 0:
                    why = f"pre-hook exited with {code}"
                    if plan.pre_failure == "abort":
                        self.ended("failed", why + "; the backup did not run")
                        return
                    self.log.line(f"{why}; continuing (pre_failure = continue)")
            self.backup(repo)
            self.retention(repo)
            self.verify(repo)
            self.ended("ok", None)
        except Interrupted as exc:
            if exc is not self.stopped:
                raise
            self.ended_by_stop(exc)
        except BlockvaultError as exc:
            self.ended("failed", str(exc))
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            self.ended("failed", f"{exc.strerror or exc}{where}")
        except Exception as exc:  # a bug: the run fails, the agent lives on
            self.log.raw(traceback.format_exc().encode(errors="replace"))
            self.ended("failed", f"internal error: {type(exc).__name__}: {exc}")

    def backup(self, repo: Repository) -> None:
        tags = (plan_tag(self.plan.name),)
        if self.plan.source_kind == "files":
            self.log.line(f"file backup of {' '.join(self.plan.sources)} into {self.plan.repo}")
            selection = Selection(exclude=self.plan.exclude)
            snap = backup_files(
                repo, self.plan.sources, selection=selection, tags=tags, reporter=self.report
            )
        else:
            disk, partitions = resolve_source(self.plan)
            self.disk = disk
            what = f"partitions {', '.join(map(str, partitions))} of {disk}" if partitions else disk
            self.log.line(f"backup of {what} into {self.plan.repo}")
            snap = backup(
                repo,
                disk,
                partitions=partitions,
                tags=tags,
                live=self.plan.live,
                reporter=self.report,
            )
        self.snapshot = snap
        stats = snap.stats
        self.record = replace(
            self.record,
            snapshot=snap.id,
            bytes_read=stats.read_bytes,
            bytes_new=stats.new_bytes,
            bytes_stored=stats.stored_bytes,
        )
        self.log.line(
            f"snapshot {snap.id} saved: {stats.read_bytes} bytes read, {stats.new_bytes} new, "
            f"{stats.stored_bytes} stored"
        )

    def retention(self, repo: Repository) -> None:
        if self.plan.retention is None or self.snapshot is None:
            return
        snap = self.snapshot
        repo.selector = Selector(host=snap.host, source=snap.source_id or snap.source)
        # ages from the repository's recorded time of what was just made, not from a
        # clock that may since have jumped; prune refuses snapshots dated after it
        now = snapshot_time(snap)
        tz = datetime.now(UTC).astimezone().tzinfo or UTC
        result = prune(repo, self.plan.retention, now=now, tz=tz, tags=(plan_tag(self.plan.name),))
        for snapshot_id, why in result.damaged.items():
            self.log.line(f"retention left damaged snapshot {snapshot_id[:12]} alone: {why}")
        removed = ", ".join(s.id[:12] for s in result.removed)
        self.log.line(
            f"retention kept {plural(len(result.kept), 'snapshot')}, removed "
            f"{len(result.removed)}" + (f" ({removed})" if removed else "")
        )

    def verify(self, repo: Repository) -> None:
        if self.plan.verify is None or self.snapshot is None:
            return
        against = self.disk if self.plan.verify == "source" else None
        result = verify(repo, [self.snapshot], against=against, reporter=self.report)
        for problem in result.problems[:20]:
            self.log.line(f"verify: {problem.region} @ {problem.offset}: {problem.detail}")
        if not result.ok:
            raise PlanError(
                f"verify found {plural(len(result.problems), 'problem')} in snapshot "
                f"{self.snapshot.id[:12]} (the log names them)",
                where=f"plan {self.plan.name}",
            )
        self.log.line(f"verify of snapshot {self.snapshot.id[:12]}: OK")

    def post_hook(self) -> None:
        if self.plan.post is None:
            return
        if self.record.status == "running":  # an error escaped the steps: say so
            self.ended("failed", self.record.error or "the run ended unexpectedly")
        try:
            code = self.hook("post", self.plan.post, self._environment("post"))
        except Interrupted as exc:  # a signal during the post-hook: the run is over anyway
            self.log.line(f"post-hook stopped: interrupted by {exc.signal_name}")
            return
        except OSError as exc:
            code = -1
            self.log.line(f"post-hook could not start: {exc.strerror or exc}")
        if code != 0 and self.record.status == "ok":
            self.ended("failed", f"post-hook exited with {code}")

    # --- helpers -----------------------------------------------------------------

    def ended(self, status: RunStatus, error: str | None) -> None:
        self.record = replace(self.record, status=status, error=error)

    def ended_by_stop(self, exc: Interrupted) -> None:
        left = _colon(exc.outcome)
        if self.stop.is_set():
            self.ended("interrupted", f"stopped{left}")
        else:
            assert self.plan.timeout is not None
            limit = duration_text(timedelta(seconds=self.plan.timeout))
            self.ended("failed", f"timed out after {limit} (the plan's timeout){left}")

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _check_stop(self) -> None:
        if self.stop.is_set() or self._past_deadline():
            self.stopped = Interrupted("SIGTERM", signal.SIGTERM)
            raise self.stopped

    def report(self, event: Event) -> None:
        """Forward to the caller's reporter, log what matters, and stop here when asked
        (events come from the calling thread, so the interruption unwinds the pipeline
        exactly as a signal would)."""
        self.reporter(event)
        if isinstance(event, TaskStarted):
            self.log.line(f"{event.task} started: {event.total_bytes} bytes {event.description}")
        elif isinstance(event, TaskFinished):
            self.log.line(f"{event.task} finished")
        elif isinstance(event, Warned):
            self.log.line(f"warning: {event.message}")
        elif isinstance(event, Noted):
            self.log.line(event.message)
        self._check_stop()

    def _environment(self, phase: str) -> dict[str, str]:
        record = self.record
        env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
        env.update(
            BLOCKVAULT_PLAN=self.plan.name,
            BLOCKVAULT_PHASE=phase,
            BLOCKVAULT_REPO=self.plan.repo,
            BLOCKVAULT_RUN_ID=str(record.run_id),
            BLOCKVAULT_TRIGGER=record.trigger,
            BLOCKVAULT_LOG=record.log or "",
        )
        if phase == "post":
            env.update(
                BLOCKVAULT_STATUS=record.status,
                BLOCKVAULT_SNAPSHOT=record.snapshot or "",
                BLOCKVAULT_ERROR=record.error or "",
                BLOCKVAULT_BYTES_READ=str(record.bytes_read),
                BLOCKVAULT_BYTES_NEW=str(record.bytes_new),
                BLOCKVAULT_BYTES_STORED=str(record.bytes_stored),
            )
        return env

    def hook(self, phase: str, command: str, env: dict[str, str]) -> int:
        """Run ``command`` with ``/bin/sh -c``, its output into the log. When the run
        is asked to stop or runs out of time, a pre-hook is stopped at once (its whole
        process group) and the run with it; a post-hook, which must report the end, is
        given ``POST_HOOK_GRACE`` seconds more. Returns its exit status (negative:
        killed by that signal)."""
        self.log.line(f"{phase}-hook: {command}")
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own group: stopped whole, spared our Ctrl-C
        )
        assert proc.stdout is not None
        copier = threading.Thread(target=self._copy_output, args=(proc.stdout,), daemon=True)
        copier.start()
        grace: float | None = None
        try:
            while True:
                try:
                    code = proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if phase == "pre":
                    self._check_stop()
                elif self.stop.is_set() or self._past_deadline():
                    grace = grace or time.monotonic() + POST_HOOK_GRACE
                    if time.monotonic() >= grace:
                        self.log.line(f"{phase}-hook took too long after the run stopped")
                        _kill_group(proc)
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            copier.join(timeout=5)
            proc.stdout.close()
        self.log.line(f"{phase}-hook exited with {code}")
        return code

    def _copy_output(self, pipe: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := pipe.read1(HOOK_OUTPUT):  # type: ignore[attr-defined]
                self.log.raw(chunk)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the hook's process group, SIGKILL it if it lingers, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
