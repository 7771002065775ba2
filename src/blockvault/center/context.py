"""What every part of the center shares: the database, the event bus, the state
directory, its configuration (``center.toml``) and the center's own secret key. Made
once by ``open_center`` (or ``open_configured``, which reads ``center.toml`` first)
and handed to the web app and the workers."""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from blockvault.center.bus import Bus
from blockvault.center.db import connect, migrate, now
from blockvault.center.workers import Periodic
from blockvault.errors import CenterStateError

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_LISTEN",
    "Center",
    "CenterConfig",
    "load_config",
    "open_center",
    "open_configured",
]

SECRET_FILE = "secret.key"  # 32 random bytes, owner-only: seals stored passwords
CONFIG_FILE: Final = "center.toml"
DEFAULT_LISTEN: Final = "0.0.0.0:8443"
CONFIG_LIMIT: Final = 64 * 1024  # bytes: a center.toml is a dozen lines


@dataclass(frozen=True)
class CenterConfig:
    """``center.toml``: what the server needs before it can open its database. Paths
    are relative to the state directory unless absolute; what may change while the
    center runs lives in the settings table instead (``center/settings.py``)."""

    database: str | None = None  # None: SQLite in the state directory
    listen: str = DEFAULT_LISTEN  # HOST:PORT of the HTTPS server
    certificate: str = "tls/center.crt"  # PEM; the server's chain, leaf first
    key: str = "tls/center.key"  # PEM, owner-only
    heartbeat_interval: int = 60  # seconds between an agent's heartbeats

    def as_toml(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "listen": self.listen,
            "certificate": self.certificate,
            "key": self.key,
            "heartbeat_interval": self.heartbeat_interval,
        }
        if self.database is not None:
            document["database"] = self.database
        return document


def load_config(state: Path) -> CenterConfig:
    """The ``center.toml`` of ``state``; ``CenterStateError`` (one line) when it is
    missing, unreadable, too large or holds a wrong key or value."""
    path = state / CONFIG_FILE
    try:
        with path.open("rb") as file:
            data = file.read(CONFIG_LIMIT + 1)
    except FileNotFoundError:
        raise CenterStateError(
            "no center here: run 'blockvault center init' first", path=path
        ) from None
    except OSError as exc:
        raise CenterStateError(exc.strerror or str(exc), path=path) from None
    if len(data) > CONFIG_LIMIT:
        raise CenterStateError(f"larger than {CONFIG_LIMIT} bytes", path=path)
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CenterStateError(f"not valid TOML ({exc})", path=path) from None
    types = {"database": str, "listen": str, "certificate": str, "key": str}
    for key, value in document.items():
        wanted = types.get(key, int if key == "heartbeat_interval" else None)
        if wanted is None:
            raise CenterStateError(f"unknown key {key!r}", path=path)
        if type(value) is not wanted or (isinstance(value, int) and not 1 <= value <= 86400):
            kind = "a string" if wanted is str else "a number of seconds (1-86400)"
            raise CenterStateError(f"{key} must be {kind}", path=path)
    return CenterConfig(**document)


@dataclass
class Center:
    state: Path  # the state directory: database (SQLite), certificate, keys, logs
    engine: Engine
    sessions: sessionmaker[Session]
    secret: bytes
    config: CenterConfig = field(default_factory=CenterConfig)
    bus: Bus = field(default_factory=Bus)
    workers: list[Periodic] = field(default_factory=list)  # started with the web app
    clock: Callable[[], datetime] = now  # tests of schedules and overdue hosts step it


def open_center(state: Path, database: str | None = None) -> Center:
    """The center whose state lives in ``state``, its database migrated to the newest
    schema. ``database`` is a URL; None: SQLite in the state directory."""
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    url = database or f"sqlite:///{state / 'center.db'}"
    if not url.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        raise CenterStateError(
            "the database must be sqlite:///PATH or postgresql://...", path=state
        )
    engine, sessions = connect(url)
    try:
        migrate(engine)
    except (SQLAlchemyError, ImportError) as exc:
        engine.dispose()
        # the driver's own words, never the URL: it may hold a password
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise CenterStateError(f"cannot open the database: {reason}", path=state) from None
    return Center(state=state, engine=engine, sessions=sessions, secret=_secret(state))


def open_configured(state: Path) -> Center:
    """The center ``center init`` made in ``state``, as its ``center.toml`` says."""
    config = load_config(state)
    center = open_center(state, config.database)
    center.config = config
    return center


def _secret(state: Path) -> bytes:
    path = state / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes()
        if len(secret) != 32:
            raise CenterStateError("not a center secret (32 bytes)", path=path) from None
        return secret
    secret = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as out:
        out.write(secret)
        out.flush()
        os.fsync(out.fileno())
    return secret
