"""Back up directory trees into a repository as a file snapshot.

Three stages, restic's shape:

* the **walk** (calling thread, a generator): ``scandir`` one directory at a time, in
  name order, ``lstat`` each entry, apply the selection, and find the entry in the
  parent snapshot's tree of the same directory (loaded lazily, one directory per
  level: memory follows the tree's depth, not its size). It yields ``_Enter``,
  ``_Entry`` and ``_Leave`` items.
* the **readers** (``ordered_map``'s threads): make each entry's node. An unchanged
  file (same type, inode, size, mtime and ctime as in the parent) takes its content
  and xattrs from the parent unread, on the walking thread (``_batches``); another
  is read and cut (``chunker``), its
  chunks hashed, compressed and stored right there (BLAKE3, zstd and the storage
  all release the GIL). A small file comes back as bytes, to be packed.
* the **tree builder** (calling thread, in walk order): appends small files to the
  open *pack* (about ``PACK_TARGET`` bytes of small files stored as one chunk, each
  file a slice of it; identical small files share one slice), and stores each
  directory's tree object once its entries are final. A directory that names a
  slice of the still-open pack waits (with its parents) until the pack is stored;
  a pack holds at most ``PACK_FILES`` files, which bounds the waiting.

Every object the trees reference is collected for the index's files region, and the
snapshot is committed through the writer session like a disk image.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import pwd
import socket
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final, NamedTuple, TypeAlias

from blockvault.errors import SourceError, UsageError
from blockvault.events import Noted, Reporter, TaskAdvanced, TaskFinished, TaskStarted, Warned
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.files import chunker
from blockvault.files.fssnapshot import PathMap, snapshotted
from blockvault.files.select import Excluder, Selection
from blockvault.pipeline.stages import is_zero, ordered_map, workers
from blockvault.repo import Index, Region, Repository, Snapshot, Stats
from blockvault.repo import format as fmt
from blockvault.repo.manifest import MAX_WARNINGS
from blockvault.repo.sessions import DEFAULT_TIMING, Timing
from blockvault.repo.tree import MAX_TREE_DEPTH, Node, Slice, load_tree, store_tree
from blockvault.repo.writer import WriterSession

__all__ = [
    "PACK_FILES",
    "PACK_TARGET",
    "SMALL_FILE",
    "backup_files",
    "commit_files",
    "files_manifest",
    "store_piece",
]

SMALL_FILE: Final = 256 << 10  # files smaller than this are packed with others
PACK_TARGET: Final = 1 << 20  # a pack is stored once it holds this many bytes...
PACK_FILES: Final = 4096  # ...or this many files
_BATCH: Final = 256  # walk items handed to a reader at once when none needs reading
_DEDUP_SMALL: Final = 1 << 16  # small files remembered by content within one run
_PACKS_AHEAD: Final = 4  # packs stored on threads that the builder does not wait for
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


# --- what the walk yields --------------------------------------------------------------


class _Old(NamedTuple):
    """A directory as the parent snapshot has it (all empty when it has none)."""

    tree_id: str
    pieces: tuple[str, ...]  # its tree objects (continuations too)
    nodes: tuple[Node, ...]
    by_name: dict[str, Node]


_NO_OLD: Final = _Old("", (), (), {})


class _Enter(NamedTuple):
    path: str
    st: os.stat_result | None  # None: the root "/" (no node of its own)
    name: str
    old: _Old


class _Entry(NamedTuple):
    path: str
    name: str
    st: os.stat_result
    old: Node | None  # the same name in the parent snapshot's tree
    link_of: tuple[int, int] | None  # a hard link to an inode met earlier in this run


class _Leave(NamedTuple):
    warning: str  # "" unless the directory could not be listed


# --- what the readers give back --------------------------------------------------------


class _Made(NamedTuple):
    node: Node | None  # None: skipped (the warning or note says why)
    small: bytes | None = None  # a small file's content, to be packed
    small_id: str = ""
    read: int = 0  # bytes read from the source
    new: tuple[int, int, int] = (0, 0, 0)  # chunks stored, their plaintext and stored bytes
    warnings: tuple[str, ...] = ()
    linked: bool = False  # a later name of a hard link: its content is the first name's
    note: str = ""  # not a problem (a socket, which a restore could not recreate anyway)


@dataclass(eq=False)
class _Pack:
    data: bytearray = field(default_factory=bytearray)
    files: int = 0
    chunk_id: str = ""  # set once stored


class _PackSlice(NamedTuple):
    pack: _Pack
    offset: int
    length: int


@dataclass(eq=False)
class _Frame:
    """A directory being built: its entries, some maybe waiting for the open pack."""

    path: str
    name: str
    st: os.stat_result | None
    old: _Old
    entries: list[Node | _Frame | tuple[Node, _PackSlice]] = field(default_factory=list)
    waits: bool = False  # names the open pack, or a child that does
    tree_id: str = ""


_Trie: TypeAlias = "dict[str, _Trie | None]"  # names on the way to the paths given


# --- the walk ---------------------------------------------------------------------------


class _Walk:
    def __init__(
        self, repo: Repository, selection: Selection, parent_tree: str, where: PathMap
    ) -> None:
        self.repo = repo
        self.where = where  # paths given -> where they are read (--snapshot)
        self.excluder = Excluder(selection)
        self.one_fs = selection.one_file_system
        self.parent_tree = parent_tree
        self.links: set[tuple[int, int]] = set()
        self.warnings: list[str] = []  # the walk's own, taken by the builder as it goes

    def old_nodes(self, tree_id: str) -> _Old:
        """The parent snapshot's entries of one directory; nothing when it has none
        or its tree cannot be read (then everything there is read afresh)."""
        if not tree_id:
            return _NO_OLD
        pieces: list[str] = []
        try:
            nodes = tuple(load_tree(tree_id, self.repo.get_chunk, pieces))
        except Exception as exc:  # damaged or missing: costs a full read, not the backup
            self.warnings.append(f"the parent snapshot's tree {tree_id[:12]} is unusable: {exc}")
            return _NO_OLD
        return _Old(tree_id, tuple(pieces), nodes, {n.name: n for n in nodes})

    def items(self, paths: Sequence[str]) -> Iterator[_Enter | _Entry | _Leave]:
        old = self.old_nodes(self.parent_tree)
        trie = _trie(paths)
        if trie is None:  # "/" itself: its own metadata, and everything
            stack: list[_Listing] = []
            yield from self._open("/", "", os.lstat(self.where.actual("/")), old, stack)
            yield from self._descend(stack)
            return
        yield _Enter("/", None, "", old)
        yield from self._restricted("/", trie, old.by_name)
        yield _Leave("")

    def _restricted(
        self, directory: str, trie: _Trie, old: dict[str, Node]
    ) -> Iterator[_Enter | _Entry | _Leave]:
        """The entries of ``directory`` named in ``trie`` only (the way down to a
        path given): ``None`` below a name means all of it."""
        for name in sorted(trie, key=os.fsencode):
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise SourceError(exc.strerror or "cannot be read", path=path) from None
            below = trie[name]
            if below is None:
                path = self.where.actual(path)
                try:
                    st = os.lstat(path)
                except OSError as exc:
                    raise SourceError(exc.strerror or "cannot be read", path=path) from None
                yield from self._entry(path, name, st, old.get(name), top=True)
            elif not stat.S_ISDIR(st.st_mode):
                raise SourceError("is not a directory", path=path)
            else:
                sub = self._subtree(old.get(name))
                yield _Enter(path, st, name, sub)
                yield from self._restricted(path, below, sub.by_name)
                yield _Leave("")

    def _subtree(self, node: Node | None) -> _Old:
        return self.old_nodes(node.subtree) if node and node.kind == "dir" else _NO_OLD

    def _entry(
        self, path: str, name: str, st: os.stat_result, old: Node | None, top: bool = False
    ) -> Iterator[_Enter | _Entry | _Leave]:
        """One entry and, for a directory, everything below it: depth first, in name
        order, with an explicit stack (a deep tree costs no recursion)."""
        if not top and self.excluder.excluded(self.where.original(path), st):
            return
        if not stat.S_ISDIR(st.st_mode):
            yield self._file(path, name, st, old)
            return
        stack: list[_Listing] = []
        yield from self._open(path, name, st, self._subtree(old), stack)
        yield from self._descend(stack)

    def _descend(self, stack: list[_Listing]) -> Iterator[_Enter | _Entry | _Leave]:
        """Everything below the directories on ``stack``, depth first, in name order."""
        while stack:
            listing = stack[-1]
            child = next(listing.children, None)
            if child is None:
                stack.pop()
                yield _Leave("")
                continue
            try:
                child_st = child.stat(follow_symlinks=False)
            except OSError as exc:
                self.warnings.append(f"{child.path}: {exc.strerror}; skipped")
                continue
            if self.excluder.excluded(self.where.original(child.path), child_st):
                continue
            child_old = listing.old.get(child.name)
            if not stat.S_ISDIR(child_st.st_mode):
                yield self._file(child.path, child.name, child_st, child_old)
            elif self.one_fs and child_st.st_dev != listing.st.st_dev:
                # the mount point, kept empty
                yield _Enter(child.path, child_st, child.name, _NO_OLD)
                yield _Leave("")
            else:
                sub = self._subtree(child_old)
                yield from self._open(child.path, child.name, child_st, sub, stack)

    def _file(self, path: str, name: str, st: os.stat_result, old: Node | None) -> _Entry:
        link_of = None
        if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in self.links:
                link_of = key
            self.links.add(key)
        return _Entry(path, name, st, old, link_of)

    def _open(
        self, path: str, name: str, st: os.stat_result, sub: _Old, stack: list[_Listing]
    ) -> Iterator[_Enter | _Leave]:
        """Enter a directory: list it (sorted by name bytes) onto ``stack``, or, when it
        cannot be listed or lies deeper than a reader accepts, leave it at once, empty,
        with a warning."""
        if self.where.original(path).count("/") >= MAX_TREE_DEPTH - 1:  # its tree: one more
            yield _Enter(path, st, name, _NO_OLD)
            yield _Leave(f"{path}: nested deeper than trees may be ({MAX_TREE_DEPTH}); kept empty")
            return
        try:
            with os.scandir(path) as listing:
                children = sorted(listing, key=lambda e: os.fsencode(e.name))
        except OSError as exc:
            yield _Enter(path, st, name, _NO_OLD)
            yield _Leave(f"{path}: cannot be listed ({exc.strerror}); kept empty")
            return
        yield _Enter(path, st, name, sub)
        stack.append(_Listing(iter(children), sub.by_name, st))


class _Listing(NamedTuple):
    """A directory being walked: its remaining entries, the parent's, its own stat."""

    children: Iterator[os.DirEntry[str]]
    old: dict[str, Node]
    st: os.stat_result


