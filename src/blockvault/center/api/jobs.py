"""Jobs (remote operations) and repositories under /api/v1, and the agent's side of
jobs under /agent/v1.

A request only queues, reads or cancels a job: the operation itself runs on the host's
agent (or in the center's maintenance worker), which takes it with a long poll and
reports back. Agents' bodies are read with a bound before they are parsed, and an
agent touches only its own host's jobs.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from blockvault.center import jobs as queue
from blockvault.center import maintenance
from blockvault.center.agentauth import CurrentHost, current_host
from blockvault.center.auth import (
    DB,
    Admin,
    Operator,
    Principal,
    Viewer,
    audit,
    center_of,
    client_address,
)
from blockvault.center.context import Center
from blockvault.center.db import transaction
from blockvault.center.models import Group, Host, Job, JobLog, Repository
from blockvault.center.workers import Periodic

__all__ = ["DOWNLOAD_LIMIT", "PIECE_LIMIT", "install"]

BODY_LIMIT: Final = 64 * 1024  # an agent's progress or log line
RESULT_BODY_LIMIT: Final = queue.RESULT_LIMIT + 4096
PIECE_LIMIT: Final = 1024 * 1024  # one piece of a download
DOWNLOAD_LIMIT: Final = 512 * 1024 * 1024  # one downloaded file
POLL_LIMIT: Final = 25.0  # seconds an agent's poll may wait


class JobRequest(BaseModel):
    kind: str = Field(max_length=32)
    host: str | None = Field(default=None, max_length=255)  # None: a center job
    params: dict[str, Any] = Field(default_factory=dict)


class RepositoryRequest(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    location: str = Field(min_length=1, max_length=4096)
    password: str | None = Field(default=None, max_length=1024)
    retention: dict[str, Any] | None = None  # keep-* counts and "within", as plans have


class DeployTarget(BaseModel):
    host: str = Field(max_length=255)
    disk: str = Field(max_length=255)


class DeploymentRequest(BaseModel):
    repo: str = Field(min_length=1, max_length=4096)  # a registered name or a location
    snapshot: str = Field(min_length=1, max_length=128)
    hosts: list[DeployTarget] = Field(min_length=1, max_length=1000)
    sender: str = Field(max_length=255)  # the host that reads the repository and sends


class BareMetalRequest(BaseModel):
    """Machines without an OS, named by MAC, booted over PXE by the ``server`` host's
    agent and given the snapshot by multicast (see ``pxe-deploy``)."""

    repo: str = Field(min_length=1, max_length=4096)
    snapshot: str = Field(min_length=1, max_length=128)
    macs: list[str] = Field(min_length=1, max_length=256)
    server: str = Field(max_length=255)  # the host that boots them and sends
    interface: str = Field(min_length=1, max_length=15)  # the server's card on their network
    iso: str = Field(min_length=1, max_length=4096)  # the rescue ISO on the server
    target: str | None = Field(default=None, max_length=255)  # each machine's disk to write


SECRET_PARAMS: Final = frozenset({"code", "password"})  # never shown back


def job_view(job: Job, host: str | None) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "host": host,
        "parent": job.parent_id,
        "params": {k: v for k, v in job.params.items() if k not in SECRET_PARAMS},
        "state": job.state,
        "created": job.created.isoformat(),
        "created_by": job.created_by,
        "started": job.started and job.started.isoformat(),
        "ended": job.ended and job.ended.isoformat(),
        "progress": job.progress,
        "result": job.result,
        "error": job.error,
    }


def visible_job(session: Session, who: Principal, job_id: int) -> tuple[Job, str | None]:
    """The job and its host's name, if ``who`` may see it (404 otherwise, so hidden
    jobs are not revealed)."""
    row = session.execute(
        select(Job, Host.name, Group.name)
        .outerjoin(Host, Job.host_id == Host.id)
        .outerjoin(Group, Host.group_id == Group.id)
        .where(Job.id == job_id)
    ).first()
    if row is None or (row[0].host_id is not None and not who.sees(row[2])):
        raise HTTPException(404, f"no job {job_id}")
    return row[0], row[1]


async def bounded_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) once it grows past ``limit`` bytes."""
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")
    return bytes(body)


