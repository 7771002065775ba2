"""Runs of used units in packed allocation tables, fast in pure Python.

Filesystems record allocation in two shapes:

  bitmap        one bit per block or cluster, least significant bit first
                (ext2/3/4 block bitmaps, the NTFS ``$Bitmap``).
  entry table   one little-endian number per cluster, zero meaning free
                (the FAT; 12-, 16- or 28-of-32-bit entries).

Both functions return sorted, merged runs ``(first_unit, count)``. They never
loop per unit over the common cases: long stretches of free (``0x00``) and full
(``0xFF``) bytes are skipped by the regular expression engine in C, and FAT
tables are reduced to one flag byte per entry with byte-lane arithmetic on big
integers, so a 32 MiB bitmap (a 1 TiB ext4) or a million FAT entries take well
under a second.
"""

from __future__ import annotations

import re

__all__ = ["entry_runs", "set_runs"]

Run = tuple[int, int]

# Greedy repeats of one literal run in a tight C loop (about 1 ns a byte), unlike a
# search, which retries the pattern at every offset. ``set_runs`` steps with them.
_ZEROS = re.compile(rb"\x00*")
_ONES = re.compile(rb"\xff*")


def _runs_in_byte(value: int) -> tuple[Run, ...]:
    """The runs of set bits of one byte as ``(first_bit, end_bit)``, LSB first."""
    runs: list[Run] = []
    bit = 0
    while bit < 8:
        if value >> bit & 1:
            start = bit
            while bit < 8 and value >> bit & 1:
                bit += 1
            runs.append((start, bit))
        else:
            bit += 1
    return tuple(runs)


_BYTE_RUNS: tuple[tuple[Run, ...], ...] = tuple(_runs_in_byte(v) for v in range(256))


def _skip(pattern: re.Pattern[bytes], data: bytes, pos: int) -> int:
    """The offset after the run of ``pattern``'s byte starting at ``pos``."""
    match = pattern.match(data, pos)
    assert match is not None  # a ``*`` repeat always matches, if only the empty string
    return match.end()


def set_runs(bitmap: bytes | bytearray | memoryview, nbits: int) -> list[Run]:
    """Runs ``(first_bit, count)`` of set bits among the first ``nbits`` bits.

    Bit ``i`` is bit ``i % 8`` (least significant first) of byte ``i // 8``,
    the order ext4 and NTFS use. Bits at ``nbits`` and beyond are ignored: both
    filesystems pad the last bitmap byte or block with ones.
    """
    if nbits <= 0:
        return []
    data = bytes(bitmap[: (nbits + 7) // 8])
    size = len(data)
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    while True:
        pos = _skip(_ZEROS, data, pos)
        if pos >= size:
            break
        value = data[pos]
        if value == 0xFF:
            end = _skip(_ONES, data, pos)
            pieces: tuple[Run, ...] = ((pos * 8, end * 8),)
            pos = end
        else:
            base = pos * 8
            pieces = tuple((base + lo, base + hi) for lo, hi in _BYTE_RUNS[value])
            pos += 1
        for start, stop in pieces:
            if ends and ends[-1] == start:
                ends[-1] = stop
            else:
                starts.append(start)
                ends.append(stop)
    # The last byte may hold bits past nbits: drop the runs there, clip the one across.
    while starts and starts[-1] >= nbits:
        starts.pop()
        ends.pop()
    if ends and ends[-1] > nbits:
        ends[-1] = nbits
    return [(s, e - s) for s, e in zip(starts, ends, strict=True)]


# FAT lanes: per-byte lookup tables applied with ``bytes.translate``.
_NONZERO = bytes([0] + [1] * 255)
_LOW_NIBBLE = bytes(v & 0x0F for v in range(256))
_HIGH_NIBBLE = bytes(v >> 4 for v in range(256))


def _equals(lane: bytes, value: int) -> int:
    """A 0/1 byte per byte of ``lane`` telling whether it equals ``value``."""
    table = bytearray(256)
    table[value] = 1
    return int.from_bytes(lane.translate(table), "little")


def _entry_flags(lanes: list[tuple[bytes, int]], skip_bad: bool) -> bytes:
    """One byte per entry: 1 when the entry is in use, else 0.

    ``lanes`` split every entry into bytes (or nibbles): each is a byte string
    holding that lane of all entries, paired with the lane's value in the
    bad-cluster mark. An entry is free when all its lanes are zero and bad when
    all equal the mark; both tests run over every entry at once as big-integer
    OR and AND.
    """
    count = len(lanes[0][0])
    nonzero = 0
    for lane, _ in lanes:
        nonzero |= int.from_bytes(lane, "little")
    used = int.from_bytes(nonzero.to_bytes(count, "little").translate(_NONZERO), "little")
    if skip_bad:
        bad = int.from_bytes(b"\x01" * count, "little")
        for lane, mark in lanes:
            bad &= _equals(lane, mark)
        used ^= bad  # a bad entry is non-zero, so XOR clears exactly its flag
    return used.to_bytes(count, "little")


def entry_runs(
    table: bytes | bytearray | memoryview, bits: int, first: int, count: int, *, skip_bad: bool
) -> list[Run]:
    """Runs ``(first_entry, count)`` of non-zero entries in a FAT.

    ``table`` is the FAT as stored, ``bits`` its entry width (12, 16 or 32; of
    32 only the low 28 count, the top four are reserved). Entries ``first`` to
    ``first + count - 1`` are examined. With ``skip_bad`` the bad-cluster mark
    (``0xFF7``, ``0xFFF7``, ``0x0FFFFFF7``) counts as free.
    """
    if bits not in (12, 16, 32):
        raise ValueError(f"FAT entries are 12, 16 or 32 bits, not {bits}")
    end = first + count
    if count <= 0:
        return []
    need = (end * bits + 7) // 8
    if len(table) < need:
        raise ValueError(f"a FAT of {len(table)} bytes cannot hold {end} entries of {bits} bits")
    raw = bytes(table[:need])
    if bits == 12:
        # Two entries in three bytes: e0 = b0 | (b1 & 0x0F) << 8, e1 = b1 >> 4 | b2 << 4.
        raw = raw.ljust((end + 1) // 2 * 3, b"\0")
        b0, b1, b2 = raw[0::3], raw[1::3], raw[2::3]
        even = _entry_flags([(b0, 0xF7), (b1.translate(_LOW_NIBBLE), 0x0F)], skip_bad)
        odd = _entry_flags([(b1.translate(_HIGH_NIBBLE), 0x07), (b2, 0xFF)], skip_bad)
        interleaved = bytearray(len(even) * 2)
        interleaved[0::2] = even
        interleaved[1::2] = odd
        flags = bytes(interleaved)
    elif bits == 16:
        flags = _entry_flags([(raw[0::2], 0xF7), (raw[1::2], 0xFF)], skip_bad)
    else:
        top = raw[3::4].translate(_LOW_NIBBLE)  # the reserved high nibble is not data
        lanes = [(raw[0::4], 0xF7), (raw[1::4], 0xFF), (raw[2::4], 0xFF), (top, 0x0F)]
        flags = _entry_flags(lanes, skip_bad)
    # Flags are only 0 and 1, so plain ``find`` (memchr speed) locates every edge.
    runs: list[Run] = []
    pos = flags.find(1, first, end)
    while pos >= 0:
        stop = flags.find(0, pos, end)
        if stop < 0:
            stop = end
        runs.append((pos, stop - pos))
        pos = flags.find(1, stop, end)
    return runs
