"""``center init`` and ``center serve`` as real processes: TLS with the fingerprint
init printed, a pinned client refusing another certificate, graceful SIGTERM, one
log line per request, and one-line errors for a bad state."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import httpx
import pytest

from blockvault.center.tls import self_signed
from tests.center.server import CenterServer, presented_fingerprint
from tests.conftest import sh


def test_serves_tls_with_the_printed_fingerprint(
    center_server: CenterServer, tmp_path: Path
) -> None:
    assert presented_fingerprint(center_server.port) == center_server.fingerprint
    # the fingerprint, computed by openssl from the certificate file
    digest = sh(
        "openssl", "x509", "-in", center_server.certificate, "-noout", "-fingerprint", "-sha256"
    )
    raw = bytes.fromhex(digest.strip().split("=", 1)[1].replace(":", ""))
    assert center_server.fingerprint == "SHA256:" + base64.b64encode(raw).decode().rstrip("=")
    token = center_server.api_token()
    with center_server.client(token) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/api/v1/me").json()["name"] == "admin"
    # a client that pins another certificate refuses this server
    other_pem, _key = self_signed(["center.test", "127.0.0.1"])
    other = tmp_path / "other.crt"
    other.write_bytes(other_pem)
    pinned_elsewhere = ssl.create_default_context(cafile=str(other))
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{center_server.url}/healthz", verify=pinned_elsewhere)
    assert center_server.stop() == 128 + 15
    log = center_server.log_text()
    assert '"GET /healthz HTTP/1.1" 200' in log
    assert '"GET /api/v1/me HTTP/1.1" 200' in log
    assert token not in log
    assert "Traceback" not in log