async def bounded_json(request: Request, limit: int = BODY_LIMIT) -> dict[str, Any]:
    try:
        value = json.loads(await bounded_body(request, limit))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HTTPException(400, "body: give a JSON object") from None
    if not isinstance(value, dict):
        raise HTTPException(400, "body: give a JSON object")
    return value


def _authenticate(request: Request) -> None:
    with transaction(center_of(request).sessions) as session:
        current_host(request, session)


def _reader(limit: int) -> Any:
    async def read(request: Request) -> dict[str, Any]:
        # the agent is authenticated first (401 before a byte of the body is read), in
        # a transaction of its own that ends before the body is awaited, so none waits
        # on the network; the route's ``CurrentHost`` then loads the host in its own
        await run_in_threadpool(_authenticate, request)
        return await bounded_json(request, limit)

    return Depends(read)


# an agent's body, read (bounded) once ``CurrentHost`` let the request in
Body = Annotated[dict[str, Any], _reader(BODY_LIMIT)]
ResultBody = Annotated[dict[str, Any], _reader(RESULT_BODY_LIMIT)]
PieceBody = Annotated[dict[str, Any], _reader(PIECE_LIMIT * 4 // 3 + 1024)]


def _number(body: dict[str, Any], key: str) -> int:
    value = body.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise HTTPException(400, f"{key}: give a whole number, 0 or more")
    return value


def _message(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise HTTPException(400, f"{key}: give a text")
    return value


def downloads(center: Center) -> Path:
    return center.state / "downloads"


class Desk:
    """What the API and the dashboard's pages both do to jobs: queue them (validated,
    audited, announced on the bus and to the host's poll), cancel, deploy, and
    register repositories. HTTP errors say what was refused."""

    def __init__(self, center: Center) -> None:
        self.center = center
        self.doorbell = queue.Doorbell()
        self.maintainer = maintenance.worker(center)

    def announce(self, session: Session, *jobs: Job) -> None:
        """Commit now, then tell the bus (and the hosts' polls) what changed."""
        session.commit()
        for job in jobs:
            self.center.bus.publish("job", id=job.id, state=job.state, host_id=job.host_id)
            if job.state == "queued" and job.host_id is not None:
                self.doorbell.ring(job.host_id)
            elif job.state == "queued":
                self.maintainer.wake()

    def host_for(self, session: Session, who: Principal, name: str) -> Host:
        found = session.execute(
            select(Host, Group.name)
            .outerjoin(Group, Host.group_id == Group.id)
            .where(Host.name == name)
        ).first()
        if found is None or not who.sees(found[1]):
            raise HTTPException(404, f"no host {name}")
        if found[0].revoked is not None:
            raise HTTPException(409, f"host {name} is revoked: re-enrol it first")
        host: Host = found[0]
        return host

    def submit(
        self,
        session: Session,
        who: Principal,
        kind: str,
        host_name: str | None,
        params: Any,
        address: str | None,
    ) -> Job:
        host = None if host_name is None else self.host_for(session, who, host_name)
        try:
            checked = queue.validate(kind, params, on_host=host is not None)
            if host is None:
                maintenance.repository_named(session, checked["repository"])
        except queue.JobError as error:
            raise HTTPException(422, str(error)) from None
        now = self.center.clock()
        job = queue.queue(session, kind, host, checked, who.actor, now)
        target = host_name or checked.get("repository")
        detail = {
            "job": job.id,
            "params": {k: v for k, v in checked.items() if k not in SECRET_PARAMS},
        }
        audit(session, who.actor, f"job.{kind}", target, detail, address, at=now)
        self.announce(session, job)
        return job

    def cancel(self, session: Session, who: Principal, job_id: int) -> tuple[Job, str | None]:
        job, host = visible_job(session, who, job_id)
        try:
            queue.cancel(session, job, self.center.clock())
        except queue.JobError as error:
            raise HTTPException(409, str(error)) from None
        audit(session, who.actor, "job.cancel", host, {"job": job.id}, at=self.center.clock())
        self.announce(session, job)
        return job, host

    def deploy(
        self, session: Session, who: Principal, body: DeploymentRequest, address: str | None
    ) -> Job:
        targets = [(self.host_for(session, who, t.host), t.disk) for t in body.hosts]
        if len({h.id for h, _ in targets}) != len(targets):
            raise HTTPException(422, "hosts: name each host once")
        sender = self.host_for(session, who, body.sender)
        now = self.center.clock()
        try:
            parent = queue.deploy(
                session, body.repo, body.snapshot, targets, sender, who.actor, now
            )
        except queue.JobError as error:
            raise HTTPException(422, str(error)) from None
        detail = {
            "job": parent.id,
            "hosts": [t.model_dump() for t in body.hosts],
            "sender": body.sender,
        }
        audit(session, who.actor, "job.deploy", body.snapshot, detail, address, at=now)
        children = session.scalars(select(Job).where(Job.parent_id == parent.id)).all()
        self.announce(session, parent, *children)
        return parent

    def deploy_bare_metal(
        self, session: Session, who: Principal, body: BareMetalRequest, address: str | None
    ) -> Job:
        server = self.host_for(session, who, body.server)
        now = self.center.clock()
        try:
            job = queue.deploy_bare_metal(
                session, body.model_dump(exclude={"server"}), server, who.actor, now
            )
        except queue.JobError as error:
            raise HTTPException(422, str(error)) from None
        detail = {"job": job.id, "macs": job.params["macs"], "server": body.server}
        audit(session, who.actor, "job.deploy-bare-metal", body.snapshot, detail, address, at=now)
        self.announce(session, job)
        return job

    def register(self, session: Session, who: Principal, body: RepositoryRequest) -> Repository:
        try:
            repo = maintenance.register(
                session, self.center, body.name, body.location, body.password, body.retention
            )
        except maintenance.RepositoryRefused as error:
            raise HTTPException(409 if error.conflict else 422, str(error)) from None
        detail = {"location": body.location, "password_stored": body.password is not None}
        audit(session, who.actor, "repository.add", body.name, detail, at=self.center.clock())
        session.commit()
        self.maintainer.wake()
        return repo


def desk_of(request: Request) -> Desk:
    desk: Desk = request.app.state.job_desk
    return desk


def install(app: FastAPI, center: Center) -> None:
    """Routes of jobs and repositories, the worker that fails jobs of vanished hosts,
    and the maintenance worker."""
    desk = Desk(center)
    app.state.job_desk = desk
    doorbell = desk.doorbell
    api = APIRouter(prefix="/api/v1", tags=["jobs"])
    agent = APIRouter(prefix="/agent/v1", tags=["agent"])
    committed = desk.announce

    # --- users' side ------------------------------------------------------------------

    @api.post("/jobs", summary="Queue a remote job", status_code=201)
    def create_job(
        body: JobRequest, who: Operator, session: DB, request: Request
    ) -> dict[str, Any]:
        """Queue a remote operation on ``host`` (or, without one, a prune, gc or check
        of a registered repository by the center's maintenance role)."""
        job = desk.submit(session, who, body.kind, body.host, body.params, client_address(request))
        return job_view(job, body.host)

    @api.post("/deployments", summary="Queue a multicast deployment", status_code=201)
    def create_deployment(
        body: DeploymentRequest, who: Operator, session: DB, request: Request
    ) -> dict[str, Any]:
        """Deploy one snapshot to many hosts by multicast: a parent job, a
        ``cast-receive`` job per host (its agent refuses its system disk) and a
        ``cast-send`` job on the sender host; follow them at ``/jobs?parent=ID``."""
        return job_view(desk.deploy(session, who, body, client_address(request)), None)

    @api.post("/deployments/bare-metal", status_code=201, summary="Deploy to bare metal by MAC")
    def create_bare_metal_deployment(
        body: BareMetalRequest, who: Operator, session: DB, request: Request
    ) -> dict[str, Any]:
        """Deploy one snapshot to machines without an OS, named by MAC: a ``pxe-deploy``
        job on the ``server`` host, whose agent serves the rescue system by PXE with a
        cast action for each MAC, wakes them by Wake-on-LAN, sends the cast to as many
        receivers and stops serving when done."""
        return job_view(
            desk.deploy_bare_metal(session, who, body, client_address(request)), body.server
        )

    @api.get("/jobs", summary="List jobs")
    def list_jobs(
        who: Viewer,
        session: DB,
        state: str | None = None,
        host: str | None = None,
        kind: str | None = None,
        parent: int | None = None,
        limit: int = Query(50, ge=1, le=500),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        """Jobs, newest first, that the user's groups may see."""
        query = (
            select(Job, Host.name, Group.name)
            .outerjoin(Host, Job.host_id == Host.id)
            .outerjoin(Group, Host.group_id == Group.id)
            .order_by(Job.id.desc())
        )
        if state is not None:
            query = query.where(Job.state == state)
        if host is not None:
            query = query.where(Host.name == host)
        if kind is not None:
            query = query.where(Job.kind == kind)
        if parent is not None:
            query = query.where(Job.parent_id == parent)
        if who.groups is not None:
            query = query.where((Job.host_id.is_(None)) | Group.name.in_(who.groups))
        rows = session.execute(query.limit(limit + 1).offset(offset)).all()
        return {
            "jobs": [job_view(job, name) for job, name, _ in rows[:limit]],
            "more": len(rows) > limit,
        }

    @api.get("/jobs/{job_id}", summary="One job")
    def get_job(job_id: int, who: Viewer, session: DB) -> dict[str, Any]:
        return job_view(*visible_job(session, who, job_id))

    @api.get("/jobs/{job_id}/log", summary="A job's log lines")
    def job_log(
        job_id: int,
        who: Viewer,
        session: DB,
        after: int = Query(0, ge=0),
        limit: int = Query(200, ge=1, le=1000),
    ) -> dict[str, Any]:
        """The job's log lines after line id ``after``, oldest first, one page."""
        visible_job(session, who, job_id)
        lines = session.scalars(
            select(JobLog)
            .where(JobLog.job_id == job_id, JobLog.id > after)
            .order_by(JobLog.id)
            .limit(limit + 1)
        ).all()
        return {
            "lines": [
                {"id": x.id, "at": x.at.isoformat(), "level": x.level, "message": x.message}
                for x in lines[:limit]
            ],
            "more": len(lines) > limit,
        }

    @api.post("/jobs/{job_id}/cancel", summary="Cancel a job")
    def cancel_job(job_id: int, who: Operator, session: DB) -> dict[str, Any]:
        return job_view(*desk.cancel(session, who, job_id))

    @api.get("/jobs/{job_id}/download", summary="The file a finished download job fetched")
    def download(job_id: int, who: Operator, session: DB) -> FileResponse:
        """The file a finished ``download`` job brought to the center."""
        job, _ = visible_job(session, who, job_id)
        path = downloads(center) / str(job.id)
        if job.kind != "download" or job.state != "done" or not path.is_file():
            raise HTTPException(404, f"job {job_id} has no downloaded file (any more)")
        name = Path(str(job.params.get("path", "file"))).name or "file"
        return FileResponse(path, filename=name, media_type="application/octet-stream")

    @api.get("/repositories", summary="List repositories")
    def list_repositories(who: Viewer, session: DB) -> list[dict[str, Any]]:
        rows = session.scalars(select(Repository).order_by(Repository.name))
        return [maintenance.repository_view(r) for r in rows]

    @api.post("/repositories", summary="Register a repository", status_code=201)
    def add_repository(body: RepositoryRequest, who: Admin, session: DB) -> dict[str, Any]:
        """Register a repository for the center to scan and maintain; a password given
        here is stored sealed with the center's key (and then travels to agents in
        the jobs that need it)."""
        return maintenance.repository_view(desk.register(session, who, body))

    # --- the agent's side ---------------------------------------------------------------

    def own_job(session: Session, host: Host, job_id: int) -> Job:
        job = session.get(Job, job_id)
        if job is None or job.host_id != host.id:
            raise HTTPException(404, f"no job {job_id} of host {host.name}")
        return job

    @agent.get("/jobs", summary="Agent: long-poll for queued jobs")
    async def poll(
        host: CurrentHost, session: DB, wait: float = Query(0, ge=0, le=POLL_LIMIT)
    ) -> list[dict[str, Any]]:
        """The host's queued jobs, now running; waits up to ``wait`` seconds for one."""
        host_id = host.id
        await run_in_threadpool(session.commit)  # no connection held while waiting
        claimed = await run_in_threadpool(take, host_id)
        if not claimed and wait > 0:
            await doorbell.wait(host_id, wait)
            claimed = await run_in_threadpool(take, host_id)
        return claimed

    def take(host_id: int) -> list[dict[str, Any]]:
        with transaction(center.sessions) as session:
            jobs = queue.claim(session, host_id, center.clock())
            handed = [
                {
                    "id": j.id,
                    "kind": j.kind,
                    "params": maintenance.params_for_agent(session, center, j.params),
                }
                for j in jobs
            ]
        for job in jobs:
            center.bus.publish("job", id=job.id, state=job.state, host_id=host_id)
        return handed

    @agent.post("/jobs/{job_id}/progress", summary="Agent: report a job's progress")
    def progress(job_id: int, body: Body, host: CurrentHost, session: DB) -> dict[str, Any]:
        """Record progress; the answer says whether the job was cancelled."""
        job = own_job(session, host, job_id)
        queue.report_progress(
            job, _number(body, "done"), _number(body, "total"), _message(body, "message")
        )
        cancelled = job.state == "cancelled"
        committed(session, job)
        return {"cancel": cancelled}

    @agent.post("/jobs/{job_id}/log", summary="Agent: add a line to a job's log")
    def log(job_id: int, body: Body, host: CurrentHost, session: DB) -> dict[str, Any]:
        job = own_job(session, host, job_id)
        try:
            queue.add_log(
                session, job, _message(body, "level"), _message(body, "message"), center.clock()
            )
        except queue.JobError as error:
            raise HTTPException(400, str(error)) from None
        return {"cancel": job.state == "cancelled"}

    @agent.post("/jobs/{job_id}/result", summary="Agent: report a job's result")
    def result(job_id: int, body: ResultBody, host: CurrentHost, session: DB) -> dict[str, Any]:
        job = own_job(session, host, job_id)
        value = body.get("result")
        if value is not None and not isinstance(value, dict):
            raise HTTPException(400, "result: give an object")
        now = center.clock()
        if job.kind == "download" and body.get("ok") is True:
            size = _stored_size(job)
            value = {**(value or {}), "size": size}
        queue.finish(
            session,
            job,
            now,
            ok=body.get("ok") is True,
            result=value,
            error=_message(body, "error"),
        )
        audit(
            session,
            f"agent:{host.name}",
            "job.result",
            host.name,
            {"job": job.id, "state": job.state},
            at=now,
        )
        parent = None if job.parent_id is None else session.get(Job, job.parent_id)
        committed(session, job, *([parent] if parent is not None else []))
        return {"state": job.state}

    @agent.post("/jobs/{job_id}/upload", summary="Agent: upload a piece of a download job's file")
    def upload(job_id: int, body: PieceBody, host: CurrentHost, session: DB) -> dict[str, Any]:
        """One piece of a download job's file, {offset, data (base64, at most
        ``PIECE_LIMIT`` bytes)}, appended at ``offset`` (the size received so far)."""
        job = own_job(session, host, job_id)
        if job.kind != "download" or job.state != "running":
            raise HTTPException(409, f"job {job_id} takes no upload now ({job.kind}, {job.state})")
        session.commit()
        offset = _number(body, "offset")
        try:
            piece = base64.b64decode(_message(body, "data"), validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(400, "data: give base64") from None
        if len(piece) > PIECE_LIMIT:
            raise HTTPException(413, f"a piece is at most {PIECE_LIMIT} bytes")
        path = downloads(center) / str(job_id)
        size = path.stat().st_size if path.exists() else 0
        if offset != size:
            raise HTTPException(409, f"offset {offset}: the center holds {size} bytes")
        if size + len(piece) > DOWNLOAD_LIMIT:
            path.unlink(missing_ok=True)
            raise HTTPException(
                413, f"the file is larger than the download limit ({DOWNLOAD_LIMIT} bytes)"
            )
        path.parent.mkdir(mode=0o700, exist_ok=True)
        with path.open("ab") as out:
            out.write(piece)
        return {"size": size + len(piece)}

    def _stored_size(job: Job) -> int:
        path = downloads(center) / str(job.id)
        return path.stat().st_size if path.exists() else 0

    def watch() -> None:
        """Fail jobs whose hosts went silent; remove old downloads."""
        with transaction(center.sessions) as session:
            failed = queue.fail_offline(session, center.clock())
        for job in failed:
            center.bus.publish("job", id=job.id, state=job.state, host_id=job.host_id)
        maintenance.remove_old_downloads(downloads(center), center.clock())

    center.workers.append(Periodic("jobs-watch", 30, watch))
    center.workers.append(desk.maintainer)
    app.include_router(api)
    app.include_router(agent)
