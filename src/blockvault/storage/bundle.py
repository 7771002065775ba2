"""One-file images (``.bvi``): one snapshot's objects in one file, or in numbered pieces.

A ``.bvi`` is a read-only subset of a repository: its objects stored byte for byte
as the repository stores them, one after another in a *stream*, then a table of
contents (object name -> where in the stream, how long, xxh3 checksum) and a
trailer locating the table. The stream is cut into *pieces* (one when not split);
each piece opens with a header naming its set and its place, so that a missing,
foreign, reordered, truncated or damaged piece is named. The byte layout is in
docs/FORMAT.md ("One-file images").

Glossary:
  set     one export: a random 16-byte id every piece and the trailer carry.
  stream  the concatenated payloads of the pieces; offsets in the table are
          stream offsets, so an object may span two pieces.
  piece   ``NAME`` when not split, else ``NAME.001``, ``NAME.002``… (at least three
          digits); written under a temporary name and renamed, the first piece last.

This module knows nothing of chunks or snapshots: ``BundleBackend`` serves the
objects to ``Repository`` like any backend (refusing every write), and
``BundleWriter`` appends the objects a caller gives it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import blake3
import xxhash

from blockvault.errors import (
    ImageReadOnly,
    ObjectNotFound,
    PieceError,
    StorageError,
    UsageError,
)
from blockvault.storage.backend import Backend, Capabilities, check_name, check_size

__all__ = [
    "MAGIC",
    "PIECE_HEADER",
    "SPLIT_SIZES",
    "TRAILER",
    "BundleBackend",
    "BundleWriter",
    "first_piece",
    "is_bundle",
    "parse_split",
    "piece_name",
]

VERSION: Final = 1
MAGIC: Final = b"\x89BVI\r\n\x1a\n"  # like PNG's: a text-mode transfer breaks it visibly
TRAILER_MAGIC: Final = b"\x89BVIEND\n"

PIECE_HEADER: Final = struct.Struct(
    "<"
    "8s"  # magic         MAGIC
    "H"  # version        VERSION
    "H"  # reserved       0
    "16s"  # set_id       random, the same in every piece and the trailer
    "I"  # piece          1-based number of this piece
    "I"  # pieces         how many pieces the set has
    "Q"  # start          stream offset of this piece's first payload byte
    "Q"  # length         payload bytes in this piece (the file is 64 + length bytes)
    "4x"  # reserved      0
    "Q"  # checksum       xxh3_64 of the 56 bytes before it
)
assert PIECE_HEADER.size == 64

TRAILER: Final = struct.Struct(
    "<"
    "8s"  # magic         TRAILER_MAGIC
    "16s"  # set_id
    "Q"  # toc_offset     stream offset of the table of contents
    "Q"  # toc_length     bytes
    "16s"  # toc_hash     first 16 bytes of the BLAKE3 of the table
    "Q"  # checksum       xxh3_64 of the 56 bytes before it
)
assert TRAILER.size == 64

# table of contents: entries back to back, each TOC_ENTRY, then `parts` checksums
# (xxh3_64, "<Q" each) of the object's bytes in each piece it lies in, in order (one
# when it lies in one piece), then `name_length` bytes of UTF-8 object name as the
# repository names it ("config", "keys/…", "data/ab/ab…", "indexes/…", "snapshots/…")
TOC_ENTRY: Final = struct.Struct(
    "<"
    "Q"  # offset         stream offset of the object
    "Q"  # length         bytes
    "H"  # parts          pieces the object lies in: 1 + the piece boundaries it crosses
    "H"  # name_length    1-255
)
assert TOC_ENTRY.size == 20
CHECKSUM: Final = struct.Struct("<Q")

MAX_PIECES: Final = 100_000
MAX_TOC_BYTES: Final = 1 << 30  # 4 M chunks and more; bounded before it is read
MAX_NAME: Final = 255
MIN_SPLIT: Final = 16 * 1024

# --split names; FAT32 stores at most 4 GiB - 1 byte in a file, a single-layer
# DVD±R 4,700,372,992 bytes (2,295,104 sectors of 2048): see docs/FORMAT.md
SPLIT_SIZES: Final = {
    "fat32": 4 * 2**30 - 2**20,
    "4g": 4 * 2**30 - 2**20,  # "4G" a user means for a FAT32 stick: 4 GiB itself does not fit
    "dvd": 4480 * 2**20,
}
_UNITS: Final = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_split(text: str) -> int:
    """Piece size in bytes from ``fat32``, ``4G``, ``dvd`` or SIZE (``700M``, ``1G``,
    bytes; K/M/G/T are powers of 1024)."""
    lowered = text.strip().lower()
    if lowered in SPLIT_SIZES:
        return SPLIT_SIZES[lowered]
    number, unit = lowered.rstrip("kmgtib"), lowered[len(lowered.rstrip("kmgtib")) :]
    unit = unit.removesuffix("ib").removesuffix("b")
    if number.isdigit() and unit in _UNITS and int(number) * _UNITS[unit] >= MIN_SPLIT:
        return int(number) * _UNITS[unit]
    raise UsageError(
        f"--split {text!r}: use fat32, 4G, dvd or a size such as 700M (at least "
        f"{MIN_SPLIT // 1024} KiB)"
    )


def piece_name(base: str, number: int) -> str:
    """The file name of piece ``number`` of a split image named ``base``."""
    return f"{base}.{number:03d}"


def _has_magic(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def first_piece(path: str) -> str | None:
    """The file that opens the image ``path`` names: ``path`` itself when it starts
    with the magic (whatever its suffix), else its piece ``.001``; None if neither."""
    if os.path.isfile(path) and _has_magic(path):
        return path
    first = piece_name(path, 1)
    if not path.endswith(".001") and os.path.isfile(first) and _has_magic(first):
        return first
    return None


def is_bundle(path: str) -> bool:
    """Whether ``path`` is a one-file image (or names one split into pieces)."""
    return first_piece(path) is not None


def _checksum(data: bytes | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _toc_hash(toc: bytes) -> bytes:
    return blake3.blake3(toc).digest()[:16]


@dataclass(frozen=True)
class _Piece:
    path: str
    start: int
    length: int


@dataclass(frozen=True)
class _Entry:
    offset: int
    length: int
    checksums: tuple[int, ...]  # of its part in each piece it lies in


class BundleBackend(Backend):
    """A one-file image (or its pieces) read as a repository's storage; read-only.

    Opening reads each piece's header and the table of contents, nothing else;
    ``read`` then reads exactly the object's bytes and checks their xxh3, so that
    damage is named with its piece and position. ``bytes_read`` counts what was read.
    """

    def __init__(self, path: str) -> None:
        first = first_piece(path)
        if first is None:
            raise UsageError(f"{path}: not a one-file image (no .bvi magic)")
        self.location = path
        self.capabilities = Capabilities(local_path=os.path.abspath(first), parallel_io=4)
        self.bytes_read = 0
        self._lock = threading.Lock()
        self.set_id, self.pieces = self._discover(first)
        self._starts = [p.start for p in self.pieces]
        self._stream_end = self.pieces[-1].start + self.pieces[-1].length
        self._toc = self._read_toc()

    # --- opening ---------------------------------------------------------------------
    def _header(self, path: str, size: int) -> tuple[bytes, int, int, int, int]:
        """(set id, piece, pieces, start, length) of the piece at ``path``."""
        if size < PIECE_HEADER.size:
            raise PieceError(
                f"is truncated: {size} bytes, not even its {PIECE_HEADER.size}-byte header",
                piece=path,
            )
        raw = self._pread(path, 0, PIECE_HEADER.size)
        magic, version, _, set_id, number, count, start, length, checksum = PIECE_HEADER.unpack(raw)
        if magic != MAGIC:
            raise PieceError("is not a piece of a one-file image (no .bvi magic)", piece=path)
        if checksum != _checksum(raw[:-8]):
            raise PieceError("is damaged at bytes 0-63 (its header)", piece=path)
        if version != VERSION:
            raise PieceError(f"has format version {version}; this blockvault reads 1", piece=path)
        if not 1 <= number <= count <= MAX_PIECES:
            raise PieceError(f"says it is piece {number} of {count}", piece=path)
        if size != PIECE_HEADER.size + length:
            have = size - PIECE_HEADER.size
            what = "is truncated" if have < length else "is longer than its header says"
            raise PieceError(
                f"{what}: {have} bytes of payload, its header says {length}", piece=path
            )
        return set_id, number, count, start, length

    def _discover(self, first: str) -> tuple[bytes, list[_Piece]]:
        set_id, number, count, start, length = self._header(first, os.path.getsize(first))
        if number != 1:
            raise PieceError(f"is piece {number} of {count}; give the first piece", piece=first)
        pieces = [_Piece(first, start, length)]
        base = first.removesuffix(".001")
        if count > 1 and base == first:
            raise PieceError(
                f"is piece 1 of {count} but not named NAME.001, so its other pieces cannot "
                "be found; rename the pieces NAME.001, NAME.002…",
                piece=first,
            )
        for n in range(2, count + 1):
            path = piece_name(base, n)
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                raise PieceError(f"is missing (piece {n} of {count})", piece=path) from None
            other, got, got_count, got_start, got_length = self._header(path, size)
            if other != set_id:
                raise PieceError(
                    f"belongs to another image (set {other.hex()[:12]}, not "
                    f"{set_id.hex()[:12]} as {os.path.basename(first)})",
                    piece=path,
                )
            if got != n or got_count != count:
                raise PieceError(
                    f"holds piece {got} of {got_count}, not piece {n} of {count} "
                    "(renamed or reordered?)",
                    piece=path,
                )
            expected = pieces[-1].start + pieces[-1].length
            if got_start != expected:
                raise PieceError(f"starts at stream byte {got_start}, not {expected}", piece=path)
            pieces.append(_Piece(path, got_start, got_length))
        if start != 0:
            raise PieceError(f"starts at stream byte {start}, not 0", piece=first)
        return set_id, pieces

    def _read_toc(self) -> dict[str, _Entry]:
        if self._stream_end < TRAILER.size:
            raise PieceError("is truncated: no trailer", piece=self.pieces[-1].path)
        raw = self._read_stream(self._stream_end - TRAILER.size, TRAILER.size)
        magic, set_id, toc_offset, toc_length, toc_hash, checksum = TRAILER.unpack(raw)
        if magic != TRAILER_MAGIC or checksum != _checksum(raw[:-8]):
            raise self._damage(self._stream_end - TRAILER.size, TRAILER.size, "its trailer")
        if set_id != self.set_id:
            raise PieceError("ends with the trailer of another image", piece=self.pieces[-1].path)
        if toc_length > MAX_TOC_BYTES or toc_offset + toc_length != self._stream_end - TRAILER.size:
            raise self._damage(self._stream_end - TRAILER.size, TRAILER.size, "its trailer")
        toc = self._read_stream(toc_offset, toc_length)
        if _toc_hash(toc) != toc_hash:
            raise self._damage(toc_offset, toc_length, "its table of contents")
        return self._parse_toc(toc, toc_offset)

    def _parse_toc(self, toc: bytes, end: int) -> dict[str, _Entry]:
        """Entries by name; each must lie before the table, named as storage names go."""
        entries: dict[str, _Entry] = {}
        pos = 0
        while pos < len(toc):
            if pos + TOC_ENTRY.size > len(toc):
                raise self._damage(end, len(toc), "its table of contents (truncated entry)")
            offset, length, parts, name_length = TOC_ENTRY.unpack_from(toc, pos)
            pos += TOC_ENTRY.size
            if pos + parts * CHECKSUM.size > len(toc):
                raise self._damage(end, len(toc), "its table of contents (truncated entry)")
            sums = tuple(s for (s,) in CHECKSUM.iter_unpack(toc[pos : pos + parts * 8]))
            pos += parts * CHECKSUM.size
            try:
                if not 0 < name_length <= MAX_NAME or pos + name_length > len(toc):
                    raise ValueError(name_length)
                name = check_name(toc[pos : pos + name_length].decode(), self.location)
            except (ValueError, StorageError):  # UnicodeDecodeError is a ValueError
                raise self._damage(end, len(toc), "its table of contents (bad name)") from None
            pos += name_length
            if (
                offset + length > end
                or name in entries
                or len(sums) != len(list(self._spans(offset, length)))
            ):
                raise self._damage(end, len(toc), f"its table of contents (entry {name!r})")
            entries[name] = _Entry(offset, length, sums)
        return entries

    # --- reading the stream ------------------------------------------------------------
    def _pread(self, path: str, offset: int, length: int) -> bytes:
        # opened for each read: a few microseconds beside a chunk's read, no descriptor
        # cache to bound, and no descriptor another thread could close under us
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise PieceError("has gone since the image was opened", piece=path) from None
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        with self._lock:
            self.bytes_read += len(data)
        if len(data) != length:
            raise PieceError(f"is truncated: ends before byte {offset + length}", piece=path)
        return data

    def _spans(self, offset: int, length: int) -> Iterator[tuple[_Piece, int, int]]:
        """(piece, offset in its payload, bytes) covering stream bytes [offset, +length)."""
        k = bisect_right(self._starts, offset) - 1
        end = offset + length
        while offset < end:
            piece = self.pieces[k]
            n = min(end, piece.start + piece.length) - offset
            if n > 0:
                yield piece, offset - piece.start, n
                offset += n
            k += 1

    def _read_stream(self, offset: int, length: int) -> bytes:
        return b"".join(
            self._pread(piece.path, PIECE_HEADER.size + inner, n)
            for piece, inner, n in self._spans(offset, length)
        )

    def _damage(self, offset: int, length: int, what: str) -> PieceError:
        """The error naming the piece(s) holding stream bytes [offset, +length) and
        the bytes of each (file offsets, header included)."""
        places = [
            (piece.path, PIECE_HEADER.size + inner, PIECE_HEADER.size + inner + n - 1)
            for piece, inner, n in self._spans(offset, max(length, 1))
        ]
        first, low, high = places[0]
        detail = f"is damaged at bytes {low}-{high}"
        if len(places) > 1:
            others = ", ".join(f"{os.path.basename(p)} bytes {a}-{b}" for p, a, b in places[1:])
            detail += f" or in what follows it ({others})"
        return PieceError(f"{detail} ({what})", piece=first)

    # --- the Backend interface ------------------------------------------------------------
    def read(self, name: str, limit: int | None = None) -> bytes:
        entry = self._toc.get(name)
        if entry is None:
            raise ObjectNotFound(name=name, location=self.location)
        check_size(name, entry.length, limit, self.location)
        parts = []
        for (piece, inner, n), checksum in zip(
            self._spans(entry.offset, entry.length), entry.checksums, strict=True
        ):
            part = self._pread(piece.path, PIECE_HEADER.size + inner, n)
            if _checksum(part) != checksum:
                first = PIECE_HEADER.size + inner
                raise PieceError(
                    f"is damaged at bytes {first}-{first + n - 1} (object {name})",
                    piece=piece.path,
                )
            parts.append(part)
        return b"".join(parts)

    def exists(self, name: str) -> bool:
        return name in self._toc

    def size(self, name: str) -> int:
        entry = self._toc.get(name)
        if entry is None:
            raise ObjectNotFound(name=name, location=self.location)
        return entry.length

    def list(self, prefix: str = "") -> Iterator[str]:
        return (name for name in list(self._toc) if name.startswith(prefix))

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        return ((n, e.length) for n, e in list(self._toc.items()) if n.startswith(prefix))

    def _refuse(self, *_: object) -> None:
        raise ImageReadOnly(path=self.location)

    def write(self, name: str, data: bytes | memoryview) -> None:
        self._refuse()

    def delete(self, name: str) -> None:
        self._refuse()

    def create(self) -> None:
        self._refuse()


class BundleWriter:
    """Appends objects to a new one-file image, in pieces of ``split`` bytes if given.

    Nothing carries the final names until ``finish`` has written the table and
    trailer, fixed every header and synced every piece: an interrupted export leaves
    only temporary files, and ``__exit__`` removes them on any failure.
    """

    def __init__(self, dest: str, split: int | None = None) -> None:
        if split is not None and split < MIN_SPLIT:
            raise UsageError(f"pieces of {split} bytes are too small (at least {MIN_SPLIT})")
        self.dest = dest
        self.split = split
        self.set_id = os.urandom(16)
        self.written = 0  # stream bytes so far
        for taken in (dest, piece_name(dest, 1)):
            if os.path.lexists(taken):
                raise UsageError(f"{taken} exists; choose another name or remove it first")
        self._pieces: list[tuple[str, int, int]] = []  # (final name, fd, start)
        self._toc: list[bytes] = []
        self._names: set[str] = set()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for final, fd, _ in self._pieces:
            with contextlib.suppress(OSError):
                os.close(fd)
            if exc_type is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._temporary(final))
        self._pieces = []

    @staticmethod
    def _temporary(final: str) -> str:
        path = Path(final)
        return str(path.with_name(f".{path.name}.tmp-{os.getpid()}"))

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def add(self, name: str, data: bytes | memoryview) -> None:
        """Append object ``name`` (each name once)."""
        encoded = check_name(name, self.dest).encode()
        if len(encoded) > MAX_NAME or name in self._names:
            raise ValueError(f"object name {name!r} is too long or given twice")
        self._names.add(name)
        offset = self.written
        sums = self._append(data)
        self._toc.append(
            TOC_ENTRY.pack(offset, len(data), len(sums), len(encoded))
            + b"".join(CHECKSUM.pack(s) for s in sums)
            + encoded
        )

    def _append(self, data: bytes | memoryview) -> list[int]:
        """Write ``data`` at the end of the stream; the checksum of its part in each
        piece it went to."""
        view = memoryview(data)
        sums: list[int] = []
        while view:
            fd, room = self._current()
            part = view[:room]
            try:
                _write_all(fd, part)
            except OSError as exc:
                if exc.errno != errno.EFBIG:
                    raise
                final, _, start = self._pieces[-1]
                raise UsageError(
                    f"{final}: the filesystem there takes no file larger than about "
                    f"{self.written - start + PIECE_HEADER.size} bytes (FAT32 takes less "
                    "than 4 GiB); export again with --split fat32 or a smaller --split SIZE"
                ) from None
            sums.append(_checksum(part))
            view = view[len(part) :]
            self.written += len(part)
        return sums

    def _current(self) -> tuple[int, int]:
        """The piece to write to and the payload bytes it still takes."""
        if self._pieces:
            _, fd, start = self._pieces[-1]
            if self.split is None:
                return fd, 1 << 62
            room = self.split - PIECE_HEADER.size - (self.written - start)
            if room > 0:
                return fd, room
        number = len(self._pieces) + 1
        if number > MAX_PIECES:
            raise UsageError(
                f"{self.dest}: more than {MAX_PIECES} pieces of {self.split} bytes; "
                "choose a larger --split"
            )
        final = self.dest if self.split is None else piece_name(self.dest, number)
        fd = os.open(
            self._temporary(final), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        self._pieces.append((final, fd, self.written))
        _write_all(fd, memoryview(bytes(PIECE_HEADER.size)))  # the real one comes at finish
        return self._current()

    def finish(self) -> list[str]:
        """Write the table and trailer, the headers, sync, rename; returns the pieces."""
        toc = b"".join(self._toc)
        toc_offset = self.written
        self._append(toc)
        trailer = TRAILER.pack(TRAILER_MAGIC, self.set_id, toc_offset, len(toc), _toc_hash(toc), 0)
        self._append(trailer[:-8] + struct.pack("<Q", _checksum(trailer[:-8])))
        count = len(self._pieces)
        ends = [start for _, _, start in self._pieces[1:]] + [self.written]
        for number, ((_, fd, start), end) in enumerate(zip(self._pieces, ends, strict=True), 1):
            header = PIECE_HEADER.pack(
                MAGIC, VERSION, 0, self.set_id, number, count, start, end - start, 0
            )
            os.pwrite(fd, header[:-8] + struct.pack("<Q", _checksum(header[:-8])), 0)
            os.fsync(fd)
        finals = [final for final, _, _ in self._pieces]
        for final in finals[1:] + finals[:1]:  # the first piece last: the image appears whole
            os.rename(self._temporary(final), final)
        folder = os.open(os.path.dirname(os.path.abspath(self.dest)), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        return finals
