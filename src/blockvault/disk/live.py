"""Reading a source that is in use: how a running system is backed up.

A filesystem mounted read-write changes while it is read, so an image read straight
from its device can hold blocks from different moments: metadata pointing at data
that was never written, or at blocks already reused. A *live method* gives the
backup something that does not change, or says how little it can promise.

Glossary:

method
    ``lvm``: the source is an LVM logical volume, or a disk whose filesystems in use
    all lie on logical volumes, and their volume groups have free extents; a
    copy-on-write snapshot of each volume is made (``lvcreate -s``) and read instead
    (for a disk, through an overlay: the volumes' extents from their snapshots, the
    LVM metadata as it was before them). Making a snapshot suspends the volume, which
    freezes a filesystem on it (as ``fsfreeze`` does) for that instant; one inside a
    LUKS volume opened on it is frozen with ``fsfreeze`` around ``lvcreate``. The
    snapshot holds a quiesced filesystem (ext4 clean; XFS replays its log on mount).
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

from blockvault.disk.device import SourceDisk, open_device
from blockvault.disk.tree import sysfs_attribute
from blockvault.disk.usage import Mount, mounts_using
from blockvault.errors import LiveSourceError, SnapshotFailed, UsageError
from blockvault.events import Noted, Reporter, Warned

__all__ = [
    "LIVE_METHODS",
    "LiveRead",
    "live_source",
    "remove_leftovers",
]

LIVE_METHODS: Final = ("auto", "lvm", "unsafe-reread")

TAG: Final = "blockvault-live"
OWNER_TAG: Final = "blockvault-owner:"
SNAPSHOT_PREFIX: Final = "bvlive-"
_LVM_TIMEOUT: Final = 120  # seconds an lvm command may take (lvcreate suspends I/O)
_MAX_REPORT: Final = 1 << 20  # bytes of lvs output we parse
_SYS_BLOCK: Final = Path("/sys/dev/block")
_MAX_DEPTH: Final = 8  # devices stacked under a mount we follow down to an LV
_MAX_METADATA: Final = 64 << 20  # bytes before a PV's first extent we keep in memory


@dataclass(frozen=True)
class LiveRead:
    """What a backup reads and how it may trust it."""

    path: str  # the device to read: a snapshot, or the source itself
    origin: str  # the source as the user named it (recorded in the snapshot)
    method: str  # "" (nothing mounted read-write), "lvm-snapshot" or "unsafe-reread"
    snapshots: tuple[str, ...] = ()  # "VG/LV" of the snapshots made, for the overflow check

    @property
    def rereads(self) -> bool:
        return self.method == "unsafe-reread"

    def check(self) -> None:
        """Raise ``SnapshotFailed`` when a snapshot read overflowed (its reads then
        returned errors or, worse, the origin's newer blocks)."""
        for snapshot in self.snapshots:
            row = _lv(snapshot)
            attr = str(row.get("lv_attr", "")) if row else ""
            percent = _number(row.get("snap_percent", "")) if row else None
            if row is None or attr[4:5] == "I" or (percent is not None and percent >= 100.0):
                raise SnapshotFailed(
                    f"the LVM snapshot {snapshot} overflowed while it was read (more was "
                    "written to the volume than the volume group's free extents hold); "
                    "free extents in the volume group (vgextend, or shrink another volume)",
                    path=self.origin,
                )


@contextlib.contextmanager
def live_source(
    source: str, method: str | None, reporter: Reporter
) -> Iterator[tuple[SourceDisk, LiveRead]]:
    """The device to back ``source`` up from, open, and how it was made. ``method``
    None: live only when a filesystem on ``source`` is mounted read-write (then as
    ``auto``). A logical volume is read from its snapshot; a disk whose filesystems
    in use all lie on logical volumes is read with each such volume's extents taken
    from its snapshot and the LVM metadata as it was before the snapshots were made."""
    if method is not None and method not in LIVE_METHODS:
        raise UsageError(f"--live={method}: choose one of {', '.join(LIVE_METHODS)}")
    writable = [m for m in mounts_using(source) if not m.read_only]
    if (method is None and not writable) or method == "unsafe-reread":
        if method:
            reporter(Warned(f"{source}: reading it in use, then again until two reads agree"))
        with open_device(source) as device:
            yield device, LiveRead(source, source, method or "")
        return
    remove_leftovers(reporter)
    volume = _logical_volume(source)
    if volume is not None:
        on_top = [m.mountpoint for m in writable if not _is_logical_volume(m.device)]
        free = _free_extents(volume, writable, source)
        with contextlib.ExitStack() as stack:
            with _frozen(on_top, source):
                snap = stack.enter_context(_lvm_snapshot(volume, free, source))
            device = stack.enter_context(open_device(f"/dev/{snap}"))
            reporter(Noted(f"{source} is in use: reading the LVM snapshot {snap} made for it"))
            yield device, LiveRead(source, source, "lvm-snapshot", (snap,))
        return
    if not writable:  # asked for, but nothing on it is in use: read as it is
        with open_device(source) as device:
            yield device, LiveRead(source, source, "")
        return
    volumes: dict[str, dict[str, Any]] = {}
    above: dict[str, list[str]] = {}  # mounted on a device on the volume (LUKS), not on it
    for mount in writable:
        row = _mounted_volume(mount)
        if row is None:
            raise LiveSourceError(
                _why_not([mount], "it is not on an LVM logical volume"), path=source
            )
        name = f"{row['vg_name']}/{row['lv_name']}"
        volumes[name] = row
        if not _is_logical_volume(mount.device):
            above.setdefault(name, []).append(mount.mountpoint)
    with open_device(source) as disk, contextlib.ExitStack() as stack:
        pieces = _metadata_as_now(disk, source, volumes.values())
        made = []
        for name, row in volumes.items():
            # asked again: an earlier snapshot in the same group took some
            free = _free_extents(_lv(name) or row, writable, source)
            with _frozen(above.get(name, ()), source):
                snap = stack.enter_context(_lvm_snapshot(row, free, source))
            device = stack.enter_context(open_device(f"/dev/{snap}"))
            pieces += [_Piece(at, length, device, inner, b"") for at, length, inner in
                       _places_on(source, name, int(row["vg_extent_size"]))]  # fmt: skip
            made.append(snap)
        reporter(
            Noted(
                f"{source} is in use: reading {', '.join(volumes)} from the LVM "
                f"snapshot{'s' if len(made) > 1 else ''} {', '.join(made)} made for it"
            )
        )
        yield _Overlay(disk, pieces), LiveRead(source, source, "lvm-snapshot", tuple(made))


def _free_extents(volume: dict[str, Any], writable: list[Mount], source: str) -> int:
    free = int(volume["vg_free"]) // int(volume["vg_extent_size"])
    if free < 1:
        raise LiveSourceError(
            _why_not(writable, f"volume group {volume['vg_name']} has no free extents"),
            path=source,
        )
    return free


class _Piece(NamedTuple):
    start: int  # disk offset
    length: int
    device: SourceDisk | None  # read from here at ``inner`` ..., or
    inner: int
    data: bytes  # ... these bytes, when device is None


class _Overlay:
    """A disk read with some of its ranges taken from elsewhere: logical volumes'
    extents from their snapshots, LVM metadata areas from memory."""

    def __init__(self, base: SourceDisk, pieces: list[_Piece]) -> None:
        self._base = base
        self._pieces = sorted(pieces, key=lambda piece: piece.start)
        self.path = base.path
        self.is_block = base.is_block
        self.logical_sector_size = base.logical_sector_size
        self.size = base.size

    def read_at(self, offset: int, length: int) -> bytes:
        buffer = bytearray(length)
        self.readinto_at(buffer, offset)
        return bytes(buffer)

    def readinto_at(self, buffer: bytearray | memoryview, offset: int) -> None:
        view = memoryview(buffer)
        pos, end = offset, offset + len(view)
        for piece in self._pieces:
            if piece.start + piece.length <= pos:
                continue
            if piece.start >= end:
                break
            if piece.start > pos:
                self._base.readinto_at(view[pos - offset : piece.start - offset], pos)
                pos = piece.start
            stop = min(end, piece.start + piece.length)
            into, at = view[pos - offset : stop - offset], pos - piece.start
            if piece.device is not None:
                piece.device.readinto_at(into, piece.inner + at)
            else:
                into[:] = piece.data[at : at + len(into)]
            pos = stop
        if pos < end:
            self._base.readinto_at(view[pos - offset :], pos)


def _mounted_volume(mount: Mount) -> dict[str, Any] | None:
    """The ``lvs`` row of the logical volume ``mount`` is on: its device, or the one
    device below it, and so on (an opened LUKS volume on an LV), if there is one."""
    node = _SYS_BLOCK / mount.device
    for _ in range(_MAX_DEPTH):
        if sysfs_attribute(node / "dm" / "uuid").startswith("LVM-"):
            return _logical_volume(f"/dev/mapper/{sysfs_attribute(node / 'dm' / 'name')}")
        below = sorted((node / "slaves").glob("*")) if (node / "slaves").is_dir() else []
        if len(below) != 1:
            return None
        node = below[0]
    return None


def _is_logical_volume(device: str) -> bool:
    """Whether the device ``major:minor`` is an LVM logical volume itself."""
    return sysfs_attribute(_SYS_BLOCK / device / "dm" / "uuid").startswith("LVM-")


@contextlib.contextmanager
def _frozen(mountpoints: Iterable[str], source: str) -> Iterator[None]:
    """Filesystems frozen (``fsfreeze``) while a snapshot of the volume under them is
    made: lvcreate freezes only a filesystem on the volume itself, not one on a LUKS
    volume above it. The freeze lasts as long as lvcreate."""
    frozen: list[str] = []
    try:
        for point in mountpoints:
            _lvm("fsfreeze", "--freeze", point)
            frozen.append(point)
        yield
    except SnapshotFailed as exc:
        raise SnapshotFailed(exc.fields["detail"], path=source) from None
    finally:
        for point in reversed(frozen):
            subprocess.run(["fsfreeze", "--unfreeze", point], check=False, timeout=_LVM_TIMEOUT)


def _pv_partitions(source: str) -> dict[str, int]:
    """The physical volumes on the disk ``source``: device path -> disk offset."""
    disk = Path("/sys/class/block") / Path(os.path.realpath(source)).name
    found = {}
    for child in disk.iterdir() if disk.is_dir() else ():
        start = sysfs_attribute(child / "start")
        if start.isdigit() and (child / "partition").exists():
            found[f"/dev/{child.name}"] = int(start) * 512
    found[os.path.realpath(source)] = 0
    return found


def _metadata_as_now(
    disk: SourceDisk, source: str, volumes: Iterable[dict[str, Any]]
) -> list[_Piece]:
    """The label and metadata area of each PV on ``source`` in the volume groups of
    ``volumes``, as they are before a snapshot is added to them (the image must not
    hold a snapshot whose copy-on-write data it does not hold)."""
    groups = {str(v["vg_name"]) for v in volumes}
    on_disk = _pv_partitions(source)
    rows = _report("pvs", "-o", "pv_name,vg_name,pe_start", key="pv")
    pieces = []
    for row in rows:
        name = os.path.realpath(str(row.get("pv_name", "")))
        if row.get("vg_name") in groups and name in on_disk:
            length = int(row["pe_start"])
            if not 0 < length <= _MAX_METADATA:
                raise SnapshotFailed(f"PV {name}: pe_start {length} is out of bounds", path=source)
            start = on_disk[name]
            pieces.append(_Piece(start, length, None, 0, disk.read_at(start, length)))
    return pieces


def _places_on(source: str, name: str, extent: int) -> list[tuple[int, int, int]]:
    """Where logical volume ``name``'s extents lie on the disk ``source``: runs of
    (disk offset, length, offset in the volume). Only linear segments are known."""
    on_disk = _pv_partitions(source)
    starts = {
        os.path.realpath(str(r.get("pv_name", ""))): int(r["pe_start"])
        for r in _report("pvs", "-o", "pv_name,pe_start", key="pv")
    }
    places = []
    rows = _report(
        "lvs", "--segments", "-o", "seg_start_pe,seg_size_pe,seg_pe_ranges,segtype", name,
        key="seg",
    )  # fmt: skip
    for row in rows:
        if row.get("segtype") != "linear":
            raise SnapshotFailed(
                f"logical volume {name} has a {row.get('segtype')} segment; only linear "
                "volumes are read from a snapshot inside a disk",
                path=source,
            )
        pv, _, extents = str(row.get("seg_pe_ranges", "")).rpartition(":")
        first, _, _ = extents.partition("-")
        pv = os.path.realpath(pv)
        if pv not in on_disk or not first.isdigit():
            continue  # a segment on another disk: not read from this one
        places.append(
            (
                on_disk[pv] + starts[pv] + int(first) * extent,
                int(row["seg_size_pe"]) * extent,
                int(row["seg_start_pe"]) * extent,
            )
        )
    if not places:  # in use from this disk, so some of it is here: never read it live
        raise SnapshotFailed(f"lvs shows no segment of {name} on this disk", path=source)
    return places


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


def _report(command: str, *args: str, key: str = "lv") -> list[dict[str, Any]]:
    out = _lvm(command, "--reportformat", "json", "--units", "b", "--nosuffix", *args)
    try:
        data = json.loads(out[:_MAX_REPORT])
        rows = data["report"][0][key]
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
