"""Re-encode real partclone v2 images into the variants the installed partclone cannot
write (XXH64/XXH128 checksums, reseed on and off, version 1 with 4- or 8-byte CRCs).

partclone 0.3.23 (Debian 12) offers only ``-a0`` and ``-a1`` (none, CRC32). The blocks
and the bitmap here come from its real output, parsed by the byte layout in partclone's
IMAGE_FORMATS.md (written out below, not by blockvault's reader); only the checksums
and headers are recomputed, as partclone's own checksum.c and the v1 header define them.
"""

from __future__ import annotations

import struct
import zlib

import xxhash

V2_HEAD = struct.Struct("<16s14s4sH16sQQQQIIHHHHIBB")  # 106 bytes, then a CRC32
MODES = {"none": (0x00, 0), "crc32": (0x20, 4), "xxh64": (0x30, 8), "xxh128": (0x31, 16)}


def crc32(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """partclone's CRC32: seeded 0xFFFFFFFF, no final XOR."""
    return zlib.crc32(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


class Parsed:
    """A v2 image: its header fields, bitmap and used blocks (in order)."""

    def __init__(self, raw: bytes) -> None:
        fields = list(V2_HEAD.unpack_from(raw))
        assert fields[2] == b"0002" and crc32(raw[:106]) == int.from_bytes(raw[106:110], "little")
        self.fields = fields
        self.total, self.block_size = fields[6], fields[9]
        mode_size, per = fields[14], fields[15]
        n = -(-self.total // 8)
        self.bitmap = raw[110 : 110 + n]
        pos = 110 + n + 4
        used = [b for b in range(self.total) if self.bitmap[b >> 3] >> (b & 7) & 1]
        self.blocks = []
        for k, _ in enumerate(used):
            self.blocks.append(raw[pos : pos + self.block_size])
            pos += self.block_size
            if mode_size and ((k + 1) % per == 0 or k + 1 == len(used)):
                pos += mode_size
        assert pos == len(raw), (pos, len(raw))
        self.used = used


def _digest(mode: str, state: object) -> bytes:
    if mode == "crc32":
        return int(state).to_bytes(4, "little")  # type: ignore[call-overload]
    # partclone writes the native integers of a little-endian machine
    return state.intdigest().to_bytes(8 if mode == "xxh64" else 16, "little")  # type: ignore[attr-defined]


def encode_v2(p: Parsed, mode: str, per: int, reseed: bool) -> bytes:
    code, size = MODES[mode]
    fields = list(p.fields)
    fields[13], fields[14], fields[15], fields[16] = code, size, per, int(reseed)
    head = V2_HEAD.pack(*fields)
    out = bytearray(head + crc32(head).to_bytes(4, "little"))
    out += p.bitmap + crc32(p.bitmap).to_bytes(4, "little")

    def fresh() -> object:
        return {"crc32": 0xFFFFFFFF, "xxh64": xxhash.xxh64(), "xxh128": xxhash.xxh3_128()}.get(mode)

    state = fresh()
    for k, block in enumerate(p.blocks):
        out += block
        if mode == "none":
            continue
        if mode == "crc32":
            state = crc32(block, state)  # type: ignore[arg-type]
        else:
            state.update(block)  # type: ignore[attr-defined]
        if (k + 1) % per == 0 or k + 1 == len(p.blocks):
            out += _digest(mode, state)
            if reseed:
                state = fresh()
    return bytes(out)


def encode_v1(p: Parsed, crc_size: int) -> bytes:
    """Version 1: 4160-byte header, one byte per block, BiTmAgIc, a CRC after each block
    (its value computed as the buggy loop did: over the block's first byte, repeated)."""
    fs = p.fields[4].split(b"\0", 1)[0][:14]
    head = struct.pack(
        "<15s15s4s2sIQQQ", b"partclone-image", fs, b"0001", b"", p.block_size,
        p.fields[5], p.total, len(p.used),
    ) + bytes(4096)  # fmt: skip
    assert len(head) == 4160
    bytemap = bytearray(p.total)
    for b in p.used:
        bytemap[b] = 1
    out = bytearray(head + bytes(bytemap) + b"BiTmAgIc")
    crc = 0xFFFFFFFF
    for block in p.blocks:
        out += block
        crc = crc32(block[:1] * len(block), crc)
        out += crc.to_bytes(crc_size, "little")
    return bytes(out)
