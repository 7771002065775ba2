"""The center's web application: the API, the agent API and the dashboard in one
ASGI app, and the background workers that live as long as it does.

Each part of the center is one module with ``install(app, center)``: it adds its
routes and appends its workers to ``center.workers``. ``PARTS`` lists them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from fastapi import FastAPI

from blockvault.center.api import admin, agent, alerts, health, hosts, jobs
from blockvault.center.bodies import install_body_limit
from blockvault.center.context import Center
from blockvault.center.web import alerts_pages, jobs_pages, pages

__all__ = ["PARTS", "create_app"]

# the order routes are matched in: the API before the dashboard's catch-alls
PARTS: tuple[ModuleType, ...] = (
    health,
    admin,
    hosts,
    agent,
    jobs,
    alerts,
    jobs_pages,
    alerts_pages,
    pages,
)


def create_app(center: Center) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for worker in center.workers:
            worker.start()
        try:
            yield
        finally:
            for worker in center.workers:
                worker.stop()

    app = FastAPI(
        title="blockvault Backup Center",
        version=_version(),
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # Swagger UI loads from a CDN; the schema itself is served
        redoc_url=None,
    )
    app.state.center = center
    install_body_limit(app)
    for part in PARTS:
        part.install(app, center)
    return app


def _version() -> str:
    try:
        return version("blockvault")
    except PackageNotFoundError:
        return "0"
