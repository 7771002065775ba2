"""Who else uses a disk: mounts, loop devices, the repository's own filesystem.

Restores and clones must refuse a target that is mounted (directly, through one of
its partitions, or through a loop device backed by it) or that holds the repository.
Everything here reads /proc/self/mountinfo and /sys, so it works for block devices
and for image files alike.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Mount", "holders_of", "mounts_using", "repository_on"]

SYS_BLOCK = Path("/sys/dev/block")


@dataclass(frozen=True)
class Mount:
    device: str  # major:minor of the mounted block device
    mountpoint: str
    read_only: bool
    via: str  # how it relates to the disk: "itself", "partition loop7p1", "loop3"


def _mountinfo() -> list[tuple[str, str, bool, str]]:
    """(major:minor, mountpoint, read_only, source) for every mount."""
    mounts = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        sep = fields.index("-")
        options = fields[5].split(",")
        source = fields[sep + 2] if len(fields) > sep + 2 else ""
        mountpoint = fields[4].replace("\\040", " ")
        mounts.append((fields[2], mountpoint, "ro" in options, source))
    return mounts


def _dev_id(st_rdev: int) -> str:
    return f"{os.major(st_rdev)}:{os.minor(st_rdev)}"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _loop_devices_backed_by(path: Path) -> list[str]:
    """major:minor of every loop device whose backing file is ``path``."""
    found = []
    try:
        target = path.resolve()
        target_st = target.stat()
    except OSError:
        return []
    for loop in Path("/sys/block").glob("loop*"):
        backing = loop / "loop" / "backing_file"
        try:
            name = backing.read_text().strip()
        except OSError:
            continue
        try:
            same = os.path.samefile(name, target)
        except OSError:
            same = Path(name) == target
        if same or (stat.S_ISBLK(target_st.st_mode) and name == str(target)):
            found.append((loop / "dev").read_text().strip())
    return found


def holders_of(path: str | os.PathLike[str]) -> dict[str, str]:
    """Every block device (major:minor -> how) whose bytes come from ``path``.

    That is the device itself, its partitions, loop devices backed by it, their
    partitions, and so on, followed to a fixed point.
    """
    p = Path(path)
    result: dict[str, str] = {}
    try:
        st = p.stat()
    except OSError:
        return result
    todo: list[tuple[str, str]] = []
    if stat.S_ISBLK(st.st_mode):
        todo.append((_dev_id(st.st_rdev), "itself"))
    todo.extend((dev, f"loop device {dev}") for dev in _loop_devices_backed_by(p))
    while todo:
        dev, how = todo.pop()
        if dev in result:
            continue
        result[dev] = how
        node = SYS_BLOCK / dev
        try:
            real = node.resolve()
        except OSError:
            continue
        for child in real.iterdir():
            if (child / "partition").exists():
                todo.append(((child / "dev").read_text().strip(), f"partition {child.name}"))
        for holder in (real / "holders").glob("*"):
            todo.append(((holder / "dev").read_text().strip(), f"holder {holder.name}"))
        devnode = Path("/dev") / real.name
        if devnode.exists():
            todo.extend(
                (d, f"loop device backed by {real.name}") for d in _loop_devices_backed_by(devnode)
            )
        backing = _read(real / "loop" / "backing_file")
        if backing:  # a loop device shares its bytes with every other loop on that file
            todo.extend(
                (d, f"loop device on {backing}") for d in _loop_devices_backed_by(Path(backing))
            )
    return result


def mounts_using(path: str | os.PathLike[str]) -> list[Mount]:
    """Mounts whose device takes its bytes from ``path`` (device or image file)."""
    holders = holders_of(path)
    return [
        Mount(dev, mountpoint, ro, holders[dev])
        for dev, mountpoint, ro, _ in _mountinfo()
        if dev in holders
    ]


def repository_on(path: str | os.PathLike[str], repository_path: str | None) -> bool:
    """True when the local repository at ``repository_path`` lives on ``path``'s bytes."""
    if not repository_path:
        return False
    repo = Path(repository_path).absolute()
    target = Path(path).absolute()
    if target == repo or target.is_relative_to(repo):
        return True
    probe = repo
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        repo_dev = _dev_id(probe.stat().st_dev)
    except OSError:
        return False
    return repo_dev in holders_of(target)
