"""Groups, hosts, enrolment tokens, central plans and runs under /api/v1."""

from __future__ import annotations

from fastapi import FastAPI

from blockvault.center.context import Center

__all__ = ["install"]


def install(app: FastAPI, center: Center) -> None:
    """Routes and workers of this part (center-agents fills them in)."""
