"""Markers that let backups and garbage collection share a repository without locks.

Glossary (the protocol is written out in docs/FORMAT.md, "Concurrency and garbage
collection"):
  marker     a small JSON object ``sessions/ID`` (a backup) or ``gc/ID`` (a garbage
             collection) saying "I am running". Its owner rewrites it every
             ``heartbeat`` seconds, so the object's modification time, stamped by the
             storage's clock, is its last sign of life.
  start      when a backup session began, by the storage's clock: the modification
             time of its marker's first write.
  stale      a marker whose last heartbeat is older than its grace period; everyone
             ignores it and ``gc`` removes it.
  state      ``running`` or ``committing`` for a backup, ``sweeping`` for a gc. A backup
             never commits while a gc sweeps, and a gc never sweeps while a backup
             commits: each writes its state, then reads the other side's.
  owner      the process that wrote a marker: host name, machine id, boot id, pid and
             the pid's start time (``/proc/PID/stat``), so that on the same machine
             ``unlock`` can tell a dead owner (pid gone, reused, or rebooted since)
             from a live one without waiting for the grace period.

Times are compared only with other times from the same storage clock, so clients'
clocks never matter; ``margin`` absorbs steps of that clock and coarse timestamps.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from blockvault.errors import (
    Interrupted,
    ObjectNotFound,
    ObjectTooLarge,
    RepositoryBusy,
    RepositoryNotFound,
    SessionExpired,
    StorageError,
)
from blockvault.interrupts import shielded
from blockvault.repo import format as fmt
from blockvault.storage import Backend, open_backend

__all__ = [
    "DEFAULT_TIMING",
    "MAX_MARKER_BYTES",
    "Marker",
    "MarkerInfo",
    "Timing",
    "UnlockResult",
    "marker_storage",
    "owners",
    "read_markers",
    "unlock",
]

MAX_MARKER_BYTES: Final = 4096  # ours are about 300 bytes; a larger one is not read
RUNNING: Final = "running"
COMMITTING: Final = "committing"
SWEEPING: Final = "sweeping"


@dataclass(frozen=True)
class Timing:
    """The protocol's clocks, in seconds. Tests shrink them; users rarely need to."""

    heartbeat: float = 30.0  # a marker is rewritten this often
    session_grace: float = 2 * 3600.0  # a backup marker silent this long is stale
    gc_grace: float = 600.0  # a gc marker silent this long is stale
    margin: float = 600.0  # gc keeps objects newer than (oldest live start - margin)
    poll: float = 0.5  # a waiting side looks again this often
    wait: float = 3600.0  # how long one side waits for the other before giving up


DEFAULT_TIMING: Final = Timing()


@dataclass(frozen=True)
class MarkerInfo:
    """A marker as another process reads it."""

    name: str
    kind: str  # "backup" or "gc"
    host: str
    pid: int
    state: str
    start: float  # storage clock
    heartbeat: float  # storage clock: the object's modification time
    machine: str = ""  # /etc/machine-id of the owner ("" when unknown)
    boot: str = ""  # the owner's boot id ("" when unknown)
    pid_start: int = 0  # the owner's start, in clock ticks since boot (0 when unknown)
    problem: str = ""  # why its content was not used ("" when it was): it counts as running

    def stale(self, now: float, grace: float) -> bool:
        return now - self.heartbeat > grace

    def owner_gone(self) -> bool:
        """True when the owner surely runs no more: it was on this machine (same host
        name and machine id) and that machine has rebooted since, or its pid is free
        or belongs to a process started at another time. False when unsure."""
        here = _identity()
        if not self.boot or (self.host, self.machine) != (here["host"], here["machine"]):
            return False
        return self.boot != here["boot"] or _process_start(self.pid) != self.pid_start


def owners(markers: Iterable[MarkerInfo]) -> str:
    """Who holds the markers, for messages: ``gc/ID by pid P on HOST``, comma-separated
    (or ``gc/ID (what is wrong with it)`` for a marker that could not be read)."""
    return ", ".join(
        f"{m.name} ({m.problem})" if m.problem else f"{m.name} by pid {m.pid} on {m.host or '?'}"
        for m in markers
    )


