"""MBR (DOS) partition tables: four primary entries and the chain of EBRs.

The first 512 bytes of LBA 0 hold the MBR, also on disks with 4096-byte
sectors. Logical partitions live in a chain of Extended Boot Records (EBR)
inside the extended partition; every EBR has the MBR layout and uses two
entries: entry 1 is the logical partition, its start relative to this EBR;
entry 2 links to the next EBR, its start relative to the extended partition.
Linux numbers the logical partitions 5, 6, ... in chain order.

``build`` writes CHS fields for a 255-head, 63-sector geometry as libfdisk and
every current tool does (nothing reads them any more), and link entries as
libfdisk does (type 0x05, spanning the next EBR and its logical partition), so
a table written by sfdisk is rebuilt byte for byte.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from dissect.cstruct import cstruct  # type: ignore[import-untyped, unused-ignore]

from blockvault.disk.device import Reader
from blockvault.disk.fs.c_fat import FOREIGN_OEM, c_fat
from blockvault.disk.table import Partition, PartitionTable

__all__ = [
    "EXTENDED_TYPES",
    "GPT_PROTECTIVE_TYPE",
    "build",
    "chs_address",
    "min_disk_size",
    "parse",
]

MBR_DEFINITIONS = """
/* <linux/msdos_partition.h> struct msdos_partition: one 16-byte entry */
struct mbr_partition {
    uint8   boot_ind;       /* 0x80 - active */
    uint8   head;           /* starting head */
    uint8   sector;         /* starting sector (bits 0-5), cylinder bits 8-9 (bits 6-7) */
    uint8   cyl;            /* starting cylinder, bits 0-7 */
    uint8   sys_ind;        /* what partition type */
    uint8   end_head;       /* end head */
    uint8   end_sector;     /* end sector, as sector */
    uint8   end_cyl;        /* end cylinder, as cyl */
    uint32  start_sect;     /* starting sector counting from 0 (EBR: relative) */
    uint32  nr_sects;       /* nr of sectors in partition */
};

