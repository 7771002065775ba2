"""Restoring a file snapshot, or one path of it, into a directory.

Everything is written through the safe tree writer (``pipeline/tree.py``): the names
come from the snapshot and may be hostile, so an entry it refuses (a name that
cannot be one on Linux, a path through a symlink in the target) is reported and
skipped with everything under it, and nothing lands outside the target.

What is decided per entry, against what the target holds now:

* ``--overwrite never`` keeps any existing entry; ``always`` replaces every one;
  ``if-changed`` (the default) replaces a file only when its type, size or mtime
  differ, and otherwise only sets its metadata again. That is also what makes a
  rerun after an interruption cheap and correct: a file appears under its name only
  complete, with its mtime already set (temporary name, metadata, fsync, rename), so
  one with the snapshot's size and mtime was restored whole (rsync's quick check,
  which a user editing the file while keeping size and mtime would fool; ``always``
  is there for that).
* ``--delete`` removes, in each restored directory, entries the snapshot does not
  have (below the target only: the writer walks by descriptors and never follows a
  symlink); entries the filters leave out are not touched.
* ``--include``/``--exclude``: gitignore patterns (``pathspec``, as backup uses),
  matched against the path in the snapshot (``/home/ann/a.txt``). An excluded
  directory is not entered; with includes, only matching entries (and everything
  under a matching directory) are restored, with the directories that lead to them.

Owners are set by name (the user and group recorded at backup, looked up on this
system) unless ``numeric_owner`` or the name is unknown here, and only as root.
Hard links within the restored tree are links again. Directories get their times
last, after their children.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Final

import blake3
import pathspec

from blockvault.errors import (
    BrowseError,
    IntegrityError,
    TargetError,
    UnsafeName,
    UsageError,
)
from blockvault.events import (
    Noted,
    Reporter,
    TaskAdvanced,
    TaskFinished,
    TaskStarted,
    Warned,
    quiet,
)
from blockvault.files.fetch import ChunkFetcher
from blockvault.files.trees import BadTree, TreeSource, show, slice_of
from blockvault.pipeline.tree import Block, Metadata, TreeWriter
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository
from blockvault.repo.tree import Node
from blockvault.text import plural

__all__ = [
    "OVERWRITE_MODES",
    "Change",
    "FilesRestoreResult",
    "RestoreOptions",
    "Skipped",
    "path_names",
    "restore_files",
]

OVERWRITE_MODES: Final = ("never", "if-changed", "always")
HOLE_PIECE: Final = 1 << 20
SMALL: Final = 1 << 20  # files up to this size are written on the writer threads
WRITERS: Final = 4
IN_FLIGHT: Final = 32  # small files handed to the writers and not finished yet
_COUNTS: Final = (
    "files",
    "directories",
    "symlinks",
    "others",
    "hardlinks",
    "bytes_written",
    "unchanged",
    "kept",
    "deleted",
    "verified",
)
_KIND_BITS: Final = {
    "file": 0o100000,
    "dir": 0o040000,
    "symlink": 0o120000,
    "chardev": 0o020000,
    "blockdev": 0o060000,
    "fifo": 0o010000,
}


@dataclass(frozen=True)
class RestoreOptions:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overwrite: str = "if-changed"  # one of OVERWRITE_MODES
    delete: bool = False
    numeric_owner: bool = False
    dry_run: bool = False
    verify: bool = False
    owners: bool | None = None  # set owners; default: when running as root


@dataclass(frozen=True)
class Change:
    """One thing a restore does (or, with ``dry_run``, would do) to the target."""

    action: str  # "add", "replace", "update" (metadata only), "delete"
    path: str  # below the target
    kind: str
    size: int = 0


@dataclass(frozen=True)
class Skipped:
    path: str  # in the snapshot
    reason: str
    damaged: bool = False  # its data is missing or damaged in the repository


@dataclass(frozen=True)
class FilesRestoreResult:
    snapshot: str
    source: str  # the path restored, in the snapshot
    target: str
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    others: int = 0  # devices and FIFOs
    hardlinks: int = 0
    bytes_written: int = 0
    unchanged: int = 0  # entries already right in the target, not written again
    kept: int = 0  # existing entries left as they were (--overwrite never)
    deleted: int = 0
    verified: int = 0
    chunks_fetched: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    changes: tuple[Change, ...] = ()  # with dry_run: what would be done
    skipped: tuple[Skipped, ...] = field(default=())


def path_names(path: str) -> tuple[str, ...]:
    """``/home/ann/`` -> ``("home", "ann")``; ``..`` and ``.`` are refused, not resolved,
    so that a path means the same names the snapshot stores."""
    names = tuple(n for n in path.split("/") if n)
    if any(n in (".", "..") for n in names):
        raise BrowseError(f"{path!r}: a path in a file snapshot cannot hold . or ..")
    return names


@cache
def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


@cache
def _gid(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


class _Selection:
    """The include/exclude filters over snapshot paths."""

    def __init__(self, include: tuple[str, ...], exclude: tuple[str, ...]) -> None:
        self.include = pathspec.GitIgnoreSpec.from_lines(include) if include else None
        self.exclude = pathspec.GitIgnoreSpec.from_lines(exclude) if exclude else None

    @staticmethod
    def _text(names: tuple[str, ...], kind: str) -> str:
        return "/".join(names) + ("/" if kind == "dir" else "")

    def excluded(self, names: tuple[str, ...], kind: str) -> bool:
        return self.exclude is not None and self.exclude.match_file(self._text(names, kind))

    def included(self, names: tuple[str, ...], kind: str) -> bool:
        return self.include is None or self.include.match_file(self._text(names, kind))


class _SmallFiles:
    """Small files written on a few threads, each through its own tree writer: creating
    files is most of the time of a restore of many small ones, and those system calls
    release the GIL. Content is fetched on the calling thread (the fetcher has one
    consumer) and handed over whole, at most ``IN_FLIGHT`` files of at most ``SMALL``
    bytes at a time. Each thread's writer walks its own parents; the run's main writer
    only removes entries the snapshot does not have where they are, never a directory
    these writers are writing into."""

    def __init__(self, dest: str, owners: bool, verify: bool) -> None:
        self.dest = dest
        self.owners = owners
        self.verify = verify
        self.pool = ThreadPoolExecutor(WRITERS, thread_name_prefix="blockvault-write")
        self.local = threading.local()
        self.writers: list[TreeWriter] = []
        self.lock = threading.Lock()
        self.pending: deque[tuple[Future[int], tuple[str, ...], Node]] = deque()

    def _writer(self) -> TreeWriter:
        writer: TreeWriter | None = getattr(self.local, "writer", None)
        if writer is None:
            writer = TreeWriter(
                self.dest, overwrite=True, owners=self.owners, sync_each=False, track_names=False
            )
            self.local.writer = writer
            with self.lock:
                self.writers.append(writer)
        return writer

    def _write(self, rel: tuple[str, ...], blocks: list[Block], meta: Metadata, want: bytes) -> int:
        writer = self._writer()
        size = writer.write_file(rel, blocks, meta)
        if self.verify:
            _check(writer, rel, want)
        return size

    def submit(
        self,
        names: tuple[str, ...],
        node: Node,
        rel: tuple[str, ...],
        blocks: list[Block],
        meta: Metadata,
        want: bytes,
    ) -> Iterator[tuple[tuple[str, ...], Node, int | BaseException]]:
        """Queue one file; yields the files finished meanwhile (to keep the bound)."""
        self.pending.append((self.pool.submit(self._write, rel, blocks, meta, want), names, node))
        if len(self.pending) > IN_FLIGHT:
            yield self._first()

    def drain(self) -> Iterator[tuple[tuple[str, ...], Node, int | BaseException]]:
        while self.pending:
            yield self._first()

    def _first(self) -> tuple[tuple[str, ...], Node, int | BaseException]:
        future, names, node = self.pending.popleft()
        try:
            return names, node, future.result()
        except (UnsafeName, OSError) as exc:
            return names, node, exc

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for writer in self.writers:
            writer.close()


class _Restore:
    """One restore's state: the decisions, counters and the directories made."""

    def __init__(
        self,
        source: TreeSource,
        writer: TreeWriter | None,
        fetcher: ChunkFetcher,
        options: RestoreOptions,
        reporter: Reporter,
        small: _SmallFiles | None = None,
    ) -> None:
        self.small = small  # None: every file on this thread
        self.source = source
        self.writer = writer  # None: a dry run into a target that does not exist yet
        self.fetcher = fetcher
        self.options = options
        self.reporter = reporter
        self.select = _Selection(options.include, options.exclude)
        self.counts: dict[str, int] = dict.fromkeys(_COUNTS, 0)
        self.changes: list[Change] = []
        self.names_of: dict[tuple[str, ...], tuple[str, ...]] = {}  # the entry being written
        self.skipped: list[Skipped] = []
        self.links: dict[tuple[int, int], tuple[str, ...]] = {}  # (device, inode) -> first path
        self.made: set[tuple[str, ...]] = {()}  # target directories made or merged into
        # directories this run made new: nothing is in them but what it writes, so
        # their entries need no lstat (a third of a fresh restore's system calls)
        self.fresh: set[tuple[str, ...]] = set()
        self.dir_meta: list[tuple[tuple[str, ...], Metadata]] = []
        self.unmade: dict[tuple[str, ...], Metadata] = {}  # left for an include to need

    # --- decisions -----------------------------------------------------------------
    def note(self, action: str, rel: tuple[str, ...], node: Node) -> None:
        if self.options.dry_run:
            self.changes.append(Change(action, show(rel), node.kind, node.size))

    def skip(self, names: tuple[str, ...], reason: str, damaged: bool = False) -> None:
        self.skipped.append(Skipped(show(names), reason, damaged))
        self.reporter(Warned(reason))

    def lstat(self, rel: tuple[str, ...]) -> os.stat_result | None:
        return None if self.writer is None else self.writer.lstat(rel)

    def existing(self, rel: tuple[str, ...]) -> os.stat_result | None:
        """What the target holds at ``rel`` now (nothing, in a directory made new)."""
        return None if rel[:-1] in self.fresh else self.lstat(rel)

    def metadata(self, node: Node) -> Metadata:
        uid, gid = node.uid, node.gid
        if not self.options.numeric_owner:
            by_name = _uid(node.user) if node.user else None
            uid = uid if by_name is None else by_name  # root's id is 0: no "or"
            by_name = _gid(node.group) if node.group else None
            gid = gid if by_name is None else by_name
        # an atime of 0 was not recorded (backup keeps none): the mtime stands in
        atime = node.atime_ns or None
        return Metadata(node.mode, uid, gid, atime, node.mtime_ns, node.xattrs)

    # --- the walk ------------------------------------------------------------------
    def run(self, top: Node, names: tuple[str, ...], rel: tuple[str, ...]) -> None:
        """Restore ``top`` (at ``names`` in the snapshot) to ``rel`` below the target:
        a directory's contents go into ``rel`` itself (``()``: the target)."""
        if top.kind != "dir":
            self.entries([(names, top)], {names: rel}, within=False)
            return
        stack = [(top, names, rel, self.select.included(names, "dir") if names else False)]
        while stack:
            directory, names, rel, inside = stack.pop()
            try:
                nodes = self.source.nodes(directory, names)
            except BadTree as exc:
                self.skip(names, f"{exc}; it was skipped", exc.damaged)
                continue
            chosen: list[tuple[tuple[str, ...], Node]] = []
            places: dict[tuple[str, ...], tuple[str, ...]] = {}
            for node in nodes:
                below = (*names, node.name)
                if self.select.excluded(below, node.kind):
                    continue
                chosen.append((below, node))
                places[below] = (*rel, node.name)
            old = rel in self.made and rel not in self.fresh
            if old and self.writer is not None and not self.options.dry_run:
                self.clean(rel, names)
            if self.options.delete and old:
                self.delete_extra(rel, {n.name for n in nodes}, names)
            files = [(b, n) for b, n in chosen if n.kind != "dir"]
            if self.select.include is not None and not inside:
                files = [(b, n) for b, n in files if self.select.included(b, n.kind)]
            self.entries(files, places, within=True)
            for below, node in reversed([(b, n) for b, n in chosen if n.kind == "dir"]):
                matched = inside or self.select.included(below, "dir")
                if not matched:
                    self.unmade[places[below]] = self.metadata(node)
                elif not self.directory(below, node, places[below]):
                    continue
                stack.append((node, below, places[below], matched))

    def directory(self, names: tuple[str, ...], node: Node, rel: tuple[str, ...]) -> bool:
        """Make (or merge into) directory ``rel``; whether to go on below it."""
        st = self.existing(rel)
        try:
            if st is not None and not _is(st, "dir"):
                if self.options.overwrite == "never":
                    self.counts["kept"] += 1
                    self.skip(names, f"{show(rel)} exists and is not a directory; kept")
                    return False
                self.note("replace", rel, node)
            elif st is None:
                self.note("add", rel, node)
            if not self.options.dry_run:
                self.ensure(rel[:-1])
                assert self.writer is not None
                self.writer.make_dir(rel)
        except (UnsafeName, OSError) as exc:
            self.skip(names, _reason(exc))
            return False
        self.made.add(rel)
        if st is None or not _is(st, "dir"):
            self.fresh.add(rel)
        self.dir_meta.append((rel, self.metadata(node)))
        self.counts["directories"] += 1
        return True

    def ensure(self, rel: tuple[str, ...]) -> None:
        """Make the directories leading to ``rel`` that an include left unmade."""
        for depth in range(1, len(rel) + 1):
            if rel[:depth] not in self.made:
                assert self.writer is not None
                self.writer.make_dir(rel[:depth])
                self.made.add(rel[:depth])
                if rel[:depth] in self.unmade:
                    self.dir_meta.append((rel[:depth], self.unmade.pop(rel[:depth])))

    def clean(self, rel: tuple[str, ...], names: tuple[str, ...]) -> None:
        """Remove what a killed restore left half-written in ``rel``."""
        assert self.writer is not None
        try:
            self.writer.remove_temporaries(rel)
        except (UnsafeName, OSError) as exc:
            self.skip(names, f"{show(rel)}: {_reason(exc)}")

    def delete_extra(self, rel: tuple[str, ...], keep: set[str], names: tuple[str, ...]) -> None:
        if self.lstat(rel) is None:
            return
        assert self.writer is not None
        try:
            present = self.writer.listdir(rel)
        except (UnsafeName, OSError) as exc:
            self.skip(names, f"{show(rel)} cannot be listed for --delete: {_reason(exc)}")
            return
        for name in present:
            here = (*rel, name)
            st = self.lstat(here)
            kind = "dir" if st is not None and _is(st, "dir") else "file"
            if name in keep or self.select.excluded((*names, name), kind):
                continue
            if not self.select.included((*names, name), kind) and self.select.include:
                continue
            self.counts["deleted"] += 1
            if self.options.dry_run:
                self.changes.append(Change("delete", show(here), kind))
                continue
            try:
                self.writer.remove(here)
            except OSError as exc:
                self.skip((*names, name), f"{show(here)} could not be deleted: {_reason(exc)}")

    def entries(
        self,
        chosen: list[tuple[tuple[str, ...], Node]],
        places: dict[tuple[str, ...], tuple[str, ...]],
        within: bool,
    ) -> None:
        """Restore the non-directory entries ``chosen`` (one directory's, in order)."""
        todo: list[tuple[tuple[str, ...], Node, str]] = []
        for names, node in chosen:
            rel = places[names]
            try:
                action = self.decide(rel, node)
            except (UnsafeName, OSError) as exc:
                self.skip(names, _reason(exc))
                continue
            if action:
                todo.append((names, node, action))
        self.fetcher.want(
            s.chunk_id
            for _names, node, action in todo
            if action in ("add", "replace") and not self._linked(node)
            for s in node.content
            if s.chunk_id is not None
        )
        for names, node, action in todo:
            rel = places[names]
            self.note(action, rel, node)
            if self.options.dry_run:
                self._count(node)
                continue
            try:
                self.ensure(rel[:-1])
                self.names_of[rel] = names
                self.write(rel, node, action)
            except (UnsafeName, OSError) as exc:
                self.skip(names, _reason(exc))
            except IntegrityError as exc:
                self.skip(names, f"{show(names)} could not be restored: {exc}", damaged=True)
            finally:
                self.names_of.pop(rel, None)
        if self.small:  # this directory's files are all written before the next one
            for done in self.small.drain():
                self.finish(*done)

    def _linked(self, node: Node) -> bool:
        return node.links > 1 and (node.device, node.inode) in self.links

    def decide(self, rel: tuple[str, ...], node: Node) -> str:
        """ "add", "replace", "update" (metadata only) or "" (leave it)."""
        st = self.existing(rel)
        if st is None:
            return "add"
        mode = self.options.overwrite
        if mode == "never":
            self.counts["kept"] += 1
            return ""
        if mode == "if-changed" and self._same(rel, st, node):
            self.counts["unchanged"] += 1
            self.reporter(TaskAdvanced("restore", node.size))  # done, as far as the bar goes
            self._remember_link(rel, node)
            return "update" if self._stale(st, node) else ""
        return "replace"

    def _same(self, rel: tuple[str, ...], st: os.stat_result, node: Node) -> bool:
        """Whether the entry at ``rel`` already is ``node`` but for its metadata."""
        if not _is(st, node.kind):
            return False
        if node.kind == "file":
            return st.st_size == node.size and st.st_mtime_ns == node.mtime_ns
        if node.kind == "symlink":
            assert self.writer is not None
            return self.writer.readlink(rel) == node.target
        return node.kind == "fifo" or st.st_rdev == node.rdev

    def _stale(self, st: os.stat_result, node: Node) -> bool:
        meta = self.metadata(node)
        owners_differ = self._owners and (st.st_uid, st.st_gid) != (meta.uid, meta.gid)
        return owners_differ or (st.st_mode & 0o7777) != node.mode

    @property
    def _owners(self) -> bool:
        return self.writer is not None and self.writer.owners

    def _remember_link(self, rel: tuple[str, ...], node: Node) -> None:
        if node.links > 1:
            self.links.setdefault((node.device, node.inode), rel)

    def _count(self, node: Node) -> None:
        key = {"file": "files", "symlink": "symlinks"}.get(node.kind, "others")
        self.counts[key] += 1

    def write(self, rel: tuple[str, ...], node: Node, action: str) -> None:
        assert self.writer is not None
        writer = self.writer
        meta = self.metadata(node)
        if action == "update":
            writer.set_metadata(rel, meta)
            return
        st = self.lstat(rel) if action == "replace" else None
        if st is not None and _is(st, "dir"):  # a directory where the snapshot has none
            writer.remove(rel)
        first = self.links.get((node.device, node.inode)) if node.links > 1 else None
        if node.kind == "file" and first is None and self.small and node.size <= SMALL:
            digest = blake3.blake3(max_threads=1)
            # copied out of the chunk: the writer thread holds no slice of a shared pack
            blocks: list[Block] = [
                bytes(b) if isinstance(b, memoryview) else b for b in self._content(node, digest)
            ]
            names = self.names_of[rel]
            for done in self.small.submit(names, node, rel, blocks, meta, digest.digest()):
                self.finish(*done)
            self._remember_link(rel, node)
            return
        if node.kind == "file" and first is not None:
            if self.small:  # the file it links to may be on its way still
                for done in self.small.drain():
                    self.finish(*done)
            writer.link(rel, first)
            self.counts["hardlinks"] += 1
        elif node.kind == "file":
            digest = blake3.blake3(max_threads=1)
            size = writer.write_file(rel, self._content(node, digest), meta)
            self.counts["bytes_written"] += size
            self.reporter(TaskAdvanced("restore", size))
            if self.options.verify:
                _check(writer, rel, digest.digest())
                self.counts["verified"] += 1
            self._remember_link(rel, node)
        elif node.kind == "symlink":
            writer.make_symlink(rel, node.target, meta)
        else:
            writer.make_node(rel, node.kind, node.rdev, meta)
        self._count(node)

    def finish(self, names: tuple[str, ...], node: Node, result: int | BaseException) -> None:
        """Count (or report) a file the writer threads are done with."""
        if isinstance(result, BaseException):
            self.skip(names, _reason(result))
            return
        self.counts["files"] += 1
        self.counts["bytes_written"] += result
        self.counts["verified"] += 1 if self.options.verify else 0
        self.reporter(TaskAdvanced("restore", result))

    def _content(self, node: Node, digest: blake3.blake3) -> Iterator[Block]:
        for piece in node.content:
            if piece.chunk_id is None:
                if self.options.verify:
                    for start in range(0, piece.length, HOLE_PIECE):
                        digest.update(bytes(min(HOLE_PIECE, piece.length - start)))
                yield piece.length
                continue
            data = slice_of(self.fetcher.get(piece.chunk_id), piece, node, self.source.repo)
            if self.options.verify:
                digest.update(data)
            yield data


