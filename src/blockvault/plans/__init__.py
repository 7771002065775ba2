"""Plans: what to keep and when to run; every function here takes the time from
its caller (no clock inside).

Glossary:
  policy     how many snapshots to keep per period (last, hourly, daily, weekly,
             monthly, yearly) and for how long (within).
  group      snapshots of one origin: host, disk (by identity, not device path) and
             set of partitions; a policy applies to each group on its own.
  decision   keep or remove one snapshot, with the rules that keep it.
  prune      decide for a repository's snapshots and remove the manifests not
             kept; damaged snapshots are reported, never removed.
  plan       what to image, where, when, how long to keep it and whom to tell
             (``model.Plan``); plans live in one TOML file (``store.PlanBook``).
  run        one execution of a plan: pre-hook, backup, retention, verify,
             post-hook (``runner.run_plan``), recorded as a ``model.RunRecord`` in
             the history database beside the plans file (``store.History``).
"""

from __future__ import annotations

from blockvault.plans.model import CheckSpec, Plan, RunRecord
from blockvault.plans.prune import PruneResult, prune
from blockvault.plans.retention import Decision, Policy, apply_policy, group_key

__all__ = [
    "CheckSpec",
    "Decision",
    "Plan",
    "Policy",
    "PruneResult",
    "RunRecord",
    "apply_policy",
    "group_key",
    "prune",
]