def _trie(paths: Sequence[str]) -> _Trie | None:
    """Absolute paths as nested names; a path inside another given one is dropped.
    ``None``: ``/`` is among them, which holds all the others."""
    if not paths:
        raise UsageError("give the files or directories to back up")
    root: _Trie = {}
    for path in sorted(paths, key=len):
        names = [n for n in path.split("/") if n]
        if not names:
            return None
        level: _Trie | None = root
        for name in names[:-1]:
            assert level is not None
            nxt = level.setdefault(name, {})
            if nxt is None:  # an ancestor was given: this path is in it already
                level = None
                break
            level = nxt
        if level is not None:
            level[names[-1]] = None
    return root


# --- the readers -------------------------------------------------------------------------


class _Reader:
    def __init__(self, writer: WriterSession) -> None:
        self.writer = writer
        self.repo = writer.repo

    @staticmethod
    def unchanged(item: _Entry) -> _Made | None:
        """An unchanged file's node (the parent's content and xattrs), made unread."""
        old, st = item.old, item.st
        if old is not None and stat.S_ISREG(st.st_mode) and _unchanged(old, st):
            return _Made(_node(item.name, "file", st, old))
        return None

    def make(self, item: _Enter | _Entry | _Leave | _Made) -> _Enter | _Leave | _Made:
        if not isinstance(item, _Entry):
            return item  # made already (``unchanged``), or a directory's start or end
        path, name, st, _, link_of = item
        mode = st.st_mode
        kind = _kind(mode)
        if kind is None:
            if stat.S_ISSOCK(mode):
                return _Made(None, note=f"{path}: a socket, skipped")
            return _Made(None, warnings=(f"{path}: an entry of unknown type, skipped",))
        node = _node(name, kind, st)
        try:
            node = replace(node, xattrs=_xattrs(path))
            if kind == "symlink":
                return _Made(replace(node, target=os.fsdecode(os.readlink(path))))
            if link_of is not None:
                return _Made(node, linked=True)
            if kind != "file" or st.st_size == 0:
                return _Made(node)
            return self._read(path, node, st)
        except OSError as exc:
            return _Made(None, warnings=(f"{path}: {exc.strerror}; skipped",))

    def _read(self, path: str, node: Node, st: os.stat_result) -> _Made:
        fd = _open(path)
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode) or before.st_ino != st.st_ino:
                return _Made(None, warnings=(f"{path}: replaced while it was read; skipped",))
            size = before.st_size
            if size < SMALL_FILE:
                data = os.pread(fd, size, 0)
                chunk_id = self.repo.chunk_id(data).hex()
                made = _Made(replace(node, size=len(data)), data, chunk_id, len(data))
            else:
                made = self._chunked(fd, node, size, before.st_blocks * 512 < size)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        # changed between the walk's stat and the end of the read: size or mtime differ,
        # or fewer bytes came than the file had when opened
        if (
            (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns)
            or made.node is None
            or made.node.size != size
        ):
            warning = f"{path}: changed while it was read; the snapshot holds what was read"
            made = made._replace(warnings=(*made.warnings, warning))
        return made

    def _chunked(self, fd: int, node: Node, size: int, sparse: bool) -> _Made:
        slices: list[Slice] = []
        read = chunks = plain = stored = 0

        def hole(length: int) -> None:
            if slices and slices[-1].chunk_id is None:
                length += slices.pop().length
            slices.append(Slice(None, 0, length))

        at = 0
        shrunk = False
        for start, end in _data_runs(fd, size) if sparse else [(0, size)]:
            if start > at:
                hole(start - at)
            got = 0
            for piece in chunker.cut(fd, start, end - start):
                got += len(piece)
                if is_zero(piece):
                    hole(len(piece))
                    continue
                piece_slice, written = store_piece(self.writer, piece)
                if written:
                    chunks, plain, stored = chunks + 1, plain + len(piece), stored + written
                slices.append(piece_slice)
            read += got
            at = start + got
            if at < end:  # the file shrank while it was read
                shrunk = True
                break
        if size > at and not shrunk:
            hole(size - at)
        total = sum(s.length for s in slices)
        node = replace(node, size=total, content=tuple(slices))
        return _Made(node, read=read, new=(chunks, plain, stored))


