"""Objects as files on an SSH server, over SFTP (paramiko).

Location: ``sftp://[user@]host[:port]/absolute/path``, or ``sftp://host/~/path`` for a
path under the login directory. The host may be an alias of ``~/.ssh/config``.

Trust and keys come from the user's ``~/.ssh`` the way ``ssh`` itself uses them:
``Host`` sections give ``HostName``, ``Port``, ``User``, ``IdentityFile``,
``UserKnownHostsFile`` and ``ProxyCommand`` (what the URL names wins, as on the ssh
command line); keys are tried from ssh-agent, then the ``IdentityFile`` entries, then
``~/.ssh/id_*``. The server's host key must already be in ``known_hosts``: an unknown
or changed key is refused with the ``ssh`` command that lets the user check it. It is
never accepted silently, whatever ``StrictHostKeyChecking`` says.

Writes go to ``.tmp-<name>-<random>`` in the object's folder, are flushed with
``fsync@openssh.com`` when the server offers it, and are then renamed over the name
with ``posix-rename@openssh.com``, which replaces atomically. Listings skip the
temporary names, so a reader sees a whole object or none.

Concurrency: one SSH connection, several SFTP channels on it (one per thread at a
time, at most ``channels``), so the pipelines' threads upload and download in
parallel. When the connection drops, every operation in flight fails with
``TransientStorageError`` and the next one reconnects; the retry wrapper repeats them.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import posixpath
import socket
import stat
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paramiko
from paramiko.sftp import CMD_EXTENDED

from blockvault.errors import ObjectNotFound, StorageError, TransientStorageError, UsageError
from blockvault.storage import modes
from blockvault.storage.backend import Backend, Capabilities, check_name, check_size

__all__ = ["SFTPBackend", "SSHTarget", "resolve_target"]

SSH_DIR = "~/.ssh"
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
WINDOW_SIZE = 16 * 1024 * 1024  # per channel: keeps a 4 MiB chunk streaming without stalls
CONNECT_TIMEOUT = 20.0
IO_TIMEOUT = 120.0  # a request with no answer for this long counts as a dropped link


@dataclass(frozen=True)
class SSHTarget:
    """Where and as whom to connect, after ``~/.ssh/config`` was applied."""

    alias: str  # the host as the user wrote it
    hostname: str
    port: int
    user: str
    path: str  # absolute, or relative to the login directory
    identity_files: tuple[str, ...]
    known_hosts: tuple[str, ...]
    identities_only: bool = False
    proxy_command: str | None = None

    @property
    def host_key_name(self) -> str:
        """The name the host's key is filed under in known_hosts."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def ssh_command(self) -> str:
        port = f"-p {self.port} " if self.port != 22 else ""
        return f"ssh {port}{self.user}@{self.alias}"


def resolve_target(location: str) -> SSHTarget:
    """Parse ``sftp://[user@]host[:port]/path`` and fill in ``~/.ssh/config``."""
    parts = urlsplit(location)
    try:
        url_port = parts.port
    except ValueError:
        raise UsageError(f"repository location {location!r}: the port is not a number") from None
    host = parts.hostname
    if parts.scheme != "sftp" or not host:
        raise UsageError(f"repository location {location!r}: use sftp://[user@]host[:port]/path")
    path = unquote(parts.path)
    if path.startswith("/~/") or path == "/~":
        path = path[3:].strip("/") or "."
    path = path.rstrip("/") if path != "/" else path
    if not path:
        raise UsageError(f"repository location {location!r} names no folder: add /path or /~/path")
    config = paramiko.SSHConfig()
    config_path = Path(os.path.expanduser(SSH_DIR)) / "config"
    if config_path.is_file():
        try:
            config = paramiko.SSHConfig.from_path(str(config_path))
        except (OSError, paramiko.ConfigParseError) as exc:
            raise UsageError(f"{config_path}: {exc}") from None
    entry = config.lookup(host)
    known = entry.get("userknownhostsfile")
    user_known = known.split() if known else [f"{SSH_DIR}/known_hosts", f"{SSH_DIR}/known_hosts2"]
    global_known = entry.get("globalknownhostsfile")
    known_files = [*user_known, *(global_known.split() if global_known else GLOBAL_KNOWN_HOSTS)]
    return SSHTarget(
        alias=host,
        hostname=entry.get("hostname", host),
        port=url_port or int(entry.get("port", 22)),
        user=unquote(parts.username) if parts.username else entry.get("user", getpass.getuser()),
        path=path,
        identity_files=tuple(os.path.expanduser(f) for f in entry.get("identityfile", [])),
        known_hosts=tuple(os.path.expanduser(f) for f in known_files),
        identities_only=entry.get("identitiesonly", "no").lower() == "yes",
        proxy_command=entry.get("proxycommand"),
    )


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    """An unknown host key is refused with the ssh command to check and accept it."""

    def __init__(self, target: SSHTarget, location: str) -> None:
        self.target = target
        self.location = location

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        raise StorageError(
            f"the host key of {hostname} ({key.get_name()} "
            f"{key.fingerprint}) is not in known_hosts; check it and accept it by "
            f"connecting once with '{self.target.ssh_command}', then try again",
            location=self.location,
        )