/* The first 512 bytes of LBA 0; every EBR has the same layout. */
struct mbr {
    char            bootcode[440];      /* boot loader stage 1, or zero */
    uint32          disk_signature;     /* Windows disk signature, sfdisk "label-id" */
    uint16          reserved;           /* 0x5A5A when copy-protected, else 0 */
    mbr_partition   partitions[4];
    uint16          signature;          /* 0xAA55: bytes 55 AA */
};
"""

c_mbr: Any = cstruct(endian="<").load(MBR_DEFINITIONS)

MBR_SIZE = len(c_mbr.mbr)  # 512
MBR_SIGNATURE = 0xAA55
ENTRY_OFFSET = c_mbr.mbr.fields["partitions"].offset  # 446, in an MBR and in every EBR
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})  # DOS, Windows LBA, Linux extended
GPT_PROTECTIVE_TYPE = 0xEE
LINK_TYPE = 0x05  # what libfdisk writes in EBR link entries, whatever the extended type
MAX_LBA = 0xFFFF_FFFF  # MBR entries hold 32-bit sector numbers

# CHS addressing with the geometry every tool assumes today.
HEADS = 255
SECTORS_PER_TRACK = 63
CHS_MAX_CYLINDER = 1023


def chs_address(lba: int, *, overflow: bytes = b"\xfe\xff\xff") -> bytes:
    """The 3-byte CHS address of ``lba`` (head, sector | cylinder bits 8-9, cylinder).

    Past cylinder 1023 the address cannot be written: MBR tools write ``fe ff ff``
    (1023/254/63), GPT tools write ``ff ff ff`` for the protective entry.
    """
    cylinder, rest = divmod(lba, HEADS * SECTORS_PER_TRACK)
    if cylinder > CHS_MAX_CYLINDER:
        return overflow
    head, sector = divmod(rest, SECTORS_PER_TRACK)
    sector += 1
    return bytes((head, sector | ((cylinder >> 2) & 0xC0), cylinder & 0xFF))


def parse(reader: Reader, sector_size: int) -> PartitionTable | None:
    """Read the MBR and its EBR chain; None when LBA 0 holds no DOS partition table.

    None also for a GPT protective (or hybrid) MBR, which belongs to ``gpt``, and for
    the boot sector of a filesystem that fills the whole disk (FAT, NTFS, exFAT): its
    partition entries are empty or not sane (bad active flag, start at 0 or past the
    end of the disk, overlapping entries).
    """
    if reader.size < MBR_SIZE:
        return None
    sector = reader.read_at(0, MBR_SIZE)
    mbr = c_mbr.mbr(sector)
    if mbr.signature != MBR_SIGNATURE:
        return None
    entries = list(mbr.partitions)
    if any(e.sys_ind == GPT_PROTECTIVE_TYPE for e in entries):
        return None
    if not _entries_sane(entries, reader.size // sector_size):
        return None
    used = [(slot, e) for slot, e in enumerate(entries) if e.nr_sects]
    if not used and _is_filesystem_boot_sector(sector):
        return None

    partitions: list[Partition] = []
    for slot, e in used:
        partitions.append(
            Partition(
                number=slot + 1,
                start=e.start_sect * sector_size,
                size=e.nr_sects * sector_size,
                type=f"0x{e.sys_ind:02x}",
                kind="extended" if e.sys_ind in EXTENDED_TYPES else "primary",
                bootable=e.boot_ind == 0x80,
            )
        )
    notes: list[str] = []
    number = 5
    for extended in [p for p in partitions if p.kind == "extended"]:
        logicals, note = _read_chain(reader, sector_size, extended, number)
        partitions.extend(logicals)
        number += len(logicals)
        if note:
            notes.append(note)
    return PartitionTable(
        kind="mbr",
        sector_size=sector_size,
        disk_id=f"0x{mbr.disk_signature:08x}",
        partitions=tuple(partitions),
        note="; ".join(notes) or None,
    )


def _entries_sane(entries: list[Any], disk_sectors: int) -> bool:
    """The checks that tell a partition table from boot code or a filesystem's BPB."""
    # The kernel and libblkid reject any active flag but 0x00 and 0x80, used or not.
    if any(e.boot_ind not in (0x00, 0x80) for e in entries):
        return False
    spans = []
    for e in entries:
        if not e.nr_sects:
            continue
        # Sector 0 is the MBR itself: mkfs.fat --mbr writes such a fake entry.
        if e.start_sect == 0 or e.start_sect >= disk_sectors:
            return False
        spans.append((e.start_sect, e.start_sect + e.nr_sects))
    spans.sort()
    return all(a[1] <= b[0] for a, b in pairwise(spans))


def _is_filesystem_boot_sector(sector: bytes) -> bool:
    """A FAT BPB, or the OEM name of NTFS or exFAT: a volume boot record, not an MBR."""
    # the checks of the kernel's msdos partition parser (block/partitions/msdos.c)
    bpb = c_fat.fat_bpb(sector)
    if bytes(bpb.BS_OEMName) in FOREIGN_OEM:
        return True
    jump = bpb.BS_jmpBoot
    spc = bpb.BPB_SecPerClus
    return bool(
        (jump[0] == 0xE9 or (jump[0] == 0xEB and jump[2] == 0x90))
        and bpb.BPB_BytsPerSec in (512, 1024, 2048, 4096)
        and spc
        and spc & (spc - 1) == 0
        and bpb.BPB_RsvdSecCnt
        and bpb.BPB_NumFATs in (1, 2)
        and (bpb.BPB_Media == 0xF0 or bpb.BPB_Media >= 0xF8)
    )


