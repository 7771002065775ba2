"""Alert targets, rules and open alerts under /api/v1; the worker that raises and clears alerts."""

from __future__ import annotations

from fastapi import FastAPI

from blockvault.center.context import Center

__all__ = ["install"]


def install(app: FastAPI, center: Center) -> None:
    """Routes and workers of this part (center-alerts fills them in)."""
