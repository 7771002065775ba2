"""Alembic's environment: migrations run on the connection ``db.migrate`` hands over
(or on ``sqlalchemy.url`` when the alembic command line runs them)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from blockvault.center import models  # noqa: F401  (the tables register on Base)
from blockvault.center.db import Base

config = context.config
connection = config.attributes.get("connection")


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url") or "").connect() as own:
        _run(own)
