"""Mount a snapshot with FUSE, and take every piece of such a mount down again.

Process model: ``mount`` forks a server that starts its own session (so a
terminal's Ctrl-C reaches only the foreground command, which then tears down in
order) and serves :class:`SnapshotTree` until unmounted. With ``filesystems``,
the command, not the server, then attaches ``pN.img`` to read-only loop devices
and mounts them (ext2/3/4 by the kernel, NTFS by ntfs-3g, as root); FAT and any
filesystem when not root are shown by blockvault's own parsers inside the tree.

Every loop device and inner mount is written to a state file before it is made,
so ``unmount`` can clean up after a killed command or server: inner mounts
first, then loop devices, then the FUSE mount, then the server process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from blockvault.browse.stream import cache_chunks, region_reader
from blockvault.browse.volume import PARSERS, Volume, open_volume
from blockvault.errors import BlockvaultError, MountpointError, UsageError
from blockvault.repo import format as fmt
from blockvault.repo.image import RegionReader, SnapshotImage
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository
from blockvault.text import command_word

__all__ = [
    "InnerMount",
    "MountState",
    "check_mountpoint",
    "log_path",
    "mount",
    "state_path",
    "unmount",
]

log = logging.getLogger(__name__)

READY_TIMEOUT: Final = 30.0
SERVER_EXIT_TIMEOUT: Final = 10.0
_KERNEL: Final = {"ext2": "ext", "ext3": "ext", "ext4": "ext", "ntfs": "ntfs"}


@dataclass
class InnerMount:
    partition: int
    path: str  # the directory mounted on, MOUNTPOINT/pN
    how: str  # "kernel" (ext via loop), "ntfs-3g", or "blockvault" (served in the tree)
    loop: str | None = None  # /dev/loopN, once attached
    note: str = ""


@dataclass
class MountState:
    mountpoint: str
    snapshot: str
    pid: int  # the FUSE server
    inner: list[InnerMount] = field(default_factory=list)

    def save(self) -> None:
        path = state_path(self.mountpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, mountpoint: str) -> MountState | None:
        try:
            data = json.loads(state_path(mountpoint).read_text())
        except (OSError, ValueError):
            return None
        data["inner"] = [InnerMount(**m) for m in data.get("inner", [])]
        return cls(**data)


def _state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/blockvault/mounts")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return (
        Path(runtime, "blockvault", "mounts")
        if runtime
        else Path(f"/tmp/blockvault-{os.geteuid()}/mounts")
    )


def state_path(mountpoint: str | os.PathLike[str]) -> Path:
    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:24]
    return _state_dir() / f"{key}.json"


def log_path(mountpoint: str | os.PathLike[str]) -> Path:
    """Where the server of ``mountpoint`` logs why a read failed (beside its state file;
    kept after unmount, at most two files of 1 MiB)."""
    return state_path(mountpoint).with_suffix(".log")


def _log_to_file(mountpoint: Path) -> None:
    """In the server (whose stdio is /dev/null): send blockvault's log to its file."""
    from logging.handlers import RotatingFileHandler

    path = log_path(mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(path, maxBytes=1 << 20, backupCount=1)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("blockvault")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _mount_table() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount, from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            left, _, right = line.partition(" - ")
            point = left.split()[4].encode().decode("unicode_escape")
            found.append((point, right.split()[0]))
    return found


def _is_ours(mountpoint: str) -> bool:
    return any(p == mountpoint and t == "fuse.blockvault" for p, t in _mount_table())


def check_mountpoint(path: str | os.PathLike[str]) -> Path:
    """An existing, empty directory that nothing is mounted on."""
    where = Path(os.path.realpath(path))
    if not where.exists():
        raise MountpointError("does not exist; create an empty directory first", path=str(path))
    if not where.is_dir():
        raise MountpointError("is not a directory", path=str(path))
    if os.path.ismount(where):
        raise MountpointError(
            "is busy: something is mounted on it already "
            f"('blockvault umount {command_word(str(path))}' "
            "takes a blockvault mount down)",
            path=str(path),
        )
    if any(where.iterdir()):
        raise MountpointError("is not empty; mount on an empty directory", path=str(path))
    return where


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise UsageError(f"{name} not found: install it (scripts/setup does)")
    return found


def _run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise UsageError(f"{Path(args[0]).name} failed: {lines[-1] if lines else proc.returncode}")
    return proc.stdout


# --- the server -----------------------------------------------------------------------


def _serve(
    open_repo: Callable[[], Repository],
    snapshot_id: str,
    mountpoint: Path,
    views: bool,
    kernel: set[int],
    ready: int,
) -> None:
    """Runs in the forked server: build the tree, tell the parent when libfuse is up."""
    from blockvault.browse.fusetree import SnapshotTree
    from blockvault.browse.repotree import Catalog, RepositoryTree

    def tell(message: str) -> None:
        with contextlib.suppress(OSError):
            os.write(ready, message.encode()[:4000])
            os.close(ready)

    try:
        _log_to_file(mountpoint)
        repo = open_repo()
        if not snapshot_id:  # the whole repository, by id, time and host
            catalog = Catalog(list(repo.listing().usable()))
            _fuse(
                RepositoryTree(repo, catalog, None, time.time_ns(), lambda: tell("ok")),
                mountpoint,
                "repository",
            )
            return
        snap = repo.load_snapshot(snapshot_id)
        stamp = int(_parse_time(snap.time) * 1e9)
        if snap.kind == "files":  # its files at the root
            _fuse(
                RepositoryTree(repo, None, snap, stamp, lambda: tell("ok")),
                mountpoint,
                snap.id[:12],
            )
            return
        index = repo.load_index(snap)
        readers = {}
        for region in index.regions:
            if region.kind == fmt.REGION_PARTITION:
                readers[region.number] = region_reader(repo, region, index.chunk_size)
        images: dict[str, RegionReader | SnapshotImage] = {
            "disk.img": SnapshotImage(
                repo, snap, index, parts=readers, cache=cache_chunks(index.chunk_size)
            )
        }
        images.update({f"p{n}.img": r for n, r in sorted(readers.items())})
        shown: dict[str, Volume] = {}
        if views:
            for record in snap.imaged_partitions:
                if record.filesystem in PARSERS and record.number not in kernel:
                    try:
                        shown[f"p{record.number}"] = open_volume(repo, snap, record.number, index)
                    except BlockvaultError as exc:  # damaged: its image only
                        log.error("p%d/ not shown: %s", record.number, exc)
        tree = SnapshotTree(images, shown, {f"p{n}" for n in kernel}, stamp, lambda: tell("ok"))
        _fuse(tree, mountpoint, snap.id[:12])
    except BaseException as exc:  # reported to the parent, then the server exits
        log.error("the server stops: %s", exc, exc_info=not isinstance(exc, BlockvaultError))
        tell(f"error: {exc}")
    finally:
        _after_server(str(mountpoint))


def _fuse(tree: object, mountpoint: Path, name: str) -> None:
    """Serve ``tree`` at ``mountpoint`` until unmounted."""
    from mfusepy import FUSE

    FUSE(
        tree,
        str(mountpoint),
        foreground=True,
        ro=True,
        fsname=f"blockvault:{name}",
        subtype="blockvault",
        default_permissions=True,
    )


def _after_server(mountpoint: str) -> None:
    """The server is done (unmounted, or killed by a signal): clean up what is left."""
    state = MountState.load(mountpoint)
    if state is not None and state.pid == os.getpid():
        with contextlib.suppress(BlockvaultError, OSError):
            _teardown(state, force=True)
            if not _is_ours(mountpoint):
                state_path(mountpoint).unlink(missing_ok=True)
    os._exit(0)


def _parse_time(text: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def _spawn(
    open_repo: Callable[[], Repository],
    snapshot_id: str,
    where: Path,
    views: bool,
    kernel: set[int],
) -> int:
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the server
        try:
            os.close(read_end)
            os.setsid()  # a terminal's Ctrl-C goes to the command, which tears down in order
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            _serve(open_repo, snapshot_id, where, views, kernel, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    answer = b""
    deadline = time.monotonic() + READY_TIMEOUT
    import select

    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], 0.2)
        if ready:
            data = os.read(read_end, 4096)
            if not data:
                break
            answer += data
            if answer == b"ok":
                break
    os.close(read_end)
    if answer != b"ok":
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        why = answer.decode(errors="replace").removeprefix("error: ") or "no answer from libfuse"
        raise MountpointError(f"cannot mount: {why}", path=str(where))
    return pid


# --- mount and unmount -----------------------------------------------------------------


def mount(
    open_repo: Callable[[], Repository],
    snap: Snapshot | None,
    mountpoint: str | os.PathLike[str],
    *,
    filesystems: bool = False,
) -> MountState:
    """Serve ``snap`` at ``mountpoint`` from a forked server; returns once the images (and
    with ``filesystems`` the partitions' filesystems) are mounted. ``snap`` None serves
    the whole repository (``browse/repotree.py``), as does a file snapshot its files.
    The caller either
    returns (the server lives on until ``unmount``) or waits with :func:`wait`."""
    where = check_mountpoint(mountpoint)
    root = os.geteuid() == 0
    kernel: dict[int, str] = {}
    records = snap.imaged_partitions if snap is not None else ()
    if filesystems and root:
        kernel = {p.number: _KERNEL[p.filesystem] for p in records if p.filesystem in _KERNEL}
    pid = _spawn(open_repo, snap.id if snap else "", where, filesystems, set(kernel))
    state = MountState(str(where), snap.id if snap else "", pid)
    if filesystems and snap is not None:
        for record in snap.imaged_partitions:
            target = str(where / f"p{record.number}")
            if record.number in kernel:
                how = "kernel" if kernel[record.number] == "ext" else "ntfs-3g"
                state.inner.append(InnerMount(record.number, target, how))
            elif record.filesystem in PARSERS:
                note = "" if root else "not root: served by blockvault's reader"
                if record.filesystem.startswith("fat"):
                    note = "FAT: served by blockvault's reader (no vfat in every kernel)"
                state.inner.append(InnerMount(record.number, target, "blockvault", note=note))
    state.save()
    try:
        for inner in state.inner:
            if inner.how == "kernel":
                image = str(where / f"p{inner.partition}.img")
                inner.loop = "attaching"
                state.save()  # a crash now leaves a note to look for the device by file
                inner.loop = _run(
                    _tool("losetup"), "--find", "--show", "--read-only", image
                ).strip()
                state.save()
                _run(_tool("mount"), "-t", "ext4", "-o", "ro,noload", inner.loop, inner.path)
            elif inner.how == "ntfs-3g":
                image = str(where / f"p{inner.partition}.img")
                _run(_tool("ntfs-3g"), "-o", "ro", image, inner.path)
    except BaseException:
        with contextlib.suppress(BlockvaultError, OSError):
            unmount(where)
        raise
    return state


def wait(state: MountState) -> int:
    """Wait in the foreground until the mount goes away; SIGINT or SIGTERM unmounts it
    first. Returns the signal number that ended it, or 0."""
    caught: list[int] = []

    def on_signal(number: int, _frame: object) -> None:
        caught.append(number)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not caught:
            try:
                pid, _status = os.waitpid(state.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                break
            time.sleep(0.1)
        if caught:
            unmount(state.mountpoint)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return caught[0] if caught else 0


def _inner_mounted(path: str) -> bool:
    return any(p == path for p, _t in _mount_table())


def _teardown(state: MountState, force: bool = False) -> None:
    if force and _is_ours(state.mountpoint):
        # paths below a dead FUSE mount cannot even be looked up (ENOTCONN): detach the
        # whole tree at once; the kernel lets go of the inner mounts with it
        subprocess.run(
            [_tool("umount"), "--lazy", "--no-canonicalize", state.mountpoint],
            capture_output=True,
            check=False,
        )
    for inner in reversed(state.inner):
        if inner.how != "blockvault" and _inner_mounted(inner.path):
            try:
                _run(_tool("umount"), inner.path)
            except UsageError:
                if not force:
                    raise MountpointError(
                        f"{inner.path} is busy (a process is using it); close it and retry",
                        path=state.mountpoint,
                    ) from None
                subprocess.run(
                    [_tool("umount"), "-l", inner.path], capture_output=True, check=False
                )
        if inner.loop == "attaching":
            inner.loop = _find_loop(str(Path(state.mountpoint) / f"p{inner.partition}.img"))
        if inner.loop:
            subprocess.run([_tool("losetup"), "-d", inner.loop], capture_output=True, check=False)
            inner.loop = None
    state.inner = [i for i in state.inner if i.how == "blockvault"]
    state.save()


def _find_loop(image: str) -> str | None:
    proc = subprocess.run(
        [_tool("losetup"), "--noheadings", "--output", "NAME", "--associated", image],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.split()[0] if proc.stdout.split() else None


def _unmount_fuse(mountpoint: str) -> None:
    for command in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
        tool = shutil.which(command[0]) or shutil.which(command[0], path="/usr/sbin:/sbin:/bin")
        if tool is None:
            continue
        proc = subprocess.run([tool, *command[1:], mountpoint], capture_output=True, text=True)
        if proc.returncode == 0 or not _is_ours(mountpoint):
            return
        if "busy" in (proc.stderr + proc.stdout).lower():
            raise MountpointError(
                "is busy (a process is using it); close it and retry", path=mountpoint
            )
    raise MountpointError("could not be unmounted", path=mountpoint)


def unmount(mountpoint: str | os.PathLike[str]) -> MountState | None:
    """Take down a mount made by :func:`mount`: inner mounts, loop devices, the FUSE
    mount, the server. Works after a crash of either process (from the state file)."""
    where = os.path.realpath(mountpoint)
    state = MountState.load(where)
    ours = _is_ours(where)
    if state is None and not ours:
        raise MountpointError("is not a blockvault mount", path=str(mountpoint))
    if state is not None:
        # a dead server answers nothing: what is mounted on it can only be detached
        _teardown(state, force=not _alive(state.pid))
    if ours:
        _unmount_fuse(where)
    if state is not None:
        _reap(state.pid)
        state_path(where).unlink(missing_ok=True)
    return state


def _reap(pid: int) -> None:
    """Wait for the server to exit (it does once unmounted); end it if it hangs."""
    deadline = time.monotonic() + SERVER_EXIT_TIMEOUT
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:  # not our child: poll for it
            if not _alive(pid):
                return
        time.sleep(0.05)
    with contextlib.suppress(OSError):  # only if the pid is still a blockvault process
        if b"blockvault" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie waiting for its parent counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True
