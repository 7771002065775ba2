"""The dashboard's pages and its static assets.

Every page is rendered on the server from the tables (Jinja2, autoescaped) and made
live by htmx: a part that follows the center's events re-reads itself from the same
URL (``hx-select`` picks it out of the page), so there is one way to draw each thing.
A browser that is not logged in is sent to /login and back; the API's routes keep
their 401 and JSON errors.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Final

from fastapi import FastAPI, Form, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from blockvault.center import settings, users
from blockvault.center.api.jobs import desk_of
from blockvault.center.auth import (
    DB,
    ROLES,
    Admin,
    Operator,
    Principal,
    Viewer,
    audit,
    client_address,
    new_secret,
)
from blockvault.center.context import Center
from blockvault.center.fleet import CENTRAL_PREFIX, STATES, plans_for
from blockvault.center.models import (
    Audit,
    CentralPlan,
    EnrolToken,
    Group,
    Host,
    Repository,
    Run,
    User,
)
from blockvault.center.tls import pem_fingerprint
from blockvault.center.users import Actor
from blockvault.center.web import events, login
from blockvault.center.web.charts import bars_and_line, daily_backups, human_bytes, human_duration
from blockvault.center.web.plan_form import PlanForm, next_runs
from blockvault.center.web.render import TEMPLATES, page
from blockvault.center.web.status import fleet
from blockvault.errors import (
    CenterSettingError,
    CenterStateError,
    CenterUserError,
    CenterUserExists,
    CenterUserNotFound,
    PlanError,
)

__all__ = ["install"]

STATIC: Final = Path(__file__).with_name("static")
PAGE_SIZE: Final = 50
API_PREFIXES: Final = ("/api/", "/agent/", "/healthz", "/metrics", "/static/", "/events")
MAX_GROUPS: Final = 64

TEMPLATES.env.filters["bytes"] = human_bytes
TEMPLATES.env.filters["duration"] = human_duration
TEMPLATES.env.filters["when"] = lambda t: "–" if t is None else f"{t:%Y-%m-%d %H:%M} UTC"


def _ago(delta: timedelta | None) -> str:
    return "never" if delta is None else human_duration(delta.total_seconds()) + " ago"


TEMPLATES.env.filters["ago"] = _ago


def install(app: FastAPI, center: Center) -> None:
    """Routes of the dashboard: login, live events, the pages, /static."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(StarletteHTTPException, _page_errors)
    login.install(app, center)
    events.install(app, center)
    _overview_and_hosts(app, center)
    _plans(app, center)
    _runs_and_audit(app, center)
    _admin(app, center)


async def _page_errors(request: Request, exc: Exception) -> Response:
    """A browser's page (it accepts text/html) that gets 401 goes to log in, its other
    errors are a page; everything else (the API, scripts, htmx fragments) keeps JSON."""
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path
    if path.startswith(API_PREFIXES) or "text/html" not in request.headers.get("accept", ""):
        return await http_exception_handler(request, exc)
    if exc.status_code == 401 and request.method == "GET":
        return RedirectResponse(login.login_url(request), 303)
    titles = {401: "Log in first", 403: "Not allowed", 404: "Not found"}
    return page(
        request,
        "error.html",
        exc.status_code,
        status=exc.status_code,
        title=titles.get(exc.status_code, "Something went wrong"),
        detail=exc.detail,
    )


def _visible_hosts(session: Session, who: Principal) -> dict[int, tuple[Host, str | None]]:
    rows = session.execute(select(Host, Group.name).outerjoin(Group, Host.group_id == Group.id))
    return {h.id: (h, g) for h, g in rows if who.sees(g)}


def _host_or_404(session: Session, who: Principal, host_id: int) -> tuple[Host, str | None]:
    host = session.get(Host, host_id)
    group = None if host is None or host.group_id is None else session.get(Group, host.group_id)
    name = group.name if group is not None else None
    if host is None or not who.sees(name):
        raise HTTPException(404, f"no host {host_id} (or not one of your groups)")
    return host, name


