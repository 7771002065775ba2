"""``center group`` and ``center token`` on a center's state made by ``center init``:
the same rows the API makes, audited, and clear one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sqlalchemy import select

from blockvault.center.auth import secret_hash
from blockvault.center.context import open_configured
from blockvault.center.db import transaction
from blockvault.center.models import Audit, EnrolToken
from tests.conftest import blockvault


def test_groups_and_tokens_from_the_command_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    password = tmp_path / "password"
    password.write_text("a-long-admin-password\n")
    made = blockvault(
        "center", "init", "--state", state, "--admin-password-file", password,
        "--listen", "127.0.0.1:8443",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr

    def center(*args: str) -> subprocess.CompletedProcess[str]:
        return blockvault("center", *args, "--state", state)

    added = center("group", "add", "lab", "--description", "the lab's PCs")
    assert added.returncode == 0, added.stderr
    again = center("group", "add", "lab")
    assert again.returncode == 2 and "exists" in again.stderr
    listed = json.loads(center("group", "list", "--json").stdout)
    assert listed == [{"name": "lab", "description": "the lab's PCs"}]

    created = center("token", "create", "--group", "lab", "--ttl", "2h", "--uses", "3")
    token = created.stdout.strip()
    assert created.returncode == 0 and token.startswith("enrol_")
    for args, why in (
        (("--group", "nowhere"), "no group named nowhere"),
        (("--ttl", "60d"), "from 1m to 30d"),
        (("--ttl", "soon"), "duration 'soon'"),
    ):
        refused = center("token", "create", *args)
        assert refused.returncode == 2 and why in refused.stderr, refused
    opened = open_configured(state)
    try:
        with transaction(opened.sessions) as session:
            row = session.scalars(select(EnrolToken)).one()
            actions = session.scalars(select(Audit.action).order_by(Audit.id)).all()
    finally:
        opened.engine.dispose()
    assert row.token_hash == secret_hash(token) and row.uses_left == 3
    assert 7100 < (row.expires - row.created).total_seconds() <= 7200
    assert [a for a in actions if a.startswith(("group", "enrol"))] == [
        "group.create",
        "enrol-token.create",
    ]
