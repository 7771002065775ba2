"""Find the partition table of a disk: GPT, then MBR, else none.

GPT goes first because its protective MBR is itself a valid MBR; ``mbr.parse``
refuses any MBR with a 0xEE entry, so at most one of the two claims a disk. No
table means the whole disk holds one filesystem (or nothing we know).
"""

from __future__ import annotations

from blockvault.disk.device import Reader
from blockvault.disk.table import PartitionTable, gpt, mbr

__all__ = ["read_table"]


def read_table(reader: Reader, sector_size: int | None = None) -> PartitionTable | None:
    """The partition table on ``reader``, or None when it has none.

    ``sector_size`` is the disk's logical sector size; None (an image file) takes the
    one a GPT was written for, else 512. Raises PartitionTableError when a protective
    MBR announces a GPT whose both copies are damaged.
    """
    if sector_size is None:
        sector_size = gpt.detect_sector_size(reader) or 512
    table = gpt.parse(reader, sector_size)
    return table if table is not None else mbr.parse(reader, sector_size)
