"""Real servers for the tests, on 127.0.0.1: OpenSSH sshd, moto's S3 server, a TCP proxy
that drops connections on purpose, and throwaway PostgreSQL and MariaDB servers.

Each SSH server gets its own host key, and a temporary HOME holds what a user's
``~/.ssh`` would: a user key, ``known_hosts`` with the server's key and a ``config``
with a ``Host`` alias. The backend must find all of them the way ``ssh`` does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a server whose output goes to ``log``: a pipe nobody reads would fill up
    and block the server (moto logs every request)."""
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = log.read_text(errors="replace").strip()
            raise RuntimeError(f"server exited with {proc.returncode}: {err}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def keygen(path: Path, comment: str) -> str:
    """A new ed25519 key without passphrase; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class SSHServer:
    """A running sshd and the HOME of a user who may log in to it."""

    port: int
    root: Path  # sshd's files
    home: Path  # HOME whose .ssh knows the server and holds the user key
    data: Path  # where repositories go (an absolute path on the "server")
    host_key: str  # public key line of the server
    user: str = "root"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, path: str, *, port: int | None = None) -> str:
        return f"sftp://{self.user}@127.0.0.1:{port or self.port}{self.data / path}"

    def env(self) -> dict[str, str]:
        """The environment of a user with this HOME and no ssh-agent."""
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env["HOME"] = str(self.home)
        return env


def start_sshd(base: Path) -> SSHServer:
    """sshd -D -e on a free port with its own host key, user key and known_hosts."""
    root, home, data = base / "sshd", base / "home", base / "data"
    for d in (root, home / ".ssh", data):
        d.mkdir(parents=True)
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    host_pub = keygen(root / "host_ed25519", "blockvault-test-host")
    user_pub = keygen(home / ".ssh" / "id_ed25519", "blockvault-test-user")
    (root / "authorized_keys").write_text(user_pub + "\n")
    port = free_port()
    (root / "sshd_config").write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_ed25519
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin yes
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxSessions 32
MaxStartups 100:30:200
LogLevel ERROR
Subsystem sftp internal-sftp
"""
    )
    key_type, key_blob = host_pub.split()[:2]
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {key_type} {key_blob}\n")
    log = root / "sshd.log"
    proc = spawn([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], log)
    wait_for_port(port, proc, log)
    return SSHServer(port, root, home, data, host_pub, proc=proc)


@dataclass
class S3Server:
    """moto's standalone S3 server and the AWS variables that reach it."""

    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID="blockvault-test",
            AWS_SECRET_ACCESS_KEY="blockvault-test-secret",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=endpoint or self.endpoint,
        )
        return env


def start_moto(base: Path) -> S3Server:
    port = free_port()
    base.mkdir(parents=True, exist_ok=True)
    log = base / "moto.log"
    proc = spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    wait_for_port(port, proc, log)
    return S3Server(port, proc=proc)


