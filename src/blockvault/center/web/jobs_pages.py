"""The dashboard's pages of remote operations: jobs with live progress and logs, the
snapshot browser (directory pages, download, restore of files), disk restores with
typed confirmation, repositories and deployments.

Every form posts to these pages, which queue through the same ``Desk`` as the API
(validated, audited, announced) and redirect to the job's page; live parts re-read
themselves on the ``job`` event of the dashboard's stream and every 2 s.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select

from blockvault.center import maintenance
from blockvault.center.api.jobs import (
    BareMetalRequest,
    DeploymentRequest,
    DeployTarget,
    RepositoryRequest,
    desk_of,
    job_view,
    visible_job,
)
from blockvault.center.auth import DB, Admin, Operator, Principal, Viewer
from blockvault.center.context import Center
from blockvault.center.jobs import DONE_STATES
from blockvault.center.models import Group, Host, Job, JobLog, Repository
from blockvault.center.web.render import page

__all__ = ["install"]

Text = Annotated[str, Form(max_length=4096)]
LOG_TAIL = 200


def _hosts(session: DB, who: Principal) -> list[str]:
    rows = session.execute(
        select(Host.name, Group.name)
        .outerjoin(Group, Host.group_id == Group.id)
        .where(Host.revoked.is_(None))
        .order_by(Host.name)
    )
    return [name for name, group in rows if who.sees(group)]


def _to_job(job: Job) -> RedirectResponse:
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


def install(app: FastAPI, center: Center) -> None:
    router = APIRouter(include_in_schema=False)

    # --- jobs -------------------------------------------------------------------------

    def job_rows(session: DB, who: Principal, state: str, kind: str) -> list[dict[str, Any]]:
        query = (
            select(Job, Host.name, Group.name)
            .outerjoin(Host, Job.host_id == Host.id)
            .outerjoin(Group, Host.group_id == Group.id)
            .order_by(Job.id.desc())
            .limit(100)
        )
        if state:
            query = query.where(Job.state == state)
        if kind:
            query = query.where(Job.kind == kind)
        rows = session.execute(query)
        return [job_view(j, h) for j, h, g in rows if j.host_id is None or who.sees(g)]

    @router.get("/jobs")
    def jobs(
        request: Request, who: Viewer, session: DB, state: str = "", kind: str = ""
    ) -> Response:
        rows = job_rows(session, who, state, kind)
        return page(request, "jobs_list.html", jobs=rows, state=state, kind=kind)

    @router.get("/jobs/table")
    def jobs_table(
        request: Request, who: Viewer, session: DB, state: str = "", kind: str = ""
    ) -> Response:
        rows = job_rows(session, who, state, kind)
        return page(request, "jobs_table.html", jobs=rows, state=state, kind=kind)

    def detail(who: Principal, session: DB, job_id: int) -> dict[str, Any]:
        job, host = visible_job(session, who, job_id)
        lines = session.scalars(
            select(JobLog).where(JobLog.job_id == job_id).order_by(JobLog.id.desc()).limit(LOG_TAIL)
        ).all()
        children = session.execute(
            select(Job, Host.name)
            .outerjoin(Host, Job.host_id == Host.id)
            .where(Job.parent_id == job_id)
        ).all()
        return {
            "job": job_view(job, host),
            "log": list(reversed(lines)),
            "children": [job_view(c, h) for c, h in children],
        }

    @router.get("/jobs/{job_id}")
    def job_page(request: Request, who: Viewer, session: DB, job_id: int) -> Response:
        return page(request, "jobs_detail.html", **detail(who, session, job_id))

    @router.get("/jobs/{job_id}/live")
    def job_live(request: Request, who: Viewer, session: DB, job_id: int) -> Response:
        """The live part of a job's page; once the job has ended, status 286 tells
        htmx to stop polling it."""
        shown = detail(who, session, job_id)
        ended = shown["job"]["state"] in DONE_STATES and all(
            c["state"] in DONE_STATES for c in shown["children"]
        )
        return page(request, "jobs_live.html", status_code=286 if ended else 200, **shown)

    @router.post("/jobs/{job_id}/cancel")
    def job_cancel(request: Request, who: Operator, session: DB, job_id: int) -> Response:
        desk_of(request).cancel(session, who, job_id)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    # --- snapshots: browse, download, restore ----------------------------------------

    def snapshots_page(
        request: Request,
        session: DB,
        who: Principal,
        error: str | None = None,
        status: int = 200,
        **values: Any,
    ) -> Response:
        repositories = list(session.scalars(select(Repository.name).order_by(Repository.name)))
        return page(
            request,
            "jobs_snapshots.html",
            status_code=status,
            hosts=_hosts(session, who),
            repositories=repositories,
            error=error,
            values=values,
        )

    @router.get("/snapshots")
    def snapshots(
        request: Request,
        who: Viewer,
        session: DB,
        host: str = "",
        repo: str = "",
        snapshot: str = "latest",
        path: str = "",
    ) -> Response:
        return snapshots_page(
            request, session, who, host=host, repo=repo, snapshot=snapshot, path=path
        )

    @router.post("/snapshots")
    def snapshot_job(
        request: Request,
        who: Operator,
        session: DB,
        kind: Annotated[str, Form(max_length=32)],
        host: Annotated[str, Form(max_length=255)],
        repo: Text,
        snapshot: Annotated[str, Form(max_length=128)],
        path: Annotated[str, Form(max_length=4096)] = "",
        page_number: Annotated[int, Form(ge=0)] = 0,
        destination: Annotated[str, Form(max_length=4096)] = "",
        target: Annotated[str, Form(max_length=255)] = "",
        confirm: Annotated[str, Form(max_length=255)] = "",
        partition: Annotated[str, Form(max_length=8)] = "",
    ) -> Response:
        """Queue a browse, download or restore from the browser's forms."""
        params: dict[str, Any] = {"repo": repo, "snapshot": snapshot, "path": path}
        if kind == "browse":
            params["page"] = page_number
        elif kind == "restore-files":
            params["destination"] = destination
        elif kind == "restore-disk":
            params = {"repo": repo, "snapshot": snapshot, "target": target, "confirm": confirm}
            if partition.strip():
                params["partition"] = int(partition) if partition.isdigit() else partition
        elif kind != "download":
            raise HTTPException(422, f"kind {kind!r} is not queued from this page")
        try:
            return _to_job(desk_of(request).submit(session, who, kind, host, params, None))
        except HTTPException as refused:
            values = {
                "host": host,
                "repo": repo,
                "snapshot": snapshot,
                "path": path,
                "target": target,
                "destination": destination,
            }
            return snapshots_page(
                request, session, who, str(refused.detail), refused.status_code, **values
            )

    # --- repositories --------------------------------------------------------------------

    def repositories_page(
        request: Request, session: DB, error: str | None = None, status: int = 200
    ) -> Response:
        rows = [
            maintenance.repository_view(r)
            for r in session.scalars(select(Repository).order_by(Repository.name))
        ]
        return page(
            request, "jobs_repositories.html", status_code=status, repositories=rows, error=error
        )

    @router.get("/repositories")
    def repositories(request: Request, who: Viewer, session: DB) -> Response:
        return repositories_page(request, session)

    @router.post("/repositories")
    def repository_add(
        request: Request,
        who: Admin,
        session: DB,
        name: Annotated[str, Form(max_length=64)],
        location: Text,
        password: Annotated[str, Form(max_length=1024)] = "",
        keep_daily: Annotated[int, Form(ge=0, le=100_000)] = 0,
        keep_weekly: Annotated[int, Form(ge=0, le=100_000)] = 0,
        keep_monthly: Annotated[int, Form(ge=0, le=100_000)] = 0,
    ) -> Response:
        keep = {
            k: v
            for k, v in (("daily", keep_daily), ("weekly", keep_weekly), ("monthly", keep_monthly))
            if v
        }
        try:
            body = RepositoryRequest(
                name=name, location=location, password=password or None, retention=keep or None
            )
            desk_of(request).register(session, who, body)
        except HTTPException as refused:
            return repositories_page(request, session, str(refused.detail), refused.status_code)
        except ValueError as refused:  # the name's pattern
            return repositories_page(request, session, str(refused).splitlines()[0], 422)
        return RedirectResponse("/repositories", status_code=303)

    @router.post("/repositories/{name}/{kind}")
    def repository_job(
        request: Request, who: Operator, session: DB, name: str, kind: str
    ) -> Response:
        return _to_job(
            desk_of(request).submit(session, who, kind, None, {"repository": name}, None)
        )

    # --- deployments ---------------------------------------------------------------------

    def deployments_page(
        request: Request, session: DB, who: Principal, error: str | None = None, status: int = 200
    ) -> Response:
        query = (  # a bare-metal one's host is its boot server, seen as its group allows
            select(Job, Host.name)
            .outerjoin(Host, Job.host_id == Host.id)
            .outerjoin(Group, Host.group_id == Group.id)
            .where(Job.kind.in_(("deploy", "pxe-deploy")))
            .order_by(Job.id.desc())
            .limit(50)
        )
        if who.groups is not None:
            query = query.where(Job.host_id.is_(None) | Group.name.in_(who.groups))
        rows = session.execute(query)
        return page(
            request,
            "jobs_deployments.html",
            status_code=status,
            deployments=[job_view(job, host) for job, host in rows],
            hosts=_hosts(session, who),
            error=error,
        )

    @router.get("/deployments")
    def deployments(request: Request, who: Viewer, session: DB) -> Response:
        return deployments_page(request, session, who)

    @router.post("/deployments")
    def deployment_add(
        request: Request,
        who: Operator,
        session: DB,
        repo: Text,
        snapshot: Annotated[str, Form(max_length=128)],
        sender: Annotated[str, Form(max_length=255)],
        targets: Annotated[str, Form(max_length=100_000)],
    ) -> Response:
        """``targets``: one ``HOST DISK`` per line."""
        try:
            pairs = [line.split() for line in targets.splitlines() if line.strip()]
            if not pairs or any(len(p) != 2 for p in pairs):
                raise HTTPException(422, "targets: one 'HOST DISK' per line, e.g. 'pc1 /dev/sda'")
            body = DeploymentRequest(
                repo=repo,
                snapshot=snapshot,
                sender=sender,
                hosts=[DeployTarget(host=h, disk=d) for h, d in pairs],
            )
            return _to_job(desk_of(request).deploy(session, who, body, None))
        except HTTPException as refused:
            return deployments_page(request, session, who, str(refused.detail), refused.status_code)

    @router.post("/deployments/bare-metal")
    def bare_metal_add(
        request: Request,
        who: Operator,
        session: DB,
        repo: Text,
        snapshot: Annotated[str, Form(max_length=128)],
        server: Annotated[str, Form(max_length=255)],
        interface: Annotated[str, Form(max_length=15)],
        iso: Text,
        macs: Annotated[str, Form(max_length=10_000)],
        target: Annotated[str, Form(max_length=255)] = "",
    ) -> Response:
        """``macs``: the machines' MAC addresses, separated by spaces or lines."""
        try:
            body = BareMetalRequest(
                repo=repo,
                snapshot=snapshot,
                server=server,
                interface=interface,
                iso=iso,
                macs=macs.split()[:257] or [""],  # 257: past the limit, so it is refused
                target=target or None,
            )
        except ValidationError as refused:
            error = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in refused.errors())
            return deployments_page(request, session, who, error, 422)
        try:
            return _to_job(desk_of(request).deploy_bare_metal(session, who, body, None))
        except HTTPException as refused:
            return deployments_page(request, session, who, str(refused.detail), refused.status_code)

    app.include_router(router)
