"""Partition tables, parsed from a disk and built for one.

Glossary:
  partition table  the MBR or GPT structures that say where partitions lie.
  data partition   a partition holding a filesystem or raw content. The MBR
                   extended partition is a container, not a data partition: its
                   EBRs lie outside every data partition.
  boot areas       every byte of the disk outside the data partitions: MBR, the gap
                   before the first partition (GRUB core.img), GPT headers and
                   entries, EBRs, trailing space. Always imaged raw (zeros skipped).

``mbr`` and ``gpt`` each have ``parse(reader, sector_size) -> PartitionTable | None``
(None when the disk has no such table) and ``build(table, disk_size) -> list[(offset, bytes)]``.
``probe.read_table(reader)`` tries GPT, then MBR.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Partition", "PartitionTable"]


@dataclass(frozen=True)
class Partition:
    """One partition, in bytes from the start of the disk."""

    number: int  # as Linux numbers it: GPT entry index + 1; MBR 1-4 primary, 5+ logical
    start: int  # byte offset on the disk
    size: int  # bytes
    type: str  # GPT type GUID (lower case) or MBR type as "0x83"
    kind: str = "gpt"  # "gpt" | "primary" | "extended" | "logical"
    name: str | None = None  # GPT partition name
    uuid: str | None = None  # GPT unique partition GUID (lower case)
    bootable: bool = False  # MBR active flag
    attributes: int = 0  # GPT attribute bits
    ebr_offset: int | None = None  # MBR logical only: byte offset of the EBR describing it

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def is_data(self) -> bool:
        return self.kind != "extended"


@dataclass(frozen=True)
class PartitionTable:
    kind: str  # "mbr" | "gpt"
    sector_size: int  # logical sector size the table is written in
    disk_id: str  # MBR disk signature "0x1234abcd" or GPT disk GUID
    partitions: tuple[Partition, ...] = field(default_factory=tuple)
    # GPT only: the usable LBA range and the entry array geometry as read
    first_usable_lba: int = 0
    last_usable_lba: int = 0
    entry_count: int = 0
    entry_size: int = 0
    # what the parser worked around: damaged primary GPT, misplaced backup, broken EBR chain
    note: str | None = None

    @property
    def data_partitions(self) -> tuple[Partition, ...]:
        return tuple(p for p in self.partitions if p.is_data)

    def partition(self, number: int) -> Partition | None:
        return next((p for p in self.partitions if p.number == number), None)
