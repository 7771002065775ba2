"""Read a partclone image in one forward pass: header, bitmap, then the used blocks.

Everything the image says is bounded before it is used (block size, block count
against the device size, the bitmap's length, the strip length), and every check the
format carries is made: the header CRC, the bitmap CRC (v2) or ``BiTmAgIc`` (v1), and
every strip's checksum (none, CRC32, XXH64 or XXH128; reseeded per strip or carried
on). A failed check raises ``ImageDamaged`` naming the byte where it failed.

``PartcloneImage.runs()`` yields the used blocks in order as ``(byte offset, data)``
runs of consecutive blocks, so that a caller cuts them into chunks without ever
holding more than one run (at most ``RUN_BYTES``).

Version 1 (partclone < 0.3.0) wrote a CRC after every block whose value is wrong (its
loop forgot to advance), in 4 or 8 bytes depending on the build: the stride is found
from the zero high halves a 64-bit build leaves (see ``_v1_stride``); the values
themselves cannot be checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import xxhash

from blockvault.extents import ExtentMap
from blockvault.interop.c_partclone import (
    BITMAP_BIT,
    CHECKSUM_CRC32,
    CHECKSUM_NONE,
    CHECKSUM_SIZES,
    CHECKSUM_XXH64,
    CHECKSUM_XXH128,
    ENDIAN_MARK,
    FS_TAGS,
    MAGIC,
    V1_BITMAP_MAGIC,
    V1_HEADER_SIZE,
    V2_HEADER_SIZE,
    c_partclone,
    partclone_crc32,
)
from blockvault.interop.payload import Payload

__all__ = ["MAX_BLOCKS", "PartcloneHeader", "PartcloneImage", "checksum_of"]

MIN_BLOCK_SIZE: Final = 512
MAX_BLOCK_SIZE: Final = 64 * 1024 * 1024  # NTFS clusters reach 2 MiB; nothing sane is larger
MAX_BLOCKS: Final = 1 << 34  # a 2 GiB bitmap (v2): 64 TiB of 4 KiB blocks
MAX_BITMAP_BYTES: Final = 2 * 1024 * 1024 * 1024  # held whole in memory while importing
RUN_BYTES: Final = 4 * 1024 * 1024  # at most this much of the image is held at once
V1_CRC_SIZES: Final = (4, 8)


@dataclass(frozen=True)
class PartcloneHeader:
    """The fields of either header version that a reader needs, checked."""

    version: int  # 1 or 2
    fs_tag: str  # partclone's: "EXTFS", "FAT32", "NTFS", "raw", ...
    writer: str  # the partclone version that wrote it ("" for v1)
    device_size: int
    total_blocks: int
    used_blocks: int  # set in the bitmap (v2 states it; v1: as the filesystem counted)
    block_size: int
    checksum_mode: int  # CHECKSUM_*; v1 images carry an unverifiable CRC per block
    checksum_size: int
    blocks_per_checksum: int
    reseed: bool

    @property
    def filesystem(self) -> str:
        """blockvault's family name for the partclone tag ("" when unknown)."""
        return FS_TAGS.get(self.fs_tag, FS_TAGS.get(self.fs_tag.upper(), ""))


def checksum_of(mode: int) -> Callable[[], Any]:
    """A fresh running checksum for ``mode``: ``update(data)``, ``digest()``."""
    if mode == CHECKSUM_CRC32:
        return _Crc32
    if mode == CHECKSUM_XXH64:
        return lambda: _Xxh(xxhash.xxh64(seed=0), 8)
    if mode == CHECKSUM_XXH128:
        return lambda: _Xxh(xxhash.xxh3_128(seed=0), 16)
    return _NoChecksum


class _Crc32:
    def __init__(self) -> None:
        self.crc = 0xFFFFFFFF

    def update(self, data: bytes | memoryview) -> None:
        self.crc = partclone_crc32(data, self.crc)

    def digest(self) -> bytes:
        return self.crc.to_bytes(4, "little")