def _overview_and_hosts(app: FastAPI, center: Center) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview(request: Request, session: DB, who: Viewer) -> Response:
        now = center.clock()
        hosts = fleet(session, now, who)
        counts = {state: sum(1 for h in hosts if h.state == state) for state in STATES}
        ids = None if who.groups is None else [h.host.id for h in hosts]
        days = daily_backups(session, now, 30, ids)
        stored = session.scalar(select(func.sum(Repository.stored_bytes)))
        if stored is None or who.groups is not None:
            query = select(func.sum(Run.bytes_stored)).where(Run.kind == "backup")
            if ids is not None:
                query = query.where(Run.host_id.in_(ids))
            stored = session.scalar(query) or 0
        troubled = [h for h in hosts if h.state in ("failing", "overdue", "offline")][:10]
        return page(
            request,
            "overview.html",
            counts=counts,
            total=len(hosts),
            stored=stored,
            days=days,
            chart=bars_and_line(days, "Bytes stored per day and mean backup duration"),
            troubled=troubled,
            now=now,
        )

    @app.get("/hosts", response_class=HTMLResponse, include_in_schema=False)
    def hosts(request: Request, session: DB, who: Viewer, state: str = "") -> Response:
        now = center.clock()
        found = fleet(session, now, who)
        if state in STATES:
            found = [h for h in found if h.state == state]
        return page(request, "hosts.html", hosts=found, state=state, states=STATES, now=now)

    @app.get("/hosts/{host_id}", response_class=HTMLResponse, include_in_schema=False)
    def host_detail(request: Request, session: DB, who: Viewer, host_id: int) -> Response:
        now = center.clock()
        host, group = _host_or_404(session, who, host_id)
        status = fleet(session, now, who, [host_id])[0]
        plans = plans_for(session, host)
        runs = session.scalars(
            select(Run).where(Run.host_id == host.id).order_by(Run.started.desc()).limit(50)
        ).all()
        days = daily_backups(session, now, 30, [host.id])
        return page(
            request,
            "host.html",
            host=host,
            group=group,
            status=status,
            disks=_disks(host.inventory),
            plans=[(p, _next_run(p.spec, now)) for p in plans],
            runs=runs,
            chart=bars_and_line(
                days, f"Bytes stored per day and mean backup duration: {host.name}"
            ),
            now=now,
        )

    @app.post("/hosts/{host_id}/run", include_in_schema=False)
    def run_plan_now(
        request: Request,
        session: DB,
        who: Operator,
        host_id: int,
        plan: Annotated[str, Form(max_length=64)],
    ) -> Response:
        """Queue a run of one of the host's central plans now (a ``run-plan`` job)."""
        host, _group = _host_or_404(session, who, host_id)
        if plan not in {p.name for p in plans_for(session, host)}:
            raise HTTPException(404, f"host {host.name} runs no central plan {plan!r}")
        address = client_address(request)
        job = desk_of(request).submit(
            session, who, "run-plan", host.name, {"plan": CENTRAL_PREFIX + plan}, address
        )
        return RedirectResponse(f"/jobs/{job.id}", 303)

    @app.get("/enrol", response_class=HTMLResponse, include_in_schema=False)
    def enrol_form(request: Request, session: DB, who: Admin) -> Response:
        groups = session.scalars(select(Group.name).order_by(Group.name)).all()
        return page(request, "enrol.html", groups=groups, made=None, error=None)

    @app.post("/enrol", response_class=HTMLResponse, include_in_schema=False)
    def enrol(
        request: Request,
        session: DB,
        who: Admin,
        group: Annotated[str, Form(max_length=64)] = "",
        hours: Annotated[int, Form(ge=1, le=24 * 30)] = 1,
        uses: Annotated[int, Form(ge=1, le=10_000)] = 1,
    ) -> Response:
        now = center.clock()
        group_row = None
        if group.strip():
            group_row = session.scalar(select(Group).where(Group.name == group.strip()))
            if group_row is None:
                group_row = Group(name=group.strip())
                session.add(group_row)
                session.flush()
        token, digest = new_secret("e_")
        expires = now + timedelta(hours=hours)
        session.add(
            EnrolToken(
                token_hash=digest,
                group_id=group_row.id if group_row else None,
                created_by=who.actor,
                created=now,
                expires=expires,
                uses_left=uses,
            )
        )
        audit(
            session,
            who.actor,
            "enrol-token.create",
            group or None,
            {"uses": uses, "expires": expires.isoformat()},
            at=now,
        )
        url = str(request.base_url).rstrip("/")  # as the admin's browser reaches it
        print_ = _fingerprint(center)
        command = f"blockvault agent enrol {url} --token {token}"
        if print_:
            command += f" --fingerprint {print_}"
        groups = session.scalars(select(Group.name).order_by(Group.name)).all()
        made = {"command": command, "expires": expires, "uses": uses, "group": group}
        return page(request, "enrol.html", groups=groups, made=made, fingerprint=print_)


