"""Reading a source that is in use: how a running system is backed up.

A filesystem mounted read-write changes while it is read, so an image read straight
from its device can hold blocks from different moments: metadata pointing at data
that was never written, or at blocks already reused. A *live method* gives the
backup something that does not change, or says how little it can promise.

Glossary:

method
    ``lvm``: the source is an LVM logical volume and its volume group has free
    extents; a copy-on-write snapshot of it is made (``lvcreate -s``) and read
    instead. Making it suspends the volume, which freezes the filesystem (as
    ``fsfreeze`` does) for that instant: the snapshot holds a clean filesystem.
    ``unsafe-reread``: nothing can be frozen; the source is read, then its used
    map and blocks read again until two passes agree (pipeline/backup.py). The
    snapshot is recorded as not crash-consistent. ``auto`` picks ``lvm`` where
    it can and refuses otherwise (``LiveSourceError`` names the options).
owner tags
    Every snapshot made here carries the LVM tag ``blockvault-live`` and one naming
    its owner (boot id, process id and start time). The tags live with the
    snapshot itself, so a backup that died (even with the machine) is found on
    the next live backup and its snapshot removed: ``remove_leftovers``.

Invariants: a snapshot made here is removed when the backup ends, however it
ends; a snapshot that overflowed fails the backup before anything is committed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from blockvault.disk.usage import Mount, mounts_using
from blockvault.errors import LiveSourceError, SnapshotFailed, UsageError
from blockvault.events import Noted, Reporter, Warned

__all__ = [
    "LIVE_METHODS",
    "LiveRead",
    "live_read",
    "remove_leftovers",
]

LIVE_METHODS: Final = ("auto", "lvm", "unsafe-reread")

TAG: Final = "blockvault-live"
OWNER_TAG: Final = "blockvault-owner:"
SNAPSHOT_PREFIX: Final = "bvlive-"
_LVM_TIMEOUT: Final = 120  # seconds an lvm command may take (lvcreate suspends I/O)
_MAX_REPORT: Final = 1 << 20  # bytes of lvs output we parse


@dataclass(frozen=True)
class LiveRead:
    """What a backup reads and how it may trust it."""

    path: str  # the device to read: a snapshot, or the source itself
    origin: str  # the source as the user named it (recorded in the snapshot)
    method: str  # "" (nothing mounted read-write), "lvm-snapshot" or "unsafe-reread"
    snapshot: str = ""  # "VG/LV" of the snapshot made, for the overflow check

    @property
    def rereads(self) -> bool:
        return self.method == "unsafe-reread"

    def check(self) -> None:
        """Raise ``SnapshotFailed`` when the snapshot read overflowed (its reads
        then returned errors or, worse, the origin's newer blocks)."""
        if not self.snapshot:
            return
        row = _lv(self.snapshot)
        attr = str(row.get("lv_attr", "")) if row else ""
        percent = _number(row.get("snap_percent", "")) if row else None
        if row is None or attr[4:5] == "I" or (percent is not None and percent >= 100.0):
            raise SnapshotFailed(
                f"the LVM snapshot {self.snapshot} overflowed while it was read (more was "
                "written to the volume than the volume group's free extents hold); free "
                "extents in the volume group (vgextend, or shrink another volume)",
                path=self.origin,
            )


@contextlib.contextmanager
def live_read(source: str, method: str | None, reporter: Reporter) -> Iterator[LiveRead]:
    """The device to back ``source`` up from. ``method`` None: live only when a
    filesystem on ``source`` is mounted read-write (then as ``auto``)."""
    if method is not None and method not in LIVE_METHODS:
        raise UsageError(f"--live={method}: choose one of {', '.join(LIVE_METHODS)}")
    writable = [m for m in mounts_using(source) if not m.read_only]
    if method is None and not writable:
        yield LiveRead(source, source, "")
        return
    if method == "unsafe-reread":
        reporter(Warned(f"{source}: reading it while in use, then again until two reads agree"))
        yield LiveRead(source, source, "unsafe-reread")
        return
    remove_leftovers(reporter)
    volume = _logical_volume(source)
    if volume is None:
        raise LiveSourceError(_why_not(writable, "it is not an LVM logical volume"), path=source)
    free = int(volume["vg_free"]) // int(volume["vg_extent_size"])
    if free < 1:
        raise LiveSourceError(
            _why_not(writable, f"volume group {volume['vg_name']} has no free extents"),
            path=source,
        )
    with _lvm_snapshot(volume, free, source) as snapshot:
        reporter(Noted(f"{source} is in use: reading the LVM snapshot {snapshot} made for it"))
        yield LiveRead(f"/dev/{snapshot}", source, "lvm-snapshot", snapshot)


def _why_not(writable: list[Mount], reason: str) -> str:
    where = ", ".join(m.mountpoint for m in writable) or "nothing mounted"
    return f"is in use (mounted read-write on {where}) and {reason}"


def remove_leftovers(reporter: Reporter) -> list[str]:
    """Remove the snapshots that live backups made and did not remove (their process
    died, or the machine); returns their "VG/LV" names."""
    if shutil.which("lvs") is None:
        return []
    try:
        rows = _report("lvs", "-o", "vg_name,lv_name,lv_tags", f"@{TAG}")
    except SnapshotFailed:  # no volume groups at all, or lvm not usable here
        return []
    removed = []
    for row in rows:
        name = f"{row.get('vg_name', '')}/{row.get('lv_name', '')}"
        tags = str(row.get("lv_tags", "")).split(",")
        owner = next((t[len(OWNER_TAG) :] for t in tags if t.startswith(OWNER_TAG)), "")
        if owner and _alive(owner):
            continue
        _lvm("lvremove", "-f", name)
        reporter(Warned(f"removed the LVM snapshot {name} that an interrupted backup left"))
        removed.append(name)
    return removed


@contextlib.contextmanager
def _lvm_snapshot(volume: dict[str, Any], free: int, source: str) -> Iterator[str]:
    """A tagged snapshot of ``volume``, removed on the way out. Sized from the free
    extents: as large as the origin (then it cannot overflow) when they allow."""
    extent = int(volume["vg_extent_size"])
    origin = -(-int(volume["lv_size"]) // extent)
    wanted = origin + origin // 64 + 1  # the copy-on-write table takes about 1/256 more
    name = f"{SNAPSHOT_PREFIX}{volume['lv_name']}-{secrets.token_hex(4)}"[:127]
    full = f"{volume['vg_name']}/{name}"
    try:
        _lvm(
            "lvcreate",
            "--snapshot",
            "--extents",
            str(min(free, wanted)),
            "--name",
            name,
            "--addtag",
            TAG,
            "--addtag",
            OWNER_TAG + _owner(),
            f"{volume['vg_name']}/{volume['lv_name']}",
        )
    except SnapshotFailed as exc:
        raise SnapshotFailed(exc.fields["detail"], path=source) from None
    try:
        yield full
    finally:
        _lvm("lvremove", "-f", full)


def _logical_volume(source: str) -> dict[str, Any] | None:
    """The ``lvs`` row of ``source`` when it is a plain (not snapshot, not thin) LV."""
    if shutil.which("lvs") is None:
        return None
    row = _lv(source)
    if row is None:
        return None
    attr = str(row.get("lv_attr", ""))
    if attr[:1] not in ("-", "o"):  # s/S snapshot, t/V thin, m/r mirror/raid, ...
        return None
    return row


def _lv(name: str) -> dict[str, Any] | None:
    try:
        rows = _report(
            "lvs",
            "-o",
            "vg_name,lv_name,lv_attr,lv_size,vg_free,vg_extent_size,snap_percent",
            name,
        )
    except SnapshotFailed:
        return None
    return rows[0] if len(rows) == 1 else None


def _report(command: str, *args: str) -> list[dict[str, Any]]:
    out = _lvm(command, "--reportformat", "json", "--units", "b", "--nosuffix", *args)
    try:
        data = json.loads(out[:_MAX_REPORT])
        rows = data["report"][0]["lv"]
    except (ValueError, KeyError, IndexError, TypeError):
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _lvm(command: str, *args: str) -> str:
    try:
        proc = subprocess.run(
            [command, *args],
            capture_output=True,
            text=True,
            timeout=_LVM_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SnapshotFailed(f"{command} failed: {exc}", path=command) from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1].strip()
        raise SnapshotFailed(f"{command} failed: {last}", path=args[-1] if args else command)
    return proc.stdout


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _owner() -> str:
    """This process, unambiguous across reboots and pid reuse: boot id, pid, start."""
    return f"{_boot_id()}:{os.getpid()}:{_start_time(os.getpid())}"


def _alive(owner: str) -> bool:
    boot, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if boot != _boot_id() or not pid.isdigit():
        return False
    return _start_time(int(pid)) == start


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (after the parenthesised name, which may hold spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""
