"""A backup plan and the record of one of its runs: plain frozen records, no I/O.

A ``Plan`` says what to image (``source_kind`` and ``sources``), where (``repo``),
when (``schedule`` and ``window``, specs the schedule parser reads), how long to keep
it (``retention``, the policy ``prune`` applies to the plan's own source only), what
to prove afterwards (``verify``, ``check``) and whom to tell (``notify``). The plans
file (``plans/store.py``) validates every field before a ``Plan`` is made, so code
that receives one may trust it. A ``RunRecord`` is one row of the history database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from blockvault.plans.retention import Policy

__all__ = [
    "CHECK_SUBSET_DEFAULT",
    "CheckSpec",
    "Plan",
    "PreFailure",
    "RunKind",
    "RunRecord",
    "RunStatus",
    "SourceKind",
    "Trigger",
    "VerifySpec",
]

# disk: one whole disk (sources = (device,)); partition: partitions of one disk
# (sources = their device paths, all on one disk); system: what the running system
# needs, found at run time (sources = ()); files: a file backup of absolute paths
SourceKind = Literal["disk", "system", "partition", "files"]
# snapshot: re-read and re-hash the new snapshot's chunks; source: also compare its
# used blocks with the source it was taken from (``verify --against``)
VerifySpec = Literal["snapshot", "source"]
PreFailure = Literal["abort", "continue"]
Trigger = Literal["schedule", "missed", "manual"]
# backup: the plan's backup (run_plan); check: its scheduled ``check --read-data
# --subset`` (run_check), whose bytes_read is what it read and error the damage found
RunKind = Literal["backup", "check"]
# skipped: the agent could not start it within --max-start-delay (other runs held the
# concurrency limit); it never ran, so it is neither a failure nor a good run
RunStatus = Literal["running", "ok", "failed", "interrupted", "skipped"]

CHECK_SUBSET_DEFAULT: Final = 10  # percent of the chunks a scheduled check reads


@dataclass(frozen=True)
class CheckSpec:
    """A scheduled ``check --read-data --subset N%`` of the plan's repository: a full
    read spread over time (each run reads a different random ``subset`` percent)."""

    schedule: str  # a schedule spec, as Plan.schedule
    subset: int = CHECK_SUBSET_DEFAULT  # percent, 1-100


@dataclass(frozen=True)
class Plan:
    name: str
    repo: str  # a repository location, as -r takes it
    source_kind: SourceKind
    sources: tuple[str, ...]  # device paths (or file paths); () for "system"
    schedule: str  # a schedule spec: cron, calendar words or "every 6h"
    window: str | None = None  # when runs may start, e.g. "Mon-Fri 08:00-20:00"
    retention: Policy | None = None  # None: keep every snapshot
    verify: VerifySpec | None = None
    check: CheckSpec | None = None
    pre: str | None = None  # a shell command run before the backup
    post: str | None = None  # a shell command run after, whatever happened
    pre_failure: PreFailure = "abort"
    notify: tuple[str, ...] = ()  # mailto:... and http(s)://... targets
    enabled: bool = True
    timeout: int | None = None  # seconds a run may take; None: no limit
    password_file: str | None = None  # the repository's passphrase, first line
    exclude: tuple[str, ...] = ()  # files plans: gitignore-style patterns left out
    live: str | None = None  # disk plans: how a source in use is read (disk/live.py)


@dataclass(frozen=True)
class RunRecord:
    """One run of a plan, as the history database holds it. Times are aware UTC."""

    plan: str
    run_id: int  # the database's row id: increasing, unique across plans
    trigger: Trigger
    status: RunStatus
    started: datetime
    ended: datetime | None = None  # None while running
    bytes_read: int = 0  # used bytes read from the source
    bytes_new: int = 0  # bytes of chunks the repository did not have
    bytes_stored: int = 0  # bytes added to the repository (compressed, encrypted)
    snapshot: str | None = None  # the new snapshot's id
    error: str | None = None  # one line: why the run failed or was interrupted
    log: str | None = None  # path of the run's log file
    kind: RunKind = "backup"

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else (self.ended - self.started).total_seconds()
