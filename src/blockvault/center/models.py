"""The center's tables. One section per owner; every time is aware UTC from the
center's clock (``db.now``); JSON columns hold small, validated documents.

Changing a table means changing its model here and regenerating the migration
(``scripts/center-migration``); ``tests/center/test_migrations.py`` fails while the
two disagree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from blockvault.center.db import Base, UTCDateTime, now

__all__ = [
    "AgentToken",
    "Alert",
    "AlertDelivery",
    "AlertRule",
    "AlertTarget",
    "ApiToken",
    "Audit",
    "CentralPlan",
    "EnrolToken",
    "Group",
    "Host",
    "Job",
    "JobLog",
    "Repository",
    "Run",
    "SeenSnapshot",
    "Setting",
    "User",
    "WebSession",
]

Json = dict[str, Any]


# --- users, sessions, tokens, audit (center-core) -----------------------------------


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))  # argon2id, argon2-cffi's text
    role: Mapped[str] = mapped_column(String(16))  # "admin" | "operator" | "viewer"
    # host groups the user may see and act on (names); None: every group
    groups: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


class WebSession(Base):
    """A browser's login: the cookie holds a random token, the table its SHA-256."""

    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(String(64))  # sent back in forms and X-CSRF-Token
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    expires: Mapped[datetime] = mapped_column(UTCDateTime)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ApiToken(Base):
    """A user's token for scripts: ``Authorization: Bearer bv_...``; scopes narrow the
    user's role (``read``, ``operate``, ``admin``)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    expires: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Audit(Base):
    """Every change and every remote operation: who, what, on what, from where."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=now, index=True)
    actor: Mapped[str] = mapped_column(String(128))  # "user:alice", "agent:web1", "center"
    action: Mapped[str] = mapped_column(String(64))  # "plan.create", "job.restore", ...
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    detail: Mapped[Json | None] = mapped_column(JSON, nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Setting(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


# --- hosts, enrolment, central plans, runs (center-agents) --------------------------


class Group(Base):
    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")


class Host(Base):
    """An enrolled machine. ``public_key`` is the agent's own Ed25519 key (raw, base64);
    a revoked host's requests are refused."""

    __tablename__ = "hosts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("groups.id", ondelete="SET NULL"), nullable=True
    )
    public_key: Mapped[str] = mapped_column(String(64))
    enrolled: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    revoked: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    os: Mapped[str] = mapped_column(String(255), default="")
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    # what the agent last reported: disks as `blockvault disks --json` gives them,
    # local plans and their next runs, repositories it writes to
    inventory: Mapped[Json | None] = mapped_column(JSON, nullable=True)
    # the one open challenge (SHA-256 of its nonce): single use, short-lived
    nonce_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    nonce_expires: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class EnrolToken(Base):
    __tablename__ = "enrol_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), nullable=True
    )
    created_by: Mapped[str] = mapped_column(String(128))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    expires: Mapped[datetime] = mapped_column(UTCDateTime)
    uses_left: Mapped[int] = mapped_column(Integer)
    # a re-key token: only this host may enrol with it, and it takes the host's new key
    host_id: Mapped[int | None] = mapped_column(
        ForeignKey("hosts.id", ondelete="CASCADE"), nullable=True
    )


class AgentToken(Base):
    """A short-lived bearer token an agent got by signing the center's challenge."""

    __tablename__ = "agent_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    expires: Mapped[datetime] = mapped_column(UTCDateTime)


class CentralPlan(Base):
    """A plan defined on the center for one host or one group. ``spec`` holds the
    plan's fields as the agent's plans file has them (plans/store.py); ``version``
    grows with every change so agents know when their cached copy is stale."""

    __tablename__ = "central_plans"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    host_id: Mapped[int | None] = mapped_column(
        ForeignKey("hosts.id", ondelete="CASCADE"), nullable=True
    )
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), nullable=True
    )
    spec: Mapped[Json] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    updated_by: Mapped[str] = mapped_column(String(128))


