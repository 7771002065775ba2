"""Central plans as the agent keeps them: a cache file beside the plans file
(``plans.toml`` -> ``plans.central.json``), written when a heartbeat's reply brings a
new set, read by the agent at every reload. The agent runs them from the cache also
while the center is unreachable.

Each plan runs under the name ``center:NAME`` (a colon no local plan name has), so it
never collides with a local plan and its runs report back as the center's. Each is
checked on arrival as a plans file's plan is (``plan_from_table``); one the agent
cannot accept is left out with a warning, the others run.

Retention is the center's: its maintenance role prunes with the times the center
recorded, since an agent that could forget snapshots could also be made to forget
them all. So a central plan's ``keep`` is dropped here and its backups only add.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from blockvault.center.link.identity import write_private
from blockvault.errors import BlockvaultError
from blockvault.plans.model import Plan
from blockvault.plans.store import plan_from_table

__all__ = ["CENTRAL_PREFIX", "CentralPlans", "central_plans_file"]

CENTRAL_PREFIX: Final = "center:"
MAX_CACHE: Final = 4 << 20  # bytes: a few hundred plans of a few kB at most


def central_plans_file(plans_file: Path) -> Path:
    return plans_file.with_suffix(".central.json")


class CentralPlans:
    """The cached central plans of one agent."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def version(self) -> str | None:
        """The version of the cached set (None: nothing cached, or unreadable)."""
        document = self._read()
        version = document.get("plans_version") if document else None
        return version if isinstance(version, str) else None

    def store(self, version: str, plans: Sequence[dict[str, Any]]) -> list[str]:
        """Cache the set the center sent; the problems of the plans left out."""
        problems = [p for p in (_problem(plan) for plan in plans) if p is not None]
        document = {"plans_version": version, "plans": list(plans)}
        write_private(self.path, json.dumps(document, indent=1).encode())
        return problems

    def plans(self) -> list[Plan]:
        """The plans to run: valid ones only, retention dropped, named ``center:NAME``."""
        document = self._read()
        found = document.get("plans") if document else None
        plans = []
        for entry in found if isinstance(found, list) else []:
            plan = _plan(entry)
            if plan is not None:
                plans.append(plan)
        return plans

    def _read(self) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            with open(self.path, "rb") as file:
                data = file.read(MAX_CACHE + 1)
            if len(data) <= MAX_CACHE:
                document = json.loads(data)
                return document if isinstance(document, dict) else None
        return None


def _plan(entry: Any) -> Plan | None:
    try:
        name, spec = entry["name"], entry["spec"]
        if not isinstance(name, str) or not isinstance(spec, dict):
            return None
        plan = plan_from_table(name, spec)
    except (KeyError, TypeError, BlockvaultError):
        return None
    return replace(plan, name=CENTRAL_PREFIX + plan.name, retention=None)


def _problem(entry: Any) -> str | None:
    try:
        plan_from_table(str(entry["name"]), entry["spec"])
    except BlockvaultError as exc:
        return str(exc)
    except (KeyError, TypeError, AttributeError):
        return "a central plan without a name and a spec"
    return None