def _read_chain(
    reader: Reader, sector_size: int, extended: Partition, first_number: int
) -> tuple[list[Partition], str | None]:
    """Follow the EBR chain of one extended partition; a broken link ends it with a note."""
    ext_lba = extended.start // sector_size
    ext_end_lba = extended.end // sector_size
    logicals: list[Partition] = []
    seen: set[int] = set()
    ebr_lba = ext_lba
    while True:
        where = f"EBR at byte {ebr_lba * sector_size}"
        if ebr_lba in seen:
            return logicals, f"the EBR chain loops back to the {where}; it ends there"
        seen.add(ebr_lba)
        if not ext_lba <= ebr_lba < ext_end_lba or (ebr_lba + 1) * sector_size > reader.size:
            return logicals, f"the {where} lies outside the extended partition or the disk"
        data = reader.read_at(ebr_lba * sector_size, MBR_SIZE)
        ebr = c_mbr.mbr(data)
        if ebr.signature != MBR_SIGNATURE:
            # An empty extended partition may start with a zeroed sector.
            if ebr_lba == ext_lba and not any(data):
                return logicals, None
            return logicals, f"the {where} has no 55AA signature; logical partitions end there"
        entries = [e for e in ebr.partitions if e.nr_sects]
        content = next((e for e in entries if e.sys_ind not in EXTENDED_TYPES), None)
        link = next((e for e in entries if e.sys_ind in EXTENDED_TYPES), None)
        if content is not None:
            logicals.append(
                Partition(
                    number=first_number + len(logicals),
                    start=(ebr_lba + content.start_sect) * sector_size,
                    size=content.nr_sects * sector_size,
                    type=f"0x{content.sys_ind:02x}",
                    kind="logical",
                    bootable=content.boot_ind == 0x80,
                    ebr_offset=ebr_lba * sector_size,
                )
            )
        if link is None:
            return logicals, None
        ebr_lba = ext_lba + link.start_sect


def min_disk_size(table: PartitionTable) -> int:
    """The smallest disk, in bytes, that ``build`` can write ``table`` for."""
    return max([MBR_SIZE, table.sector_size, *(p.end for p in table.partitions)])


