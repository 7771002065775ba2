"""The agent as a systemd service: the unit ``blockvault agent install`` writes.

The unit is hardened to what imaging a disk into a repository needs, and no more:

* ``ProtectSystem=strict``: the whole file system is read-only to the agent except
  ``ReadWritePaths``: the plans file's directory (the history database and run logs
  live beside it) and each plan's local repository. A plan added later with a new
  local repository needs ``agent install`` again (it says so in the user guide).
* Capabilities: only ``CAP_DAC_READ_SEARCH``, to read what a plan names whatever its
  owner (a password file, a file backup's tree). Reading a block device needs no
  capability (root owns /dev/sdX), and neither does writing the root-owned state and
  repositories. ``CAP_SYS_ADMIN`` (mount, loop devices, ``BLKFLSBUF``) is left out:
  backup only reads, through the same file descriptor calls as any file. A hook that
  freezes a filesystem or snapshots an LVM volume needs it: add it with a drop-in
  (``systemctl edit blockvault-agent``), a decision made per machine, in the open.
* ``PrivateTmp``, ``NoNewPrivileges``, ``ProtectHome=read-only``, kernel tunables,
  modules, logs, clock and control groups protected, native system calls only.
* ``Restart=on-failure``; SIGTERM stops runs safely and the agent exits 143, which is
  a clean stop (``SuccessExitStatus``); stopping waits long enough for post-hooks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from blockvault.errors import UsageError
from blockvault.plans.metrics import parse_address
from blockvault.plans.store import PlanBook

__all__ = [
    "SANDBOX",
    "UNIT_NAME",
    "Installed",
    "agent_unit",
    "install_unit",
    "systemd_running",
    "uninstall_unit",
    "unit_dir",
    "unit_word",
]

# what both blockvault services (the agent, the center) deny themselves in their units
SANDBOX: Final = (
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
)

UNIT_NAME: Final = "blockvault-agent.service"
SYSTEM_UNITS: Final = Path("/etc/systemd/system")
CAPABILITIES: Final = ("CAP_DAC_READ_SEARCH",)
STOP_TIMEOUT: Final = 180  # seconds: a post-hook's grace after a stop (60) and more


def unit_dir(user: bool) -> Path:
    if not user:
        return SYSTEM_UNITS
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def systemd_running() -> bool:
    """Whether systemd is this machine's init (as ``sd_booted`` decides)."""
    return Path("/run/systemd/system").is_dir()


def unit_word(text: str, what: str) -> str:
    """``text`` as one word of a unit file line: ``%`` and ``$`` escaped; whitespace,
    quotes, backslashes and control characters refused (no quoting to get wrong)."""
    if not text or not text.isprintable() or any(c in text for c in " \t\"'\\;"):
        raise UsageError(
            f"{what} {text!r}: a path for a systemd unit may not hold spaces, quotes, "
            "backslashes or semicolons; choose another"
        )
    return text.replace("%", "%%").replace("$", "$$")


def _local_repos(book: PlanBook) -> list[Path]:
    """The plans' repositories that are directories here (not sftp:// or s3://)."""
    found = []
    for plan in book.plans.values():
        if "://" not in plan.repo:
            found.append(Path(plan.repo).absolute())
    return sorted(set(found))


def agent_unit(
    plans_file: Path,
    *,
    user: bool = False,
    metrics: str | None = None,
    command: Sequence[str] | None = None,
) -> str:
    """The text of the agent's unit for ``plans_file`` (read now, for its local
    repositories). ``command``: how to start blockvault (default: this Python)."""
    plans_file = plans_file.absolute()
    book = PlanBook.load(plans_file)
    start = command or (sys.executable, "-m", "blockvault")
    argv = [*start, "--plans", str(plans_file), "agent"]
    if metrics:
        parse_address(metrics)  # refused now, not when the service starts
        argv += ["--metrics", metrics]
    exec_start = " ".join(unit_word(word, "command word") for word in argv)
    writable = [plans_file.parent, *_local_repos(book)]
    # "-": a repository not made yet does not stop the agent from starting
    paths = " ".join(
        ("" if i == 0 else "-") + unit_word(str(p), "path") for i, p in enumerate(writable)
    )
    hardening = [
        "ProtectSystem=strict",
        f"ReadWritePaths={paths}",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ProtectHome=read-only",
        *SANDBOX,
        "UMask=0077",
    ]
    if not user:  # a user manager cannot grant capabilities; it has none to bound
        caps = " ".join(CAPABILITIES)
        hardening.append(f"CapabilityBoundingSet={caps}")
    lines = [
        "# written by 'blockvault agent install'; 'blockvault agent install' again after",
        "# adding a plan with a new local repository (it must be in ReadWritePaths)",
        "[Unit]",
        f"Description=blockvault agent: the backup plans of {unit_word(str(plans_file), 'path')}",
        "After=network-online.target local-fs.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=30",
        "SuccessExitStatus=143",
        f"TimeoutStopSec={STOP_TIMEOUT}",
        "Environment=PYTHONUNBUFFERED=1",
        *hardening,
        "",
        "[Install]",
        f"WantedBy={'default.target' if user else 'multi-user.target'}",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Installed:
    unit: Path
    enabled: bool  # False: systemd does not run here; the unit is only written
    commands: tuple[tuple[str, ...], ...]  # the systemctl calls made (or to make)


def _systemctl(user: bool, *args: str) -> tuple[str, ...]:
    return ("systemctl", *(("--user",) if user else ()), *args)


def _run(commands: Iterable[tuple[str, ...]]) -> None:
    for command in commands:
        if shutil.which(command[0]) is None:
            raise UsageError(f"{command[0]} is not installed; run: {' '.join(command)}")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise UsageError(f"{' '.join(command)} failed: {done.stderr.strip()}")


def install_unit(
    text: str, *, user: bool = False, directory: Path | None = None, name: str = UNIT_NAME
) -> Installed:
    """Write the unit (``name``: the agent's, or the center's) atomically; where
    systemd runs, reload it and enable and start the service."""
    unit = (directory or unit_dir(user)) / name
    unit.parent.mkdir(parents=True, exist_ok=True)
    temporary = unit.with_name(f".{name}.{os.getpid()}")
    temporary.write_text(text)
    temporary.chmod(0o644)
    os.replace(temporary, unit)
    commands = (_systemctl(user, "daemon-reload"), _systemctl(user, "enable", "--now", name))
    running = systemd_running()
    if running:
        _run(commands)
    return Installed(unit, running, commands)


def uninstall_unit(*, user: bool = False, directory: Path | None = None) -> Installed:
    """Stop and disable the agent where systemd runs, and remove its unit."""
    unit = (directory or unit_dir(user)) / UNIT_NAME
    if not unit.exists():
        raise UsageError(f"no agent unit at {unit}: nothing to uninstall")
    running = systemd_running()
    if running:
        _run([_systemctl(user, "disable", "--now", UNIT_NAME)])
    unit.unlink()
    reload = (_systemctl(user, "daemon-reload"),)
    if running:
        _run(reload)
    return Installed(unit, running, (_systemctl(user, "disable", "--now", UNIT_NAME), *reload))