def read_markers(backend: Backend, folder: str) -> list[MarkerInfo]:
    """Every marker under ``folder`` (``fmt.SESSION_DIR`` or ``fmt.GC_DIR``); markers
    that vanish while being read are left out, unreadable ones count as running."""
    found = []
    for name, modified in backend.list_modified(folder + "/"):
        try:
            data, problem = _read_marker(backend, name)
        except ObjectNotFound:
            continue
        start = data.get("start")
        found.append(
            MarkerInfo(
                name=name,
                kind=_text(data.get("kind")),
                host=_text(data.get("host")),
                pid=_count(data.get("pid")),
                state=_text(data.get("state")) or RUNNING,
                # never a start the storage clock cannot have given: gc's cutoff rests on it
                start=start
                if isinstance(start, int | float)
                and not isinstance(start, bool)
                and math.isfinite(start)
                else modified,
                heartbeat=modified,
                machine=_text(data.get("machine")),
                boot=_text(data.get("boot")),
                pid_start=_count(data.get("pid_start")),
                problem=problem,
            )
        )
    return found


def _read_marker(backend: Backend, name: str) -> tuple[dict[str, object], str]:
    """A marker's fields, or none and why. Its size is bounded (``MAX_MARKER_BYTES``)
    before a byte is read: a hostile or damaged marker costs no memory. Unreadable
    markers count as running, from their modification time, until they go stale."""
    try:
        raw = backend.read(name, MAX_MARKER_BYTES)
    except ObjectTooLarge as exc:
        size = exc.fields["size"]
        return {}, f"{size} bytes, more than the {MAX_MARKER_BYTES} a marker may have; not read"
    try:
        data = json.loads(raw)
    except ValueError:  # also bytes that are not UTF-8
        data = None
    if not isinstance(data, dict):
        return {}, "not a JSON object"
    return data, ""


def _text(value: object) -> str:
    """A marker's string field; "" (unknown) unless short printable text, so that no
    terminal escape reaches a message."""
    return value if isinstance(value, str) and len(value) <= 255 and value.isprintable() else ""


def _count(value: object) -> int:
    """A marker's pid or process start time; 0 (unknown) unless a whole number >= 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class Marker:
    """This process's marker: written on entry, refreshed by a daemon thread, deleted
    on exit. ``check_alive`` tells whether others may have given it up as stale."""

    def __init__(
        self,
        backend: Backend,
        folder: str,
        kind: str,
        *,
        timing: Timing = DEFAULT_TIMING,
        state: str = RUNNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.kind = kind
        self.timing = timing
        self.grace = timing.session_grace if folder == fmt.SESSION_DIR else timing.gc_grace
        self.id = uuid.uuid4().hex
        self.name = f"{folder}/{self.id}"
        self.state = state
        self.start: float | None = None
        self._clock = clock
        self._last_beat = 0.0  # clock() of the last successful write
        self._lapsed = False  # a heartbeat came later than the grace period allows
        self._lost = False  # the marker vanished while this process was up
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written = False

    # --- life cycle ----------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            with shielded():  # a signal waits until the marker is up, then takes it down
                self.write()
                try:
                    self.start = self.backend.modified(self.name)
                except StorageError:
                    self.start = None  # this storage has no times: backups work, gc refuses
                self._thread = threading.Thread(target=self._beat, name=f"{self.kind}-heartbeat")
                self._thread.daemon = True
                self._thread.start()
        except Interrupted:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with shielded():  # never leave the marker behind half-way through leaving
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.withdraw()

    def write(self) -> None:
        """(Re)write the marker now; its modification time becomes the heartbeat."""
        with self._lock:
            body = {
                "kind": self.kind,
                **_identity(),
                "pid": os.getpid(),
                "pid_start": _process_start(os.getpid()) or 0,
                "state": self.state,
                "start": self.start,
                "client_time": time.time(),  # for people reading the marker only
            }
            now = self._clock()
            if self._written and now - self._last_beat > self.grace:
                self._lapsed = True
            if self._written and not self.backend.exists(self.name):
                self._lost = True  # someone removed it (gc, unlock): rewriting is too late
            self.backend.write(self.name, json.dumps(body).encode())
            self._last_beat = self._clock()
            self._written = True

    def withdraw(self) -> None:
        """Delete the marker (on exit, or when a gc backs off)."""
        with self._lock:
            self.backend.delete(self.name)
            self._written = False

    def now(self) -> float:
        """The storage's clock: rewrite the marker and read its modification time."""
        self.write()
        return self.backend.modified(self.name)

    def _beat(self) -> None:
        while not self._stop.wait(self.timing.heartbeat):
            try:
                if self._written:
                    self.write()
            except StorageError:
                continue  # try again next time; check_alive notices a long silence

    # --- safety --------------------------------------------------------------------
    def check_alive(self) -> None:
        """Raise ``SessionExpired`` unless others surely still see this marker as
        live: it exists, and no heartbeat came later than half the grace period."""
        silent = self._clock() - self._last_beat
        detail = ""
        if self._lapsed:
            detail = f"went longer than its grace period of {self.grace:.0f}s without a heartbeat"
        elif silent > self.grace / 2:
            detail = f"has had no heartbeat for {silent:.0f}s (grace period {self.grace:.0f}s)"
        elif self._lost or not self.backend.exists(self.name):
            detail = "lost its marker (a gc or 'unlock' took it for dead)"
        if detail:
            remedy = (
                "a gc may have removed what it stored, so nothing was committed: run it again"
                if self.kind == "backup"
                else "it stopped deleting; run it again"
            )
            raise SessionExpired(
                detail,
                kind=self.kind,
                session=self.id[:12],
                repo=self.backend.location,
                remedy=remedy,
            )

    def set_state(self, state: str) -> float:
        """Publish a new state; returns the storage time it was published at."""
        self.state = state
        return self.now()

    def wait_for(self, folder: str, state: str, grace: float, what: str) -> None:
        """Wait until no live marker under ``folder`` is in ``state``."""
        deadline = self._clock() + self.timing.wait
        while True:
            now = self.now()
            busy = [
                m
                for m in read_markers(self.backend, folder)
                if m.state == state and m.name != self.name and not m.stale(now, grace)
            ]
            if not busy:
                return
            if self._clock() > deadline:
                raise RepositoryBusy(
                    f"{what} did not finish within {self.timing.wait:.0f}s ({owners(busy)}); if "
                    "that process is gone, 'blockvault unlock' removes its marker",
                    repo=self.backend.location,
                )
            time.sleep(self.timing.poll)


