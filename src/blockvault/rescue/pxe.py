"""Network boot of the rescue system: proxy-DHCP and TFTP by dnsmasq, the rest by HTTP.

Glossary:

proxy-DHCP
    dnsmasq answers a PXE client's DHCP request with boot information only
    (``dhcp-range=SUBNET,proxy``); the network's own DHCP server still hands out
    the addresses, so ``pxe serve`` can join any lab without reconfiguring it.
boot chain
    Firmware PXE (BIOS, or UEFI's) -> TFTP ``undionly.kpxe`` / ``snponly.efi``
    (Debian's iPXE) -> iPXE asks DHCP again and, recognised by option 175, gets
    ``chain.ipxe`` -> which fetches ``/boot.ipxe?mac=MAC`` from our HTTP server:
    the script for that machine's action -> kernel and initrd over HTTP -> the
    rescue initramfs (live-boot) fetches the whole ISO over HTTP (``fetch=``) into
    memory and loop-mounts it as its medium. A client that is iPXE already (QEMU's
    option ROMs) skips the TFTP step.
action
    What a machine does once booted: ``menu`` (nobody's job), ``restore:SPEC``
    (``blockvault.run="restore SPEC TARGET --yes"``), ``cast[:SESSION]`` (join a
    multicast deployment with the code of ``--cast-key-file``); both jobs reboot
    after. One default and any number per MAC, changeable while serving
    (:meth:`BootActions.set`, for a central server).

Invariants: only the files named in ``HTTP_FILES`` are served; a request names a
MAC or gets the default; dnsmasq runs as a child with its config in a private
runtime folder that goes away with it; its log lines become Noted events.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

from blockvault.errors import PxeOptionError, PxeServeError, UsageError
from blockvault.events import Noted, Reporter, quiet
from blockvault.rescue.build import KERNEL_OPTIONS
from blockvault.rescue.cmdline import job_from_cmdline
from blockvault.rescue.netif import Interface, interface_ipv4
from blockvault.rescue.wol import parse_mac
from blockvault.text import shown

__all__ = [
    "DEFAULT_HTTP_PORT",
    "BootAction",
    "BootActions",
    "PxeServer",
    "PxeSettings",
    "boot_script",
    "chain_script",
    "dnsmasq_config",
    "kernel_options",
    "parse_action",
    "serve",
]

DEFAULT_HTTP_PORT: Final = 9521  # beside cast's 9520
IPXE_DIR: Final = Path("/usr/lib/ipxe")
# TFTP file per client architecture (dnsmasq's CSA names; 7 and 9 are both x86-64 UEFI)
LOADERS: Final = {
    "x86PC": "undionly.kpxe",
    "BC_EFI": "snponly.efi",
    "x86-64_EFI": "snponly.efi",
}
CHAIN_NAME: Final = "chain.ipxe"
ISO_NAME: Final = "rescue.iso"
HTTP_FILES: Final = ("vmlinuz", "initrd.img", ISO_NAME)
RESTORE_TARGET: Final = "/dev/sda"
LOG_LINE_MAX: Final = 300
READY_SECONDS: Final = 15.0
# HTTP clients served at once (each a thread): a boot fetches a few files in turn, so
# this is a whole lab booting; more are closed at once rather than queued
HTTP_CONNECTIONS_MAX: Final = 64
HTTP_IDLE_SECONDS: Final = 30.0  # a client silent this long loses its connection
VALUE_REFUSED: Final = frozenset("\"$\\'")  # iPXE expands ${...}; the kernel keeps quotes

Kind = Literal["menu", "restore", "cast"]


@dataclass(frozen=True)
class BootAction:
    """``menu``, ``restore`` of snapshot ``value``, or ``cast`` in session ``value``."""

    kind: Kind
    value: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}" if self.value else self.kind


def parse_action(text: str) -> BootAction:
    """``menu``, ``restore:SNAPSHOT-SPEC`` or ``cast[:SESSION]``, checked."""
    kind, _, value = text.strip().partition(":")
    bad = VALUE_REFUSED.intersection(value) or any(
        c.isspace() or not c.isprintable() for c in value
    )
    if bad or len(value) > 1024:
        raise PxeOptionError(
            f"{text!r}: a value may not hold spaces, quotes, $ or \\", option="action"
        )
    if kind == "menu" and not value:
        return BootAction("menu")
    if kind == "restore" and value:
        return BootAction("restore", value)
    if kind == "cast":
        return BootAction("cast", value)
    raise PxeOptionError(
        f"{text!r}: use menu, restore:SNAPSHOT-SPEC or cast[:SESSION]", option="action"
    )


def kernel_options(action: BootAction, *, cast_code: str | None, target: str | None) -> str:
    """The ``blockvault.*`` kernel options of ``action`` (checked as the rescue
    system will read them). ``target`` is the disk to write: for a restore
    ``/dev/sda`` when None, for a cast the machine's first disk."""
    if action.kind == "menu":
        return ""
    if target is not None and (
        not target.startswith("/dev/") or any(c in VALUE_REFUSED or c.isspace() for c in target)
    ):
        raise PxeOptionError(f"{target!r} is not a device name", option="--target")
    if action.kind == "restore":
        options = f'blockvault.run="restore {action.value} {target or RESTORE_TARGET} --yes"'
    else:
        if cast_code is None:
            raise PxeOptionError(
                "a cast action needs the session code: give --cast-key-file", option="action"
            )
        if not (cast_code.isascii() and cast_code.isalnum()):  # as deploy.auth.parse_code gives it
            raise PxeOptionError(f"{cast_code!r} is not a session code", option="--cast-key-file")
        options = f"blockvault.cast=receive blockvault.code={cast_code}"
        if action.value:
            options += f" blockvault.session={action.value}"
        if target is not None:
            options += f" blockvault.target={target}"
    options += " blockvault.after=reboot"
    job_from_cmdline(options)
    return options


