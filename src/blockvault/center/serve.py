"""``center serve``: the center as one HTTPS server process.

One process holds the API, the agent API, the dashboard and the workers: the
workers and the event bus share memory with the requests (a queued job wakes its
worker, a run report reaches every open dashboard at once), and a site's first
center needs nothing but this process and a directory. uvicorn serves it; SIGTERM or
SIGINT ends it gracefully (requests finish, workers stop), and the signal is raised
again afterwards so the command exits 128 + N as every blockvault command does.
Each request is one line in the log (uvicorn's access log): method, path, status,
never a header or body, where passwords and tokens travel.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import uvicorn

from blockvault.center.app import create_app
from blockvault.center.context import Center
from blockvault.center.state import check_certificate
from blockvault.errors import CenterStateError
from blockvault.plans.metrics import parse_address

__all__ = ["serve"]

_log = logging.getLogger("blockvault.center")


def serve(center: Center, listen: str | None = None) -> None:
    """Serve ``center`` on its configured address (or ``listen``) until a signal."""
    address = listen or center.config.listen
    host, port = parse_address(address, "listen", "0.0.0.0:8443")
    certificate = center.state / center.config.certificate
    key = center.state / center.config.key
    fingerprint = check_certificate(certificate, key)
    listener = _listen(host, port, center.state)
    config = uvicorn.Config(
        create_app(center),
        ssl_certfile=str(certificate),
        ssl_keyfile=str(key),
        log_level="info",
        server_header=False,
        proxy_headers=False,  # the peer's address is the one recorded, not a header's
        timeout_graceful_shutdown=10,
    )
    _log.info("serving https://%s:%d (certificate %s)", host, port, fingerprint)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        listener.close()


def _listen(host: str, port: int, state: Path) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1024)
    except OSError as exc:
        listener.close()
        raise CenterStateError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): change 'listen' in "
            "center.toml or give --listen",
            path=state,
        ) from None
    listener.set_inheritable(True)
    return listener