@dataclass(frozen=True)
class UnlockResult:
    removed: tuple[tuple[MarkerInfo, str], ...]  # each with the reason it went
    kept: tuple[tuple[MarkerInfo, str], ...]  # each with the reason it stays


def unlock(
    backend: Backend, *, older_than: float | None = None, dry_run: bool = False
) -> UnlockResult:
    """Remove the markers (backup and gc) that a process left when it died without
    cleaning up (SIGKILL, power loss): those whose owner is surely gone, and with
    ``older_than`` (seconds) those silent for longer, whoever wrote them.

    Removing a live writer's marker cannot corrupt anything: the writer finds its
    marker gone before it commits and fails with ``SessionExpired``."""
    now = _storage_now(backend) if older_than is not None else 0.0
    removed, kept = [], []
    for folder in (fmt.SESSION_DIR, fmt.GC_DIR):
        for marker in read_markers(backend, folder):
            silent = now - marker.heartbeat
            if marker.owner_gone():
                reason = f"process {marker.pid} on {marker.host} is gone"
            elif older_than is not None and silent > older_than:
                reason = f"silent for {silent:.0f}s (more than --older-than {older_than:.0f}s)"
            else:
                kept.append((marker, _why_kept(marker)))
                continue
            if not dry_run:
                backend.delete(marker.name)
            removed.append((marker, reason))
    return UnlockResult(tuple(removed), tuple(kept))


def marker_storage(location: str) -> Backend:
    """The storage of the repository at ``location``, opened without its key: markers
    are plaintext JSON, so ``unlock`` neither asks for a passphrase nor reads a key."""
    backend = open_backend(location)
    if not backend.exists(fmt.CONFIG_NAME):
        raise RepositoryNotFound(repo=location)
    return backend


def _why_kept(marker: MarkerInfo) -> str:
    if marker.problem:
        return (
            f"{marker.problem}; it counts as running until silent for its grace period, "
            "or pass --older-than"
        )
    here = _identity()
    if (marker.host, marker.machine) == (here["host"], here["machine"]) and marker.boot:
        return f"process {marker.pid} still runs on this machine"
    return (
        f"written on {marker.host or 'an unknown host'}, whose processes this machine "
        "cannot see; if it is dead, pass --older-than"
    )


def _storage_now(backend: Backend) -> float:
    """The storage's clock, read from a marker of our own (which an unlock killed
    midway leaves for the next one to remove: its owner is gone)."""
    with Marker(backend, fmt.GC_DIR, "unlock", state="unlocking") as probe:
        return probe.now()


def _identity() -> dict[str, str]:
    """Who this machine is, for markers: host name, machine id, boot id."""
    return {
        "host": socket.gethostname(),
        "machine": _read_text("/etc/machine-id"),
        "boot": _read_text("/proc/sys/kernel/random/boot_id"),
    }


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime); fields are counted after the command name, which may
    # itself hold spaces and parentheses, hence the split at the last ")"
    return int(stat.rsplit(")", 1)[1].split()[19])
