"""A real ``blockvault center serve`` process for end-to-end tests.

``center_server`` (a fixture, on SQLite and PostgreSQL through ``database_url``)
runs ``center init`` into a temporary state directory (self-signed certificate,
a free loopback port, admin password from a file), starts ``center serve``, waits
until ``/healthz`` answers over HTTPS with the certificate pinned, and stops the
server with SIGTERM at the end. Use it as::

    from tests.center.server import CenterServer  # the fixture: tests/center/conftest.py

    def test_something(center_server: CenterServer) -> None:
        token = center_server.api_token()  # an admin API token
        with center_server.client(token) as http:
            assert http.get("/api/v1/me").json()["name"] == "admin"

``start_center`` / ``running_center`` do the same for a test that needs several
servers or its own options.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from blockvault.center.context import open_center
from blockvault.center.db import transaction
from blockvault.center.tls import fingerprint
from blockvault.center.tokens import issue_token
from blockvault.center.users import Actor, find_user
from blockvault_demo.servers import free_port

__all__ = [
    "CenterServer",
    "center_server",
    "presented_fingerprint",
    "running_center",
    "start_center",
]

ADMIN = "admin"
ADMIN_PASSWORD = "admin-password-0"


@dataclass
class CenterServer:
    url: str  # https://127.0.0.1:PORT
    port: int
    fingerprint: str  # what 'center init' printed: agents pin it
    certificate: Path  # the self-signed certificate (PEM): a strict TLS client trusts it
    state: Path
    database_url: str
    admin: str
    password: str
    process: subprocess.Popen[bytes]
    log: Path
    _tokens: list[str] = field(default_factory=list, repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's certificate and nothing else."""
        return ssl.create_default_context(cafile=str(self.certificate))

    def client(self, token: str | None = None, **options: object) -> httpx.Client:
        """An HTTPS client of this server (certificate pinned), with ``token`` as its
        bearer token if given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=self.url,
            verify=self.ssl_context(),
            headers=headers,
            timeout=30,
            **options,  # type: ignore[arg-type]
        )

    def api_token(self, user: str | None = None, scopes: Sequence[str] = ("admin",)) -> str:
        """A new API token of ``user`` (default: the admin), issued straight in the
        server's database (as ``POST /api/v1/tokens`` would)."""
        opened = open_center(self.state, self.database_url)
        try:
            with transaction(opened.sessions) as session:
                owner = find_user(session, user or self.admin)
                actor = Actor("local:test", opened.clock())
                token, _row = issue_token(
                    session, actor, owner, "test", scopes, lifetime=None, issuer_role="admin"
                )
        finally:
            opened.engine.dispose()
        return token

    def blockvault(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``blockvault center ARGS --state STATE`` on this server's state."""
        return subprocess.run(
            [sys.executable, "-m", "blockvault", "center", *args, "--state", str(self.state)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, and the exit code once it has ended (128 + 15 after a graceful
        stop). Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def presented_fingerprint(port: int, host: str = "127.0.0.1") -> str:
    """The fingerprint of the certificate the server at ``host:port`` presents, as a
    TLS client sees it (no verification: this is what pinning compares)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), 10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return fingerprint(der)


def start_center(
    base: Path,
    database_url: str,
    *,
    init_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 90,
) -> CenterServer:
    """Init a center in ``base/state`` and start serving it on a free port."""
    base.mkdir(parents=True, exist_ok=True)
    state = base / "state"
    password_file = base / "admin-password"
    password_file.write_text(ADMIN_PASSWORD + "\n")
    port = free_port()
    blockvault = [sys.executable, "-m", "blockvault", "center"]
    init = subprocess.run(
        [
            *blockvault,
            "init",
            "--state",
            str(state),
            "--database",
            database_url,
            "--admin",
            ADMIN,
            "--admin-password-file",
            str(password_file),
            "--listen",
            f"127.0.0.1:{port}",
            "--hostname",
            "center.test",
            "--json",
            *init_args,
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if init.returncode != 0:
        raise AssertionError(f"center init failed: {init.stderr.strip()}")
    made = json.loads(init.stdout)
    log = base / "center.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*blockvault, "serve", "--state", str(state)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env={**os.environ, **(env or {})},
        )
    server = CenterServer(
        url=f"https://127.0.0.1:{port}",
        port=port,
        fingerprint=made["fingerprint"],
        certificate=Path(made["certificate"]),
        state=state,
        database_url=database_url,
        admin=ADMIN,
        password=ADMIN_PASSWORD,
        process=process,
        log=log,
    )
    try:
        _wait_healthy(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_healthy(server: CenterServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with server.client() as http:
        while True:
            if server.process.poll() is not None:
                raise AssertionError(
                    f"center serve exited with {server.process.returncode}: {server.log_text()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if http.get("/healthz").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"center not healthy after {timeout}s: {server.log_text()}")
            time.sleep(0.1)


@contextlib.contextmanager
def running_center(base: Path, database_url: str, **options: object) -> Iterator[CenterServer]:
    server = start_center(base, database_url, **options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def center_server(tmp_path: Path, database_url: str) -> Iterator[CenterServer]:
    """A real center process on ``database_url`` (SQLite and PostgreSQL)."""
    with running_center(tmp_path / "center", database_url) as server:
        yield server
