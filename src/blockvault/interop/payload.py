"""A payload stream: an image split into pieces (``x.aa``, ``x.ab``, …) and compressed
by whatever tool the imaging program chose, read as one plain stream in one pass.

Pieces are joined in name order; the compressor is named by the joined stream's first
bytes (gzip, zstd, xz, bzip2, lz4, or none), never by the file name, which Clonezilla
does not always carry. Nothing is written anywhere: no temporary full-size file.

``where()`` names the place a reader has reached, so that a damaged image is refused
with its position: the byte of the plain stream and the piece (and byte in it) that
the compressed stream had reached.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import blake3
import lz4.frame  # type: ignore[import-untyped]
import zstandard

from blockvault.errors import ImageDamaged

__all__ = ["COMPRESSIONS", "HASHES", "Payload", "compression_of", "new_hash", "pieces_of"]

HASHES: Final = {
    "MD5SUMS": "md5",
    "SHA1SUMS": "sha1",
    "SHA256SUMS": "sha256",
    "SHA512SUMS": "sha512",
    "B2SUMS": "blake2b",
    "B3SUMS": "blake3",
}
"""The checksum lists an image directory may carry (``<hex>  <file>`` lines) -> hash."""


def new_hash(algorithm: str) -> Any:
    """A running hash by the name ``HASHES`` gives it."""
    if algorithm == "blake3":
        return blake3.blake3()
    return hashlib.new(algorithm)


COMPRESSIONS: Final = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
    b"\x04\x22\x4d\x18": "lz4",
}
"""Magic numbers at the start of a compressed stream -> the compressor."""

FIRST_PIECES: Final = ("aa", "aaa", "000")  # split -a 2, split -a 3, Redo's numbering


def pieces_of(first: Path) -> list[Path]:
    """The files of one split payload, in order: ``first`` is ``x.aa`` (or ``x.aaa``,
    ``x.000``) and its siblings ``x.ab``, …; any other file stands alone. A gap in
    the sequence is refused: joining around it would hide the damage."""
    stem, _, suffix = first.name.rpartition(".")
    if not stem or suffix not in FIRST_PIECES:
        return [first]
    digits = suffix.isdigit()
    pattern = re.compile(rf"[0-9]{{{len(suffix)}}}" if digits else rf"[a-z]{{{len(suffix)}}}")
    names = sorted(
        p.name[len(stem) + 1 :]
        for p in first.parent.iterdir()
        if p.name.startswith(stem + ".") and pattern.fullmatch(p.name[len(stem) + 1 :])
    )
    for n, name in enumerate(names):
        expected = _nth_suffix(n, len(suffix), digits)
        if name != expected:
            raise ImageDamaged(
                f"piece {stem}.{expected} is missing (the pieces found: {', '.join(names)})",
                image=str(first.parent / stem),
            )
    return [first.parent / f"{stem}.{name}" for name in names]


def _nth_suffix(n: int, width: int, digits: bool) -> str:
    if digits:
        return f"{n:0{width}d}"
    letters = []
    for _ in range(width):
        n, r = divmod(n, 26)
        letters.append(chr(ord("a") + r))
    return "".join(reversed(letters))


class _Joined(io.RawIOBase):
    """The pieces as one raw stream, remembering where it is; each piece that has an
    entry in ``sums`` (file name -> (algorithm, hex digest), from the tool's
    ``*SUMS`` files) is hashed as it is read and checked at its end."""

    def __init__(self, pieces: Sequence[Path], sums: Mapping[str, tuple[str, str]]) -> None:
        self.pieces = list(pieces)
        self.sums = sums
        self.index = 0  # piece being read
        self.offset = 0  # bytes read from it
        self._file: io.BufferedReader | None = None
        self._hash: Any = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self.index < len(self.pieces):
            if self._file is None:
                piece = self.pieces[self.index]
                self._file = piece.open("rb")
                expected = self.sums.get(piece.name)
                self._hash = new_hash(expected[0]) if expected else None
            n = self._file.readinto(buffer)
            if n:
                if self._hash is not None:
                    self._hash.update(memoryview(buffer)[:n])
                self.offset += n
                return n
            self._file.close()
            self._file = None
            self._check_sum()
            if self.index + 1 == len(self.pieces):
                self.index = len(self.pieces)  # the end: never reopened
                break
            self.index += 1
            self.offset = 0
        return 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()

    def _check_sum(self) -> None:
        piece = self.pieces[self.index]
        if self._hash is None:
            return
        algorithm, expected = self.sums[piece.name]
        if self._hash.hexdigest() != expected.lower():
            raise ImageDamaged(
                f"piece {piece.name} does not match its {algorithm} checksum in the "
                f"image's checksum list (read to its end, byte {self.offset})",
                image=str(piece.parent),
            )

    def where(self) -> str:
        """The piece and byte reached."""
        index = min(self.index, len(self.pieces) - 1)
        return f"{self.pieces[index].name} byte {self.offset}"

    def locate(self, at: int) -> str:
        """The piece and byte holding byte ``at`` of the joined stream."""
        for piece in self.pieces:
            size = piece.stat().st_size
            if at < size:
                return f"{piece.name} byte {at}"
            at -= size
        return f"{self.pieces[-1].name} byte {self.pieces[-1].stat().st_size + at} (past its end)"


def compression_of(head: bytes) -> str:
    """The compressor whose magic starts ``head``, or "none"."""
    return next((name for magic, name in COMPRESSIONS.items() if head.startswith(magic)), "none")


class _Stream(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...

    def close(self) -> None: ...


class _Gunzip:
    """gzip, every member (as gunzip reads them), fed 1 MiB at a time: GzipFile's 8 KiB
    reads cost a third of the import's time in Python calls."""

    def __init__(self, raw: io.BufferedReader[Any]) -> None:
        self.raw = raw
        self.inflate = zlib.decompressobj(wbits=31)
        self.pending = b""  # compressed input not yet given to inflate

    def readinto(self, view: memoryview, /) -> int:
        while True:
            if not self.pending:
                if self.inflate.eof:  # a member ended: the next starts, or the stream does
                    self.pending = self.inflate.unused_data
                    if not self.pending:
                        self.pending = self.raw.read(1 << 20)
                        if not self.pending:
                            return 0
                    self.inflate = zlib.decompressobj(wbits=31)
                else:
                    self.pending = self.raw.read(1 << 20)
                    if not self.pending:
                        raise EOFError("the compressed stream ends inside a gzip member")
            out = self.inflate.decompress(self.pending, len(view))
            self.pending = self.inflate.unconsumed_tail
            if out:
                view[: len(out)] = out
                return len(out)

    def close(self) -> None:
        self.raw.close()


