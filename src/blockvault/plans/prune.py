"""Prune: apply a retention policy to a repository and remove what it does not keep.

The one function the CLI, the agent and the server call. Only the snapshots the
repository's ``selector`` matches (the global ``--host``/``--source``) and the
``tags`` select are considered; the others are kept. A damaged snapshot (its
manifest unreadable, its index missing, or its time not a time) is never removed by
a policy: it is reported, so that a person decides after ``blockvault check``.

Ages come from the times the repository recorded, against the caller's ``now``. A
considered snapshot dated after ``now`` means the clock jumped back (or the
repository's times are wrong): counting periods then could remove the only good
snapshot, so prune refuses (``ClockBehind``) and removes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from blockvault.errors import ClockBehind
from blockvault.plans.retention import Decision, Policy, apply_policy, snapshot_time, time_problem
from blockvault.repo import Repository, Snapshot

__all__ = ["PruneResult", "prune"]


@dataclass(frozen=True)
class PruneResult:
    decisions: tuple[Decision, ...]  # every snapshot considered, by group, newest first
    damaged: Mapping[str, str]  # snapshot id -> what is wrong; left alone
    dry_run: bool  # nothing was removed; ``removed`` is what would have been

    @property
    def kept(self) -> tuple[Snapshot, ...]:
        return tuple(d.snapshot for d in self.decisions if d.keep)

    @property
    def removed(self) -> tuple[Snapshot, ...]:
        return tuple(d.snapshot for d in self.decisions if not d.keep)


def prune(
    repo: Repository,
    policy: Policy,
    *,
    now: datetime,
    tz: tzinfo,
    tags: Sequence[str] = (),
    dry_run: bool = False,
) -> PruneResult:
    """Decide with ``policy`` (periods in ``tz``, ``within`` counted back from ``now``)
    and, unless ``dry_run``, delete the manifests of the snapshots it does not keep
    (``collect_garbage`` frees their chunks later). ``UsageError`` for an empty policy
    and ``ClockBehind`` for a considered snapshot dated after ``now``, before anything
    is removed."""
    listing = repo.listing()
    all_damage = dict(listing.damaged)
    judged = []
    for snap in listing.usable():
        if problem := time_problem(snap):
            all_damage[snap.id] = problem  # no age, no decision
        else:
            judged.append(snap)
    decisions = apply_policy(judged, policy, now=now, tz=tz, selector=repo.selector, tags=tags)
    future = [d.snapshot for d in decisions if snapshot_time(d.snapshot) > now]
    if future:
        newest = max(future, key=snapshot_time)
        raise ClockBehind(
            snapshot=newest.id[:12], time=newest.time, now=now.isoformat(timespec="seconds")
        )
    by_id = {s.id: s for s in listing.snapshots}
    damaged = {
        snapshot_id: why
        for snapshot_id, why in sorted(all_damage.items())
        # an unreadable manifest names no host or source: it may be any one's
        if snapshot_id not in by_id or repo.selector.matches(by_id[snapshot_id])
    }
    result = PruneResult(tuple(decisions), damaged, dry_run)
    if not dry_run:
        for snap in result.removed:
            repo.delete_snapshot(snap.id)
    return result