class _Xxh:
    """XXH64 or XXH3-128 as partclone stores them: the native integer (for XXH128 the
    struct of low then high 64 bits) on a little-endian machine, i.e. the value
    little-endian, not xxhash's canonical big-endian ``digest()``."""

    def __init__(self, state: Any, size: int) -> None:
        self.state = state
        self.size = size

    def update(self, data: bytes | memoryview) -> None:
        self.state.update(data)

    def digest(self) -> bytes:
        value: int = self.state.intdigest()
        return value.to_bytes(self.size, "little")


class _NoChecksum:
    def update(self, data: bytes | memoryview) -> None:
        pass

    def digest(self) -> bytes:
        return b""


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


class PartcloneImage:
    """A partclone image being read from ``payload``; the header and bitmap are read
    (and checked) on construction, the blocks by ``runs()``.

    ``limit``: the most bytes the image may describe (the partition it is imported
    into); a filesystem may cover less of its device than that, never more.
    """

    def __init__(self, payload: Payload, *, limit: int | None = None) -> None:
        self.payload = payload
        head = payload.read(len(MAGIC))
        if head != MAGIC:
            raise payload.damaged("no partclone-image magic (this is no partclone image)", 0)
        version = payload.read(V2_HEADER_SIZE - len(MAGIC))
        raw = head + version
        if raw[30:34] == b"0002":
            self.header = self._v2(raw)
        elif raw[30:34] == b"0001" or raw[15 + 15 : 15 + 15 + 4] == b"0001":
            self.header = self._v1(raw)
        else:
            raise payload.damaged(f"image version {raw[30:34]!r} is not one partclone wrote", 30)
        h = self.header
        if limit is not None and h.device_size > limit:
            raise payload.damaged(
                f"the image is of a {h.device_size}-byte device, larger than the "
                f"{limit}-byte partition it belongs to",
                52,
            )
        self.bitmap = self._read_bitmap()
        self.used, self.used_blocks = _used_map(self.bitmap, h)
        if h.version == 2 and self.used_blocks != h.used_blocks:
            raise payload.damaged(
                f"the bitmap marks {self.used_blocks} blocks used "
                f"(within the device), the header says {h.used_blocks}",
                76,
            )

    # --- header ------------------------------------------------------------------
    def _v2(self, raw: bytes) -> PartcloneHeader:
        p = self.payload
        head = c_partclone.image_head_v2(raw)
        if partclone_crc32(raw[: V2_HEADER_SIZE - 4]) != head.crc:
            raise p.damaged("the header checksum is wrong", V2_HEADER_SIZE - 4)
        if head.endianess != ENDIAN_MARK:
            raise p.damaged(f"byte order mark {head.endianess:#06x} (expected 0xc0de)", 34)
        if head.feature_size != 18 or head.image_version != 2:
            raise p.damaged(
                f"feature size {head.feature_size}, image version {head.image_version} "
                "(expected 18 and 2)",
                88,
            )
        if head.bitmap_mode != BITMAP_BIT:
            raise p.damaged(f"bitmap mode {head.bitmap_mode} (expected 1: one bit per block)", 105)
        mode, size = int(head.checksum_mode), int(head.checksum_size)
        if CHECKSUM_SIZES.get(mode) != size:
            raise p.damaged(f"checksum mode {mode:#x} with {size}-byte checksums is unknown", 96)
        per = int(head.blocks_per_checksum)
        if mode != CHECKSUM_NONE and not 1 <= per <= 1 << 24:
            raise p.damaged(f"{per} blocks per checksum is out of range", 100)
        header = PartcloneHeader(
            version=2,
            fs_tag=_text(bytes(head.fs)),
            writer=_text(bytes(head.ptc_version)),
            device_size=int(head.device_size),
            total_blocks=int(head.totalblock),
            used_blocks=int(head.used_bitmap),
            block_size=int(head.block_size),
            checksum_mode=mode,
            checksum_size=size,
            blocks_per_checksum=per,
            reseed=bool(head.reseed),
        )
        self._check_sizes(header, 52)
        return header

    def _v1(self, start: bytes) -> PartcloneHeader:
        raw = start + self.payload.read(V1_HEADER_SIZE - len(start))
        head = c_partclone.image_head_v1(raw)
        header = PartcloneHeader(
            version=1,
            fs_tag=_text(bytes(head.fs)),
            writer="",
            device_size=int(head.device_size),
            total_blocks=int(head.totalblock),
            used_blocks=int(head.usedblocks),
            block_size=int(head.block_size),
            checksum_mode=CHECKSUM_CRC32,  # present, but not verifiable (see the module)
            checksum_size=0,  # found once the bitmap is read: 4 or 8
            blocks_per_checksum=1,
            reseed=True,
        )
        self._check_sizes(header, 36)
        return header

    def _check_sizes(self, h: PartcloneHeader, at: int) -> None:
        p = self.payload
        if not MIN_BLOCK_SIZE <= h.block_size <= MAX_BLOCK_SIZE:
            raise p.damaged(f"block size {h.block_size} is out of range", at)
        if not 0 < h.total_blocks <= MAX_BLOCKS:
            raise p.damaged(f"{h.total_blocks} blocks is out of range", at)
        # the blocks lie on the device: the last one may run past its end, no more (a
        # filesystem may cover less than its device: NTFS leaves the last sector)
        if not h.total_blocks * h.block_size < h.device_size + h.block_size:
            raise p.damaged(
                f"{h.total_blocks} blocks of {h.block_size} bytes do not make the "
                f"{h.device_size}-byte device",
                at,
            )
        if h.used_blocks > h.total_blocks:
            raise p.damaged(f"{h.used_blocks} used of {h.total_blocks} blocks", at)

    # --- bitmap ------------------------------------------------------------------
    def _read_bitmap(self) -> bytes:
        h, p = self.header, self.payload
        if h.version == 2:
            length = -(-h.total_blocks // 8)
            if length > MAX_BITMAP_BYTES:
                raise p.damaged(f"a {length}-byte bitmap is too large to import", 52)
            at = p.position
            bitmap = p.read(length)
            crc = int.from_bytes(p.read(4), "little")
            if partclone_crc32(bitmap) != crc:
                raise p.damaged("the bitmap checksum is wrong", at + length)
            return bitmap
        if h.total_blocks > MAX_BITMAP_BYTES:
            raise p.damaged(f"a {h.total_blocks}-byte bitmap is too large to import", 36)
        at = p.position
        bytemap = p.read(h.total_blocks)
        if p.read(len(V1_BITMAP_MAGIC)) != V1_BITMAP_MAGIC:
            raise p.damaged("no BiTmAgIc after the bitmap", at + h.total_blocks)
        if bytemap.strip(b"\0\1"):
            raise p.damaged("the bitmap holds values other than 0 and 1", at)
        return bytemap

    # --- blocks ------------------------------------------------------------------
    def runs(self) -> Iterator[tuple[int, memoryview]]:
        """The used blocks in order, as ``(byte offset, data)`` runs of consecutive blocks
        of at most ``RUN_BYTES``; the last block is cut at the device's end. Checks each
        strip's checksum as it ends, and that nothing follows the last block."""
        h, p = self.header, self.payload
        bs = h.block_size
        if h.version == 1:
            yield from self._runs_v1()
            return
        per = h.blocks_per_checksum if h.checksum_mode != CHECKSUM_NONE else 0
        new_sum = checksum_of(h.checksum_mode)
        running = new_sum()
        in_strip = 0  # blocks since the last checksum
        for extent in self.used:
            block, end = extent.offset // bs, -(-extent.end // bs)
            while block < end:
                n = min(end - block, max(1, RUN_BYTES // bs))
                if per:
                    n = min(n, per - in_strip)
                data = memoryview(bytearray(n * bs))
                p.readinto(data)
                running.update(data)
                offset = block * bs
                yield offset, data[: min(n * bs, h.device_size - offset)]
                block += n
                in_strip += n
                if per and in_strip == per:
                    self._check_strip(running.digest())
                    if h.reseed:
                        running = new_sum()
                    in_strip = 0
        if per and in_strip:
            self._check_strip(running.digest())
        if not p.at_end():
            raise p.damaged("bytes follow the last block")

    def _check_strip(self, expected: bytes) -> None:
        p = self.payload
        at = p.position
        if p.read(len(expected)) != expected:
            raise p.damaged(f"a {_MODE_NAMES[self.header.checksum_mode]} checksum is wrong", at)

    def _runs_v1(self) -> Iterator[tuple[int, memoryview]]:
        h, p = self.header, self.payload
        bs = h.block_size
        stride = 0  # bytes of CRC after each block, found at the first block
        for extent in self.used:
            for block in range(extent.offset // bs, -(-extent.end // bs)):
                data = memoryview(bytearray(bs))
                p.readinto(data)
                if not stride:
                    stride = self._v1_stride()
                else:
                    p.read(stride)
                offset = block * bs
                yield offset, data[: min(bs, h.device_size - offset)]
        if not p.at_end():
            raise p.damaged("bytes follow the last block")

    def _v1_stride(self) -> int:
        """4 or 8: a 64-bit build wrote its 32-bit CRC as an 8-byte ``unsigned long``,
        whose high half is zero after every block. Looked for after the first blocks
        (up to ``RUN_BYTES`` ahead); a wrong guess cannot pass unnoticed, since the
        stream must then end exactly after the last block."""
        p, bs = self.payload, self.header.block_size
        first_crc = p.read(4)  # its value is wrong by partclone's own bug: nothing to check
        del first_crc
        blocks = max(1, min(self.used_blocks - 1, RUN_BYTES // (bs + 8)))
        ahead = p.peek(blocks * (bs + 8))
        if len(ahead) < 4:
            return 4
        highs = [ahead[i * (bs + 8) : i * (bs + 8) + 4] for i in range(blocks)]
        if all(h == b"\0\0\0\0" for h in highs if len(h) == 4):
            p.read(4)
            return 8
        return 4


_MODE_NAMES: Final = {CHECKSUM_CRC32: "CRC32", CHECKSUM_XXH64: "XXH64", CHECKSUM_XXH128: "XXH128"}


def _used_map(bitmap: bytes, h: PartcloneHeader) -> tuple[ExtentMap, int]:
    """The byte ranges of the used blocks (cut at the device's end) and their number.
    A v2 bitmap has one bit per block (block n is bit n & 7 of byte n >> 3), a v1
    bitmap one byte (1 = used). Runs of whole 0x00/0xFF bytes are taken at once: a
    real bitmap is mostly those. Bits past the last block are not counted."""
    runs: list[tuple[int, int]] = []

    def add(first: int, count: int) -> None:
        if runs and runs[-1][0] + runs[-1][1] == first:
            runs[-1] = (runs[-1][0], runs[-1][1] + count)
        else:
            runs.append((first, count))

    if h.version == 1:
        for match in re.finditer(b"\x01+", bitmap):
            add(match.start(), match.end() - match.start())
    else:
        for match in re.finditer(rb"\xff+|[^\x00\xff]", bitmap):
            if match.group()[0] == 0xFF:
                add(match.start() * 8, (match.end() - match.start()) * 8)
                continue
            byte, base = match.group()[0], match.start() * 8
            for bit in range(8):
                if byte >> bit & 1:
                    add(base + bit, 1)
    bs, total = h.block_size, h.total_blocks
    kept = [(b, min(n, total - b)) for b, n in runs if b < total]
    used = ExtentMap((b * bs, min(n * bs, h.device_size - b * bs)) for b, n in kept)
    return used, sum(n for _, n in kept)