def _check(writer: TreeWriter, rel: tuple[str, ...], expected: bytes) -> None:
    """Read ``rel`` back and compare its hash with what was written (``--verify``)."""
    digest = blake3.blake3(max_threads=1)
    for block in writer.read_file(rel):
        digest.update(block)
    if digest.digest() != expected:
        raise OSError(errno.EIO, f"{show(rel)} reads back different from what was written")


def _is(st: os.stat_result, kind: str) -> bool:
    return (st.st_mode & 0o170000) == _KIND_BITS[kind]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return str(exc)


def restore_files(
    repo: Repository,
    snapshot: Snapshot,
    path: str,
    target: str | os.PathLike[str],
    options: RestoreOptions = RestoreOptions(),
    reporter: Reporter = quiet,
) -> FilesRestoreResult:
    """Restore ``path`` of file snapshot ``snapshot`` into directory ``target``: a
    directory's contents go into ``target`` (created if missing), a file or other entry
    goes into it under its own name. See the module docstring for what is decided."""
    started = time.monotonic()
    if snapshot.kind != "files":
        raise UsageError(f"snapshot {snapshot.id[:12]} is a disk image, not a file snapshot")
    if options.overwrite not in OVERWRITE_MODES:
        raise UsageError(f"--overwrite {options.overwrite!r} is none of {OVERWRITE_MODES}")
    names = path_names(path)
    source = TreeSource(repo)
    try:
        top = source.lookup(snapshot, names)
    except BadTree as exc:
        raise BrowseError(f"{exc} in file snapshot {snapshot.id[:12]}") from None
    if top is None:
        raise BrowseError(f"{show(names)} is not in file snapshot {snapshot.id[:12]}")
    dest = os.path.abspath(os.fspath(target))
    exists = os.path.lexists(dest)
    if exists and not os.path.isdir(dest):
        raise TargetError("it is not a directory; a file snapshot is restored into one", path=dest)
    if not exists and not options.dry_run:
        os.makedirs(dest)
    owners = os.geteuid() == 0 if options.owners is None else options.owners
    reporter(TaskStarted("restore", _total(source, snapshot, names, top), dest))
    writer = None
    if exists or not options.dry_run:
        # one flush at the end, not an fsync per file (10 ms each on this VM: most of
        # the time of a restore of small files); a kill still leaves only whole files
        # tree objects hold each name once (repo/tree.py refuses others), so the writer
        # need not remember every path it made: memory stays with the tree's depth
        writer = TreeWriter(dest, overwrite=True, owners=owners, sync_each=False, track_names=False)
    job = None
    small = None
    if writer is not None and not options.dry_run:
        small = _SmallFiles(dest, owners, options.verify)
    try:
        with ChunkFetcher(repo) as fetcher:
            job = _Restore(source, writer, fetcher, options, reporter, small)
            if not exists:
                job.fresh.add(())
            rel = () if top.kind == "dir" else (top.name,)
            try:
                job.run(top, names, rel)
            finally:
                if small is not None:
                    small.close()
                if writer is not None and not options.dry_run:
                    _finish_directories(writer, job)
                    writer.sync()
    finally:
        if writer is not None:
            writer.close()
    reporter(TaskFinished("restore"))
    if job.skipped:
        reporter(Noted(f"{plural(len(job.skipped), 'entry')} skipped"))
    return FilesRestoreResult(
        snapshot=snapshot.id,
        source=show(names),
        target=dest,
        chunks_fetched=fetcher.fetched,
        seconds=time.monotonic() - started,
        dry_run=options.dry_run,
        changes=tuple(job.changes),
        skipped=tuple(job.skipped),
        **job.counts,
    )


def _total(source: TreeSource, snapshot: Snapshot, names: tuple[str, ...], top: Node) -> int:
    """The bytes to restore, for the progress bar: the snapshot's own count when the
    path holds everything backed up, else a walk of the trees below it first."""
    if all(path_names(p)[: len(names)] == names for p in snapshot.paths):
        return snapshot.stats.used_bytes  # backup counts every file's bytes
    return sum(n.size for _names, n in source.walk(top, names, on_bad=lambda _e: None))


def _finish_directories(writer: TreeWriter, job: _Restore) -> None:
    """Directory metadata last, deepest first, so that writing children does not
    change a parent's times and a read-only directory is filled before it is closed."""
    for rel, meta in reversed(job.dir_meta):
        try:
            writer.set_metadata(rel, meta)
        except (UnsafeName, OSError) as exc:
            job.skip(rel, _reason(exc))