class SFTPBackend(Backend):
    """A folder on an SSH server; see the module docstring for trust and atomicity."""

    def __init__(self, location: str, *, channels: int = 8) -> None:
        self.target = resolve_target(location)
        self.location = location
        self.capabilities = Capabilities(local_path=None, parallel_io=channels)
        self.root = self.target.path
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(channels)
        self._client: paramiko.SSHClient | None = None
        self._generation = 0
        self._idle: list[tuple[int, paramiko.SFTPClient]] = []
        self._fsync = True  # until the server says it has no fsync@openssh.com
        self._file_mode: int | None = None  # once the reference object exists

    # --- connection ------------------------------------------------------------------
    def _connect(self) -> paramiko.SSHClient:
        t = self.target
        client = paramiko.SSHClient()
        for name in t.known_hosts:
            if os.path.isfile(name):
                try:
                    client.load_system_host_keys(name)
                except (OSError, paramiko.SSHException) as exc:
                    raise StorageError(
                        f"known_hosts file {name}: {exc}", location=self.location
                    ) from None
        client.set_missing_host_key_policy(_RefuseUnknownHost(t, self.location))
        keys = [f for f in t.identity_files if os.path.isfile(f)]
        sock = paramiko.ProxyCommand(t.proxy_command) if t.proxy_command else None
        try:
            client.connect(
                t.hostname,
                t.port,
                t.user,
                key_filename=keys or None,  # type: ignore[arg-type]  # a list works too
                allow_agent=not t.identities_only,
                look_for_keys=not t.identities_only,
                timeout=CONNECT_TIMEOUT,
                banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT,
                sock=sock,
            )
        except StorageError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise StorageError(
                f"the host key of {t.host_key_name} ({exc.key.get_name()}) does not match "
                "the one in known_hosts: the server was reinstalled or someone is "
                "intercepting the connection; if you trust the new key, remove the old one "
                f"with 'ssh-keygen -R \"{t.host_key_name}\"' and connect once with "
                f"'{t.ssh_command}'",
                location=self.location,
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            if not isinstance(exc, paramiko.AuthenticationException) and (
                "authentication" not in str(exc).lower()  # "No authentication methods..."
            ):
                raise TransientStorageError(
                    f"connecting to {t.hostname}:{t.port}: {_describe(exc)}",
                    location=self.location,
                ) from None
            raise StorageError(
                f"logging in as {t.user}@{t.hostname}:{t.port} failed ({exc}); keys are taken "
                "from ssh-agent, IdentityFile in ~/.ssh/config and ~/.ssh/id_*: check that "
                f"'{t.ssh_command}' logs in without asking for a password",
                location=self.location,
            ) from None
        except socket.gaierror as exc:
            client.close()
            raise StorageError(
                f"cannot resolve host {t.hostname}: {exc.strerror}", location=self.location
            ) from None
        except (OSError, EOFError) as exc:
            client.close()
            raise TransientStorageError(
                f"connecting to {t.hostname}:{t.port}: {_describe(exc)}", location=self.location
            ) from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(30)
        return client

    def _acquire(self) -> tuple[int, paramiko.SFTPClient]:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                self._reset()
                self._client = self._connect()
                transport = self._client.get_transport()
                assert transport is not None
            generation = self._generation
            while self._idle:
                gen, sftp = self._idle.pop()
                if gen == generation:
                    return gen, sftp
                sftp.close()
        try:
            opened = paramiko.SFTPClient.from_transport(transport, window_size=WINDOW_SIZE)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._broken(generation)
            raise TransientStorageError(
                f"opening an SFTP channel: {_describe(exc)}", location=self.location
            ) from None
        if opened is None:
            self._broken(generation)
            raise TransientStorageError("opening an SFTP channel failed", location=self.location)
        sftp = opened
        sftp.get_channel().settimeout(IO_TIMEOUT)  # type: ignore[union-attr]
        return generation, sftp

    def _reset(self) -> None:
        """Forget the connection and its channels (call with the lock held)."""
        self._generation += 1
        for _, sftp in self._idle:
            with contextlib.suppress(Exception):
                sftp.close()
        self._idle.clear()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def _broken(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._reset()

    @contextlib.contextmanager
    def _channel(self, what: str) -> Iterator[paramiko.SFTPClient]:
        """An SFTP channel for this thread; failures become storage errors naming ``what``."""
        with self._slots:
            generation, sftp = self._acquire()
            try:
                yield sftp
            except (OSError, EOFError, paramiko.SSHException) as exc:
                transport = sftp.get_channel().get_transport()  # type: ignore[union-attr]
                if (
                    isinstance(
                        exc, EOFError | paramiko.SSHException | TimeoutError | ConnectionError
                    )
                    or not transport.is_active()
                ):
                    self._broken(generation)
                    raise TransientStorageError(
                        f"{what}: {_describe(exc)}", location=self.location
                    ) from None
                self._release(generation, sftp)
                raise StorageError(f"{what}: {_describe(exc)}", location=self.location) from None
            except BaseException:
                # our own errors (ObjectNotFound...) leave the channel usable
                self._release(generation, sftp)
                raise
            else:
                self._release(generation, sftp)

    def _release(self, generation: int, sftp: paramiko.SFTPClient) -> None:
        with self._lock:
            if generation == self._generation:
                self._idle.append((generation, sftp))
                return
        with contextlib.suppress(Exception):
            sftp.close()

    def close(self) -> None:
        with self._lock:
            self._reset()

    # --- objects -----------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return posixpath.join(self.root, check_name(name, self.location))

    def read(self, name: str, limit: int | None = None) -> bytes:
        path = self._path(name)
        with self._channel(f"reading {name}") as sftp:
            try:
                with sftp.open(path, "rb") as f:
                    size = f.stat().st_size or 0  # of the open handle: no race with a rename
                    check_size(name, size, limit, self.location)
                    f.prefetch(size)
                    data = f.read(size)
            except FileNotFoundError:
                raise ObjectNotFound(name=name, location=self.location) from None
            if len(data) != size:
                raise TransientStorageError(
                    f"reading {name}: got {len(data)} of {size} bytes", location=self.location
                )
            return data

    def write(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        folder, base = posixpath.split(path)
        tmp = posixpath.join(folder, f".tmp-{base}-{uuid.uuid4().hex[:16]}")
        payload = data if isinstance(data, bytes) else bytes(data)
        with self._channel(f"writing {name}") as sftp:
            mode = self._new_file_mode(sftp)
            try:
                f = sftp.open(tmp, "wb")
            except FileNotFoundError:
                self._makedirs(sftp, folder, modes.folder_mode(mode))
                f = sftp.open(tmp, "wb")
            try:
                with f:
                    f.chmod(mode)  # before any byte: the server's umask decides otherwise
                    f.set_pipelined(True)
                    f.write(payload)
                    self._sync(sftp, f)
                sftp.posix_rename(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    if sftp.get_channel().get_transport().is_active():  # type: ignore[union-attr]
                        sftp.remove(tmp)
                raise

    def _sync(self, sftp: paramiko.SFTPClient, f: paramiko.SFTPFile) -> None:
        """Flush the file to the server's disk before the rename makes it visible."""
        if not self._fsync:
            return
        try:
            sftp._request(CMD_EXTENDED, "fsync@openssh.com", f.handle)  # type: ignore[attr-defined]
        except (OSError, paramiko.SFTPError) as exc:
            transport = sftp.get_channel().get_transport()  # type: ignore[union-attr]
            if isinstance(exc, ConnectionError | TimeoutError) or not transport.is_active():
                raise
            self._fsync = False  # the server answered: it has no such extension

    def _new_file_mode(self, sftp: paramiko.SFTPClient) -> int:
        """See ``modes``: private, or as the repository's config when it exists."""
        if self._file_mode is None:
            try:
                reference = sftp.stat(posixpath.join(self.root, modes.REFERENCE)).st_mode
            except FileNotFoundError:
                return modes.PRIVATE_FILE
            self._file_mode = modes.file_mode(reference or 0)
        return self._file_mode

    def _makedirs(self, sftp: paramiko.SFTPClient, folder: str, mode: int) -> None:
        try:
            sftp.mkdir(folder, mode)
            sftp.chmod(folder, mode)  # exactly: the server's umask may have narrowed it
        except FileNotFoundError:
            parent = posixpath.dirname(folder)
            if parent in (folder, "", "/", "."):
                raise
            self._makedirs(sftp, parent, mode)
            self._makedirs(sftp, folder, mode)
        except OSError:
            # it may exist already (another thread made it): fine if it is a folder
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(sftp.stat(folder).st_mode or 0):
                    return
            raise

    def exists(self, name: str) -> bool:
        path = self._path(name)
        with self._channel(f"looking up {name}") as sftp:
            try:
                sftp.stat(path)
            except FileNotFoundError:
                return False
            return True

    def size(self, name: str) -> int:
        path = self._path(name)
        with self._channel(f"looking up {name}") as sftp:
            try:
                return sftp.stat(path).st_size or 0
            except FileNotFoundError:
                raise ObjectNotFound(name=name, location=self.location) from None

    def modified(self, name: str) -> float:
        """The server's mtime of the file (whole seconds with SFTP version 3)."""
        path = self._path(name)
        with self._channel(f"looking up {name}") as sftp:
            try:
                return float(sftp.stat(path).st_mtime or 0)
            except FileNotFoundError:
                raise ObjectNotFound(name=name, location=self.location) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        for name, _ in self.list_modified(prefix):
            yield name

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        for name, attrs in self._attrs(prefix):
            yield name, float(attrs.st_mtime or 0)

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name, attrs in self._attrs(prefix):
            yield name, attrs.st_size or 0

    def _attrs(self, prefix: str) -> Iterator[tuple[str, paramiko.SFTPAttributes]]:
        """Each file under ``prefix`` with its attributes, one ``readdir`` per folder."""
        folder = prefix.rpartition("/")[0]
        found: list[tuple[str, paramiko.SFTPAttributes]] = []
        with self._channel(f"listing {prefix or '/'}") as sftp:
            pending = [folder]
            while pending:
                rel = pending.pop()
                try:
                    entries = sftp.listdir_attr(posixpath.join(self.root, rel))
                except FileNotFoundError:
                    continue
                for entry in entries:
                    name = f"{rel}/{entry.filename}" if rel else entry.filename
                    if entry.filename.startswith("."):
                        continue
                    if stat.S_ISDIR(entry.st_mode or 0):
                        pending.append(name)
                    elif name.startswith(prefix):
                        found.append((name, entry))
        yield from found  # after the channel is back in the pool

    def delete(self, name: str) -> None:
        path = self._path(name)
        with self._channel(f"deleting {name}") as sftp, contextlib.suppress(FileNotFoundError):
            sftp.remove(path)

    def create(self) -> None:
        with self._channel("creating the repository folder") as sftp:
            try:
                if stat.S_ISDIR(sftp.stat(self.root).st_mode or 0):
                    return
                raise StorageError(f"{self.root} is not a folder", location=self.location)
            except FileNotFoundError:
                self._makedirs(sftp, self.root, modes.folder_mode(modes.PRIVATE_FILE))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the server closed the connection"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
