"""``/healthz`` for load balancers and monitors (no login); ``/metrics`` for
Prometheus (any user's session or API token: a ``read`` token is enough).

The metrics are read from the tables at each scrape, so every part's data shows up
without it registering anything and several server processes report the same
figures; each app has its own registry, so two apps in one process (tests) do not
mix their numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel
from sqlalchemy import Select, func, select, text
from sqlalchemy.orm import InstrumentedAttribute, Session

from blockvault.center.auth import Viewer
from blockvault.center.context import Center
from blockvault.center.models import Alert, Host, Job, Repository, Run, User
from blockvault.center.settings import get_setting

__all__ = ["CenterCollector", "install"]


class Health(BaseModel):
    status: str


class CenterCollector(Collector):
    """The center's figures as Prometheus gauges, counted in the database."""

    def __init__(self, center: Center) -> None:
        self.center = center

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.center.sessions() as session:
            now = self.center.clock()
            offline = now - timedelta(seconds=get_setting(session, "offline_after"))
            hosts = GaugeMetricFamily(
                "blockvault_center_hosts",
                "Enrolled hosts by connection state (revoked, offline: no heartbeat "
                "within offline_after, online)",
                labels=["state"],
            )
            revoked = _count(session, select(func.count()).where(Host.revoked.is_not(None)))
            gone = select(func.count()).where(
                Host.revoked.is_(None), (Host.last_seen.is_(None)) | (Host.last_seen < offline)
            )
            all_hosts = _count(session, select(func.count()).select_from(Host))
            away = _count(session, gone)
            hosts.add_metric(["revoked"], revoked)
            hosts.add_metric(["offline"], away)
            hosts.add_metric(["online"], all_hosts - revoked - away)
            yield hosts
            yield _by(session, "blockvault_center_runs", "Runs reported, by status", Run.status)
            yield _by(session, "blockvault_center_jobs", "Remote jobs, by state", Job.state)
            alerts = GaugeMetricFamily(
                "blockvault_center_open_alerts", "Alerts open now, by event", labels=["event"]
            )
            open_alerts = select(Alert.event, func.count()).where(Alert.closed.is_(None))
            for event, count in session.execute(open_alerts.group_by(Alert.event)):
                alerts.add_metric([event], count)
            yield alerts
            stored = GaugeMetricFamily(
                "blockvault_center_repository_stored_bytes",
                "Bytes a repository stores, as its last scan found",
                labels=["repository"],
            )
            figures = select(Repository.name, Repository.stored_bytes)
            for name, size in session.execute(figures.where(Repository.stored_bytes.is_not(None))):
                stored.add_metric([name], size or 0)
            yield stored
            users = GaugeMetricFamily("blockvault_center_users", "User accounts enabled")
            users.add_metric(
                [], _count(session, select(func.count()).where(User.disabled.is_(False)))
            )
            yield users


def _count(session: Session, query: Select[int]) -> int:
    return int(session.scalar(query) or 0)


def _by(
    session: Session, name: str, documentation: str, column: InstrumentedAttribute[str]
) -> GaugeMetricFamily:
    """A gauge of how many rows hold each value of ``column`` (its name the label)."""
    family = GaugeMetricFamily(name, documentation, labels=[column.key])
    for value, count in session.execute(select(column, func.count()).group_by(column)):
        family.add_metric([value], count)
    return family


def install(app: FastAPI, center: Center) -> None:
    router = APIRouter(tags=["health"])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CenterCollector(center))

    @router.get(
        "/healthz", summary="Is the server up and its database reachable", response_model=Health
    )
    def healthz() -> Health:
        with center.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return Health(status="ok")

    @router.get(
        "/metrics",
        summary="Prometheus metrics (hosts, runs, jobs, alerts, storage)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    def metrics(who: Viewer) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
