"""``center init``: a new center's state directory, ready for ``center serve``.

The directory (owner-only) holds ``center.toml``, the database when it is SQLite,
``secret.key`` and ``tls/`` with the certificate and its key. Unless the admin
brings a certificate, init makes a self-signed one: agents pin its fingerprint at
enrolment, so trust comes from the fingerprint init prints, not from an authority.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import tomli_w
from sqlalchemy import select

from blockvault.center.context import CONFIG_FILE, CenterConfig, open_center
from blockvault.center.db import transaction
from blockvault.center.models import User
from blockvault.center.tls import pem_fingerprint, self_signed
from blockvault.center.users import Actor, add_user, update_user
from blockvault.errors import CenterStateError
from blockvault.plans.metrics import parse_address

__all__ = ["DEFAULT_STATE", "STATE_ENV", "Initialised", "certificate_names", "init_state"]

DEFAULT_STATE: Final = Path("/var/lib/blockvault/center")
STATE_ENV: Final = "BLOCKVAULT_CENTER"
PEM_LIMIT: Final = 1024 * 1024  # bytes: a certificate chain is a few kilobytes


@dataclass(frozen=True)
class Initialised:
    state: Path
    url: str  # https://HOST:PORT as agents and browsers reach it
    fingerprint: str  # SHA256:... of the certificate agents pin
    admin: str
    password: str | None  # generated: shown once; None when it came from a file
    certificate: Path
    self_signed: bool


def certificate_names(hostnames: list[str], listen: str) -> list[str]:
    """The names a self-signed certificate carries: the given host names (else this
    machine's), the listen address when it is a specific IP, and loopback."""
    host, _port = parse_address(listen, "--listen", "0.0.0.0:8443")
    names = list(hostnames) or [socket.getfqdn()]
    if _specific_ip(host):
        names.append(host)
    names += ["localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(names))  # in order, each once


def _specific_ip(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def init_state(
    state: Path,
    *,
    actor: Actor,
    database: str | None = None,
    admin: str = "admin",
    password: str | None = None,
    certificate: Path | None = None,
    key: Path | None = None,
    hostnames: list[str] | tuple[str, ...] = (),
    listen: str = CenterConfig.listen,
    force: bool = False,
) -> Initialised:
    """Make (or with ``force``, make again) the center in ``state``: configuration,
    database, certificate and the first admin (``password`` None: a generated one,
    returned to be shown once). ``force`` keeps the database and its accounts, sets
    the admin's password and replaces the configuration and a self-signed
    certificate: agents enrolled before must pin the new fingerprint."""
    host, port = parse_address(listen, "--listen", "0.0.0.0:8443")
    if (certificate is None) != (key is None):
        raise CenterStateError("give both --cert and --key, or neither", path=state)
    config_path = state / CONFIG_FILE
    if config_path.exists() and not force:
        raise CenterStateError(
            "a center is already set up here; keep it, or give --force to set it up again",
            path=state,
        )
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    state.chmod(0o700)  # the secret, the key and the database are in here
    config = CenterConfig(database=database, listen=listen)
    if certificate is not None and key is not None:
        config = replace(config, certificate=str(certificate.absolute()), key=str(key.absolute()))
        made = False
    else:
        cert_pem, key_pem = self_signed(certificate_names(list(hostnames), listen))
        cert_path, key_path = state / config.certificate, state / config.key
        cert_path.parent.mkdir(mode=0o700, exist_ok=True)
        _write(key_path, key_pem, 0o600)
        _write(cert_path, cert_pem, 0o644)
        made = True
    cert_path, key_path = state / config.certificate, state / config.key
    fingerprint = check_certificate(cert_path, key_path)
    center = open_center(state, database)
    generated = None
    if password is None:
        password = generated = secrets.token_urlsafe(18)
    try:
        with transaction(center.sessions) as session:
            if session.scalar(select(User.id).where(User.name == admin)) is None:
                add_user(session, actor, admin, "admin", password)
            else:
                update_user(session, actor, admin, role="admin", password=password, disabled=False)
    finally:
        center.engine.dispose()
    # written last: a center.toml means a finished init
    _write(config_path, tomli_w.dumps(config.as_toml()).encode(), 0o600)
    shown_host = hostnames[0] if hostnames else (host if _specific_ip(host) else socket.getfqdn())
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    return Initialised(
        state=state,
        url=f"https://{shown_host}:{port}",
        fingerprint=fingerprint,
        admin=admin,
        password=generated,
        certificate=cert_path,
        self_signed=made,
    )


def check_certificate(certificate: Path, key: Path) -> str:
    """The fingerprint of ``certificate`` after making sure a TLS server can use it
    with ``key``; ``CenterStateError`` (one line) when it cannot."""
    try:
        with certificate.open("rb") as file:
            pem = file.read(PEM_LIMIT)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
    except OSError as exc:  # ssl.SSLError is one
        reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
        raise CenterStateError(
            f"cannot serve TLS with this certificate and key {key} ({reason})", path=certificate
        ) from None
    return pem_fingerprint(pem)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole or not at all, with ``mode`` from the start."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
