"""What a plan needs from this machine, checked before anything runs.

``plans.store`` checks that a plan is well formed; this module checks that it can run
here: the repository opens (with the plan's passphrase), the disk or partitions are
there, and the hooks name executable programs. ``plan add``/``plan edit`` call
``preflight`` so that a mistake is refused when it is typed; every run calls it again
first, and a failure there is the run's one error line.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from pathlib import Path
from typing import Final

from blockvault.disk.system import choose_system
from blockvault.errors import PassphraseRequired, PlanError
from blockvault.plans.model import Plan
from blockvault.repo import Repository

__all__ = ["PASSWORD_ENV", "open_repository", "preflight", "resolve_source"]

PASSWORD_ENV: Final = "BLOCKVAULT_PASSWORD"
SYSFS: Final = Path("/sys/dev/block")  # MAJOR:MINOR -> the device's sysfs node


def open_repository(plan: Plan) -> Repository:
    """The plan's repository, opened with its password file (else ``$BLOCKVAULT_PASSWORD``);
    a run has nobody to ask, so an encrypted repository without either is an error."""

    def passphrase() -> str:
        if plan.password_file:
            try:
                with open(plan.password_file, encoding="utf-8") as file:
                    return file.readline(4096).rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise PlanError(
                    f"password file {plan.password_file}: {reason}", where=f"plan {plan.name}"
                ) from None
        if PASSWORD_ENV in os.environ:
            return os.environ[PASSWORD_ENV]
        raise PassphraseRequired(repo=plan.repo)

    return Repository.open(plan.repo, passphrase=passphrase)


def resolve_source(plan: Plan, *, sysfs: Path = SYSFS) -> tuple[str, tuple[int, ...] | None]:
    """The disk to image and its partition numbers (None: the whole disk), found now:
    partitions are named by device, and the system's disk by what is mounted."""
    where = f"plan {plan.name}"
    if plan.source_kind == "system":
        choice = choose_system(Path("/"))
        return str(choice.disk), choice.partitions or None
    if plan.source_kind == "disk":
        disk = plan.sources[0]
        _require_device(where, disk)
        return disk, None
    if plan.source_kind == "partition":
        disks: set[str] = set()
        numbers = []
        for device in plan.sources:
            _require_device(where, device)
            disk, number = _partition_of(where, device, sysfs)
            disks.add(disk)
            numbers.append(number)
        if len(disks) != 1:
            raise PlanError(
                f"its partitions lie on {len(disks)} disks ({', '.join(sorted(disks))}); "
                "make one plan per disk",
                where=where,
            )
        return disks.pop(), tuple(sorted(numbers))
    raise PlanError("a file backup has no disk", where=where)


def preflight(plan: Plan) -> Repository:
    """Refuse a plan that cannot run here: hooks first (cheap), then the source, then
    the repository (it may be remote), which is returned open."""
    for name, command in (("pre", plan.pre), ("post", plan.post)):
        if command is not None:
            _require_executable(plan, name, command)
    if plan.source_kind == "files":
        for path in plan.sources:
            if not os.path.lexists(path):
                raise PlanError(f"path {path} does not exist", where=f"plan {plan.name}")
    else:
        resolve_source(plan)
    if plan.verify == "source" and plan.source_kind != "disk":
        raise PlanError(
            "verify = 'source' compares a whole disk; use verify = 'snapshot' for partitions "
            "or the system",
            where=f"plan {plan.name}",
        )
    return open_repository(plan)


def _require_device(where: str, path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise PlanError(f"source {path}: {exc.strerror or exc}", where=where) from None
    if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
        raise PlanError(f"source {path} is neither a block device nor an image file", where=where)


def _partition_of(where: str, device: str, sysfs: Path) -> tuple[str, int]:
    """The disk holding partition ``device`` and its number, from sysfs."""
    info = os.stat(device)
    if not stat.S_ISBLK(info.st_mode):
        raise PlanError(f"{device} is not a block device, so not a partition", where=where)
    node = (sysfs / f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}").resolve()
    try:
        number = int((node / "partition").read_text())
    except (OSError, ValueError):
        raise PlanError(
            f"{device} is not a partition; use disk = {device} to image a whole disk",
            where=where,
        ) from None
    return str(Path("/dev") / node.parent.name), number


def _require_executable(plan: Plan, name: str, command: str) -> None:
    """The hook's program (its first word) must be an executable file: ``/bin/sh -c``
    would otherwise fail only when the run reaches it."""
    where = f"plan {plan.name}"
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise PlanError(f"{name} hook {command!r}: {exc}", where=where) from None
    if not words:
        raise PlanError(f"{name} hook is empty", where=where)
    program = words[0]
    found = shutil.which(program) if "/" not in program else program
    if found is None or not (os.path.isfile(found) and os.access(found, os.X_OK)):
        raise PlanError(
            f"{name} hook {program!r} is not an executable file"
            + (" on $PATH" if "/" not in program else "")
            + "; give a program's path (and make it executable)",
            where=where,
        )
