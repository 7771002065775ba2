"""What every part of the center shares: the database, the event bus, the state
directory and the center's own secret key. Made once by ``open_center`` and handed to
the web app and the workers."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from blockvault.center.bus import Bus
from blockvault.center.db import connect, migrate, now
from blockvault.center.workers import Periodic
from blockvault.errors import CenterStateError

__all__ = ["Center", "open_center"]

SECRET_FILE = "secret.key"  # 32 random bytes, owner-only: seals stored passwords


@dataclass
class Center:
    state: Path  # the state directory: database (SQLite), certificate, keys, logs
    engine: Engine
    sessions: sessionmaker[Session]
    secret: bytes
    bus: Bus = field(default_factory=Bus)
    workers: list[Periodic] = field(default_factory=list)  # started with the web app
    clock: Callable[[], datetime] = now  # tests of schedules and overdue hosts step it


def open_center(state: Path, database: str | None = None) -> Center:
    """The center whose state lives in ``state``, its database migrated to the newest
    schema. ``database`` is a URL; None: SQLite in the state directory."""
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine, sessions = connect(database or f"sqlite:///{state / 'center.db'}")
    migrate(engine)
    return Center(state=state, engine=engine, sessions=sessions, secret=_secret(state))


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
