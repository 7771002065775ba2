"""Remote repositories end to end, against a real sshd and a real S3 server process.

The CLI backs up a disk built by the real tools into ``sftp://`` and ``s3://``
repositories and restores it; the restore must equal the source byte for byte. The SSH
tests check that keys, ``~/.ssh/config`` and ``known_hosts`` are used as ``ssh`` uses
them, and that an unknown or changed host key is refused, never accepted.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault.errors import StorageError, UsageError
from blockvault.storage import Backend, open_backend
from blockvault_demo.sample import BuiltDisk
from blockvault_demo.servers import S3Server, SSHServer, keygen
from tests.storage.conftest import ok


def round_trip(env: dict[str, str], repo: list[str], disk: BuiltDisk, tmp: Path) -> None:
    """init, backup, restore, verify through the CLI; the restore equals the source."""
    ok(env, *repo, "init", "--chunk-size", "1MiB")
    snap = json.loads(ok(env, *repo, "backup", "--json", str(disk.path)))
    listed = json.loads(ok(env, *repo, "snapshots", "--json"))
    assert [s["id"] for s in listed] == [snap["id"]]
    restored = tmp / "restored.img"
    ok(env, *repo, "restore", "latest", str(restored))
    assert filecmp.cmp(disk.path, restored, shallow=False)
    ok(env, *repo, "verify", "--against", str(disk.path))


def test_sftp_round_trip(sshd: SSHServer, disk: BuiltDisk, tmp_path: Path) -> None:
    round_trip(sshd.env(), ["-r", sshd.url(f"repo-{uuid.uuid4().hex[:8]}")], disk, tmp_path)


def test_s3_round_trip_with_endpoint_option(
    s3_server: S3Server, disk: BuiltDisk, tmp_path: Path
) -> None:
    env = s3_server.env()
    del env["AWS_ENDPOINT_URL"]  # only --s3-endpoint says where the server is
    repo = ["--s3-endpoint", s3_server.endpoint, "-r", f"s3://bv-{uuid.uuid4().hex[:10]}/pc1"]
    round_trip(env, repo, disk, tmp_path)


# --- SSH trust and keys, as ssh itself uses them -------------------------------------


@pytest.fixture
def home(sshd: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME with an empty ~/.ssh; the user key is at ``home/user_key``."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(sshd.home / ".ssh" / "id_ed25519", home / "user_key")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def known_hosts_line(sshd: SSHServer, port: int | None = None) -> str:
    key_type, blob = sshd.host_key.split()[:2]
    return f"[127.0.0.1]:{port or sshd.port} {key_type} {blob}\n"


def use(backend: Backend) -> None:
    backend.create()
    backend.write("data/00/0001", b"hello")
    assert backend.read("data/00/0001") == b"hello"
    backend.close()


def test_ssh_config_alias_port_user_and_identity_file(sshd: SSHServer, home: Path) -> None:
    shutil.move(home / "user_key", home / ".ssh" / "vault_key")
    (home / ".ssh" / "known_hosts").write_text(known_hosts_line(sshd))
    (home / ".ssh" / "config").write_text(
        f"Host vault\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        "  IdentityFile ~/.ssh/vault_key\n"
    )
    use(open_backend(f"sftp://vault{sshd.data}/alias-{uuid.uuid4().hex[:6]}"))


def test_default_key_file_and_home_relative_path(sshd: SSHServer, home: Path) -> None:
    shutil.move(home / "user_key", home / ".ssh" / "id_ed25519")
    (home / ".ssh" / "known_hosts").write_text(known_hosts_line(sshd))
    name = f"rel-{uuid.uuid4().hex[:6]}"
    use(open_backend(f"sftp://{sshd.user}@127.0.0.1:{sshd.port}/~/{name}"))
    server_home = Path(os.path.expanduser(f"~{sshd.user}"))
    assert (server_home / name / "data" / "00" / "0001").read_bytes() == b"hello"
    shutil.rmtree(server_home / name)


def test_key_from_ssh_agent(sshd: SSHServer, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / ".ssh" / "known_hosts").write_text(known_hosts_line(sshd))
    url = sshd.url(f"agent-{uuid.uuid4().hex[:6]}")
    with pytest.raises(StorageError, match=r"logging in as root@127\.0\.0\.1.* failed"):
        use(open_backend(url))  # no key anywhere yet
    sock = home / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        subprocess.run(["ssh-add", "-q", str(home / "user_key")], check=True)
        (home / "user_key").unlink()  # now only the agent holds it
        use(open_backend(url))
    finally:
        agent.terminate()
        agent.wait()


def test_unknown_host_key_is_refused_not_learned(sshd: SSHServer, home: Path) -> None:
    shutil.move(home / "user_key", home / ".ssh" / "id_ed25519")
    with pytest.raises(StorageError) as caught:
        use(open_backend(sshd.url("never")))
    message = str(caught.value)
    assert "not in known_hosts" in message
    assert f"'ssh -p {sshd.port} root@127.0.0.1'" in message
    assert not (home / ".ssh" / "known_hosts").exists()
    assert not (sshd.data / "never").exists()


def test_changed_host_key_is_refused(sshd: SSHServer, home: Path, tmp_path: Path) -> None:
    shutil.move(home / "user_key", home / ".ssh" / "id_ed25519")
    other = keygen(tmp_path / "other_host_key", "impostor").split()
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    with pytest.raises(StorageError, match=r"does not match.*ssh-keygen -R"):
        use(open_backend(sshd.url("never")))
    assert not (sshd.data / "never").exists()


def test_sftp_reconnects_after_the_connection_drops(sshd: SSHServer, home: Path) -> None:
    shutil.move(home / "user_key", home / ".ssh" / "id_ed25519")
    (home / ".ssh" / "known_hosts").write_text(known_hosts_line(sshd))
    backend = open_backend(sshd.url(f"drop-{uuid.uuid4().hex[:6]}"))
    backend.create()
    backend.write("config", b"1")
    inner = backend.inner  # type: ignore[attr-defined]
    inner._client.get_transport().sock.close()  # the link dies under the backend
    backend.write("data/aa/aa", b"2")
    assert backend.read("config") == b"1"
    assert inner._generation >= 2
    backend.close()


def test_bad_locations_are_usage_errors() -> None:
    for location in ("sftp:///path", "sftp://host", "sftp://host:port/x", "s3:///prefix"):
        with pytest.raises(UsageError):
            open_backend(location)


@pytest.mark.parametrize(
    ("location", "package"), [("sftp://h/srv/r", "paramiko"), ("s3://bucket/p", "boto3")]
)
def test_missing_library_gives_an_install_hint(location: str, package: str) -> None:
    """Without the library, the CLI says what to install, in one line."""
    code = (
        f"import sys; sys.modules[{package!r}] = None\n"
        "from blockvault.cli.main import main\n"
        f"sys.argv = ['blockvault', '-r', {location!r}, 'snapshots']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert f"pip install {package}" in proc.stderr


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    yield s3_server


def test_s3_without_credentials_is_a_clear_error(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws either
    with pytest.raises(StorageError, match="no usable S3 credentials; set AWS_ACCESS_KEY_ID"):
        open_backend(f"s3://bv-{uuid.uuid4().hex[:10]}").create()


def test_s3_missing_bucket_means_no_repository(s3_env: S3Server) -> None:
    proc = subprocess.run(
        ["blockvault", "-r", f"s3://bv-missing-{uuid.uuid4().hex[:8]}", "snapshots"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3
    assert "no repository at s3://" in proc.stderr
