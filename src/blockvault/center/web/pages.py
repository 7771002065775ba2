"""The dashboard's pages and its static assets."""

from __future__ import annotations

from fastapi import FastAPI

from blockvault.center.context import Center

__all__ = ["install"]


def install(app: FastAPI, center: Center) -> None:
    """Routes of the dashboard (center-web fills them in)."""
