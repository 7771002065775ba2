"""Back up a stream (standard input, or a command's output) as a one-file snapshot.

``backup --stdin --name NAME`` and ``backup --stdin-from-command 'pg_dump -Fc db'``:
the snapshot's tree holds one file node ``NAME``; its source is ``stdin: NAME`` and
its origin ``stdin:NAME`` (the parent of the next dump of that name). A command is
split as a shell would split words (``shlex``) and run without a shell, so nothing in
it is expanded; a pipeline needs ``sh -c '...'`` spelled out. If it exits non-zero
nothing is committed: no snapshot, and the error names its status and the last line
it wrote to stderr (chunks already stored are left for a rerun or gc).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO

from blockvault.errors import SourceError, UnsafeName, UsageError
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.events import quiet as quiet_reporter
from blockvault.files import chunker
from blockvault.files.backup import commit_files, files_manifest, store_piece
from blockvault.pipeline.stages import is_zero, ordered_map, workers
from blockvault.pipeline.tree import check_name
from blockvault.repo import Repository, Snapshot, Stats
from blockvault.repo.sessions import DEFAULT_TIMING, Timing
from blockvault.repo.tree import Node, Slice, store_tree
from blockvault.repo.writer import WriterSession

__all__ = ["backup_command_output", "backup_stream"]

_STDERR_KEPT = 64 << 10  # the tail of a command's stderr kept for its error line


def backup_stream(
    repo: Repository,
    read: Callable[[int], bytes],
    name: str,
    *,
    tags: Sequence[str] = (),
    host: str = "",
    reporter: Reporter = quiet_reporter,
    timing: Timing = DEFAULT_TIMING,
    finished: Callable[[], None] = lambda: None,
) -> Snapshot:
    """Store what ``read(n)`` returns until ``b""`` as the file ``name`` of a new
    snapshot. ``finished`` runs once the stream has ended, before the commit: it
    raises to commit nothing (a command that failed)."""
    try:
        check_name(name)
    except UnsafeName:
        raise UsageError(
            f"--name {name!r} is not a file name (no '/', at most 255 bytes)"
        ) from None
    started = time.monotonic()
    draft = files_manifest(repo, (), f"stdin: {name}", f"stdin:{name}", tags, host)
    with WriterSession(repo, kind="backup", timing=timing) as writer:
        writer.choose_parent(draft)
        reporter(TaskStarted("backup", 0, f"stdin: {name}"))
        slices: list[Slice] = []
        objects: set[str] = set()
        size = new = new_bytes = stored = 0

        def store(piece: bytes) -> tuple[Slice, int]:
            if is_zero(piece):
                return Slice(None, 0, len(piece)), 0
            return store_piece(writer, piece)

        pieces = (bytes(p) for p in chunker.cut_stream(read))
        threads = workers(repo.backend.capabilities.parallel_io)
        with contextlib.closing(ordered_map(store, pieces, threads)) as results:
            for piece_slice, written in results:
                slices.append(piece_slice)
                size += piece_slice.length
                if piece_slice.chunk_id:
                    objects.add(piece_slice.chunk_id)
                if written:
                    new, new_bytes, stored = (
                        new + 1,
                        new_bytes + piece_slice.length,
                        stored + written,
                    )
                reporter(TaskAdvanced("backup", piece_slice.length))
        finished()
        reporter(TaskFinished("backup"))
        now = time.time_ns()
        node = Node(
            name=name,
            kind="file",
            mode=0o600,
            uid=os.getuid(),
            gid=os.getgid(),
            mtime_ns=now,
            atime_ns=now,
            ctime_ns=now,
            size=size,
            content=tuple(slices),
        )

        def put(plain: bytes) -> str:
            object_id = repo.chunk_id(plain).hex()
            writer.put_chunk(plain, object_id)
            objects.add(object_id)
            return object_id

        root = store_tree([node], put)
        stats = Stats(
            read_bytes=size,
            used_bytes=size,
            chunks=len(objects),
            new_chunks=new,
            new_bytes=new_bytes,
            stored_bytes=stored,
            seconds=round(time.monotonic() - started, 3),
            files=1,
        )
        return commit_files(writer, draft, root, objects, stats)


def backup_command_output(
    repo: Repository,
    command: str,
    name: str,
    *,
    tags: Sequence[str] = (),
    host: str = "",
    reporter: Reporter = quiet_reporter,
    timing: Timing = DEFAULT_TIMING,
) -> Snapshot:
    """Run ``command`` (split by ``shlex``, no shell) and store its standard output as
    ``name`` (default: the program's name); nothing is committed if it fails."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"--stdin-from-command {command!r}: {exc}") from None
    if not argv:
        raise UsageError("--stdin-from-command needs a command")
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise SourceError(f"cannot be run: {exc.strerror}", path=argv[0]) from None
    assert proc.stdout is not None and proc.stderr is not None
    tail: deque[bytes] = deque()
    drain = threading.Thread(target=_keep_tail, args=(proc.stderr, tail), daemon=True)
    drain.start()
    out = proc.stdout.fileno()

    def finished() -> None:
        status = proc.wait()
        drain.join()
        if status != 0:
            lines = b"".join(tail).decode(errors="replace").strip().splitlines()
            last = lines[-1] if lines else "(nothing on stderr)"
            why = (
                f"exited with status {status}" if status > 0 else f"was killed by signal {-status}"
            )
            raise SourceError(f"{why}; nothing was stored: {last}", path=command)

    try:
        return backup_stream(
            repo,
            lambda n: os.read(out, n),
            name or os.path.basename(argv[0]),
            tags=tags,
            host=host,
            reporter=reporter,
            timing=timing,
            finished=finished,
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _keep_tail(stream: IO[bytes], tail: deque[bytes]) -> None:
    """Read ``stream`` to its end, keeping about its last ``_STDERR_KEPT`` bytes."""
    kept = 0
    for block in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
        tail.append(block)
        kept += len(block)
        while kept - len(tail[0]) > _STDERR_KEPT:
            kept -= len(tail.popleft())