class Run(Base):
    """One run of a plan on a host, as its agent reported it (also later, after an
    outage); ``received`` is the center's time, the others the agent's."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_host_agent_run", "host_id", "agent_run_id", unique=True),
        # host statuses scan the runs grouped by host and plan (fleet._run_figures)
        Index("ix_runs_host_plan", "host_id", "plan"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    agent_run_id: Mapped[int] = mapped_column(Integer)  # the agent's history row id
    plan: Mapped[str] = mapped_column(String(64))
    central_plan_id: Mapped[int | None] = mapped_column(
        ForeignKey("central_plans.id", ondelete="SET NULL"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # "backup" | "check"
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    started: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ended: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_new: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_stored: Mapped[int] = mapped_column(BigInteger, default=0)
    snapshot: Mapped[str | None] = mapped_column(String(128), nullable=True)
    repo: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    received: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


# --- jobs, repositories, maintenance (center-jobs) ----------------------------------


class Job(Base):
    """A remote operation. ``host_id`` None: the center's own maintenance worker runs
    it. States: queued -> running -> done | failed | cancelled."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    host_id: Mapped[int | None] = mapped_column(
        ForeignKey("hosts.id", ondelete="CASCADE"), nullable=True, index=True
    )
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True
    )
    params: Mapped[Json] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    created_by: Mapped[str] = mapped_column(String(128))
    started: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # {"done": bytes, "total": bytes, "rate": bytes/s, "message": "..."}
    progress: Mapped[Json | None] = mapped_column(JSON, nullable=True)
    result: Mapped[Json | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class JobLog(Base):
    __tablename__ = "job_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    level: Mapped[str] = mapped_column(String(8))  # "info" | "warning" | "error"
    message: Mapped[str] = mapped_column(Text)


class Repository(Base):
    """A repository the center knows: its figures as the last scan found them. The
    password is stored only if an admin chose to (sealed with the center's key)."""

    __tablename__ = "repositories"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    location: Mapped[str] = mapped_column(Text)
    password_sealed: Mapped[bytes | None] = mapped_column(nullable=True)
    # the maintenance role's prune policy: a plans-style keep table ({"daily": 7})
    retention: Mapped[Json | None] = mapped_column(JSON, nullable=True)
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    logical_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    snapshot_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    free_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    capacity_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    scanned: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_check: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_check_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    last_gc: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SeenSnapshot(Base):
    """When the center first saw a snapshot: retention counts from this time, not
    from the time its manifest claims (an agent could forge that)."""

    __tablename__ = "seen_snapshots"
    __table_args__ = (Index("ix_seen_repo_snapshot", "repository_id", "snapshot", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    snapshot: Mapped[str] = mapped_column(String(128))
    host: Mapped[str] = mapped_column(String(255))
    origin: Mapped[str] = mapped_column(Text)
    claimed: Mapped[datetime] = mapped_column(UTCDateTime)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


# --- alerts (center-alerts) -----------------------------------------------------------


class AlertTarget(Base):
    __tablename__ = "alert_targets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # "email" | "webhook"
    address: Mapped[str] = mapped_column(Text)  # mailto:... or https://...
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # webhook only: the key of the body's HMAC-SHA256 signature (never shown again)
    secret: Mapped[str | None] = mapped_column(Text, nullable=True)


class AlertRule(Base):
    """Routes events of one kind (``run-failed``, ``host-overdue``, ``host-offline``,
    ``check-error``, ``storage-full``, ``agent-revoked``) in a group (None: all) to a
    target."""

    __tablename__ = "alert_rules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event: Mapped[str] = mapped_column(String(32))
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), nullable=True
    )
    target_id: Mapped[int] = mapped_column(ForeignKey("alert_targets.id", ondelete="CASCADE"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class Alert(Base):
    """One condition that is (or was) wrong. At most one open alert per condition
    key (e.g. ``host-overdue:web1``) until it recovers: no alert storms."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index(
            "ix_alerts_open_condition",
            "condition",
            unique=True,
            sqlite_where=text("closed IS NULL"),
            postgresql_where=text("closed IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    condition: Mapped[str] = mapped_column(String(255))
    event: Mapped[str] = mapped_column(String(32))
    host_id: Mapped[int | None] = mapped_column(
        ForeignKey("hosts.id", ondelete="CASCADE"), nullable=True
    )
    message: Mapped[str] = mapped_column(Text)
    opened: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    closed: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    notified: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AlertDelivery(Base):
    """One message of one alert to one target: ``kind`` "opened" or "recovered". The
    delivery worker tries it until it is ``sent`` or out of attempts, waiting longer
    after each failure (``next_try``); ``error`` is the last failure's line."""

    __tablename__ = "alert_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("alert_targets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    sent: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
