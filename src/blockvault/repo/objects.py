"""Turn plaintext into stored objects and back: id, envelope, compression.

Every object is named by the BLAKE3-256 of its plaintext, so reading one back
re-hashes it and a damaged or swapped object is always detected.
"""

from __future__ import annotations

import threading

import blake3
import zstandard

from blockvault.repo import format as fmt

__all__ = ["Codec", "DecodeError", "object_id"]


class DecodeError(Exception):
    """An object's bytes are not what its name promises (the caller adds context)."""


def object_id(plaintext: bytes | bytearray | memoryview) -> str:
    return blake3.blake3(plaintext).hexdigest()


class Codec:
    """Encodes and decodes envelopes; safe to share between threads."""

    def __init__(self, level: int = 3) -> None:
        self.level = level
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def encode(self, magic: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Envelope + payload; stored uncompressed when zstd does not make it smaller."""
        compression = fmt.Compression.NONE
        payload: bytes | bytearray | memoryview = plaintext
        if self.level > 0:
            packed = self._compressor().compress(plaintext)
            if len(packed) < len(plaintext):
                compression, payload = fmt.Compression.ZSTD, packed
        header = fmt.EnvelopeHeader(magic, fmt.VERSION, compression, 0, len(plaintext))
        return header.pack() + bytes(payload)

    def decode(self, magic: bytes, data: bytes, expected_id: str | None = None) -> bytes:
        """The plaintext, after checking magic, length and (if given) the id."""
        if len(data) < fmt.ENVELOPE.size:
            raise DecodeError(f"truncated: {len(data)} bytes")
        header = fmt.EnvelopeHeader.unpack(data)
        if header.magic != magic:
            raise DecodeError(f"wrong magic {header.magic!r}, expected {magic!r}")
        if header.version != fmt.VERSION or header.encryption != 0:
            raise DecodeError(f"unsupported version {header.version}/{header.encryption}")
        payload = memoryview(data)[fmt.ENVELOPE.size :]
        if header.compression == fmt.Compression.ZSTD:
            try:
                plaintext = self._decompressor().decompress(payload, max_output_size=header.length)
            except zstandard.ZstdError as exc:
                raise DecodeError(f"zstd: {exc}") from None
        elif header.compression == fmt.Compression.NONE:
            plaintext = bytes(payload)
        else:
            raise DecodeError(f"unknown compression {header.compression}")
        if len(plaintext) != header.length:
            raise DecodeError(f"length {len(plaintext)}, header says {header.length}")
        if expected_id is not None and object_id(plaintext) != expected_id:
            raise DecodeError("content does not match its id")
        return plaintext
