"""Jobs (remote operations), repositories and snapshot browsing under /api/v1, and the
agent's side of jobs under /agent/v1."""

from __future__ import annotations

from fastapi import FastAPI

from blockvault.center.context import Center

__all__ = ["install"]


def install(app: FastAPI, center: Center) -> None:
    """Routes and workers of this part (center-jobs fills them in)."""
