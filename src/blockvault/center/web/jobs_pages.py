"""The dashboard's pages of the jobs part (center-jobs fills them in)."""

from __future__ import annotations

from fastapi import FastAPI

from blockvault.center.context import Center

__all__ = ["install"]


def install(app: FastAPI, center: Center) -> None:
    """Routes of these pages."""
