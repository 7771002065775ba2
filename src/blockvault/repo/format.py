"""Repository format v1: every magic, header and layout. Mirrors docs/FORMAT.md.

All integers are little-endian. Object ids are BLAKE3-256 of the object's
plaintext (keyed with the repository's id key when it is encrypted), written as
64 lower-case hex digits. Change nothing here without changing docs/FORMAT.md
and bumping ``VERSION``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CHUNK_MAGIC",
    "CONFIG_NAME",
    "DEFAULT_CHUNK_SIZE",
    "ENVELOPE",
    "GCM_NONCE",
    "GCM_TAG",
    "HOLE",
    "INDEX_EXTENT",
    "INDEX_HEADER",
    "INDEX_MAGIC",
    "INDEX_REGION",
    "MAX_CHUNK_SIZE",
    "MAX_CONFIG_BYTES",
    "MAX_FILE_OBJECT",
    "MAX_INDEX_BYTES",
    "MAX_KEYS",
    "MAX_KEY_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_PLAINTEXT",
    "MIN_CHUNK_SIZE",
    "REGION_DISK",
    "REGION_FILES",
    "REGION_PARTITION",
    "SNAPSHOT_MAGIC",
    "VERSION",
    "Compression",
    "Encryption",
    "EnvelopeHeader",
    "chunk_name",
    "chunk_size_problem",
    "index_name",
    "is_object_id",
    "key_name",
    "snapshot_name",
]

VERSION: Final = 1
REPOSITORY_FORMAT: Final = "blockvault-repository"
CONFIG_NAME: Final = "config"
DEFAULT_CHUNK_SIZE: Final = 256 * 1024
MIN_CHUNK_SIZE: Final = 4096  # chunk sizes are powers of two in [MIN, MAX]
MAX_CHUNK_SIZE: Final = 64 << 20
ID_BYTES: Final = 32
HOLE: Final = bytes(ID_BYTES)  # an index entry of all zeros: no object, read as zeros

# Object folders. Chunks fan out by the first two hex digits of their id.
DATA_DIR: Final = "data"
INDEX_DIR: Final = "indexes"
SNAPSHOT_DIR: Final = "snapshots"
KEY_DIR: Final = "keys"  # wrapped master keys of an encrypted repository (JSON, no envelope)
SESSION_DIR: Final = "sessions"  # markers of running backups (JSON, no envelope)
GC_DIR: Final = "gc"  # markers of running garbage collections (JSON, no envelope)


def is_object_id(name: str) -> bool:
    """Whether ``name`` is an id as objects are named: 64 lower-case hex digits."""
    # a regular expression: a file snapshot's trees check one per slice, millions
    return len(name) == 2 * ID_BYTES and _OBJECT_ID.fullmatch(name) is not None


_OBJECT_ID: Final = re.compile(r"[0-9a-f]+")


def chunk_name(chunk_id: str) -> str:
    return f"{DATA_DIR}/{chunk_id[:2]}/{chunk_id}"


def index_name(index_id: str) -> str:
    return f"{INDEX_DIR}/{index_id}"


def snapshot_name(snapshot_id: str) -> str:
    return f"{SNAPSHOT_DIR}/{snapshot_id}"


def key_name(key_id: str) -> str:
    return f"{KEY_DIR}/{key_id}"


# --- Envelope: the 16-byte header in front of every stored object ------------------
CHUNK_MAGIC: Final = b"BVCK"  # a chunk of disk data
INDEX_MAGIC: Final = b"BVIX"  # a snapshot's index (binary, below)
SNAPSHOT_MAGIC: Final = b"BVSN"  # a snapshot manifest (UTF-8 JSON)

ENVELOPE: Final = struct.Struct(
    "<"
    "4s"  # magic        one of the *_MAGIC values
    "B"  # version       VERSION
    "B"  # compression   Compression
    "B"  # encryption    Encryption
    "x"  # reserved      0
    "Q"  # length        plaintext length in bytes
)
assert ENVELOPE.size == 16
ENVELOPE_RESERVED: Final = 7  # offset of the reserved byte; readers require 0


class Compression:
    NONE: Final = 0  # payload is the plaintext
    ZSTD: Final = 1  # payload is one zstd frame


class Encryption:
    NONE: Final = 0  # payload as Compression says
    # payload = nonce (GCM_NONCE bytes) + AES-256-GCM ciphertext of the (compressed)
    # payload + tag (GCM_TAG bytes); associated data = the 16 header bytes + the
    # object's 32-byte id, so a header edit or a swapped object fails authentication.
    AES_256_GCM: Final = 1


GCM_NONCE: Final = 12  # random per object
GCM_TAG: Final = 16

# Bounds a reader enforces on the plaintext length of each kind of object before it
# decompresses anything (a damaged or hostile header must not make it allocate more).
# A chunk is further bounded by the repository's chunk size.
MAX_MANIFEST_BYTES: Final = 16 << 20
MAX_INDEX_BYTES: Final = 1 << 30  # 32 M chunk ids: 8 TiB of disk at 256 KiB chunks
MAX_CONFIG_BYTES: Final = 64 << 10  # config and key files are small JSON
MAX_KEY_BYTES: Final = 64 << 10
MAX_KEYS: Final = 20  # key files tried when opening (each costs a key derivation)
MAX_PLAINTEXT: Final = {
    CHUNK_MAGIC: MAX_CHUNK_SIZE,
    INDEX_MAGIC: MAX_INDEX_BYTES,
    SNAPSHOT_MAGIC: MAX_MANIFEST_BYTES,
}


def chunk_size_problem(chunk_size: int) -> str | None:
    """Why ``chunk_size`` is not a valid chunk size, or None when it is."""
    if MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE and chunk_size & (chunk_size - 1) == 0:
        return None
    return f"chunk size {chunk_size}: use a power of two from 4 KiB to 64 MiB"


@dataclass(frozen=True)
class EnvelopeHeader:
    magic: bytes
    version: int
    compression: int
    encryption: int
    length: int

    def pack(self) -> bytes:
        return ENVELOPE.pack(
            self.magic, self.version, self.compression, self.encryption, self.length
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> EnvelopeHeader:
        return cls(*ENVELOPE.unpack_from(data))


# --- Index: where each chunk of each region lies ------------------------------------
# The index plaintext is INDEX_HEADER, then for each region INDEX_REGION, then its
# used map as `extent_count` INDEX_EXTENT records (region-relative, sorted, merged),
# then `chunk_count` ids of ID_BYTES each. Chunk k of a region covers region bytes
# [k * chunk_size, min((k + 1) * chunk_size, size)); bytes outside the used map are
# zero in the chunk's plaintext. An id equal to HOLE means the chunk is all zeros.

INDEX_HEADER: Final = struct.Struct(
    "<"
    "4s"  # magic         INDEX_MAGIC
    "H"  # version        VERSION
    "H"  # region_count
    "I"  # chunk_size     bytes; every region uses the same
    "I"  # reserved       0
)
assert INDEX_HEADER.size == 16

REGION_DISK: Final = 0  # the boot areas: the whole disk, used map = outside partitions
REGION_PARTITION: Final = 1  # one partition's content
# a file snapshot's one region: every object its trees reference (tree objects, file
# content), sorted and each once; start 0, size 0, no used map, any chunk_count
REGION_FILES: Final = 2
# the most plaintext a file snapshot's object may hold: a content-defined chunk (at most
# 8 MiB), a pack of small files, or a directory's tree object; chunks of any repository
# may be this large, whatever its fixed chunk size for disks
MAX_FILE_OBJECT: Final = 8 << 20

INDEX_REGION: Final = struct.Struct(
    "<"
    "B"  # kind           REGION_DISK or REGION_PARTITION
    "x"  # reserved
    "H"  # number         partition number (0 for the disk region)
    "I"  # reserved
    "Q"  # start          byte offset of the region on the source disk
    "Q"  # size           bytes
    "Q"  # extent_count   records in the used map
    "Q"  # chunk_count    = ceil(size / chunk_size)
)
assert INDEX_REGION.size == 40

INDEX_EXTENT: Final = struct.Struct(
    "<"
    "Q"  # offset         region-relative byte offset
    "Q"  # length         bytes
)
assert INDEX_EXTENT.size == 16
