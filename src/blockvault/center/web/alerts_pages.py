"""The dashboard's alert pages: open alerts and history, targets (with the test
button), rules. Forms post back here (with the session's CSRF token) and go through
the same checks as the API; a refused form is shown again with its one-line error."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select

from blockvault.center.alerting.config import EVENTS, add_rule, add_target, find_target
from blockvault.center.alerting.delivery import send_test
from blockvault.center.api.alerts import alerts_seen, audit_change, rules_shown, targets_shown
from blockvault.center.auth import DB, Admin, Operator, Viewer
from blockvault.center.context import Center
from blockvault.center.models import AlertRule, AlertTarget, Group
from blockvault.center.web.render import page
from blockvault.errors import NotifyError, UsageError

__all__ = ["install"]

HISTORY = 100  # closed alerts on the alerts page


def install(app: FastAPI, center: Center) -> None:
    router = APIRouter(include_in_schema=False)

    @router.get("/alerts")
    def alerts_page(request: Request, who: Viewer, session: DB) -> HTMLResponse:
        return page(
            request,
            "alerts_list.html",
            open_alerts=alerts_seen(session, who, "open", None, 500),
            closed_alerts=alerts_seen(session, who, "closed", None, HISTORY),
        )

    @router.get("/alerts/targets")
    def targets_page(request: Request, who: Viewer, session: DB) -> HTMLResponse:
        return _targets(request, session)

    def _targets(request: Request, session: DB, error: str | None = None) -> HTMLResponse:
        return page(
            request,
            "alerts_targets.html",
            422 if error else 200,
            targets=targets_shown(session),
            error=error,
        )

    @router.post("/alerts/targets", response_model=None)
    def target_create(
        request: Request,
        who: Admin,
        session: DB,
        name: Annotated[str, Form()],
        address: Annotated[str, Form()],
        secret: Annotated[str, Form()] = "",
    ) -> HTMLResponse | RedirectResponse:
        try:
            target = add_target(session, name.strip(), address.strip(), secret or None)
        except UsageError as exc:
            return _targets(request, session, str(exc))
        audit_change(session, center, who, request, "alert.target.create", name, target.address)
        return RedirectResponse("/alerts/targets", 303)

    @router.post("/alerts/targets/{target_id}/test")
    def target_test(request: Request, who: Operator, target_id: int) -> HTMLResponse:
        """The test button's answer: a fragment htmx puts beside the button."""
        error = None
        try:
            send_test(center, target_id)
        except (NotifyError, UsageError) as exc:
            error = str(exc)
        with center.sessions() as session, session.begin():
            audit_change(session, center, who, request, "alert.target.test", str(target_id), error)
        return page(request, "alerts_test_result.html", error=error)

    @router.post("/alerts/targets/{target_id}/delete")
    def target_delete(
        request: Request, who: Admin, session: DB, target_id: int
    ) -> RedirectResponse:
        target = session.get(AlertTarget, target_id)
        if target is not None:
            session.delete(target)
            audit_change(session, center, who, request, "alert.target.delete", target.name, None)
        return RedirectResponse("/alerts/targets", 303)

    @router.get("/alerts/rules")
    def rules_page(request: Request, who: Viewer, session: DB) -> HTMLResponse:
        return _rules(request, session)

    def _rules(request: Request, session: DB, error: str | None = None) -> HTMLResponse:
        return page(
            request,
            "alerts_rules.html",
            422 if error else 200,
            rules=rules_shown(session),
            events=EVENTS,
            targets=[t.name for t in targets_shown(session)],
            groups=list(session.scalars(select(Group.name).order_by(Group.name))),
            error=error,
        )

    @router.post("/alerts/rules", response_model=None)
    def rule_create(
        request: Request,
        who: Admin,
        session: DB,
        event: Annotated[str, Form()],
        target: Annotated[str, Form()],
        group: Annotated[str, Form()] = "",
    ) -> HTMLResponse | RedirectResponse:
        try:
            add_rule(session, event, find_target(session, target), group or None)
        except UsageError as exc:
            return _rules(request, session, str(exc))
        audit_change(session, center, who, request, "alert.rule.create", event, target)
        return RedirectResponse("/alerts/rules", 303)

    @router.post("/alerts/rules/{rule_id}/delete")
    def rule_delete(request: Request, who: Admin, session: DB, rule_id: int) -> RedirectResponse:
        rule = session.get(AlertRule, rule_id)
        if rule is not None:
            session.delete(rule)
            audit_change(session, center, who, request, "alert.rule.delete", str(rule_id), None)
        return RedirectResponse("/alerts/rules", 303)

    app.include_router(router)
