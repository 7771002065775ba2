"""Users, API tokens, the audit log and settings under /api/v1 (admin)."""

from __future__ import annotations

from fastapi import FastAPI

from blockvault.center.context import Center

__all__ = ["install"]


def install(app: FastAPI, center: Center) -> None:
    """Routes and workers of this part (center-core fills them in)."""
