"""blockvault: disk imaging and backup, as a Python library.

This is the public API: what the agent and the central server call instead of the
CLI (each CLI command is a thin wrapper over one of these). Everything else is
internal and may change between releases. docs/api.md has a worked example.

Glossary:
  repository   where snapshots live (a directory, ``sftp://``, ``s3://``):
               ``Repository.init`` makes one, ``Repository.open`` opens it.
  snapshot     one committed backup of a disk or of chosen partitions
               (``repo.snapshots()``, ``repo.resolve("a1b2")``).
  reporter     any callable taking an ``Event``: the library never prints, it
               reports progress and warnings there (``quiet`` drops them).
  confirm      asked ``"overwrite ...?"`` before a target holding data is written;
               the default refuses, so nothing is overwritten by surprise.

Errors are ``BlockvaultError`` subclasses (``blockvault.errors``), each with a
one-line message naming the object and a remedy, and the exit code the CLI uses.

Names load on first use (module ``__getattr__``): ``import blockvault`` costs well
under a millisecond, where the pipelines' imports (zstd, cryptography, dissect)
take some 165 ms that a ``blockvault --help`` should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blockvault.errors import BlockvaultError
    from blockvault.events import (
        Event,
        Noted,
        Reporter,
        TaskAdvanced,
        TaskFinished,
        TaskStarted,
        Warned,
        quiet,
    )
    from blockvault.files.backup import backup_files
    from blockvault.files.select import Selection
    from blockvault.files.stream import backup_command_output, backup_stream
    from blockvault.interop.sources import import_image
    from blockvault.pipeline.backup import backup
    from blockvault.pipeline.clone import CloneResult, clone
    from blockvault.pipeline.copy import CopyResult, copy_snapshot, export_bundle
    from blockvault.pipeline.restore import RestoreResult, restore
    from blockvault.pipeline.target import Confirm
    from blockvault.pipeline.verify import Problem, VerifyResult, verify
    from blockvault.plans.agent import Agent, Limits
    from blockvault.plans.model import Plan, RunRecord
    from blockvault.plans.prune import PruneResult, prune
    from blockvault.plans.retention import Decision, Policy, apply_policy
    from blockvault.plans.runner import run_plan
    from blockvault.plans.schedule import Schedule, parse_schedule
    from blockvault.plans.status import PlanStatus, plan_status
    from blockvault.plans.store import History, PlanBook
    from blockvault.repo.check import CheckResult, Damage, Subset, check_repository, parse_subset
    from blockvault.repo.gc import GcResult, collect_garbage
    from blockvault.repo.manifest import Snapshot
    from blockvault.repo.repository import Repository, Selector

__version__ = "0.1.0"

# Each public name and the module that defines it (re-exported, never wrapped).
_EXPORTS: dict[str, str] = {
    # repository: Repository.init / .open, .snapshots(), .resolve(), .delete_snapshot()
    "Repository": "blockvault.repo.repository",
    "Selector": "blockvault.repo.repository",  # repo.selector: which snapshots latest/prune see
    "Snapshot": "blockvault.repo.manifest",
    # what moves bytes
    "backup": "blockvault.pipeline.backup",
    "restore": "blockvault.pipeline.restore",
    "RestoreResult": "blockvault.pipeline.restore",
    "clone": "blockvault.pipeline.clone",
    "CloneResult": "blockvault.pipeline.clone",
    "Confirm": "blockvault.pipeline.target",
    "verify": "blockvault.pipeline.verify",
    # another tool's image (Clonezilla, FOG, Redo, partclone) as snapshots
    "import_image": "blockvault.interop.sources",
    "VerifyResult": "blockvault.pipeline.verify",
    "Problem": "blockvault.pipeline.verify",
    # file backup: directory trees, and streams such as database dumps (issue 15)
    "backup_files": "blockvault.files.backup",
    "Selection": "blockvault.files.select",
    "backup_stream": "blockvault.files.stream",
    "backup_command_output": "blockvault.files.stream",
    # a snapshot out of its repository: into another (import) or a one-file image (.bvi)
    "copy_snapshot": "blockvault.pipeline.copy",
    "export_bundle": "blockvault.pipeline.copy",
    "CopyResult": "blockvault.pipeline.copy",
    # keeping the repository healthy; prune = apply_policy, then delete what is not kept
    "prune": "blockvault.plans.prune",
    "PruneResult": "blockvault.plans.prune",
    "check_repository": "blockvault.repo.check",
    "CheckResult": "blockvault.repo.check",
    "Damage": "blockvault.repo.check",
    "Subset": "blockvault.repo.check",
    "parse_subset": "blockvault.repo.check",
    "apply_policy": "blockvault.plans.retention",
    "Policy": "blockvault.plans.retention",
    "Decision": "blockvault.plans.retention",
    "collect_garbage": "blockvault.repo.gc",
    "GcResult": "blockvault.repo.gc",
    # backup plans: the plans file, the run history, one run, how each plan stands
    "Plan": "blockvault.plans.model",
    "RunRecord": "blockvault.plans.model",
    "PlanBook": "blockvault.plans.store",
    "History": "blockvault.plans.store",
    "run_plan": "blockvault.plans.runner",
    "plan_status": "blockvault.plans.status",
    "PlanStatus": "blockvault.plans.status",
    # schedules, and the agent that fires plans on them
    "parse_schedule": "blockvault.plans.schedule",
    "Schedule": "blockvault.plans.schedule",
    "Agent": "blockvault.plans.agent",
    "Limits": "blockvault.plans.agent",
    # progress events and the reporter that receives them
    "Event": "blockvault.events",
    "Reporter": "blockvault.events",
    "TaskStarted": "blockvault.events",
    "TaskAdvanced": "blockvault.events",
    "TaskFinished": "blockvault.events",
    "Warned": "blockvault.events",
    "Noted": "blockvault.events",
    "quiet": "blockvault.events",
    # the root of the error tree
    "BlockvaultError": "blockvault.errors",
}

__all__ = [
    "Agent",
    "BlockvaultError",
    "CheckResult",
    "CloneResult",
    "Confirm",
    "CopyResult",
    "Damage",
    "Decision",
    "Event",
    "GcResult",
    "History",
    "Limits",
    "Noted",
    "Plan",
    "PlanBook",
    "PlanStatus",
    "Policy",
    "Problem",
    "PruneResult",
    "Reporter",
    "Repository",
    "RestoreResult",
    "RunRecord",
    "Schedule",
    "Selection",
    "Selector",
    "Snapshot",
    "Subset",
    "TaskAdvanced",
    "TaskFinished",
    "TaskStarted",
    "VerifyResult",
    "Warned",
    "apply_policy",
    "backup",
    "backup_command_output",
    "backup_files",
    "backup_stream",
    "check_repository",
    "clone",
    "collect_garbage",
    "copy_snapshot",
    "export_bundle",
    "import_image",
    "parse_schedule",
    "parse_subset",
    "plan_status",
    "prune",
    "quiet",
    "restore",
    "run_plan",
    "verify",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used, and keep the name."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'blockvault' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
