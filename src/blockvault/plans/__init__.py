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
"""

from __future__ import annotations

from blockvault.plans.prune import PruneResult, prune
from blockvault.plans.retention import Decision, Policy, apply_policy, group_key

__all__ = ["Decision", "Policy", "PruneResult", "apply_policy", "group_key", "prune"]
