"""Fixed header sizes and the envelope layout documented in docs/FORMAT.md."""

from __future__ import annotations

import struct

import blake3
import zstandard

from blockvault.repo import format as fmt
from blockvault.repo.objects import Codec


def test_header_sizes_are_fixed() -> None:
    assert fmt.ENVELOPE.size == 16
    assert fmt.INDEX_HEADER.size == 16
    assert fmt.INDEX_REGION.size == 40
    assert fmt.INDEX_EXTENT.size == 16


def test_envelope_readable_from_the_doc_alone() -> None:
    """Decode a chunk with nothing but struct, zstd and blake3, as FORMAT.md describes."""
    plain = b"blockvault " * 1000
    stored = Codec(3).encode(fmt.CHUNK_MAGIC, plain)
    magic, version, compression, encryption, length = struct.unpack_from("<4sBBBxQ", stored)
    assert (magic, version, compression, encryption, length) == (b"BVCK", 1, 1, 0, len(plain))
    assert zstandard.ZstdDecompressor().decompress(stored[16:]) == plain
    chunk_id = blake3.blake3(plain).hexdigest()
    assert Codec().decode(fmt.CHUNK_MAGIC, stored, chunk_id) == plain


def test_incompressible_data_is_stored_plain() -> None:
    import os

    plain = os.urandom(4096)
    stored = Codec(3).encode(fmt.CHUNK_MAGIC, plain)
    assert stored[5] == fmt.Compression.NONE
    assert stored[16:] == plain