class BootActions:
    """The default action and the per-MAC ones; safe to change while serving."""

    def __init__(self, default: BootAction, per_mac: dict[str, BootAction] | None = None) -> None:
        self._lock = threading.Lock()
        self.default = default
        self._per_mac = {parse_mac(m): a for m, a in (per_mac or {}).items()}

    def set(self, mac: str, action: BootAction | None) -> None:
        """Give ``mac`` its own action (None: the default again), for its next boot."""
        key = parse_mac(mac)
        with self._lock:
            if action is None:
                self._per_mac.pop(key, None)
            else:
                self._per_mac[key] = action

    def for_mac(self, mac: str | None) -> BootAction:
        with self._lock:
            return self._per_mac.get(mac, self.default) if mac else self.default

    def table(self) -> dict[str, BootAction]:
        with self._lock:
            return dict(self._per_mac)


def dnsmasq_config(interface: Interface, tftp_root: Path) -> str:
    """dnsmasq's configuration: no DNS, proxy-DHCP on the interface's subnet, TFTP of
    the iPXE loaders, and ``chain.ipxe`` for clients that are iPXE already."""
    lines = [
        "port=0",  # no DNS server
        f"interface={interface.name}",
        "bind-interfaces",
        f"dhcp-range={interface.network.network_address},proxy,{interface.network.netmask}",
        "enable-tftp",
        f"tftp-root={tftp_root}",
        f"dhcp-leasefile={tftp_root.parent / 'leases'}",
        "dhcp-match=set:ipxe,175",
    ]
    for csa, loader in LOADERS.items():
        lines.append(f'pxe-service=tag:!ipxe,{csa},"blockvault rescue",{loader}')
        lines.append(f'pxe-service=tag:ipxe,{csa},"blockvault rescue",{CHAIN_NAME}')
    return "\n".join(lines) + "\n"


def chain_script(base_url: str) -> str:
    """What iPXE loads by TFTP: fetch this machine's script over HTTP (retrying)."""
    return (
        "#!ipxe\n"
        ":again\n"
        f"chain {base_url}/boot.ipxe?mac=${{netX/mac}} && goto done\n"
        "echo blockvault pxe: no boot script from the server, retrying in 5 s\n"
        "sleep 5\n"
        "goto again\n"
        ":done\n"
    )


def boot_script(base_url: str, mac: str | None, options: str) -> str:
    """The iPXE script that boots the rescue system with ``options``; its initramfs
    fetches the ISO from ``base_url`` and finds its network card by ``mac``."""
    bootif = f" BOOTIF=01-{mac.replace(':', '-')}" if mac else ""
    line = f"{KERNEL_OPTIONS}{bootif} fetch={base_url}/{ISO_NAME} {options}".rstrip()
    return (
        "#!ipxe\n"
        f"echo blockvault rescue: {options or 'menu'}\n"
        f"kernel {base_url}/vmlinuz initrd=initrd.img {line}\n"
        f"initrd {base_url}/initrd.img\n"
        "boot\n"
    )


