"""What the rescue system runs on: the preset on the boot medium, the files the
blockvault layer adds to the root, and how its programs call blockvault.

The preset (``/run/live/medium/blockvault/rescue.json``, written by the build) is
read as untrusted: a stick can be written by anyone. It is bounded in size, every
path in it must stay inside the medium folder, and its values are only ever passed
to blockvault as single arguments or environment values, never to a shell.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from blockvault.errors import UsageError

__all__ = [
    "CONFIG_NAME",
    "IMAGES_DIR",
    "LOG_PATH",
    "MEDIUM_DIR",
    "MEDIUM_ENV",
    "PASSWORD_NAME",
    "S3_CREDENTIALS_NAME",
    "SSH_DIR",
    "RescueConfig",
    "blockvault_argv",
    "layer_files",
    "load_config",
    "medium_path",
]

MEDIUM_DIR: Final = "blockvault"  # on the ISO; live-boot mounts it under /run/live/medium
MEDIUM_ENV: Final = "BLOCKVAULT_RESCUE_MEDIUM"  # another folder (tests run the menu on a host)
LIVE_MEDIUM: Final = Path("/run/live/medium")
CONFIG_NAME: Final = "rescue.json"
PASSWORD_NAME: Final = "password"
SSH_DIR: Final = "ssh"
S3_CREDENTIALS_NAME: Final = "s3-credentials"  # an AWS shared credentials file
ENDPOINT_MAX: Final = 2048
IMAGES_DIR: Final = "images"
LOG_PATH: Final = Path("/run/blockvault-rescue.log")
CONFIG_MAX: Final = 64 * 1024
REMOTE_SCHEMES: Final = ("sftp://", "s3://")

MENU_PROGRAM: Final = "/usr/local/sbin/blockvault-rescue-menu"
UNIT: Final = "blockvault-unattended.service"
_GETTY = (
    "[Service]\nExecStart=\nExecStart=-/sbin/agetty --noissue --noclear --skip-login "
    f"--login-program {MENU_PROGRAM} --login-options %I {{speeds}}%I $TERM\n"
)
_UNATTENDED = """[Unit]
Description=blockvault rescue: the job the kernel command line asks for
ConditionKernelCommandLine=|blockvault.run
ConditionKernelCommandLine=|blockvault.cast
After=systemd-udevd.service local-fs.target systemd-networkd.service

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 -m blockvault.rescue unattended --consoles
StandardOutput=journal
StandardError=journal

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class RescueConfig:
    """The preset, with its paths made absolute under the medium folder."""

    folder: Path
    repo: str | None = None
    password_file: Path | None = None
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    images: tuple[Path, ...] = ()
    s3_credentials: Path | None = None
    s3_endpoint: str | None = None

    @property
    def default_repo(self) -> str | None:
        """The preset repository, else the one image on the medium."""
        if self.repo:
            return self.repo
        return str(self.images[0]) if len(self.images) == 1 else None

    def remote(self, repo: str | None) -> bool:
        return bool(repo) and str(repo).startswith(REMOTE_SCHEMES)


def medium_path() -> Path:
    return Path(os.environ.get(MEDIUM_ENV) or LIVE_MEDIUM / MEDIUM_DIR)


def load_config(folder: Path | None = None) -> RescueConfig:
    """The preset in ``folder`` (default: the boot medium's); none there is an
    empty preset, a damaged one a :class:`UsageError`."""
    folder = folder or medium_path()
    path = folder / CONFIG_NAME
    try:
        with open(path, "rb") as file:
            raw = file.read(CONFIG_MAX + 1)
    except FileNotFoundError:
        return RescueConfig(folder)
    except OSError as exc:
        raise UsageError(f"rescue preset {path}: {exc.strerror}") from None
    try:
        if len(raw) > CONFIG_MAX:
            raise ValueError("larger than 64 KiB")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        repo = data.get("repo")
        if repo is not None and not isinstance(repo, str):
            raise ValueError("repo is not a string")
        images = data.get("images") or []
        if not isinstance(images, list):
            raise ValueError("images is not a list")
        endpoint = data.get("s3_endpoint")
        if endpoint is not None and not valid_endpoint(endpoint):
            raise ValueError("s3_endpoint is not an http(s) URL")
        return RescueConfig(
            folder,
            repo=repo or None,
            password_file=_inside(folder, data.get("password_file")),
            ssh_key=_inside(folder, data.get("ssh_key")),
            known_hosts=_inside(folder, data.get("known_hosts")),
            images=tuple(p for p in (_inside(folder, i) for i in images) if p),
            s3_credentials=_inside(folder, data.get("s3_credentials")),
            s3_endpoint=endpoint or None,
        )
    except ValueError as exc:
        raise UsageError(f"rescue preset {path}: {exc}; rebuild the stick") from None


