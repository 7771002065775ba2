"""``center init``, ``center user ...`` and ``center install`` as a user runs them,
on SQLite and PostgreSQL: one-line errors for a bad state, certificates from
openssl, accounts changed and audited from the server's shell."""

from __future__ import annotations

import base64
import getpass
import json
import socket
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from blockvault.center.auth import verify_password
from blockvault.center.context import open_center
from blockvault.center.models import Audit, User
from blockvault.plans.service import systemd_running
from tests.conftest import blockvault, sh


def _init(state: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return blockvault(
        "center", "init", "--state", state, "--database", database_url, "--listen",
        "127.0.0.1:8443", *args,
    )  # fmt: skip


def _one_line_error(done: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith("blockvault: error: ") and done.stderr.count("\n") == 1
    return done.stderr


def _openssl_fingerprint(certificate: Path) -> str:
    """The fingerprint as openssl computes it, in our SHA256:base64 form."""
    line = sh("openssl", "x509", "-in", certificate, "-noout", "-fingerprint", "-sha256")
    digest = bytes.fromhex(line.strip().split("=", 1)[1].replace(":", ""))
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def test_init_makes_a_private_state_and_refuses_a_second(tmp_path: Path, database_url: str) -> None:
    state = tmp_path / "state"
    done = _init(state, database_url, "--json", "--hostname", "backup.example.org")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "tls" / "center.key").stat().st_mode & 0o777 == 0o600
    assert made["fingerprint"] == _openssl_fingerprint(Path(made["certificate"]))
    names = sh("openssl", "x509", "-in", made["certificate"], "-noout", "-ext", "subjectAltName")
    assert "DNS:backup.example.org" in names and "IP Address:127.0.0.1" in names
    assert made["url"] == "https://backup.example.org:8443"
    opened = open_center(state, database_url)
    try:
        with opened.sessions() as session:
            admin = session.scalars(select(User)).one()
            assert admin.name == "admin" and admin.role == "admin"
            assert verify_password(admin.password_hash, made["password"])
    finally:
        opened.engine.dispose()

    again = _init(state, database_url)
    assert "already set up here" in _one_line_error(again)
    password = tmp_path / "pw"
    password.write_text("a-new-password\n")
    forced = _init(state, database_url, "--force", "--json", "--admin-password-file", password)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["password"] is None  # it came from the file
    assert json.loads(forced.stdout)["fingerprint"] != made["fingerprint"]


def test_init_with_a_given_certificate(tmp_path: Path, database_url: str) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    sh(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-subj", "/CN=center.lan", "-days", "30", "-keyout", key, "-out", cert,
    )  # fmt: skip
    done = _init(tmp_path / "s", database_url, "--cert", cert, "--key", key, "--json")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["self_signed"] is False and made["certificate"] == str(cert)
    assert made["fingerprint"] == _openssl_fingerprint(cert)

    other_key = tmp_path / "other.pem"
    sh(
        "openssl",
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        other_key,
    )
    wrong = _init(tmp_path / "t", database_url, "--cert", cert, "--key", other_key)
    assert "cannot serve TLS with this certificate" in _one_line_error(wrong)
    half = _init(tmp_path / "u", database_url, "--cert", cert)
    assert "give both --cert and --key" in _one_line_error(half)


BAD_CONFIG = [
    ("listen = [", "not valid TOML"),
    ('colour = "blue"', "unknown key 'colour'"),
    ("heartbeat_interval = 0", "heartbeat_interval must be a number of seconds"),
    ('database = "postgresql://u:hunter2@127.0.0.1:1/nothing"', "cannot open the database"),
    ('database = "mysql://x"', "must be sqlite:///PATH or postgresql://"),
]


def test_serve_refuses_a_bad_state_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert _init(state, f"sqlite:///{tmp_path / 'c.db'}").returncode == 0
    good = (state / "center.toml").read_text().splitlines()
    for config, says in BAD_CONFIG:
        key = config.split("=")[0].strip()
        kept = [line for line in good if not line.startswith(key)]
        (state / "center.toml").write_text("\n".join([*kept, config]) + "\n")
        error = _one_line_error(blockvault("center", "serve", "--state", state))
        assert says in error and "hunter2" not in error, config


def test_serve_without_a_state_or_a_free_port(tmp_path: Path) -> None:
    done = blockvault("center", "serve", "--state", tmp_path / "none")
    assert "run 'blockvault center init' first" in _one_line_error(done)
    state = tmp_path / "state"
    assert _init(state, f"sqlite:///{tmp_path / 'c.db'}").returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = blockvault("center", "serve", "--state", state, "--listen", f"127.0.0.1:{port}")
    assert "cannot listen on 127.0.0.1" in _one_line_error(busy)


def test_users_from_the_shell(tmp_path: Path, database_url: str) -> None:
    state = tmp_path / "state"
    assert _init(state, database_url).returncode == 0
    password = tmp_path / "pw"
    password.write_text("lab-password-1\n")
    user = ["center", "user"]
    added = blockvault(
        *user,
        "add",
        "lab",
        "--role",
        "operator",
        "--group",
        "lab",
        "--password-file",
        password,
        "--state",
        state,
    )
    assert added.stdout == "added operator lab\n", added.stderr
    generated = blockvault(*user, "add", "vera", "--role", "viewer", "--state", state)
    shown = generated.stdout.rsplit(": ", 1)[1].strip()
    bad = blockvault(*user, "add", "bad name", "--role", "viewer", "--state", state)
    assert "1-64 letters" in _one_line_error(bad, 2)
    again = blockvault(*user, "add", "lab", "--role", "viewer", "--state", state)
    assert "already exists" in _one_line_error(again, 2)
    listed = json.loads(blockvault(*user, "list", "--json", "--state", state).stdout)
    assert [(u["name"], u["role"], u["groups"]) for u in listed] == [
        ("admin", "admin", None),
        ("lab", "operator", ["lab"]),
        ("vera", "viewer", None),
    ]
    assert blockvault(*user, "disable", "vera", "--state", state).returncode == 0
    password.write_text("vera-password-2\n")
    assert (
        blockvault(
            *user, "passwd", "vera", "--password-file", password, "--state", state
        ).returncode
        == 0
    )
    gone = blockvault(*user, "delete", "nobody", "--state", state)
    assert "no such user" in _one_line_error(gone, 2)
    last = blockvault(*user, "delete", "admin", "--state", state)
    assert "last enabled admin" in _one_line_error(last, 2)
    assert blockvault(*user, "delete", "lab", "--state", state).returncode == 0

    opened = open_center(state, database_url)
    try:
        with opened.sessions() as session:
            vera = session.scalars(select(User).where(User.name == "vera")).one()
            assert vera.disabled and verify_password(vera.password_hash, "vera-password-2")
            assert not verify_password(vera.password_hash, shown)
            audited = [
                (a.actor, a.action, a.target)
                for a in session.scalars(select(Audit).order_by(Audit.id))
            ]
    finally:
        opened.engine.dispose()
    me = f"local:{getpass.getuser()}"
    assert audited[-5:] == [
        (me, "user.create", "user:lab"),
        (me, "user.create", "user:vera"),
        (me, "user.update", "user:vera"),
        (me, "user.update", "user:vera"),
        (me, "user.delete", "user:lab"),
    ]


@pytest.mark.skipif(systemd_running(), reason="would enable and start the unit here")
def test_install_writes_a_unit(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert _init(state, f"sqlite:///{tmp_path / 'c.db'}").returncode == 0
    units = tmp_path / "units"
    done = blockvault("center", "install", "--state", state, "--unit-dir", units)
    assert done.returncode == 0, done.stderr
    unit = (units / "blockvault-center.service").read_text()
    assert f"center serve --state {state}" in unit
    assert f"ReadWritePaths={state}" in unit and "CapabilityBoundingSet=\n" in unit
    missing = blockvault("center", "install", "--state", tmp_path / "none", "-n")
    assert "run 'blockvault center init' first" in _one_line_error(missing)