@dataclass(frozen=True)
class _Served:
    interface: Interface
    base_url: str
    files: dict[str, Path]
    actions: BootActions
    cast_code: str | None
    target: str | None
    reporter: Reporter


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.0"
    timeout = HTTP_IDLE_SECONDS

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        served = self.server.served
        url = urlsplit(self.path)
        name = url.path.lstrip("/")
        if name == "boot.ipxe":
            self._script(served, parse_qs(url.query).get("mac", [""])[0], body=body)
        elif name in served.files:
            path = served.files[name]
            size = path.stat().st_size
            served.reporter(Noted(f"http: {self.client_address[0]} {name} ({size} bytes)"))
            self._headers(HTTPStatus.OK, "application/octet-stream", size)
            if body:
                with open(path, "rb") as file:
                    shutil.copyfileobj(file, self.wfile, 1 << 20)
        else:
            self._headers(HTTPStatus.NOT_FOUND, "text/plain", 0)

    def _script(self, served: _Served, mac_text: str, *, body: bool) -> None:
        try:
            mac = parse_mac(mac_text) if mac_text else None
        except PxeOptionError:
            self._headers(HTTPStatus.BAD_REQUEST, "text/plain", 0)
            return
        action = served.actions.for_mac(mac)
        options = kernel_options(action, cast_code=served.cast_code, target=served.target)
        text = boot_script(served.base_url, mac, options).encode()
        who = f"{self.client_address[0]} ({mac or 'no MAC'})"
        served.reporter(Noted(f"boot: {who} gets action {action}"))
        self._headers(HTTPStatus.OK, "text/plain", len(text))
        if body:
            self.wfile.write(text)

    def _headers(self, status: HTTPStatus, kind: str, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the library never prints: what matters is reported in _answer


class _HttpServer(ThreadingHTTPServer):
    """A thread per connection, at most ``limit`` at once: a peer opening connections
    without end gets each one beyond the limit closed, not a thread."""

    daemon_threads = True
    served: _Served

    def __init__(self, address: tuple[str, int], limit: int = HTTP_CONNECTIONS_MAX) -> None:
        super().__init__(address, _Handler)
        self._slots = threading.BoundedSemaphore(limit)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.served.reporter(Noted(f"http: {client_address[0]} refused: too many clients"))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


@dataclass(frozen=True)
class PxeSettings:
    interface: str
    iso: Path
    actions: BootActions
    cast_code: str | None = None
    target: str | None = None  # the disk to write (see kernel_options)
    http_port: int = DEFAULT_HTTP_PORT  # 0: any free port


class PxeServer:
    """``pxe serve`` while it runs: the HTTP server (a thread) and dnsmasq (a child).

    Use as a context manager; :meth:`wait` blocks until dnsmasq stops (an error) or
    the caller is interrupted, and leaving the block stops both and removes the
    runtime folder."""

    def __init__(self, settings: PxeSettings, reporter: Reporter = quiet) -> None:
        self._dnsmasq_path = _check_tools()
        self.settings = settings
        self.reporter = reporter
        self.actions = settings.actions
        self.interface = interface_ipv4(settings.interface)
        self.base_url = ""
        self._runtime: Path | None = None
        self._http: _HttpServer | None = None
        self._dnsmasq: subprocess.Popen[str] | None = None
        self._log: threading.Thread | None = None

    def __enter__(self) -> PxeServer:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        if not self.settings.iso.is_file():
            raise PxeOptionError(f"{self.settings.iso} is not a file", option="--iso")
        for action in [self.actions.default, *self.actions.table().values()]:
            kernel_options(action, cast_code=self.settings.cast_code, target=self.settings.target)
        runtime = Path(tempfile.mkdtemp(prefix="blockvault-pxe-"))
        self._runtime = runtime
        runtime.chmod(0o755)  # dnsmasq reads its TFTP root as nobody
        tftp = runtime / "tftp"
        tftp.mkdir(mode=0o755)
        for loader in sorted(set(LOADERS.values())):
            shutil.copyfile(IPXE_DIR / loader, tftp / loader)
        files = _kernel_from_iso(self.settings.iso, runtime / "http")
        files[ISO_NAME] = self.settings.iso
        try:
            http = _HttpServer((self.interface.address, self.settings.http_port))
        except OSError as exc:
            raise PxeServeError(
                f"HTTP port {self.settings.http_port}: {exc.strerror}; give another --http-port",
                interface=self.interface.name,
            ) from None
        self._http = http
        self.base_url = f"http://{self.interface.address}:{http.server_address[1]}"
        http.served = _Served(
            self.interface,
            self.base_url,
            files,
            self.actions,
            self.settings.cast_code,
            self.settings.target,
            self.reporter,
        )
        threading.Thread(target=http.serve_forever, name="pxe-http", daemon=True).start()
        (tftp / CHAIN_NAME).write_text(chain_script(self.base_url))
        for path in tftp.iterdir():
            path.chmod(0o644)
        config = runtime / "dnsmasq.conf"
        config.write_text(dnsmasq_config(self.interface, tftp))
        self._run_dnsmasq(self._dnsmasq_path, config)
        self.reporter(
            Noted(
                f"serving the rescue system on {self.interface.name} "
                f"({self.interface.network}, proxy-DHCP; {self.base_url}); "
                f"default action {self.actions.default}"
            )
        )

    def _run_dnsmasq(self, dnsmasq: str, config: Path) -> None:
        proc = subprocess.Popen(
            [dnsmasq, "--keep-in-foreground", "--log-facility=-", "--pid-file", "-C", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._dnsmasq = proc
        ready = threading.Event()
        last: list[str] = []

        def forward() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                text = shown(line.strip()[:LOG_LINE_MAX])
                last[:] = [text]
                if "TFTP root is" in text:
                    ready.set()
                self.reporter(Noted(f"dnsmasq: {text}"))
            ready.set()

        self._log = threading.Thread(target=forward, name="pxe-dnsmasq-log", daemon=True)
        self._log.start()
        ready.wait(READY_SECONDS)
        if proc.poll() is not None or not ready.is_set():
            detail = last[0] if last else f"exit status {proc.poll()}"
            raise PxeServeError(f"dnsmasq did not start: {detail}", interface=self.interface.name)

    def wait(self) -> None:
        """Block until dnsmasq stops by itself (raises :class:`PxeServeError`)."""
        assert self._dnsmasq is not None
        status = self._dnsmasq.wait()
        if self._log:
            self._log.join(5)
        raise PxeServeError(
            f"dnsmasq stopped (exit status {status})", interface=self.interface.name
        )

    def close(self) -> None:
        if self._dnsmasq is not None and self._dnsmasq.poll() is None:
            self._dnsmasq.terminate()
            try:
                self._dnsmasq.wait(10)
            except subprocess.TimeoutExpired:
                self._dnsmasq.kill()
                self._dnsmasq.wait()
            self.reporter(Noted("dnsmasq stopped"))
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None


def _check_tools() -> str:
    if os.geteuid() != 0:
        raise UsageError("pxe serve needs root: DHCP and TFTP listen on ports 67 and 69")
    dnsmasq = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if dnsmasq is None:
        raise UsageError("dnsmasq is not installed (apt-get install dnsmasq-base)")
    missing = [name for name in set(LOADERS.values()) if not (IPXE_DIR / name).is_file()]
    if missing:
        raise UsageError(f"iPXE's {', '.join(sorted(missing))} not found (apt-get install ipxe)")
    if shutil.which("xorriso") is None:
        raise UsageError("xorriso is not installed (apt-get install xorriso)")
    return dnsmasq


def _kernel_from_iso(iso: Path, folder: Path) -> dict[str, Path]:
    """The rescue kernel and initramfs, copied out of the ISO into ``folder``."""
    folder.mkdir()
    argv = ["xorriso", "-osirrox", "on", "-indev", str(iso)]
    for name in ("vmlinuz", "initrd.img"):
        argv += ["-extract", f"/live/{name}", str(folder / name)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    files = {name: folder / name for name in ("vmlinuz", "initrd.img")}
    if proc.returncode != 0 or not all(p.is_file() for p in files.values()):
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise PxeOptionError(
            f"{iso} is not a blockvault rescue ISO ({lines[-1] if lines else 'no /live/vmlinuz'})",
            option="--iso",
        )
    return files


def serve(
    settings: PxeSettings,
    reporter: Reporter = quiet,
    on_ready: Callable[[PxeServer], None] | None = None,
) -> None:
    """Serve until interrupted (the caller's signal handler raises) or dnsmasq fails."""
    with PxeServer(settings, reporter) as server:
        if on_ready:
            on_ready(server)
        server.wait()