def _decompressed(raw: io.BufferedReader[Any], compression: str) -> _Stream:
    if compression == "gzip":
        return _Gunzip(raw)
    if compression == "zstd":
        reader: _Stream = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=False
        )
        return reader
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    if compression == "bzip2":
        return bz2.BZ2File(raw, mode="rb")
    if compression == "lz4":
        found: _Stream = lz4.frame.LZ4FrameFile(raw, mode="rb")
        return found
    return raw


_DECODE_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, RuntimeError)


class Payload:
    """One payload, joined and decompressed, read forward only with exact reads."""

    def __init__(
        self,
        pieces: Sequence[Path],
        name: str | None = None,
        sums: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self.name = name or pieces[0].name
        self._joined = _Joined(pieces, sums or {})
        self._raw = io.BufferedReader(self._joined, 1 << 20)
        self.compression = compression_of(self._raw.peek(6)[:6])
        self._stream = _decompressed(self._raw, self.compression)
        self.position = 0  # bytes of the plain stream read so far
        self._ahead = b""  # peeked at, not read yet

    @classmethod
    def open(cls, first: Path) -> Payload:
        return cls(pieces_of(first))

    def where(self, at: int | None = None) -> str:
        """The place of byte ``at`` of the plain stream (default: where reading is)."""
        at = self.position if at is None else at
        if self.compression == "none":
            return self._joined.locate(at)
        return (
            f"byte {at} of the {self.compression} stream "
            f"(compressed input read up to {self._joined.where()})"
        )

    def damaged(self, detail: str, at: int | None = None) -> ImageDamaged:
        return ImageDamaged(f"{detail} at {self.where(at)}", image=self.name)

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or ``ImageDamaged`` naming where the stream ended or broke."""
        out = bytearray(n)
        self.readinto(memoryview(out))
        return bytes(out)

    def readinto(self, view: memoryview) -> None:
        done = 0
        if self._ahead:
            done = min(len(view), len(self._ahead))
            view[:done] = self._ahead[:done]
            self._ahead = self._ahead[done:]
        while done < len(view):
            got = self._fill(view[done:])
            if not got:
                raise self.damaged(
                    f"the image ends early ({len(view) - done} more bytes were expected)",
                    self.position + done,
                )
            done += got
        self.position += done

    def _fill(self, view: memoryview) -> int:
        try:
            got = self._stream.readinto(view) or 0
        except _DECODE_ERRORS as exc:
            raise self.damaged(f"the {self.compression} stream is broken ({exc})") from None
        return got

    def peek(self, n: int) -> bytes:
        """Up to ``n`` next bytes (fewer only at the end), left to be read."""
        while len(self._ahead) < n:
            more = bytearray(n - len(self._ahead))
            got = self._fill(memoryview(more))
            if not got:
                break
            self._ahead += bytes(more[:got])
        return self._ahead[:n]

    def at_end(self) -> bool:
        """True when nothing follows (a partclone image has no trailing bytes)."""
        return not self.peek(1)

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def __enter__(self) -> Payload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
