"""Groups, hosts, enrolment tokens, central plans and runs under /api/v1.

Reading needs the viewer role and shows only the hosts of the user's groups; every
change needs the admin role and writes an audit row. A central plan's spec is the
plan's table as an agent's plans file holds it, validated by the same code
(``plans.store.plan_from_table``); ``version`` grows with each change so that agents
fetch it at their next heartbeat.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from blockvault.center import agentauth, fleet
from blockvault.center.agentauth import HOST_NAME
from blockvault.center.auth import DB, Admin, Principal, Viewer, audit, new_secret
from blockvault.center.context import Center
from blockvault.center.models import CentralPlan, EnrolToken, Group, Host, Run
from blockvault.errors import BlockvaultError
from blockvault.plans.schedule import parse_schedule

__all__ = ["create_enrol_token", "install"]

MAX_TOKEN_TTL = timedelta(days=30)
PREVIEW_RUNS = 5


class GroupIn(BaseModel):
    name: str = Field(pattern=HOST_NAME)
    description: str = Field("", max_length=1000)


class EnrolTokenIn(BaseModel):
    group: str | None = Field(None, max_length=64)
    ttl_seconds: int = Field(3600, ge=60, le=int(MAX_TOKEN_TTL.total_seconds()))
    uses: int = Field(1, ge=1, le=10000)


class PlanIn(BaseModel):
    name: str = Field(max_length=64)
    host: str | None = Field(None, max_length=255)  # a host's name, or
    group: str | None = Field(None, max_length=64)  # a group's name
    spec: dict[str, Any]


class PlanChange(BaseModel):
    spec: dict[str, Any]


def create_enrol_token(
    session: Session,
    created_by: str,
    now: datetime,
    *,
    group: Group | None = None,
    ttl: timedelta = timedelta(hours=1),
    uses: int = 1,
    host: Host | None = None,
) -> tuple[str, EnrolToken]:
    """A new enrolment token (shown once) and its row; bound to ``host`` for a re-key."""
    token, digest = new_secret("enrol_")
    row = EnrolToken(
        token_hash=digest,
        group_id=group.id if group else None,
        created_by=created_by,
        created=now,
        expires=now + ttl,
        uses_left=uses,
        host_id=host.id if host else None,
    )
    session.add(row)
    session.flush()
    return token, row


def _group_named(session: Session, name: str | None) -> Group | None:
    if name is None:
        return None
    group = session.scalar(select(Group).where(Group.name == name))
    if group is None:
        raise HTTPException(404, f"no group named {name}: create it first (center group add)")
    return group


def _group_names(session: Session) -> dict[int, str]:
    return {g.id: g.name for g in session.scalars(select(Group))}


def _visible_host(session: Session, who: Principal, host_id: int) -> Host:
    host = session.get(Host, host_id)
    group = _group_names(session).get(host.group_id or 0) if host else None
    if host is None or not who.sees(group):
        raise HTTPException(404, "no such host")
    return host


def _visible_host_ids(session: Session, who: Principal) -> list[int] | None:
    """The hosts ``who`` may see; None: every host."""
    if who.groups is None:
        return None
    ids = [g.id for g in session.scalars(select(Group).where(Group.name.in_(who.groups)))]
    return list(session.scalars(select(Host.id).where(Host.group_id.in_(ids))))


def _plan_doc(plan: CentralPlan, names: dict[int, str], hosts: dict[int, str]) -> dict[str, Any]:
    return {
        "id": plan.id,
        "name": plan.name,
        "host": hosts.get(plan.host_id) if plan.host_id is not None else None,
        "group": names.get(plan.group_id) if plan.group_id is not None else None,
        "spec": plan.spec,
        "version": plan.version,
        "updated": plan.updated,
        "updated_by": plan.updated_by,
    }


def _run_doc(run: Run) -> dict[str, Any]:
    return {
        c: getattr(run, c)
        for c in (
            "id",
            "host_id",
            "agent_run_id",
            "plan",
            "central_plan_id",
            "kind",
            "trigger",
            "status",
            "started",
            "ended",
            "bytes_read",
            "bytes_new",
            "bytes_stored",
            "snapshot",
            "repo",
            "error",
            "received",
        )
    }


def _valid_spec(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return fleet.central_spec(name, spec)
    except BlockvaultError as exc:
        raise HTTPException(422, str(exc)) from None


def install(app: FastAPI, center: Center) -> None:
    router = APIRouter(prefix="/api/v1", tags=["hosts"])

    # --- groups and enrolment tokens -------------------------------------------

    @router.get("/groups", summary="List groups")
    def list_groups(who: Viewer, session: DB) -> list[dict[str, Any]]:
        groups = session.scalars(select(Group).order_by(Group.name))
        return [
            {"id": g.id, "name": g.name, "description": g.description}
            for g in groups
            if who.sees(g.name)
        ]

    @router.post("/groups", summary="Create a group", status_code=201)
    def add_group(body: GroupIn, who: Admin, session: DB) -> dict[str, Any]:
        if session.scalar(select(Group).where(Group.name == body.name)) is not None:
            raise HTTPException(409, f"a group named {body.name} exists")
        group = Group(name=body.name, description=body.description)
        session.add(group)
        session.flush()
        audit(session, who.actor, "group.create", body.name, at=center.clock())
        return {"id": group.id, "name": group.name, "description": group.description}

    @router.post(
        "/enrol-tokens", summary="Create a one-time enrolment token (shown once)", status_code=201
    )
    def add_enrol_token(body: EnrolTokenIn, who: Admin, session: DB) -> dict[str, Any]:
        """A one-time enrolment token (shown only in this reply)."""
        now = center.clock()
        group = _group_named(session, body.group)
        token, row = create_enrol_token(
            session,
            who.actor,
            now,
            group=group,
            ttl=timedelta(seconds=body.ttl_seconds),
            uses=body.uses,
        )
        detail: dict[str, object] = {
            "group": body.group,
            "uses": body.uses,
            "ttl_seconds": body.ttl_seconds,
        }
        audit(session, who.actor, "enrol-token.create", str(row.id), detail, at=now)
        return {
            "id": row.id,
            "token": token,
            "group": body.group,
            "expires": row.expires,
            "uses": row.uses_left,
        }

    @router.get("/enrol-tokens", summary="List enrolment tokens")
    def list_enrol_tokens(who: Admin, session: DB) -> list[dict[str, Any]]:
        names = _group_names(session)
        rows = session.scalars(select(EnrolToken).order_by(EnrolToken.id))
        return [
            {
                "id": t.id,
                "group": names.get(t.group_id) if t.group_id is not None else None,
                "host_id": t.host_id,
                "created_by": t.created_by,
                "created": t.created,
                "expires": t.expires,
                "uses_left": t.uses_left,
            }
            for t in rows
        ]

    @router.delete("/enrol-tokens/{token_id}", summary="Revoke an enrolment token", status_code=204)
    def revoke_enrol_token(token_id: int, who: Admin, session: DB) -> Response:
        if session.execute(delete(EnrolToken).where(EnrolToken.id == token_id)).rowcount == 0:  # type: ignore[attr-defined]
            raise HTTPException(404, "no such enrolment token")
        audit(session, who.actor, "enrol-token.revoke", str(token_id), at=center.clock())
        return Response(status_code=204)

    # --- hosts ---------------------------------------------------------------------

    @router.get("/hosts", summary="List hosts with their status")
    def list_hosts(who: Viewer, session: DB) -> list[dict[str, Any]]:
        """Every visible host with its status: online, last good backup and its age,
        next run, overdue, stored bytes, change rate."""
        now = center.clock()
        query = select(Host).order_by(Host.name)
        visible = _visible_host_ids(session, who)
        if visible is not None:
            query = query.where(Host.id.in_(visible))
        hosts = list(session.scalars(query))
        return [s.document(now) for s in fleet.host_statuses(session, hosts, now)]

    @router.get("/hosts/{host_id}", summary="One host: status, inventory, plans, latest runs")
    def show_host(host_id: int, who: Viewer, session: DB) -> dict[str, Any]:
        """A host's status, inventory (disks, partitions, local plans), central plans
        and its latest runs."""
        now = center.clock()
        host = _visible_host(session, who, host_id)
        (status,) = fleet.host_statuses(session, [host], now)
        names, hosts = _group_names(session), {host.id: host.name}
        runs = session.scalars(
            select(Run).where(Run.host_id == host.id).order_by(Run.id.desc()).limit(50)
        )
        return {
            **status.document(now),
            "address": host.address,
            "inventory": host.inventory,
            "central_plans": [_plan_doc(p, names, hosts) for p in fleet.plans_for(session, host)],
            "runs": [_run_doc(r) for r in runs],
        }

    @router.post("/hosts/{host_id}/revoke", summary="Revoke a host's agent")
    def revoke_host(host_id: int, who: Admin, session: DB) -> dict[str, Any]:
        """Refuse this host's agent from now on (its tokens die at once)."""
        now = center.clock()
        host = _visible_host(session, who, host_id)
        agentauth.revoke(session, host, now)
        audit(session, who.actor, "host.revoke", host.name, at=now)
        fleet.publish_after_commit(
            session, center.bus, "host", id=host.id, host_id=host.id, state="revoked"
        )
        return {"id": host.id, "name": host.name, "revoked": host.revoked}

    @router.post(
        "/hosts/{host_id}/rekey", summary="Create a re-key token for a host", status_code=201
    )
    def rekey_host(host_id: int, who: Admin, session: DB) -> dict[str, Any]:
        """A single-use enrolment token for this host only: when its agent enrols with
        it (``agent enrol --token``), the new key replaces the old one."""
        now = center.clock()
        host = _visible_host(session, who, host_id)
        token, row = create_enrol_token(session, who.actor, now, host=host)
        audit(session, who.actor, "host.rekey-token", host.name, at=now)
        return {"host": host.name, "token": token, "expires": row.expires}

    # --- central plans ---------------------------------------------------------------

    def _plan_group(session: Session, plan: CentralPlan) -> str | None:
        """The group whose users see ``plan``: its host's, or its own."""
        names = _group_names(session)
        if plan.host_id is not None:
            host = session.get(Host, plan.host_id)
            return names.get(host.group_id or 0) if host else None
        return names.get(plan.group_id or 0)

    def _visible_plan(session: Session, who: Principal, plan_id: int) -> CentralPlan:
        plan = session.get(CentralPlan, plan_id)
        if plan is None or not who.sees(_plan_group(session, plan)):
            raise HTTPException(404, "no such plan")
        return plan

    def _host_names(session: Session) -> dict[int, str]:
        return {host_id: name for host_id, name in session.execute(select(Host.id, Host.name))}

    @router.get("/plans", summary="List central plans")
    def list_plans(who: Viewer, session: DB) -> list[dict[str, Any]]:
        names, hosts = _group_names(session), _host_names(session)
        plans = session.scalars(select(CentralPlan).order_by(CentralPlan.name, CentralPlan.id))
        return [_plan_doc(p, names, hosts) for p in plans if who.sees(_plan_group(session, p))]

    @router.post("/plans", summary="Create a central plan for a host or a group", status_code=201)
    def add_plan(body: PlanIn, who: Admin, session: DB) -> dict[str, Any]:
        """A plan for one host or one group."""
        if (body.host is None) == (body.group is None):
            raise HTTPException(422, "give the plan a host or a group, not both")
        spec = _valid_spec(body.name, body.spec)
        host: Host | None = None
        group: Group | None = None
        if body.host is not None:
            host = session.scalar(select(Host).where(Host.name == body.host))
            if host is None:
                raise HTTPException(404, f"no host named {body.host}")
            owner = CentralPlan.host_id == host.id
        else:
            group = _group_named(session, body.group)
            owner = CentralPlan.group_id == (group.id if group else None)
        same = select(CentralPlan.id).where(CentralPlan.name == body.name, owner)
        if session.scalar(same) is not None:
            raise HTTPException(409, f"plan {body.name} exists there: change it instead")
        now = center.clock()
        plan = CentralPlan(
            name=body.name,
            host_id=host.id if host else None,
            group_id=group.id if group else None,
            spec=spec,
            version=1,
            updated=now,
            updated_by=who.actor,
        )
        session.add(plan)
        session.flush()
        audit(
            session,
            who.actor,
            "plan.create",
            body.name,
            {"host": body.host, "group": body.group},
            at=now,
        )
        return _plan_doc(plan, _group_names(session), _host_names(session))

    @router.get("/plans/{plan_id}", summary="One central plan")
    def show_plan(plan_id: int, who: Viewer, session: DB) -> dict[str, Any]:
        plan = _visible_plan(session, who, plan_id)
        return _plan_doc(plan, _group_names(session), _host_names(session))

    @router.put("/plans/{plan_id}", summary="Change a central plan")
    def change_plan(plan_id: int, body: PlanChange, who: Admin, session: DB) -> dict[str, Any]:
        plan = _visible_plan(session, who, plan_id)
        now = center.clock()
        plan.spec = _valid_spec(plan.name, body.spec)
        plan.version, plan.updated, plan.updated_by = plan.version + 1, now, who.actor
        audit(session, who.actor, "plan.change", plan.name, {"version": plan.version}, at=now)
        return _plan_doc(plan, _group_names(session), _host_names(session))

    @router.delete("/plans/{plan_id}", summary="Delete a central plan", status_code=204)
    def remove_plan(plan_id: int, who: Admin, session: DB) -> Response:
        plan = _visible_plan(session, who, plan_id)
        session.delete(plan)
        audit(session, who.actor, "plan.delete", plan.name, at=center.clock())
        return Response(status_code=204)

    @router.get("/plans/{plan_id}/preview", summary="A plan's next run times")
    def preview_plan(
        plan_id: int, who: Viewer, session: DB, count: int = Query(PREVIEW_RUNS, ge=1, le=50)
    ) -> dict[str, Any]:
        """The plan's next fire times from now (the center's time zone; agents add a
        small jitter of their own)."""
        plan = _visible_plan(session, who, plan_id)
        try:
            schedule = parse_schedule(plan.spec["schedule"], plan.spec.get("window"))
        except BlockvaultError as exc:
            raise HTTPException(422, str(exc)) from None
        moment, runs = center.clock(), []
        for _ in range(count):
            moment = schedule.next_after(moment)
            runs.append(moment)
        return {"id": plan.id, "schedule": plan.spec["schedule"], "next": runs}

    # --- runs ----------------------------------------------------------------------

    @router.get("/runs", summary="List runs (filtered, paged)")
    def list_runs(
        who: Viewer,
        session: DB,
        host: int | None = None,
        plan: str | None = Query(None, max_length=64),
        status: str | None = Query(None, max_length=16),
        limit: int = Query(50, ge=1, le=500),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        """Runs, newest first, filtered by host id, plan name and status; paged."""
        query = select(Run)
        visible = _visible_host_ids(session, who)
        if visible is not None:
            query = query.where(Run.host_id.in_(visible))
        if host is not None:
            query = query.where(Run.host_id == host)
        if plan is not None:
            query = query.where(Run.plan == plan)
        if status is not None:
            query = query.where(Run.status == status)
        total = session.scalar(select(func.count()).select_from(query.subquery()))
        rows = session.scalars(query.order_by(Run.id.desc()).limit(limit).offset(offset))
        return {"total": total, "runs": [_run_doc(r) for r in rows]}

    app.include_router(router)
