"""Write a partition as a partclone image (version 2), streaming.

The image is what ``partclone.<fs> -c`` writes: a 110-byte header, a bitmap of one bit
per block with its CRC32, then the used blocks in ascending order with one checksum
after every ``blocks_per_checksum`` blocks (and after the last, partial strip).
``partclone.restore`` and Clonezilla's ``partclone.<fs> -r`` write each used block back
at ``block number * block_size``, so the bitmap is the snapshot's used map seen at
that block size: a block is used when any of its bytes is. Only the bitmap (one bit
per block: 32 MiB for a 1 TiB partition of 4 KiB blocks) is held in memory; blocks
go out strip by strip as they are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from blockvault.extents import ExtentMap
from blockvault.interop.c_partclone import (
    BITMAP_BIT,
    CHECKSUM_CRC32,
    CHECKSUM_SIZES,
    ENDIAN_MARK,
    MAGIC,
    V2_HEADER_SIZE,
    c_partclone,
    partclone_crc32,
)

__all__ = ["PartcloneImage", "block_size_for", "write_image"]

WRITER_VERSION: Final = b"0.3.23"  # the partclone whose images these match byte for byte
FEATURE_SIZE: Final = 18
STRIP_BYTES: Final = 10 * 1024 * 1024  # Clonezilla's -z 10485760: blocks per checksum
READ_BYTES: Final = 4 * 1024 * 1024  # bytes read from the source at a time
MAX_BLOCKS: Final = 1 << 40  # a bitmap beyond 128 GiB is damage, not a partition

Sink = Callable[[bytes], object]
ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True)
class PartcloneImage:
    """What one image will hold; ``size`` is its exact length in bytes."""

    fs_tag: str  # partclone's name: "EXTFS", "FAT32", "NTFS", "raw", ...
    device_size: int  # bytes of the partition
    block_size: int
    used: ExtentMap  # partition-relative, aligned out to whole blocks
    strip_bytes: int = STRIP_BYTES  # partclone's --buffer_size: data per checksum

    def __post_init__(self) -> None:
        bs = self.block_size
        if bs < 512 or bs & (bs - 1) or self.device_size % bs:
            raise ValueError(f"block size {bs} does not divide {self.device_size} bytes")
        if self.total_blocks > MAX_BLOCKS or self.used.end > self.device_size:
            raise ValueError(f"used map ends past {self.device_size} bytes")

    @classmethod
    def of(
        cls,
        fs_tag: str,
        device_size: int,
        block_size: int,
        used: ExtentMap,
        strip_bytes: int = STRIP_BYTES,
    ) -> PartcloneImage:
        return cls(fs_tag, device_size, block_size, used.align_out(block_size), strip_bytes)

    @property
    def total_blocks(self) -> int:
        return self.device_size // self.block_size

    @property
    def used_blocks(self) -> int:
        return self.used.total // self.block_size

    @property
    def blocks_per_checksum(self) -> int:
        return max(1, self.strip_bytes // self.block_size)

    @property
    def checksum_size(self) -> int:
        # CRC32 only: the partclone Debian ships (0.3.23) verifies no XXH checksum
        return CHECKSUM_SIZES[CHECKSUM_CRC32]

    @property
    def size(self) -> int:
        strips = -(-self.used_blocks // self.blocks_per_checksum)
        return (
            V2_HEADER_SIZE + self._bitmap_bytes + 4 + self.used.total + strips * self.checksum_size
        )

    @property
    def _bitmap_bytes(self) -> int:
        return -(-self.total_blocks // 8)

    def header(self) -> bytes:
        head = c_partclone.image_head_v2(
            magic=MAGIC + b"\0",
            ptc_version=WRITER_VERSION,
            version=b"0002",
            endianess=ENDIAN_MARK,
            fs=self.fs_tag.encode("ascii"),
            device_size=self.device_size,
            totalblock=self.total_blocks,
            usedblocks=self.used_blocks,
            used_bitmap=self.used_blocks,
            block_size=self.block_size,
            feature_size=FEATURE_SIZE,
            image_version=2,
            cpu_bits=64,
            checksum_mode=CHECKSUM_CRC32,
            checksum_size=self.checksum_size,
            blocks_per_checksum=self.blocks_per_checksum,
            reseed=1,
            bitmap_mode=BITMAP_BIT,
            crc=0,
        ).dumps()
        crc = partclone_crc32(head[: V2_HEADER_SIZE - 4])
        return bytes(head[: V2_HEADER_SIZE - 4]) + crc.to_bytes(4, "little")

    def bitmap(self) -> bytes:
        """One bit per block, least significant first, then its partclone CRC32."""
        bits = bytearray(self._bitmap_bytes)
        bs = self.block_size
        for extent in self.used:
            _set_bits(bits, extent.offset // bs, extent.end // bs)
        return bytes(bits) + partclone_crc32(memoryview(bits)).to_bytes(4, "little")


def _set_bits(bits: bytearray, first: int, end: int) -> None:
    """Set bits ``[first, end)``: whole bytes by slice, the ragged ends bit by bit."""
    while first < end and first & 7:
        bits[first >> 3] |= 1 << (first & 7)
        first += 1
    whole_end = end & ~7
    if first < whole_end:
        bits[first >> 3 : whole_end >> 3] = b"\xff" * ((whole_end - first) >> 3)
        first = whole_end
    while first < end:
        bits[first >> 3] |= 1 << (first & 7)
        first += 1


class _Strips:
    """Running CRC32 over used blocks, emitted (and reseeded) after every ``per``."""

    def __init__(self, image: PartcloneImage) -> None:
        self.per = image.blocks_per_checksum
        self.block_size = image.block_size
        self.count = 0
        self.crc = 0xFFFFFFFF

    def _digest(self) -> bytes:
        digest = self.crc.to_bytes(4, "little")
        self.crc = 0xFFFFFFFF
        return digest

    def feed(self, data: bytes, sink: Sink) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view) // self.block_size, self.per - self.count) * self.block_size
            piece = view[:take]
            self.crc = partclone_crc32(piece, self.crc)
            sink(piece.tobytes())
            self.count += take // self.block_size
            view = view[take:]
            if self.count == self.per:
                sink(self._digest())
                self.count = 0

    def close(self, sink: Sink) -> None:
        if self.count:
            sink(self._digest())
            self.count = 0


def _runs(used: ExtentMap, step: int) -> Iterator[tuple[int, int]]:
    for extent in used:
        for offset in range(extent.offset, extent.end, step):
            yield offset, min(step, extent.end - offset)


def write_image(
    image: PartcloneImage,
    read_at: ReadAt,
    sink: Sink,
    advanced: Callable[[int], None] = lambda n: None,
) -> None:
    """Send ``image`` to ``sink`` piece by piece, reading used bytes through ``read_at``
    (partition-relative); ``advanced(n)`` after each ``n`` bytes of partition read."""
    sink(image.header())
    sink(image.bitmap())
    strips = _Strips(image)
    step = max(image.block_size, READ_BYTES // image.block_size * image.block_size)
    for offset, length in _runs(image.used, step):
        data = read_at(offset, length)
        if len(data) != length:
            raise ValueError(f"short read at {offset}: {len(data)} of {length} bytes")
        strips.feed(data, sink)
        advanced(length)
    strips.close(sink)


def block_size_for(fs_block: int, device_size: int) -> int:
    """The filesystem's block size where it divides the partition, else the largest
    power of two (at least one sector) that does: partclone writes whole blocks."""
    size = max(512, fs_block)
    while size > 512 and device_size % size:
        size //= 2
    return size
