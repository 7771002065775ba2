"""The writer session: the one way new snapshots enter a repository.

Every source (disk images today; file trees, agents and imports next) writes the
same way, and only this module knows the protocol that keeps it safe beside ``gc``
(docs/FORMAT.md, "Concurrency and garbage collection")::

    with WriterSession(repo, kind="backup") as writer:   # marker up, then list storage
        writer.choose_parent(draft)                       # what it was made after
        writer.put_chunk(data, chunk_id)                  # from any number of threads
        snapshot = writer.commit(snapshot, index, store_again)   # the commit point
    # marker gone; chunks stored so far are durable even if the block failed

Glossary:
  marker       ``sessions/ID``: "a writer is running since <start>"; gc keeps every
               unreferenced object younger than the oldest live marker's start.
  parent       the newest readable snapshot of the same origin (host, disk, imaged
               partitions) when the session began: recorded in the manifest, it is
               what an incremental source (file backup) compares against.
  commit       wait until no gc sweeps, make sure every chunk the index names is still
               stored (``store_again`` writes back what a gc removed meanwhile), then
               write the index and the manifest. Nothing else makes a snapshot exist.
  outcome      when the session ends by ``Interrupted``, one sentence on what it left
               (a snapshot, or chunks a later backup reuses): never "unchanged" once a
               chunk was written.

The session knows nothing about disks: chunks, an ``Index`` and a ``Snapshot`` record.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import Self

from blockvault.errors import BlockvaultError, Interrupted
from blockvault.interrupts import shielded
from blockvault.repo import format as fmt
from blockvault.repo.index import Index
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository
from blockvault.repo.sessions import COMMITTING, DEFAULT_TIMING, SWEEPING, Marker, Timing
from blockvault.text import plural

__all__ = ["StoreAgain", "WriterSession"]

# writes back the chunks (ids) a gc removed during the session, from the source
StoreAgain = Callable[[set[str]], None]


class WriterSession:
    """A context manager around one snapshot's writing; see the module docstring."""

    def __init__(
        self, repo: Repository, *, kind: str = "backup", timing: Timing = DEFAULT_TIMING
    ) -> None:
        self.repo = repo
        self.kind = kind
        self.marker = Marker(repo.backend, fmt.SESSION_DIR, kind, timing=timing)
        self.snapshot: Snapshot | None = None  # set once committed
        self.parent: Snapshot | None = None  # set by choose_parent
        self.stored_chunks = 0  # chunks this session wrote (not deduplicated)
        self.stored_bytes = 0
        self._count_lock = threading.Lock()
        self._flush_error: BlockvaultError | None = None

    def __enter__(self) -> Self:
        self.marker.__enter__()  # up whole, or not at all (even when interrupted)
        try:
            # list storage only now: a gc that starts later sees our marker and spares
            # anything we deduplicate against from here on
            self.repo.forget_known_chunks()
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def choose_parent(self, draft: Snapshot) -> Snapshot | None:
        """Find the snapshot this one is made after: the newest usable snapshot of
        ``draft``'s origin, listed now that the marker is up (so gc spares the chunks
        it references from here on). ``commit`` records its id as the parent."""
        same = [s for s in self.repo.listing().usable() if s.same_origin(draft)]
        self.parent = same[-1] if same else None
        return self.parent

    def put_chunk(self, plaintext: bytes | bytearray | memoryview, chunk_id: str) -> int:
        """Store a chunk unless present; returns the bytes written (0: deduplicated)."""
        return self._count(self.repo.put_chunk(plaintext, chunk_id))

    def put_raw_chunk(self, chunk_id: str, stored: bytes) -> int:
        """Like ``put_chunk`` for a chunk in stored form (see ``Repository.put_raw_chunk``)."""
        return self._count(self.repo.put_raw_chunk(chunk_id, stored))

    def _count(self, stored: int) -> int:
        if stored:
            with self._count_lock:
                self.stored_chunks += 1
                self.stored_bytes += stored
        return stored

    def commit(self, snapshot: Snapshot, index: Index, store_again: StoreAgain) -> Snapshot:
        """Write ``index`` and the manifest ``snapshot`` (its index id filled in), never
        while a gc sweeps, and only once every chunk the index names is in storage.
        Returns the snapshot with its id (and its parent's, if ``choose_parent`` found one)."""
        snapshot = replace(snapshot, parent=self.parent.id if self.parent else "")
        marker = self.marker
        self.repo.flush()  # so that the listing below sees every chunk stored so far
        marker.set_state(COMMITTING)
        marker.wait_for(fmt.GC_DIR, SWEEPING, marker.timing.gc_grace, "a gc")
        missing = index.chunk_ids() - self.repo.stored_chunk_ids()
        if missing:
            self.repo.forget_known_chunks()
            store_again(set(missing))
        marker.check_alive()
        with shielded():  # the index and manifest land whole, or the line says not
            self.snapshot = self.repo.write_snapshot(snapshot, index)
        return self.snapshot

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        kept = ""
        try:
            with shielded():  # a signal now is raised once the cleanup is done
                try:
                    if self.snapshot is None:
                        # what was stored stays durable, for a rerun to reuse, even on failure
                        try:
                            self.repo.flush()
                        except BlockvaultError as error:
                            self._flush_error = error
                            if exc is None:
                                raise
                finally:
                    try:
                        self.marker.__exit__(exc_type, exc, tb)
                    except BlockvaultError:
                        if exc is None and self._flush_error is None:
                            raise
                        kept = (
                            f"; its marker {self.marker.name} could not be removed: "
                            "'blockvault unlock' removes it"
                        )
        except Interrupted as late:  # arrived during the cleanup
            late.outcome = self.outcome()
            raise
        if isinstance(exc, Interrupted) and not exc.outcome:
            exc.outcome = self.outcome() + kept

    def outcome(self) -> str:
        """What the session left in the repository, in one sentence."""
        if self.snapshot is not None:
            return f"snapshot {self.snapshot.id[:12]} was written before it stopped"
        if self._flush_error is not None:
            return (
                f"no snapshot was written; of the {plural(self.stored_chunks, 'chunk')} written, "
                f"the last could not be made durable ({self._flush_error}): a rerun stores "
                "them again and gc removes what is left of them"
            )
        if not self.stored_chunks:
            return "no snapshot was written and no chunk was stored; the repository is unchanged"
        return (
            f"no snapshot was written; {plural(self.stored_chunks, 'chunk')} "
            f"({self.stored_bytes / 2**20:.1f} MiB) were stored and will be reused by the "
            "next backup or removed by gc"
        )
