"""Progress events: how the library tells the world what it is doing.

The library never prints. Each pipeline, and the repository's own long tasks (check,
gc), take a ``Reporter`` (any callable taking an ``Event``) and emit events from the
calling thread; the CLI renders them as progress bars or JSON lines, an agent could
forward them to a server. This module sits at the bottom layer, beside errors.py, so
that every layer can report without importing the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Event",
    "Noted",
    "Reporter",
    "TaskAdvanced",
    "TaskFinished",
    "TaskStarted",
    "Warned",
    "quiet",
]


@dataclass(frozen=True)
class TaskStarted:
    task: str  # "backup", "restore", "verify", ...
    total_bytes: int
    description: str = ""


@dataclass(frozen=True)
class TaskAdvanced:
    task: str
    done_bytes: int  # bytes finished since the last event


@dataclass(frozen=True)
class TaskFinished:
    task: str


@dataclass(frozen=True)
class Warned:
    message: str


@dataclass(frozen=True)
class Noted:
    """Something a user watching wants to know that is not a problem (a receiver joined)."""

    message: str


Event = TaskStarted | TaskAdvanced | TaskFinished | Warned | Noted
Reporter = Callable[[Event], None]


def quiet(event: Event) -> None:
    """A reporter that drops every event."""