def store_piece(writer: WriterSession, piece: bytes | memoryview) -> tuple[Slice, int]:
    """Store one chunk of file content; its slice and the bytes written (0: known)."""
    chunk_id = writer.repo.chunk_id(piece).hex()
    return Slice(chunk_id, 0, len(piece)), writer.put_chunk(piece, chunk_id)


def _data_runs(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The ``(start, end)`` runs of a sparse file that hold data (SEEK_DATA/SEEK_HOLE)."""
    at = 0
    while at < size:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after ``at``
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        at = end


def _open(path: str) -> int:
    try:
        return os.open(path, _OPEN_FLAGS | os.O_NOATIME)  # reading leaves atime as it was
    except PermissionError:  # O_NOATIME needs the file's owner (or CAP_FOWNER)
        return os.open(path, _OPEN_FLAGS)


def _kind(mode: int) -> str | None:
    for test, kind in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "chardev"),
        (stat.S_ISBLK, "blockdev"),
        (stat.S_ISFIFO, "fifo"),
    ):
        if test(mode):
            return kind
    return None


def _node(name: str, kind: str, st: os.stat_result, old: Node | None = None) -> Node:
    """A node from ``st``; with ``old`` (the same file unchanged in the parent), its
    content and xattrs are the parent's: made in one go, the cost of an unchanged file."""
    return Node(
        name=name,
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=_user(st.st_uid),
        group=_group(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        # atime is not kept (as borg by default): a listing or a read elsewhere
        # changes it, and every tree holding it would be stored anew
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        device=st.st_dev,
        links=st.st_nlink if kind == "file" else 1,
        rdev=st.st_rdev if kind in ("chardev", "blockdev") else 0,
        size=old.size if old else 0,
        content=old.content if old else (),
        xattrs=old.xattrs if old else (),
    )


def _unchanged(old: Node, st: os.stat_result) -> bool:
    return (
        old.kind == "file"
        and old.inode == st.st_ino
        and old.size == st.st_size
        and old.mtime_ns == st.st_mtime_ns
        and old.ctime_ns == st.st_ctime_ns
    )


@lru_cache(maxsize=4096)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=4096)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    """Every extended attribute (ACLs, capabilities and SELinux labels included)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    pairs = []
    for name in sorted(names):
        with contextlib.suppress(OSError):  # removed meanwhile
            pairs.append((name, os.getxattr(path, name, follow_symlinks=False)))
    return tuple(pairs)


# --- the tree builder ---------------------------------------------------------------------


class _Builder:
    """Turns the readers' nodes, in walk order, into stored tree objects."""

    def __init__(self, writer: WriterSession, reporter: Reporter, where: PathMap) -> None:
        self.where = where
        self.writer = writer
        self.repo = writer.repo
        self.reporter = reporter
        self.objects: set[str] = set()  # everything the trees reference
        self.stack: list[_Frame] = []
        self.waiting: list[_Frame] = []  # finished, waiting for the open pack (post-order)
        self.pack = _Pack()
        # packs are compressed and stored on their own threads; at most _PACKS_AHEAD wait
        self.pack_pool = ThreadPoolExecutor(2, thread_name_prefix="blockvault-pack")
        self.pack_jobs: deque[Future[tuple[int, int]]] = deque()
        self.small: dict[str, _PackSlice] = {}  # small file content id -> its slice
        self.links: dict[tuple[int, int], Node | tuple[Node, _PackSlice]] = {}
        self.warnings: list[str] = []
        self.warning_count = 0
        self.files = 0
        self.file_bytes = 0
        self.read = 0
        self.new = [0, 0, 0]
        self.top: _Frame | None = None  # the tree of "/": the snapshot's root

    def warn(self, message: str) -> None:
        message = self.where.original(message)  # named as given, not as read (--snapshot)
        self.warning_count += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        self.reporter(Warned(message))

    def take(self, made: _Enter | _Leave | _Made, entry_key: tuple[int, int] | None) -> None:
        if isinstance(made, _Enter):
            frame = _Frame(made.path, made.name, made.st, made.old)
            if self.top is None:
                self.top = frame
            self.stack.append(frame)
        elif isinstance(made, _Leave):
            if made.warning:
                self.warn(made.warning)
            self._leave(self.stack.pop())
        else:
            for warning in made.warnings:
                self.warn(warning)
            if made.note:
                self.reporter(Noted(self.where.original(made.note)))
            self.read += made.read
            for i, n in enumerate(made.new):
                self.new[i] += n
            if made.node is not None:
                self._add(made, entry_key)

    def _add(self, made: _Made, link: tuple[int, int] | None) -> None:
        node = made.node
        assert node is not None
        frame = self.stack[-1]
        entry: Node | tuple[Node, _PackSlice]
        if node.kind == "file":
            self.files += 1
        if link is not None and link in self.links:  # a hard link met before: same content
            first = self.links[link]
            if isinstance(first, tuple):
                entry = (replace(node, size=first[0].size), first[1])
                frame.waits = frame.waits or not first[1].pack.chunk_id
            else:
                entry = replace(node, size=first.size, content=first.content)
            frame.entries.append(entry)
            return
        if made.linked:  # its first name was skipped, so its content was never read
            self.warn(f"{frame.path}/{node.name}: a hard link whose content could not be read")
            return
        if made.small is not None:
            where = self.small.get(made.small_id)
            if where is None:
                where = _PackSlice(self.pack, len(self.pack.data), len(made.small))
                self.pack.data += made.small
                self.pack.files += 1
                if len(self.small) >= _DEDUP_SMALL:
                    self.small.clear()
                self.small[made.small_id] = where
            entry = (node, where)
            frame.waits = frame.waits or not where.pack.chunk_id  # its pack is still open
        else:
            entry = node
        if node.kind == "file":
            # an inode's bytes count once, under its first name, whether that name was
            # read (the later ones come unread) or taken unchanged from the parent
            self.file_bytes += node.size
            if node.links > 1:
                self.links[(node.device, node.inode)] = entry
        frame.entries.append(entry)
        if len(self.pack.data) >= PACK_TARGET or self.pack.files >= PACK_FILES:
            self._close_pack()

    def _leave(self, frame: _Frame) -> None:
        if frame.waits:
            self.waiting.append(frame)
        else:
            self._store(frame)
        if self.stack:
            parent = self.stack[-1]
            parent.entries.append(frame)
            parent.waits = parent.waits or frame.waits

    def _close_pack(self) -> None:
        pack = self.pack
        if pack.data:
            data = bytes(pack.data)
            pack.chunk_id = self.repo.chunk_id(data).hex()  # what the trees need, now
            pack.data = bytearray()
            self.pack_jobs.append(self.pack_pool.submit(self._store_pack, data, pack.chunk_id))
            while len(self.pack_jobs) > _PACKS_AHEAD:
                self._count_pack()
        self.pack = _Pack()
        for frame in self.waiting:
            frame.waits = False
            self._store(frame)
        self.waiting = []
        for frame in self.stack:
            frame.waits = False

    def _store_pack(self, data: bytes, chunk_id: str) -> tuple[int, int]:
        return len(data), self.writer.put_chunk(data, chunk_id)

    def _count_pack(self) -> None:
        plain, written = self.pack_jobs.popleft().result()
        if written:
            self.new[0] += 1
            self.new[1] += plain
            self.new[2] += written

    def finish(self) -> str:
        """Store what is left; every pack is stored when this returns."""
        self._close_pack()
        while self.pack_jobs:
            self._count_pack()
        assert self.top is not None and self.top.tree_id
        return self.top.tree_id

    def close(self) -> None:
        """Stop the pack threads (waiting for a store under way: nothing is written
        once the session cleans up)."""
        self.pack_pool.shutdown(wait=True, cancel_futures=True)

    def _store(self, frame: _Frame) -> None:
        nodes = []
        for entry in frame.entries:
            if isinstance(entry, _Frame):
                assert entry.st is not None and entry.tree_id
                nodes.append(replace(_node(entry.name, "dir", entry.st), subtree=entry.tree_id))
                nodes[-1] = replace(nodes[-1], xattrs=_dir_xattrs(entry.path, self))
            elif isinstance(entry, tuple):
                nodes.append(_resolved(entry))
            else:
                nodes.append(entry)
        for node in nodes:
            self.objects.update(s.chunk_id for s in node.content if s.chunk_id)
        frame.entries = []  # the nodes are in the tree object now
        old = frame.old
        if old.tree_id and len(nodes) == len(old.nodes) and tuple(nodes) == old.nodes:
            frame.tree_id = old.tree_id  # unchanged: the same object, not encoded again
            self.objects.update(old.pieces)
        else:
            frame.tree_id = store_tree(nodes, self._put)
        # the parent's nodes are no longer needed; the frame stays in its parent's
        # entries until that is stored, and would keep every sibling's old tree alive
        frame.old = _NO_OLD

    def _put(self, plain: bytes) -> str:
        object_id = self.repo.chunk_id(plain).hex()
        if self.writer.put_chunk(plain, object_id):
            self.new[0] += 1
        self.objects.add(object_id)
        return object_id


def _resolved(entry: tuple[Node, _PackSlice]) -> Node:
    node, where = entry
    assert where.pack.chunk_id
    return replace(node, content=(Slice(where.pack.chunk_id, where.offset, where.length),))


def _dir_xattrs(path: str, builder: _Builder) -> tuple[tuple[str, bytes], ...]:
    try:
        return _xattrs(path)
    except OSError as exc:
        builder.warn(f"{path}: its extended attributes cannot be read ({exc.strerror})")
        return ()


# --- the whole backup ----------------------------------------------------------------------


def files_manifest(
    repo: Repository,
    paths: Sequence[str],
    source: str,
    source_id: str,
    tags: Sequence[str],
    host: str,
) -> Snapshot:
    """The record of a file snapshot before it is written (tree, time and stats set later)."""
    return Snapshot(
        time=_now(),
        host=host or socket.gethostname(),
        source=source,
        disk_size=0,
        sector_size=0,
        table="none",
        disk_id="",
        partitions=(),
        index="",
        chunk_size=chunker.AVERAGE,
        compression=f"zstd:{repo.codec.level}" if repo.codec.level else "none",
        tags=tuple(tags),
        source_id=source_id,
        kind="files",
        paths=tuple(paths),
    )


def commit_files(
    writer: WriterSession, draft: Snapshot, root: str, objects: set[str], stats: Stats
) -> Snapshot:
    """Write the index (every referenced object) and the manifest of a file snapshot."""
    region = Region(
        fmt.REGION_FILES, 0, 0, 0, ExtentMap(), tuple(bytes.fromhex(i) for i in sorted(objects))
    )
    index = Index(draft.chunk_size, (region,))
    snapshot = replace(draft, time=_now(), tree=root, stats=stats)

    def store_again(missing: set[str]) -> None:
        raise SourceError(
            f"a gc removed {len(missing)} objects this backup reused while it ran; nothing "
            "was committed: run the backup again",
            path=" ".join(draft.paths) or draft.source,
        )

    return writer.commit(snapshot, index, store_again)


def backup_files(
    repo: Repository,
    paths: Sequence[str],
    *,
    selection: Selection | None = None,
    tags: Sequence[str] = (),
    host: str = "",
    snapshot: bool = False,
    reporter: Reporter = quiet_reporter,
    timing: Timing = DEFAULT_TIMING,
) -> Snapshot:
    """Back up the files and directories at ``paths`` (absolute) into one snapshot,
    incremental against the newest snapshot of the same host and paths; with
    ``snapshot``, read from read-only btrfs snapshots of them (``fssnapshot``)."""
    started = time.monotonic()
    paths = sorted(set(paths))
    draft = files_manifest(
        repo, paths, "files: " + " ".join(paths), files_origin(paths), tags, host
    )
    for path in paths:  # before anything is written: a missing path is a usage error
        try:
            os.lstat(path)
        except OSError as exc:
            raise SourceError(exc.strerror or "cannot be read", path=path) from None
    snapshots = snapshotted(paths) if snapshot else contextlib.nullcontext(PathMap())
    with (
        snapshots as where,
        WriterSession(repo, kind="backup", timing=timing) as writer,
        contextlib.ExitStack() as closing,
    ):
        parent = writer.choose_parent(draft)
        walk = _Walk(repo, selection or Selection(), parent.tree if parent else "", where)
        reader = _Reader(writer)
        builder = _Builder(writer, reporter, where)
        closing.callback(builder.close)
        reporter(TaskStarted("backup", 0, " ".join(paths)))
        batches = _batches(walk.items(paths), reader.unchanged)
        threads = workers(repo.backend.capabilities.parallel_io)

        def make(batch: list[_Keyed]) -> list[tuple[_Enter | _Leave | _Made, _Key]]:
            return [(reader.make(item), key) for item, key in batch]

        with contextlib.closing(ordered_map(make, batches, threads)) as results:
            for batch in results:
                for warning in walk.warnings:
                    builder.warn(warning)
                walk.warnings.clear()
                read = 0
                for made, key in batch:
                    builder.take(made, key)
                    if isinstance(made, _Made):
                        read += made.read
                reporter(TaskAdvanced("backup", read))
        root = builder.finish()
        reporter(TaskFinished("backup"))
        stats = Stats(
            read_bytes=builder.read,
            used_bytes=builder.file_bytes,
            chunks=len(builder.objects),
            new_chunks=builder.new[0],
            new_bytes=builder.new[1],
            stored_bytes=builder.new[2],
            seconds=round(time.monotonic() - started, 3),
            files=builder.files,
        )
        draft = replace(
            draft, warnings=tuple(builder.warnings), warning_count=builder.warning_count
        )
        return commit_files(writer, draft, root, builder.objects, stats)


_Key: TypeAlias = "tuple[int, int] | None"  # (device, inode) of a hard-linked file
_Keyed: TypeAlias = "tuple[_Enter | _Entry | _Leave | _Made, _Key]"


def _batches(
    items: Iterator[_Enter | _Entry | _Leave], unchanged: Callable[[_Entry], _Made | None]
) -> Iterator[list[_Keyed]]:
    """The walk's items in batches for the readers: a file to read goes alone (files
    are read in parallel), the rest (directories, links, empty files) go up to
    ``_BATCH`` together, since a thread handoff costs more than making their nodes.
    An unchanged file's node is made here, on the walking thread: it needs no system
    call, and a million of them are the whole of an unchanged backup. Each item comes
    with the hard-link key the builder files it under."""
    batch: list[_Keyed] = []
    for item in items:
        key = None
        heavy = False
        made = None
        if isinstance(item, _Entry):
            st = item.st
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
            made = unchanged(item)
            heavy = (
                made is None
                and stat.S_ISREG(st.st_mode)
                and st.st_size > 0
                and item.link_of is None
            )
        if heavy:
            if batch:
                yield batch
                batch = []
            yield [(item, key)]
        else:
            batch.append((item if made is None else made, key))
            if len(batch) >= _BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def files_origin(paths: Sequence[str]) -> str:
    """The ``source_id`` of a file backup of ``paths``: a JSON list, so that no two sets
    of paths share it (``/a b`` is one path, ``/a`` and ``/b`` two)."""
    return "files:" + json.dumps(sorted(paths), ensure_ascii=False)