class DroppingProxy:
    """Forwards 127.0.0.1:port to an upstream port, and cuts connections mid-stream.

    A connection is closed (both ways, mid-stream) once the client has sent ``after``
    bytes through it, ``drops`` times in all; after that every connection passes
    untouched. With ``drops=None`` every connection is cut, so nothing larger than
    ``after`` gets through.
    """

    def __init__(self, upstream: int, *, after: int, drops: int | None) -> None:
        self.upstream = upstream
        self.after = after
        self.drops = drops
        self.connections = 0
        self.cut = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, server}
            budget = [self.after]
            for src, dst, count in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, budget if count else None), daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, budget: list[int] | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if budget is not None and budget[0] >= 0:
                    if len(data) >= budget[0]:
                        with self._lock:
                            cut = self.drops is None or self.cut < self.drops
                            self.cut += cut
                        if cut:
                            dst.sendall(data[: budget[0]])
                            self._kill(src, dst)
                            return
                        budget[0] = -1  # spared: no more counting on this one
                    else:
                        budget[0] -= len(data)
                dst.sendall(data)
        except OSError:
            pass
        self._kill(src, dst)

    def _kill(self, *socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                # shutdown wakes the pump blocked in recv on it; the peer sees the link go
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
            with self._lock:
                self._open.discard(s)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            socks = list(self._open)
        self._kill(*socks)


@contextlib.contextmanager
def dropping_proxy(upstream: int, *, after: int, drops: int | None) -> Iterator[DroppingProxy]:
    proxy = DroppingProxy(upstream, after=after, drops=drops)
    try:
        yield proxy
    finally:
        proxy.close()


# Database servers for the dump recipes: throwaway instances with their data in a fresh
# directory, listening on 127.0.0.1 at a free port, reached by their own client tools.
# Both refuse to run as root, so as root they run as the account their Debian package
# made, in a directory that account owns (pytest's tmp dirs are root's, mode 0700).

DatabaseKind = Literal["postgresql", "mariadb"]
_SERVICE_ACCOUNT: dict[DatabaseKind, str] = {"postgresql": "postgres", "mariadb": "mysql"}


def postgresql_bin() -> Path | None:
    """The newest installed PostgreSQL server's program directory (Debian keeps initdb and
    postgres off PATH, under /usr/lib/postgresql/VERSION/bin), or None."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    postgres = shutil.which("postgres")
    return Path(postgres).parent if postgres else None


def mariadb_missing() -> str | None:
    """Why MariaDB cannot be started here (a missing program), or None."""
    for tool in ("mariadbd", "mariadb-install-db", "mariadb", "mariadb-dump"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            return f"{tool} is not installed (apt-get install mariadb-server)"
    return None


@dataclass
class Database:
    """A running throwaway database server and the arguments its clients need."""

    kind: DatabaseKind
    port: int
    data: Path  # the server's own directory (data files, socket, log)
    bindir: Path | None = None  # PostgreSQL's program directory
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def tool(self, name: str, *args: str) -> list[str]:
        """argv for one of the server's client programs (psql, pg_dump, pg_restore,
        mariadb, mariadb-dump), connected as the superuser over TCP."""
        if self.kind == "postgresql":
            program = str(self.bindir / name) if self.bindir else name
            return [program, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", *args]
        return [
            name,
            "--no-defaults",
            "--protocol=tcp",
            "-h",
            "127.0.0.1",
            "-P",
            str(self.port),
            "-u",
            "root",
            *args,
        ]

    def run(self, name: str, *args: str, input: bytes | None = None) -> bytes:
        """Run a client program; its stdout, or RuntimeError with its stderr."""
        proc = subprocess.run(self.tool(name, *args), input=input, capture_output=True)
        if proc.returncode != 0:
            why = proc.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"{name} failed ({proc.returncode}): {why}")
        return proc.stdout

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        shutil.rmtree(self.data, ignore_errors=True)


def _service_dir(kind: DatabaseKind) -> tuple[Path, str | None]:
    """A new directory the server may own, and the account to run it as (None: ourselves)."""
    data = Path(tempfile.mkdtemp(prefix=f"blockvault-test-{kind}-"))
    if os.geteuid() != 0:
        return data, None
    account = _SERVICE_ACCOUNT[kind]
    shutil.chown(data, account, account)
    return data, account


def _as_account(argv: list[str], log: Path, account: str | None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, user=account, group=account
        )


def _setup(argv: list[str], log: Path, account: str | None) -> None:
    proc = _as_account(argv, log, account)
    if proc.wait() != 0:
        err = log.read_text(errors="replace").strip().splitlines()
        raise RuntimeError(f"{Path(argv[0]).name} failed: {err[-1] if err else proc.returncode}")


def start_postgresql() -> Database:
    """initdb (trust authentication, UTF-8) and ``postgres`` on 127.0.0.1:free port."""
    bindir = postgresql_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    data, account = _service_dir("postgresql")
    cluster, log = data / "cluster", data / "server.log"
    _setup(
        [str(bindir / "initdb"), "-D", str(cluster), "-U", "postgres", "--auth=trust",
         "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
        log,
        account,
    )  # fmt: skip
    port = free_port()
    proc = _as_account(
        [str(bindir / "postgres"), "-D", str(cluster), "-p", str(port), "-k", str(data),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "shared_buffers=16MB"],
        log,
        account,
    )  # fmt: skip
    db = Database("postgresql", port, data, bindir, proc)
    try:
        wait_for_port(port, proc, log)
        _wait_ready(db, ["pg_isready", "-q"])
    except BaseException:
        db.stop()
        raise
    return db


def start_mariadb() -> Database:
    """mariadb-install-db (root with an empty password) and ``mariadbd`` on 127.0.0.1:free
    port, no binary log, a small buffer pool."""
    missing = mariadb_missing()
    if missing:
        raise RuntimeError(missing)
    data, account = _service_dir("mariadb")
    files, log = data / "data", data / "server.log"
    _setup(
        ["mariadb-install-db", "--no-defaults", f"--datadir={files}",
         "--auth-root-authentication-method=normal", "--skip-test-db",
         *([f"--user={account}"] if account else [])],
        log,
        account,
    )  # fmt: skip
    port = free_port()
    mariadbd = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/sbin")
    proc = _as_account(
        [str(mariadbd), "--no-defaults", f"--datadir={files}", f"--socket={data}/mysqld.sock",
         f"--pid-file={data}/mysqld.pid", f"--port={port}", "--bind-address=127.0.0.1",
         "--skip-name-resolve", "--innodb-buffer-pool-size=32M", "--skip-log-bin",
         *([f"--user={account}"] if account else [])],
        log,
        account,
    )  # fmt: skip
    db = Database("mariadb", port, data, None, proc)
    try:
        wait_for_port(port, proc, log)
        _wait_ready(db, ["mariadb-admin", "ping", "--silent"])
    except BaseException:
        db.stop()
        raise
    return db


def _wait_ready(db: Database, ping: list[str], timeout: float = 60.0) -> None:
    """A port that accepts is not yet a server that answers: ask until it does."""
    deadline = time.monotonic() + timeout
    while True:
        if subprocess.run(db.tool(*ping), capture_output=True).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{db.kind} on port {db.port} does not answer after {timeout}s")
        time.sleep(0.1)


@contextlib.contextmanager
def database(kind: DatabaseKind) -> Iterator[Database]:
    """A throwaway server of ``kind``, stopped and its files removed afterwards."""
    db = start_postgresql() if kind == "postgresql" else start_mariadb()
    try:
        yield db
    finally:
        db.stop()