def _disks(inventory: Any) -> list[dict[str, Any]]:
    """The disks an agent reported (``blockvault disks --json``), reduced to the
    fields shown and typed: the inventory is the agent's word, not to be trusted."""

    def num(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def text(value: Any) -> str:
        return value[:200] if isinstance(value, str) else ""

    disks = inventory.get("disks") if isinstance(inventory, dict) else None
    out = []
    for disk in disks[:64] if isinstance(disks, list) else []:
        if not isinstance(disk, dict):
            continue
        layout = _table(disk.get("layout"))
        table = _table(layout.get("table"))
        parts = []
        partitions = layout.get("partitions")
        for part in partitions[:256] if isinstance(partitions, list) else []:
            if not isinstance(part, dict):
                continue
            p, fs = _table(part.get("partition")), _table(part.get("fs"))
            parts.append(
                {
                    "number": num(p.get("number")),
                    "size": num(p.get("size")),
                    "name": text(p.get("name")),
                    "fs": text(fs.get("type")),
                    "label": text(fs.get("label")),
                    "fs_size": num(fs.get("size")),
                }
            )
        out.append(
            {
                "path": text(disk.get("path")),
                "model": text(disk.get("model")),
                "size": num(disk.get("size")),
                "table": text(table.get("kind")) or ("none" if layout else "?"),
                "error": text(disk.get("error")),
                "partitions": parts,
            }
        )
    return out


def _refusal_status(exc: CenterUserError) -> int:
    if isinstance(exc, CenterUserNotFound):
        return 404
    return 409 if isinstance(exc, CenterUserExists) else 422


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _next_run(spec: Any, now: Any) -> Any:
    if not isinstance(spec, dict) or not isinstance(spec.get("schedule"), str):
        return None
    window = spec.get("window") if isinstance(spec.get("window"), str) else None
    try:
        return next_runs(spec["schedule"], window, now, 1)[0]
    except PlanError:  # stored by an older center's rules, perhaps
        return None


def _fingerprint(center: Center) -> str | None:
    """The fingerprint of the center's certificate (``center.toml``), as ``center
    init`` printed it; None if there is none yet."""
    try:
        return pem_fingerprint((center.state / center.config.certificate).read_bytes())
    except (OSError, CenterStateError):
        return None


def _plan_targets(session: Session, who: Principal) -> list[tuple[str, str]]:
    """The form's choices: ``host:ID`` and ``group:ID`` the user sees."""
    choices = [
        (f"group:{g.id}", f"group {g.name}")
        for g in session.scalars(select(Group).order_by(Group.name))
        if who.sees(g.name)
    ]
    hosts = sorted(_visible_hosts(session, who).values(), key=lambda hg: hg[0].name)
    choices += [(f"host:{h.id}", f"host {h.name}") for h, _g in hosts if h.revoked is None]
    return choices


def _plans(app: FastAPI, center: Center) -> None:
    def target_of(session: Session, who: Principal, target: str) -> tuple[int | None, int | None]:
        if target not in dict(_plan_targets(session, who)):
            raise PlanError("choose a host or a group for the plan", where="plan")
        kind, _, ident = target.partition(":")
        return (int(ident), None) if kind == "host" else (None, int(ident))

    def target_text(plan: CentralPlan) -> str:
        return f"host:{plan.host_id}" if plan.host_id is not None else f"group:{plan.group_id}"

    def editable(session: Session, who: Principal, plan_id: int) -> CentralPlan:
        plan = session.get(CentralPlan, plan_id)
        if plan is None or target_text(plan) not in dict(_plan_targets(session, who)):
            raise HTTPException(404, f"no plan {plan_id} (or not one of your groups)")
        return plan

    @app.get("/plans", response_class=HTMLResponse, include_in_schema=False)
    def plans(request: Request, session: DB, who: Viewer) -> Response:
        targets = dict(_plan_targets(session, who))
        rows = [
            (p, targets[target_text(p)])
            for p in session.scalars(select(CentralPlan).order_by(CentralPlan.name))
            if target_text(p) in targets
        ]
        return page(request, "plans.html", plans=rows, now=center.clock(), next_run=_next_run)

    def editor(
        request: Request,
        session: DB,
        who: Principal,
        form: PlanForm,
        plan: CentralPlan | None,
        error: str | None,
        status: int = 200,
    ) -> Response:
        return page(
            request,
            "plan_edit.html",
            status,
            form=form,
            plan=plan,
            targets=_plan_targets(session, who),
            error=error,
            preview=_preview(form, center),
        )

    @app.get("/plans/new", response_class=HTMLResponse, include_in_schema=False)
    def new_plan(request: Request, session: DB, who: Admin, target: str = "") -> Response:
        form = PlanForm.read(
            {
                "target": target,
                "schedule": "daily 02:00",
                "enabled": "on",
                "source": "disk",
                "keep_daily": "7",
                "keep_weekly": "4",
            }
        )
        return editor(request, session, who, form, None, None)

    @app.get("/plans/{plan_id}", response_class=HTMLResponse, include_in_schema=False)
    def edit_plan(request: Request, session: DB, who: Admin, plan_id: int) -> Response:
        plan = editable(session, who, plan_id)
        form = PlanForm.of_spec(plan.name, target_text(plan), plan.spec)
        return editor(request, session, who, form, plan, None)

    async def save(
        request: Request, session: Session, who: Principal, plan_id: int | None
    ) -> Response:
        form = PlanForm.read(await request.form())
        plan = None if plan_id is None else editable(session, who, plan_id)
        try:
            host_id, group_id = target_of(session, who, form.get("target"))
            spec = form.spec()
            name = form.get("name").strip()
            clash = select(CentralPlan.id).where(
                CentralPlan.name == name,
                CentralPlan.host_id.is_not_distinct_from(host_id),
                CentralPlan.group_id.is_not_distinct_from(group_id),
            )
            if plan is not None:
                clash = clash.where(CentralPlan.id != plan.id)
            if session.scalar(clash) is not None:
                raise PlanError(
                    "that host or group already has a plan of this name", where=f"plan {name}"
                )
        except PlanError as exc:
            return editor(request, session, who, form, plan, str(exc), 422)
        now = center.clock()
        if plan is None:
            plan = CentralPlan(
                name=name,
                host_id=host_id,
                group_id=group_id,
                spec=spec,
                version=1,
                updated=now,
                updated_by=who.actor,
            )
            session.add(plan)
            action = "plan.create"
        else:
            plan.name, plan.host_id, plan.group_id, plan.spec = name, host_id, group_id, spec
            plan.version += 1
            plan.updated, plan.updated_by = now, who.actor
            action = "plan.update"
        session.flush()
        audit(
            session,
            who.actor,
            action,
            f"plan:{plan.id}",
            {"name": name, "target": form.get("target"), "spec": spec},
            at=now,
        )
        center.bus.publish("plan", id=plan.id, host_id=host_id, group_id=group_id)
        return RedirectResponse(f"/plans?saved={plan.id}", 303)

    @app.post("/plans/new", include_in_schema=False)
    async def create_plan(request: Request, session: DB, who: Admin) -> Response:
        return await save(request, session, who, None)

    @app.post("/plans/{plan_id}", include_in_schema=False)
    async def update_plan(request: Request, session: DB, who: Admin, plan_id: int) -> Response:
        return await save(request, session, who, plan_id)

    @app.post("/plans/{plan_id}/delete", include_in_schema=False)
    def delete_plan(request: Request, session: DB, who: Admin, plan_id: int) -> Response:
        plan = editable(session, who, plan_id)
        session.execute(delete(CentralPlan).where(CentralPlan.id == plan.id))
        audit(
            session,
            who.actor,
            "plan.delete",
            f"plan:{plan_id}",
            {"name": plan.name},
            at=center.clock(),
        )
        center.bus.publish("plan", id=plan_id, host_id=plan.host_id, group_id=plan.group_id)
        return RedirectResponse("/plans", 303)

    @app.post("/plans-preview", response_class=HTMLResponse, include_in_schema=False)
    async def preview(request: Request, who: Viewer) -> Response:
        form = PlanForm.read(await request.form())
        return TEMPLATES.TemplateResponse(
            request, "plan_preview.html", {"preview": _preview(form, center)}
        )


def _preview(form: PlanForm, center: Center) -> dict[str, Any]:
    """The next runs of the form's schedule, or why there are none; and whether the
    whole plan would be accepted."""
    try:
        fires = next_runs(form.get("schedule"), form.get("window").strip(), center.clock())
    except PlanError as exc:
        return {"fires": [], "error": str(exc)}
    problem = None
    if form.get("name").strip():
        try:
            form.spec()
        except PlanError as exc:
            problem = str(exc)
    return {"fires": fires, "error": None, "problem": problem}


def _runs_and_audit(app: FastAPI, center: Center) -> None:
    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs(
        request: Request,
        session: DB,
        who: Viewer,
        host: int | None = None,
        status: str = "",
        page_number: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
    ) -> Response:
        visible = _visible_hosts(session, who)
        query = select(Run).order_by(Run.started.desc())
        if who.groups is not None:
            query = query.where(Run.host_id.in_(list(visible)))
        if host is not None:
            query = query.where(Run.host_id == host)
        if status:
            query = query.where(Run.status == status[:16])
        rows = session.scalars(
            query.offset((page_number - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1)
        ).all()
        running = session.scalars(
            select(Run).where(Run.status == "running").order_by(Run.started)
        ).all()
        return page(
            request,
            "runs.html",
            runs=rows[:PAGE_SIZE],
            more=len(rows) > PAGE_SIZE,
            running=[r for r in running if r.host_id in visible],
            hosts={i: h for i, (h, _g) in visible.items()},
            host=host,
            status=status,
            page_number=page_number,
            now=center.clock(),
        )

    @app.get("/audit", response_class=HTMLResponse, include_in_schema=False)
    def audit_log(
        request: Request,
        session: DB,
        who: Admin,
        actor: Annotated[str, Query(max_length=128)] = "",
        action: Annotated[str, Query(max_length=64)] = "",
        target: Annotated[str, Query(max_length=255)] = "",
        page_number: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
    ) -> Response:
        query = select(Audit).order_by(Audit.at.desc(), Audit.id.desc())
        if actor:
            query = query.where(Audit.actor == actor)
        if action:
            query = query.where(Audit.action.startswith(action, autoescape=True))
        if target:
            query = query.where(Audit.target.contains(target, autoescape=True))
        rows = session.scalars(
            query.offset((page_number - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1)
        ).all()
        return page(
            request,
            "audit.html",
            rows=rows[:PAGE_SIZE],
            more=len(rows) > PAGE_SIZE,
            actor=actor,
            action=action,
            target=target,
            page_number=page_number,
        )


def _admin(app: FastAPI, center: Center) -> None:
    @app.get("/users", response_class=HTMLResponse, include_in_schema=False)
    def users_list(request: Request, session: DB, who: Admin, error: str | None = None) -> Response:
        rows = session.scalars(select(User).order_by(User.name)).all()
        return page(request, "users.html", users=rows, roles=ROLES, error=error)

    def groups_of(text: str) -> list[str] | None:
        names = text.replace(",", " ").split()
        if len(names) > MAX_GROUPS:
            raise HTTPException(422, f"at most {MAX_GROUPS} groups")
        return names or None  # users.py checks each name

    def actor(request: Request, who: Principal) -> Actor:
        address = client_address(request)
        return Actor(who.actor, center.clock(), address)

    def users_page(request: Request, session: Session, error: str, status: int) -> Response:
        rows = session.scalars(select(User).order_by(User.name)).all()
        return page(request, "users.html", status, users=rows, roles=ROLES, error=error)

    @app.post("/users", include_in_schema=False)
    def add_user(
        request: Request,
        session: DB,
        who: Admin,
        name: Annotated[str, Form(max_length=64)],
        password: Annotated[str, Form(max_length=1024)],
        role: Annotated[str, Form(max_length=16)],
        groups: Annotated[str, Form(max_length=4096)] = "",
    ) -> Response:
        try:
            with session.begin_nested():  # a refusal leaves nothing half-changed
                users.add_user(
                    session, actor(request, who), name, role, password, groups_of(groups)
                )
        except CenterUserError as exc:
            return users_page(request, session, str(exc), _refusal_status(exc))
        return RedirectResponse("/users", 303)

    @app.post("/users/{user_id}", include_in_schema=False)
    def change_user(
        request: Request,
        session: DB,
        who: Admin,
        user_id: int,
        role: Annotated[str, Form(max_length=16)],
        groups: Annotated[str, Form(max_length=4096)] = "",
        disabled: Annotated[str, Form()] = "",
        password: Annotated[str, Form(max_length=1024)] = "",
    ) -> Response:
        user = session.get(User, user_id)
        if user is None:
            raise HTTPException(404, f"no user {user_id}")
        try:
            with session.begin_nested():
                users.update_user(
                    session,
                    actor(request, who),
                    user.name,
                    role=role,
                    groups=groups_of(groups),
                    password=password or None,
                    disabled=bool(disabled),
                )
        except CenterUserError as exc:
            return users_page(request, session, str(exc), _refusal_status(exc))
        return RedirectResponse("/users", 303)

    @app.get("/settings", response_class=HTMLResponse, include_in_schema=False)
    def settings_page(
        request: Request, session: DB, who: Admin, error: str | None = None
    ) -> Response:
        return page(
            request,
            "settings.html",
            422 if error else 200,
            specs=settings.SETTINGS,
            values=settings.all_settings(session),
            fingerprint=_fingerprint(center),
            state=center.state,
            error=error,
            database=center.engine.url.render_as_string(hide_password=True),
        )

    @app.post("/settings", include_in_schema=False)
    async def save_settings(request: Request, session: DB, who: Admin) -> Response:
        form = await request.form()
        values: dict[str, object] = {}
        try:
            for key in settings.SETTINGS:
                raw = form.get(key)
                text = raw.strip()[:64] if isinstance(raw, str) else ""
                if text:
                    try:
                        values[key] = int(text) if text.isdigit() else float(text)
                    except ValueError:
                        raise CenterSettingError("must be a number", key=key) from None
            with session.begin_nested():
                settings.change_settings(session, actor(request, who), values)
        except CenterSettingError as exc:
            return settings_page(request, session, who, str(exc))
        return RedirectResponse("/settings?saved=1", 303)
