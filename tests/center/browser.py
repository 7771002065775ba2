"""The dashboard in a real browser: the center's app served over HTTPS by uvicorn on a
free port of the loopback (a thread of the test process, so a test can step its clock
and publish on its bus), and Chromium driven by Playwright, headless, with a fresh
profile. Console errors and failed requests of every page are collected: a test ends
by asserting there were none.

The certificate is self-signed and written where ``center init`` writes it (the enrol
page reads its fingerprint there); the browser is told to
accept it, as a person would after checking the fingerprint.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn

from blockvault.center.app import create_app
from blockvault.center.context import Center
from blockvault.center.tls import self_signed

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def certificate(center: Center) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key where ``center init`` puts
    them (``center.toml``'s defaults), so the pages find its fingerprint."""
    cert_pem, key_pem = self_signed(["127.0.0.1", "localhost"], days=1)
    cert, key = center.state / center.config.certificate, center.state / center.config.key
    cert.parent.mkdir(mode=0o700, exist_ok=True)
    cert.write_bytes(cert_pem)
    key.touch(mode=0o600)
    key.write_bytes(key_pem)
    return cert, key


@dataclass
class Served:
    url: str  # https://127.0.0.1:PORT
    cert: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def serve(center: Center) -> Iterator[Served]:
    """The center's app on a free loopback port over HTTPS until the generator ends."""
    cert, key = certificate(center)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(center),
        log_level="warning",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the center's test server did not start")
        time.sleep(0.05)
    try:
        yield Served(f"https://127.0.0.1:{port}", cert)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture
def served(center: Center) -> Iterator[Served]:
    yield from serve(center)


@dataclass
class Watched:
    """A page whose console errors, uncaught exceptions and failed requests are kept."""

    page: Page
    problems: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    """Chromium with a fresh profile (Playwright makes a new user-data dir per launch)."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no {CHROMIUM} (scripts/setup installs chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium: Browser) -> Iterator[Watched]:
    """A fresh browser context (no cookies) and page; its problems are collected."""
    context = chromium.new_context(
        ignore_https_errors=True, viewport={"width": 1280, "height": 900}
    )
    # window.sseOpen: the page's event stream is open, so events published now reach it
    context.add_init_script(
        "document.addEventListener('htmx:sseOpen', () => { window.sseOpen = true })"
    )
    page = context.new_page()
    watched = Watched(page)

    def on_console(message: Any) -> None:
        if message.type == "error":
            watched.problems.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.problems.append(f"page error: {error}"))

    def on_failed(request: Any) -> None:
        if request.failure != "net::ERR_ABORTED":  # leaving a page cuts what it loads
            watched.problems.append(f"request failed: {request.url} ({request.failure})")

    page.on("requestfailed", on_failed)
    try:
        yield watched
    finally:
        context.close()