def valid_endpoint(url: object) -> bool:
    """An S3 endpoint a preset may name: http(s), one word, bounded."""
    return (
        isinstance(url, str)
        and url.startswith(("http://", "https://"))
        and len(url) <= ENDPOINT_MAX
        and url.isprintable()
        and not any(c.isspace() for c in url)
    )


def _inside(folder: Path, name: object) -> Path | None:
    """``folder/name`` when ``name`` is a relative path that stays inside ``folder``."""
    if name is None:
        return None
    if not isinstance(name, str) or not name or name.startswith("/") or "\0" in name:
        raise ValueError(f"{name!r} is not a file name on the medium")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"{name!r} leaves the medium folder")
    return folder / name


def blockvault_argv(config: RescueConfig, args: list[str] | tuple[str, ...]) -> list[str]:
    """``blockvault`` with the preset's password file, then ``args``; the preset's
    repository goes in the environment (``env_for``), so ``-r`` in ``args`` wins."""
    prefix = [sys.executable, "-m", "blockvault"]
    if config.password_file and "--password-file" not in args:
        prefix += ["--password-file", str(config.password_file)]
    return [*prefix, *args]


def env_for(config: RescueConfig) -> dict[str, str]:
    env = dict(os.environ)
    repo = config.default_repo
    if repo and "BLOCKVAULT_REPO" not in env:
        env["BLOCKVAULT_REPO"] = repo
    # S3 credentials come from the stick, never from the kernel command line (which
    # /proc/cmdline shows to every process and the boot menu to every onlooker)
    if config.s3_credentials:
        env.setdefault("AWS_SHARED_CREDENTIALS_FILE", str(config.s3_credentials))
    if config.s3_endpoint:
        env.setdefault("AWS_ENDPOINT_URL_S3", config.s3_endpoint)
    return env


def install_ssh(config: RescueConfig, home: Path = Path("/root")) -> None:
    """Put the preset's SSH key and known_hosts where ssh and paramiko look, private
    (the medium's copies are world-readable, which ssh refuses)."""
    ssh = home / ".ssh"
    for source, name in ((config.ssh_key, "id_rescue"), (config.known_hosts, "known_hosts")):
        if source is None or not source.is_file():
            continue
        ssh.mkdir(mode=0o700, exist_ok=True)
        # each console's menu and the job do this at once: whole files, renamed in
        partial = ssh / f".{name}.{os.getpid()}"
        shutil.copyfile(source, partial)
        partial.chmod(0o600)
        os.replace(partial, ssh / name)
    if config.ssh_key and config.ssh_key.is_file():
        partial = ssh / f".config.{os.getpid()}"
        partial.write_text("Host *\n    IdentityFile ~/.ssh/id_rescue\n")
        os.replace(partial, ssh / "config")


def layer_files() -> dict[str, tuple[str, int]]:
    """The files the blockvault layer adds to the root: path -> (text, mode); a text
    starting with ``->`` is a symlink to what follows."""
    return {
        "usr/local/bin/blockvault": (
            "#!/usr/bin/python3\nfrom blockvault.cli.main import main\n\nmain()\n",
            0o755,
        ),
        MENU_PROGRAM.lstrip("/"): (
            "#!/bin/sh\nexec /usr/bin/python3 -m blockvault.rescue menu\n",
            0o755,
        ),
        "etc/systemd/system/getty@tty1.service.d/blockvault.conf": (
            _GETTY.format(speeds=""),
            0o644,
        ),
        "etc/systemd/system/serial-getty@ttyS0.service.d/blockvault.conf": (
            _GETTY.format(speeds="--keep-baud 115200,57600,38400,9600 "),
            0o644,
        ),
        f"etc/systemd/system/{UNIT}": (_UNATTENDED, 0o644),
        f"etc/systemd/system/multi-user.target.wants/{UNIT}": (
            f"->/etc/systemd/system/{UNIT}",
            0o777,
        ),
    }
