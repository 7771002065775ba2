"""The plan editor's form: its fields to a plan table and back, checked as the API
checks a central plan (``fleet.central_spec``: the very function that reads an
agent's plans file, and a size bound), so a plan the dashboard accepts is one every
agent accepts; and the schedule preview.

A central plan is stored as its table (``CentralPlan.spec``, what the agent's plans
file holds) after a round trip through ``Plan`` (``plan_to_table``), which drops
empty fields and writes each one in its canonical form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from blockvault.center.fleet import central_spec
from blockvault.errors import PlanError, ScheduleError
from blockvault.plans.schedule import parse_schedule
from blockvault.plans.store import KEEP_RULES, SOURCE_KEYS, plan_from_table, plan_to_table

__all__ = ["FIELDS", "PlanForm", "next_runs"]

FIELDS: Final = (
    "name",
    "target",
    "repo",
    "source",
    "sources",
    "schedule",
    "window",
    "verify",
    "password_file",
    "exclude",
    "enabled",
    *(f"keep_{rule}" for rule in KEEP_RULES),
)
MAX_FIELD: Final = 4096
PREVIEW_RUNS: Final = 5


@dataclass(frozen=True)
class PlanForm:
    """What the form holds, as text (what the person typed, shown back on error)."""

    values: dict[str, str]

    @classmethod
    def read(cls, form: Mapping[str, Any]) -> PlanForm:
        values = {}
        for key in FIELDS:
            value = form.get(key)
            values[key] = value[:MAX_FIELD] if isinstance(value, str) else ""
        return cls(values)

    @classmethod
    def of_spec(cls, name: str, target: str, spec: Mapping[str, Any]) -> PlanForm:
        """The form showing a stored plan."""
        values = dict.fromkeys(FIELDS, "")
        values.update(name=name, target=target, enabled="on")
        for key, kind in SOURCE_KEYS.items():
            if key in spec:
                values["source"] = key
                given = spec[key]
                values["sources"] = "\n".join(given) if isinstance(given, list) else str(given)
                if kind == "system":
                    values["sources"] = ""
        for key in ("repo", "schedule", "window", "verify", "password_file"):
            if isinstance(spec.get(key), str):
                values[key] = spec[key]
        if isinstance(spec.get("exclude"), list):
            values["exclude"] = "\n".join(str(p) for p in spec["exclude"])
        if spec.get("enabled") is False:
            values["enabled"] = ""
        keep = spec.get("keep")
        for rule in KEEP_RULES:
            if isinstance(keep, dict) and isinstance(keep.get(rule), int):
                values[f"keep_{rule}"] = str(keep[rule])
        return cls(values)

    def get(self, key: str) -> str:
        return self.values.get(key, "")

    def table(self) -> dict[str, Any]:
        """The plan table the fields make, unchecked."""
        v = self.values
        lines = [s.strip() for s in v["sources"].splitlines() if s.strip()]
        table: dict[str, Any] = {"repo": v["repo"].strip(), "schedule": v["schedule"].strip()}
        source = v["source"] if v["source"] in SOURCE_KEYS else "disk"
        if source == "disk":
            table["disk"] = lines[0] if lines else ""
        elif source == "system":
            table["system"] = True
        else:
            table[source] = lines
        for key in ("window", "verify", "password_file"):
            if v[key].strip():
                table[key] = v[key].strip()
        exclude = [s.strip() for s in v["exclude"].splitlines() if s.strip()]
        if exclude:
            table["exclude"] = exclude
        if not v["enabled"]:
            table["enabled"] = False
        keep: dict[str, Any] = {}
        for rule in KEEP_RULES:
            text = v[f"keep_{rule}"].strip()
            if text:
                keep[rule] = int(text) if text.isdigit() and len(text) < 7 else text
        if keep:
            table["keep"] = keep
        return table

    def spec(self) -> dict[str, Any]:
        """The checked, canonical plan table; ``PlanError`` says what is wrong."""
        name = self.values["name"].strip()
        if self.values["source"] == "disk" and len(self.values["sources"].split()) > 1:
            raise PlanError("a disk plan backs up one disk: give one device", where=f"plan {name}")
        return central_spec(name, plan_to_table(plan_from_table(name, self.table())))


def next_runs(
    schedule: str, window: str | None, now: datetime, count: int = PREVIEW_RUNS
) -> list[datetime]:
    """The next ``count`` fire times after ``now``, reckoned in UTC (each agent reads
    the schedule in its own time zone, so a calendar time lands at that zone's hour).
    ``PlanError`` when the schedule or window does not parse."""
    try:
        parsed = parse_schedule(schedule, window or None, UTC)
    except ScheduleError as exc:
        raise PlanError(str(exc), where="schedule") from None
    fires = []
    moment = now
    for _ in range(count):
        moment = parsed.next_after(moment)
        fires.append(moment)
    return fires
