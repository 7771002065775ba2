"""Alert targets, rules, settings and alerts under /api/v1; the two alert workers.

Reading is for every user (alerts of hosts in groups they cannot see are left out);
changing targets, rules and settings is for admins, the test button for operators.
Every change is audited. A target's secret is write-only: no answer shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from blockvault.center.alerting.conditions import evaluate
from blockvault.center.alerting.config import (
    EventKind,
    add_rule,
    add_target,
    set_smtp,
    smtp_shown,
)
from blockvault.center.alerting.delivery import deliver, send_test
from blockvault.center.auth import DB, Admin, Operator, Principal, Viewer, audit, client_address
from blockvault.center.context import Center
from blockvault.center.models import Alert, AlertDelivery, AlertRule, AlertTarget, Group, Host
from blockvault.center.workers import Periodic
from blockvault.errors import NotifyError, UsageError

__all__ = [
    "EVALUATE_EVERY",
    "AlertOut",
    "RuleOut",
    "TargetOut",
    "alerts_seen",
    "audit_change",
    "install",
    "rules_shown",
    "targets_shown",
]

EVALUATE_EVERY = 20.0  # seconds between rounds of the condition worker
DELIVER_EVERY = 10.0  # ... and of the delivery worker
PAGE_MOST = 200
T = TypeVar("T")


class TargetIn(BaseModel):
    name: str = Field(description="a name for rules and the CLI")
    address: str = Field(description="mailto:ADDRESS or an http(s):// webhook URL")
    secret: str | None = Field(None, description="webhooks: HMAC-SHA256 key (16-256 chars)")


class TargetChange(BaseModel):
    enabled: bool


class TargetOut(BaseModel):
    id: int
    name: str
    kind: str
    address: str
    enabled: bool
    signed: bool  # has a secret (never shown)
    last_error: str | None  # of its latest delivery, if that failed


class TestOut(BaseModel):
    ok: bool
    error: str | None


class RuleIn(BaseModel):
    event: EventKind
    target: str = Field(description="the target's name")
    group: str | None = Field(None, description="only hosts of this group; none: all alerts")


class RuleOut(BaseModel):
    id: int
    event: str
    group: str | None
    target: str
    enabled: bool


class SmtpOut(BaseModel):
    smtp: dict[str, Any] | None = Field(
        description="a plans file's [smtp] keys: host, port, security (starttls, tls, none), "
        "from, user, password-file (a file on the center), ca-file, timeout; null: none"
    )


class AlertOut(BaseModel):
    id: int
    condition: str
    event: str
    host: str | None
    group: str | None
    message: str
    opened: datetime
    closed: datetime | None
    notified: datetime | None


class AlertPage(BaseModel):
    alerts: list[AlertOut]
    next_before: int | None = Field(description="pass as ?before= for the next page")


def install(app: FastAPI, center: Center) -> None:
    router = APIRouter(prefix="/api/v1", tags=["alerts"])

    @router.get("/alert-targets", summary="List alert targets")
    def list_targets(who: Viewer, session: DB) -> list[TargetOut]:
        return targets_shown(session)

    @router.post("/alert-targets", status_code=201, summary="Add an alert target")
    def create_target(body: TargetIn, who: Admin, session: DB, request: Request) -> TargetOut:
        target = _checked(lambda: add_target(session, body.name, body.address, body.secret))
        audit_change(
            session, center, who, request, "alert.target.create", target.name, target.address
        )
        return _target_out(target, None)

    @router.patch("/alert-targets/{target_id}", summary="Enable or disable an alert target")
    def change_target(
        target_id: int, body: TargetChange, who: Admin, session: DB, request: Request
    ) -> TargetOut:
        target = _get(session, AlertTarget, target_id)
        target.enabled = body.enabled
        audit_change(
            session, center, who, request, "alert.target.change", target.name, body.enabled
        )
        return _target_out(target, None)

    @router.delete("/alert-targets/{target_id}", status_code=204, summary="Remove a target")
    def delete_target(target_id: int, who: Admin, session: DB, request: Request) -> None:
        target = _get(session, AlertTarget, target_id)
        session.delete(target)
        audit_change(session, center, who, request, "alert.target.delete", target.name, None)

    @router.post("/alert-targets/{target_id}/test", summary="Send a test message now")
    def test_target(target_id: int, who: Operator, request: Request) -> TestOut:
        error = None
        try:
            _checked(lambda: send_test(center, target_id), 404)
        except NotifyError as exc:
            error = str(exc)
        with center.sessions() as session, session.begin():
            audit_change(session, center, who, request, "alert.target.test", str(target_id), error)
        return TestOut(ok=error is None, error=error)

    @router.get("/alert-rules", summary="List alert rules")
    def list_rules(who: Viewer, session: DB) -> list[RuleOut]:
        return rules_shown(session)

    @router.post("/alert-rules", status_code=201, summary="Route an event kind to a target")
    def create_rule(body: RuleIn, who: Admin, session: DB, request: Request) -> RuleOut:
        target = session.scalar(select(AlertTarget).where(AlertTarget.name == body.target))
        if target is None:
            raise HTTPException(422, f"no alert target {body.target!r}")
        rule = _checked(lambda: add_rule(session, body.event, target, body.group))
        audit_change(session, center, who, request, "alert.rule.create", body.event, body.target)
        return RuleOut(
            id=rule.id, event=rule.event, group=body.group, target=target.name, enabled=True
        )

    @router.delete("/alert-rules/{rule_id}", status_code=204, summary="Remove an alert rule")
    def delete_rule(rule_id: int, who: Admin, session: DB, request: Request) -> None:
        rule = _get(session, AlertRule, rule_id)
        session.delete(rule)
        audit_change(session, center, who, request, "alert.rule.delete", str(rule_id), rule.event)

    @router.get("/alert-smtp", summary="The SMTP server alert mail goes through")
    def get_smtp(who: Viewer, session: DB) -> SmtpOut:
        return SmtpOut(smtp=smtp_shown(session))

    @router.put("/alert-smtp", summary="Set the SMTP server (null: no mail goes out)")
    def put_smtp(body: SmtpOut, who: Admin, session: DB, request: Request) -> SmtpOut:
        _checked(lambda: set_smtp(session, body.smtp))
        host = body.smtp.get("host") if body.smtp else None
        audit_change(session, center, who, request, "alert.smtp", str(host), None)
        return SmtpOut(smtp=smtp_shown(session))

    @router.get("/alerts", summary="Open and past alerts, newest first")
    def list_alerts(
        who: Viewer,
        session: DB,
        state: Literal["open", "closed", "all"] = "all",
        before: int | None = Query(None, description="only alerts with a smaller id"),
        limit: int = Query(50, ge=1, le=PAGE_MOST),
    ) -> AlertPage:
        found = alerts_seen(session, who, state, before, limit + 1)
        more = len(found) > limit
        found = found[:limit]
        return AlertPage(alerts=found, next_before=found[-1].id if more else None)

    app.include_router(router)
    started = center.clock()
    center.workers.append(
        Periodic("alerts-evaluate", EVALUATE_EVERY, lambda: _quiet(evaluate(center, started)))
    )
    center.workers.append(
        Periodic("alerts-deliver", DELIVER_EVERY, lambda: _quiet(deliver(center)))
    )


def targets_shown(session: Session) -> list[TargetOut]:
    last_errors: dict[int, str | None] = {}
    for target_id, error in session.execute(
        select(AlertDelivery.target_id, AlertDelivery.error)
        .where(AlertDelivery.attempts > 0)
        .order_by(AlertDelivery.id)
    ):
        last_errors[target_id] = error
    return [
        _target_out(target, last_errors.get(target.id))
        for target in session.scalars(select(AlertTarget).order_by(AlertTarget.name))
    ]


def rules_shown(session: Session) -> list[RuleOut]:
    rows = session.execute(
        select(AlertRule, AlertTarget.name, Group.name)
        .join(AlertTarget, AlertTarget.id == AlertRule.target_id)
        .outerjoin(Group, Group.id == AlertRule.group_id)
        .order_by(AlertRule.event, AlertRule.id)
    )
    return [
        RuleOut(id=rule.id, event=rule.event, group=group, target=target, enabled=rule.enabled)
        for rule, target, group in rows
    ]


def alerts_seen(
    session: Session,
    who: Principal,
    state: Literal["open", "closed", "all"],
    before: int | None,
    limit: int,
) -> list[AlertOut]:
    """Alerts ``who`` may see (host alerts of their groups; center-wide ones, such as
    a repository's, for users of every group), newest first."""
    query = (
        select(Alert, Host.name, Group.name)
        .outerjoin(Host, Host.id == Alert.host_id)
        .outerjoin(Group, Group.id == Host.group_id)
        .order_by(Alert.id.desc())
    )
    if state == "open":
        query = query.where(Alert.closed.is_(None))
    elif state == "closed":
        query = query.where(Alert.closed.is_not(None))
    if before is not None:
        query = query.where(Alert.id < before)
    if who.groups is not None:
        query = query.where(Group.name.in_(who.groups))
    return [
        AlertOut(
            id=alert.id,
            condition=alert.condition,
            event=alert.event,
            host=host,
            group=group,
            message=alert.message,
            opened=alert.opened,
            closed=alert.closed,
            notified=alert.notified,
        )
        for alert, host, group in session.execute(query.limit(limit))
    ]


def _target_out(target: AlertTarget, last_error: str | None) -> TargetOut:
    return TargetOut(
        id=target.id,
        name=target.name,
        kind=target.kind,
        address=target.address,
        enabled=target.enabled,
        signed=bool(target.secret),
        last_error=last_error,
    )


def _checked(make: Callable[[], T], status: int = 422) -> T:
    """``make()``, its ``UsageError`` answered with its one line."""
    try:
        return make()
    except UsageError as exc:
        raise HTTPException(status, str(exc)) from None


def _get(session: Session, model: type[T], ident: int) -> T:
    row = session.get(model, ident)
    if row is None:
        raise HTTPException(404, f"no {model.__name__} {ident}")
    return row


def audit_change(
    session: Session,
    center: Center,
    who: Principal,
    request: Request,
    action: str,
    target: str | None,
    detail: object,
) -> None:
    address = client_address(request)
    audit(session, who.actor, action, target, {"detail": detail}, address, at=center.clock())


def _quiet(_result: object) -> None:
    """A worker's round returns what it did for tests; the worker drops it."""
