"""Copy one snapshot out of its repository: into another repository, or into a
one-file image (``.bvi``), which is a repository subset holding that one snapshot.

Both go through one loop, ``_copy_stored``: each chunk the snapshot references and
the target lacks is read in its stored form, verified (decoded: magic, bounds, seal,
id), and handed to the target as it was stored. No damaged chunk leaves a repository
unnoticed, and none from a hostile image enters one.

Into a repository (``copy_snapshot``, like ``restic copy``): when both repositories
name chunks alike (same chunk size, same ids: both unencrypted, or the same id key)
stored chunks are copied as they are, only those missing; otherwise each region is
read back through its chunks, cut at the target's chunk size, re-identified and
sealed with the target's keys. Either way through a ``WriterSession``, so the copy is
safe beside gc and the snapshot exists only once its manifest does.

A file snapshot has no fixed chunk size: it copies as stored whenever the ids agree.
When they do not, its trees are rebuilt in the target (``_copy_trees``): each content
chunk is stored under its new id and each tree object rewritten to name the new ids,
children before parents, so that unchanged subtrees still share objects there.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import NamedTuple

from blockvault.errors import ObjectCorrupt
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.pipeline.stages import is_zero, ordered_map, workers
from blockvault.repo import Index, Region, Repository, Snapshot
from blockvault.repo import format as fmt
from blockvault.repo.image import RegionReader
from blockvault.repo.objects import Codec
from blockvault.repo.tree import MAX_TREE_DEPTH, Node, load_tree, store_tree
from blockvault.repo.writer import WriterSession
from blockvault.storage.bundle import BundleWriter

__all__ = ["CopyResult", "copy_snapshot", "export_bundle"]

_PROBE = b"blockvault: do these repositories name chunks alike?"


@dataclass(frozen=True)
class CopyResult:
    snapshot: Snapshot  # as the target holds it (its id)
    chunks: int  # distinct chunks the snapshot references (in the target)
    copied_chunks: int  # chunks written to the target (the others were there)
    copied_bytes: int  # bytes written for them, in stored form
    seconds: float
    pieces: tuple[str, ...] = ()  # export: the files written, in order

    @property
    def rate(self) -> float:
        """Bytes written per second."""
        return self.copied_bytes / self.seconds if self.seconds > 0 else 0.0


class _Sink(NamedTuple):
    has: Callable[[str], bool]  # chunk id -> already in the target
    put: Callable[[str, bytes], int]  # (chunk id, stored form) -> bytes written


def _ordered_ids(index: Index) -> list[str]:
    """Each chunk id once, in disk order (a one-file image then reads front to back)."""
    seen: dict[str, None] = {}
    for region in index.regions:
        for raw in region.chunk_ids:
            if raw != fmt.HOLE:
                seen.setdefault(raw.hex())
    return list(seen)


def _copy_stored(
    source: Repository,
    chunk_ids: Iterable[str],
    sink: _Sink,
    advance: Callable[[int], None],
    step: int,
    recoder: Codec | None = None,
) -> tuple[int, int]:
    """The one copy loop (see the module docstring); returns (chunks, bytes) written.
    Progress advances ``step`` bytes (the chunk size) a chunk. With ``recoder`` (same
    keys, another zstd level) each chunk is encoded again and kept so when that is
    smaller: its id stays, its envelope says how it is stored."""

    def fetch(chunk_id: str) -> tuple[str, bytes]:
        stored = source.read_raw_chunk(chunk_id)
        plain = source.decode_chunk(chunk_id, stored)  # raises ChunkCorrupt naming it
        if recoder is not None:
            again = recoder.encode(fmt.CHUNK_MAGIC, plain, chunk_id)
            stored = again if len(again) < len(stored) else stored
        return chunk_id, stored

    todo = []
    for chunk_id in chunk_ids:
        if sink.has(chunk_id):
            advance(step)
        else:
            todo.append(chunk_id)
    chunks = written = 0
    threads = workers(source.backend.capabilities.parallel_io)
    with contextlib.closing(ordered_map(fetch, todo, threads)) as fetched:
        for chunk_id, stored in fetched:
            n = sink.put(chunk_id, stored)
            chunks += bool(n)
            written += n
            advance(step)
    return chunks, written


def _progress(reporter: Reporter, task: str, total: int, what: str) -> Callable[[int], None]:
    reporter(TaskStarted(task, total, what))

    def advance(n: int) -> None:
        reporter(TaskAdvanced(task, n))

    return advance


def export_bundle(
    repo: Repository,
    snapshot: Snapshot,
    dest: str,
    *,
    split: int | None = None,
    compression: str | None = None,
    reporter: Reporter = quiet_reporter,
) -> CopyResult:
    """Write ``snapshot`` and everything it needs to the one-file image ``dest`` (in
    pieces of ``split`` bytes if given): the config, the key file this session opened
    (encrypted repositories: objects stay sealed), each chunk, the index, the
    manifest, all as stored, or with ``compression`` (``zstd:LEVEL``) chunks
    compressed again where that makes them smaller. Written under temporary names,
    renamed at the end."""
    started = time.monotonic()
    index = repo.load_index(snapshot)  # checks it against the manifest first
    chunk_ids = _ordered_ids(index)
    backend = repo.backend
    advance = _progress(
        reporter, "export", len(chunk_ids) * index.chunk_size, f"snapshot {snapshot.id[:12]}"
    )
    with BundleWriter(dest, split) as out:
        out.add(fmt.CONFIG_NAME, backend.read(fmt.CONFIG_NAME, fmt.MAX_CONFIG_BYTES))
        if repo.encrypted and repo.key_id is not None:
            out.add(fmt.key_name(repo.key_id), repo.export_key())

        def put(chunk_id: str, stored: bytes) -> int:
            out.add(fmt.chunk_name(chunk_id), stored)
            return len(stored)

        sink = _Sink(lambda chunk_id: fmt.chunk_name(chunk_id) in out, put)
        recoder = repo.with_compression(compression).codec if compression else None
        chunks, _ = _copy_stored(repo, chunk_ids, sink, advance, index.chunk_size, recoder)
        bound = fmt.MAX_INDEX_BYTES + 4096  # envelope and seal around the plaintext bound
        out.add(fmt.index_name(snapshot.index), backend.read(fmt.index_name(snapshot.index), bound))
        manifest = fmt.snapshot_name(snapshot.id)
        out.add(manifest, backend.read(manifest, fmt.MAX_MANIFEST_BYTES + 4096))
        pieces = out.finish()
        total = out.written
    reporter(TaskFinished("export"))
    return CopyResult(
        snapshot, len(chunk_ids), chunks, total, time.monotonic() - started, tuple(pieces)
    )


def copy_snapshot(
    source: Repository,
    snapshot: Snapshot,
    target: Repository,
    *,
    reporter: Reporter = quiet_reporter,
) -> CopyResult:
    """Store ``snapshot`` of ``source`` in ``target``, deduplicated against what
    ``target`` holds (see the module docstring); returns it as ``target`` holds it."""
    started = time.monotonic()
    index = source.load_index(snapshot)
    chunk_ids = _ordered_ids(index)
    size = target.config.chunk_size
    same_ids = source.chunk_id(_PROBE) == target.chunk_id(_PROBE)
    files = snapshot.kind == "files"
    alike = same_ids and (files or size == index.chunk_size)
    if files:
        size = index.chunk_size  # no layout: the chunker's parameters stay
    draft = replace(snapshot, chunk_size=size, compression=target.config.compression, id="")
    total = sum(r.size for r in index.regions) if not alike else len(chunk_ids) * size
    advance = _progress(reporter, "import", total, f"snapshot {snapshot.id[:12]}")
    with WriterSession(target, kind="import") as session:
        session.choose_parent(draft)
        if alike:
            sink = _Sink(target.has_chunk, session.put_raw_chunk)
            _copy_stored(source, chunk_ids, sink, advance, size)
            copied = index

            def store_again(missing: set[str]) -> None:
                again = [c for c in chunk_ids if c in missing]
                _copy_stored(source, again, sink, advance, size)

        elif files:
            root, objects = _copy_trees(source, snapshot.tree, session, advance)
            draft = replace(draft, tree=root)
            region = Region(fmt.REGION_FILES, 0, 0, 0, ExtentMap(), tuple(sorted(objects)))
            copied = Index(size, (region,))

            def store_again(missing: set[str]) -> None:
                _copy_trees(source, snapshot.tree, session, advance)

        else:
            regions = (_rechunk(source, r, index, session, advance) for r in index.regions)
            copied = Index(size, tuple(regions))

            def store_again(missing: set[str]) -> None:
                for region in index.regions:  # gc took some: store what is missing again
                    _rechunk(source, region, index, session, advance)

        stored = session.commit(draft, copied, store_again)
        chunks, written = session.stored_chunks, session.stored_bytes
    reporter(TaskFinished("import"))
    referenced = len(copied.chunk_ids())
    return CopyResult(stored, referenced, chunks, written, time.monotonic() - started)


def _copy_trees(
    source: Repository, root: str, session: WriterSession, advance: Callable[[int], None]
) -> tuple[str, set[bytes]]:
    """A file snapshot's trees stored in the target under its ids (see the module
    docstring); returns the new root and every object the new trees reference."""
    target = session.repo
    renamed: dict[str, str] = {}  # source id -> target id, each object copied once
    objects: set[bytes] = set()

    def content(chunk_id: str) -> str:
        if chunk_id not in renamed:
            plain = source.get_chunk(chunk_id)
            renamed[chunk_id] = target.chunk_id(plain).hex()
            session.put_chunk(plain, renamed[chunk_id])
            advance(len(plain))
        objects.add(bytes.fromhex(renamed[chunk_id]))
        return renamed[chunk_id]

    def put(plain: bytes) -> str:
        tree_id = target.chunk_id(plain).hex()
        session.put_chunk(plain, tree_id)
        objects.add(bytes.fromhex(tree_id))
        return tree_id

    def rewritten(node: Node) -> Node:
        slices = tuple(
            replace(s, chunk_id=content(s.chunk_id)) if s.chunk_id else s for s in node.content
        )
        return replace(node, content=slices)

    def nodes_of(tree_id: str) -> list[Node]:
        try:
            return list(load_tree(tree_id, source.get_chunk))
        except ValueError as exc:
            raise ObjectCorrupt(
                kind="tree", name=tree_id[:12], repo=source.location, detail=str(exc)
            ) from None

    # depth first with an explicit stack: (tree id, its nodes, those rewritten so far)
    stack = [(root, nodes_of(root), list[Node]())]
    while True:
        tree_id, nodes, done = stack[-1]
        if len(done) == len(nodes):
            renamed[tree_id] = store_tree(done, put)
            stack.pop()
            if not stack:
                return renamed[tree_id], objects
            parent_nodes, parent_done = stack[-1][1], stack[-1][2]
            parent_done.append(replace(parent_nodes[len(parent_done)], subtree=renamed[tree_id]))
            continue
        node = nodes[len(done)]
        if node.kind != "dir":
            done.append(rewritten(node))
        elif node.subtree in renamed:  # met before: its objects are counted already
            done.append(replace(node, subtree=renamed[node.subtree]))
        elif len(stack) >= MAX_TREE_DEPTH:
            raise ObjectCorrupt(
                kind="a tree of snapshot",
                name=root[:12],
                repo=source.location,
                detail=f"directories nested deeper than {MAX_TREE_DEPTH}",
            )
        else:
            stack.append((node.subtree, nodes_of(node.subtree), []))


def _rechunk(
    source: Repository,
    region: Region,
    index: Index,
    session: WriterSession,
    advance: Callable[[int], None],
) -> Region:
    """``region`` read through its chunks and stored anew in the target's chunk size
    and ids; all-zero target chunks become holes. The used map stays as it was."""
    size = session.repo.config.chunk_size
    reader = RegionReader(source, region, index.chunk_size, cache=2 + size // index.chunk_size)

    def store(k: int) -> bytes:
        offset = k * size
        length = min(size, region.size - offset)
        if not region.used.clip(offset, length):
            return fmt.HOLE
        data = reader.read_at(offset, length)
        if is_zero(data):
            return fmt.HOLE
        chunk_id = session.repo.chunk_id(data)
        session.put_chunk(data, chunk_id.hex())
        return chunk_id

    ids = []
    with contextlib.closing(ordered_map(store, range(-(-region.size // size)))) as stored:
        for chunk_id in stored:  # events from the calling thread only
            ids.append(chunk_id)
            advance(min(size, region.size - (len(ids) - 1) * size))
    return replace(region, chunk_ids=tuple(ids))
