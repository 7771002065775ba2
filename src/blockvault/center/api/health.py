"""``/healthz`` for load balancers and monitors (no login); ``/metrics`` for Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from blockvault.center.context import Center

__all__ = ["install"]


def install(app: FastAPI, center: Center) -> None:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        with center.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return {"status": "ok"}

    app.include_router(router)