def build(
    table: PartitionTable, disk_size: int, *, boot_sector: bytes | None = None
) -> list[tuple[int, bytes]]:
    """The sectors, as ``(byte offset, bytes)``, that write ``table``: the MBR and every EBR.

    Each write is one whole sector of ``table.sector_size`` bytes. ``boot_sector`` is
    the source disk's LBA 0: its bootstrap code (bytes 0-439), the reserved word
    (444-445) and, on 4096-byte sectors, the bytes after the first 512 are kept;
    without it they are zero. The disk signature comes from ``table.disk_id``.

    A logical partition's EBR goes to its ``ebr_offset``; when that is None, the first
    one goes to the start of the extended partition and the others to the sector before
    their partition. Raises ValueError when the table cannot be written as an MBR on a
    disk of ``disk_size`` bytes.
    """
    ss = table.sector_size
    _check_table(table, disk_size)
    primaries = [p for p in table.partitions if p.kind != "logical"]
    logicals = sorted((p for p in table.partitions if p.kind == "logical"), key=lambda p: p.number)
    extended = next((p for p in primaries if p.kind == "extended"), None)

    first = bytearray(ss)
    if boot_sector is not None:
        keep = boot_sector[:ss]
        first[: len(keep)] = keep
    sector = c_mbr.mbr(bytes(first[:MBR_SIZE]))
    sector.disk_signature = int(table.disk_id, 16)
    sector.partitions = [_empty_entry() for _ in range(4)]
    for p in primaries:
        sector.partitions[p.number - 1] = _entry(p, p.start // ss, ss)
    sector.signature = MBR_SIGNATURE
    first[:MBR_SIZE] = sector.dumps()
    writes: list[tuple[int, bytes]] = [(0, bytes(first))]

    if extended is not None:
        writes.extend(_build_chain(extended, logicals, ss))
    return writes


def _build_chain(
    extended: Partition, logicals: list[Partition], ss: int
) -> list[tuple[int, bytes]]:
    ext_lba = extended.start // ss
    ebrs = [
        p.ebr_offset if p.ebr_offset is not None else (extended.start if i == 0 else p.start - ss)
        for i, p in enumerate(logicals)
    ]
    # The chain starts at the extended partition; keep an empty first EBR if the first
    # logical partition is described further in.
    slots: list[tuple[int, Partition | None]] = list(zip(ebrs, logicals, strict=True))
    if not slots or slots[0][0] != extended.start:
        slots.insert(0, (extended.start, None))
    writes = []
    for i, (ebr, logical) in enumerate(slots):
        if not extended.start <= ebr < extended.end or ebr % ss:
            raise ValueError(
                f"the EBR of a logical partition at byte {ebr} is not a sector "
                "of the extended partition"
            )
        if logical is not None and not ebr < logical.start:
            raise ValueError(f"partition {logical.number}: its EBR must lie before it")
        ebr_lba = ebr // ss
        record = c_mbr.mbr(bytes(MBR_SIZE))
        record.partitions = [_empty_entry() for _ in range(4)]
        if logical is not None:
            record.partitions[0] = _entry(logical, logical.start // ss - ebr_lba, ss)
        if i + 1 < len(slots):
            next_ebr, next_logical = slots[i + 1]
            assert next_logical is not None  # only the first slot may lack a partition
            next_lba = next_ebr // ss
            end_lba = next_logical.end // ss  # exclusive
            record.partitions[1] = c_mbr.mbr_partition(
                sys_ind=LINK_TYPE,
                start_sect=next_lba - ext_lba,
                nr_sects=end_lba - next_lba,
            )
            _set_chs(record.partitions[1], next_lba, end_lba - 1)
        record.signature = MBR_SIGNATURE
        writes.append((ebr, record.dumps() + bytes(ss - MBR_SIZE)))
    return writes


def _empty_entry() -> Any:
    return c_mbr.mbr_partition()


def _entry(p: Partition, relative_start: int, ss: int) -> Any:
    entry = c_mbr.mbr_partition(
        boot_ind=0x80 if p.bootable else 0x00,
        sys_ind=int(p.type, 16),
        start_sect=relative_start,
        nr_sects=p.size // ss,
    )
    _set_chs(entry, p.start // ss, p.end // ss - 1)
    return entry


def _set_chs(entry: Any, first_lba: int, last_lba: int) -> None:
    entry.head, entry.sector, entry.cyl = chs_address(first_lba)
    entry.end_head, entry.end_sector, entry.end_cyl = chs_address(last_lba)


def _check_table(table: PartitionTable, disk_size: int) -> None:
    ss = table.sector_size
    if table.kind != "mbr":
        raise ValueError(f"cannot write a {table.kind} table as an MBR")
    if disk_size < min_disk_size(table):
        raise ValueError(f"the table needs a disk of {min_disk_size(table)} bytes, not {disk_size}")
    numbers = [p.number for p in table.partitions]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"partition numbers repeat: {sorted(numbers)}")
    extended = [p for p in table.partitions if p.kind == "extended"]
    if len(extended) > 1:
        raise ValueError("more than one extended partition")
    for p in table.partitions:
        if p.start % ss or p.size % ss or p.size <= 0 or p.start <= 0:
            raise ValueError(f"partition {p.number} is not whole {ss}-byte sectors after LBA 0")
        if p.start // ss > MAX_LBA or p.size // ss > MAX_LBA:
            raise ValueError(f"partition {p.number} lies beyond what 32-bit MBR entries address")
        if not 0 <= int(p.type, 16) <= 0xFF:
            raise ValueError(f"partition {p.number}: MBR type {p.type} is not one byte")
        if p.kind == "logical":
            if not extended or not (extended[0].start < p.start and p.end <= extended[0].end):
                raise ValueError(f"logical partition {p.number} lies outside the extended one")
            if p.number < 5:
                raise ValueError(f"logical partition {p.number} must be numbered from 5")
        elif p.kind in ("primary", "extended"):
            if not 1 <= p.number <= 4:
                raise ValueError(f"primary partition {p.number} must be numbered 1 to 4")
        else:
            raise ValueError(f"partition {p.number} of kind {p.kind!r} has no place in an MBR")
