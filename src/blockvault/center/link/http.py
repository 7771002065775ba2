"""The agent's HTTPS connection to its center: the pinned certificate is the only
trust anchor, and the agent's token is renewed by signing a fresh challenge.

The host name in the certificate is not checked: what makes the center the center is
the certificate the agent pinned at enrolment (its fingerprint given by the admin),
not a name a public CA vouches for, so the agent also works by IP address or behind
NAT. ``enrol`` fetches the certificate and compares its fingerprint before anything,
the token least of all, is sent.
"""

from __future__ import annotations

import platform
import ssl
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from blockvault.center.link.identity import AgentKey, Enrolment
from blockvault.center.tls import fingerprint, same_fingerprint
from blockvault.errors import CenterRefused, CenterUnreachable, CertificateMismatch, UsageError

__all__ = ["HttpLink", "enrol", "fetch_certificate", "pinned_context"]

CONNECT_TIMEOUT: Final = 10.0
RENEW_BEFORE: Final = timedelta(minutes=5)  # sign in again this long before the token ends


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"{url}: the center's address is https://HOST[:PORT]")
    try:
        return parts.hostname, parts.port or 443
    except ValueError:
        raise UsageError(f"{url}: the port is not a number from 1 to 65535") from None


def fetch_certificate(url: str) -> str:
    """The PEM certificate the center at ``url`` presents (not verified: the caller
    compares its fingerprint)."""
    host, port = _address(url)
    try:
        return ssl.get_server_certificate((host, port), timeout=CONNECT_TIMEOUT)
    except (OSError, ssl.SSLError) as exc:
        raise CenterUnreachable(url=url, detail=str(exc.strerror or exc)) from None


def pinned_context(certificate: str) -> ssl.SSLContext:
    """TLS that trusts ``certificate`` and nothing else, whatever name it carries."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a pinned leaf is an anchor
    context.load_verify_locations(cadata=certificate)
    return context


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else response.reason_phrase
    return f"{text} (HTTP {response.status_code})"[:300]


def enrol(
    url: str, token: str, expected: str, name: str, key: AgentKey, agent_version: str
) -> Enrolment:
    """Register this machine with the center at ``url``: its certificate must have
    the fingerprint ``expected`` (``CertificateMismatch`` otherwise, before the token
    is sent)."""
    url = url.rstrip("/")
    pem = fetch_certificate(url)
    der = ssl.PEM_cert_to_DER_cert(pem)
    if not same_fingerprint(der, expected):
        raise CertificateMismatch(url=url, found=fingerprint(der), expected=expected.strip())
    body = {
        "token": token,
        "name": name,
        "public_key": key.public,
        "os": platform.platform(terse=True)[:255],
        "agent_version": agent_version[:64],
    }
    with httpx.Client(base_url=url, verify=pinned_context(pem), timeout=30) as client:
        try:
            response = client.post("/agent/v1/enrol", json=body)
        except httpx.TransportError as exc:
            raise CenterUnreachable(url=url, detail=str(exc) or type(exc).__name__) from None
    if response.status_code != 200:
        raise CenterRefused(url=url, detail=_detail(response))
    reply: dict[str, Any] = response.json()
    group = reply.get("group")
    return Enrolment(
        url=url,
        fingerprint=fingerprint(der),
        certificate=pem,
        host=name,
        host_id=int(reply["host_id"]),
        group=group if isinstance(group, str) else None,
    )


class HttpLink:
    """A ``LinkClient``: one pinned HTTPS connection pool to the center, and the
    agent token, renewed before it expires or when the center no longer knows it.
    Safe to share between the heartbeat and the jobs threads."""

    def __init__(self, enrolment: Enrolment, key: AgentKey) -> None:
        self.enrolment = enrolment
        self._key = key
        self._client = httpx.Client(
            base_url=enrolment.url,
            verify=pinned_context(enrolment.certificate),
            timeout=httpx.Timeout(30, connect=CONNECT_TIMEOUT),
        )
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = datetime.min.replace(tzinfo=UTC)

    def close(self) -> None:
        self._client.close()

    def call(
        self, method: str, path: str, *, json: Any = None, timeout: float = 30
    ) -> httpx.Response:
        response = self._send(method, path, json, timeout, self._bearer(renew=False))
        if response.status_code == 401:  # the center forgot the token (restarted, expired)
            response = self._send(method, path, json, timeout, self._bearer(renew=True))
        if response.status_code == 403:
            raise CenterRefused(url=self.enrolment.url, detail=_detail(response))
        return response

    def _send(
        self, method: str, path: str, json: Any, timeout: float, token: str | None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            return self._client.request(method, path, json=json, headers=headers, timeout=timeout)
        except httpx.TransportError as exc:
            raise CenterUnreachable(
                url=self.enrolment.url, detail=str(exc) or type(exc).__name__
            ) from None

    def _bearer(self, *, renew: bool) -> str:
        with self._lock:
            if renew or self._token is None or datetime.now(UTC) >= self._expires - RENEW_BEFORE:
                self._token, self._expires = self._sign_in()
            return self._token

    def _sign_in(self) -> tuple[str, datetime]:
        host = self.enrolment.host
        challenge = self._send("POST", "/agent/v1/challenge", {"host": host}, 30, None)
        if challenge.status_code != 200:
            raise CenterRefused(url=self.enrolment.url, detail=_detail(challenge))
        nonce = str(challenge.json()["nonce"])
        body = {"host": host, "nonce": nonce, "signature": self._key.sign(nonce)}
        session = self._send("POST", "/agent/v1/session", body, 30, None)
        if session.status_code != 200:
            raise CenterRefused(url=self.enrolment.url, detail=_detail(session))
        reply = session.json()
        # the expiry is in the center's clock, which may differ from ours: renew by
        # ours, early; a 401 before then makes the agent sign in again anyway
        lifetime = datetime.fromisoformat(reply["expires"]) - datetime.now(UTC)
        return str(reply["token"]), datetime.now(UTC) + max(lifetime, 2 * RENEW_BEFORE)
