"""GPT partition tables: protective MBR, primary and backup header and entry array.

On a disk of N logical blocks (LBA 0 to N-1)::

    LBA 0                 protective MBR: one entry of type 0xEE from LBA 1 to the end
    LBA 1                 primary header, my_lba 1, alternate_lba N-1
    LBA 2 ...             primary entry array (128 entries of 128 bytes: 32 blocks of 512)
    first_usable_lba ...  partitions
    ... last_usable_lba
    N-1-E ... N-2         backup entry array (E blocks), identical to the primary one
    N-1                   backup header, my_lba N-1, alternate_lba 1

Both headers carry a CRC32 of themselves and one of the entry array. The backup
depends on the disk size, so ``build`` rewrites it at the end of the target disk
and recomputes ``last_usable_lba``: that is how a restore onto a larger disk
keeps a valid GPT. GUIDs are stored mixed-endian (the first three fields little
endian) and shown as lower-case strings; names are UTF-16LE.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass
from typing import Any

from dissect.cstruct import cstruct  # type: ignore[import-untyped, unused-ignore]

from blockvault.disk.device import Reader
from blockvault.disk.table import Partition, PartitionTable
from blockvault.disk.table.mbr import GPT_PROTECTIVE_TYPE, MBR_SIGNATURE, c_mbr, chs_address
from blockvault.errors import PartitionTableError

__all__ = [
    "SECTOR_SIZES",
    "backup_area",
    "build",
    "detect_sector_size",
    "min_disk_size",
    "parse",
    "protective_mbr",
]

GPT_DEFINITIONS = """
/* UEFI 2.10 section 5.3.2 GPT Header; Linux block/partitions/efi.h gpt_header */
struct gpt_header {
    char    signature[8];                   /* "EFI PART" */
    uint32  revision;                       /* 0x00010000: revision 1.0 */
    uint32  header_size;                    /* bytes covered by header_crc32: 92 */
    uint32  header_crc32;                   /* CRC32 of header_size bytes, this field zero */
    uint32  reserved1;                      /* must be zero */
    uint64  my_lba;                         /* LBA of this header */
    uint64  alternate_lba;                  /* LBA of the other header */
    uint64  first_usable_lba;               /* first LBA a partition may use */
    uint64  last_usable_lba;                /* last LBA a partition may use */
    char    disk_guid[16];                  /* mixed-endian GUID */
    uint64  partition_entry_lba;            /* first LBA of this copy's entry array */
    uint32  num_partition_entries;          /* entries in the array, used or not */
    uint32  sizeof_partition_entry;         /* 128 * 2^n bytes */
    uint32  partition_entry_array_crc32;    /* CRC32 of num * sizeof bytes */
    /* the rest of the block is reserved and must be zero */
};

/* UEFI 2.10 section 5.3.3 GPT Partition Entry; Linux gpt_entry */
struct gpt_entry {
    char    partition_type_guid[16];        /* all zero: unused entry */
    char    unique_partition_guid[16];
    uint64  starting_lba;
    uint64  ending_lba;                     /* inclusive */
    uint64  attributes;                     /* bit 0 required, 1 no block IO protocol,
                                               2 legacy BIOS bootable, 48-63 per type */
    char    partition_name[72];             /* 36 UTF-16LE code units, NUL padded */
};
"""

c_gpt: Any = cstruct(endian="<").load(GPT_DEFINITIONS)

SIGNATURE = b"EFI PART"
REVISION = 0x0001_0000
HEADER_SIZE = len(c_gpt.gpt_header)  # 92
ENTRY_SIZE = len(c_gpt.gpt_entry)  # 128, the minimum an entry array may use
_HEADER_CRC = c_gpt.gpt_header.fields["header_crc32"].offset  # 16
NAME_UNITS = 36
DEFAULT_ENTRY_COUNT = 128
MAX_ENTRY_ARRAY = 16 * 1024 * 1024  # far beyond any tool's, small enough to read whole
SECTOR_SIZES = (512, 4096)  # what ``detect_sector_size`` tries
PMBR_MAX_SECTORS = 0xFFFF_FFFF


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(raw)))


def _where(reader: Reader) -> str:
    path = getattr(reader, "path", None)
    if path is None:
        path = getattr(getattr(reader, "device", None), "path", None)
    return str(path) if path is not None else "the disk"


def _has_protective_entry(sector: bytes) -> bool:
    mbr = c_mbr.mbr(sector[:512])
    return bool(
        mbr.signature == MBR_SIGNATURE
        and any(e.sys_ind == GPT_PROTECTIVE_TYPE for e in mbr.partitions)
    )


@dataclass(frozen=True)
class _Copy:
    """One valid header with its entry array."""

    header: Any
    entries: bytes


def _read_copy(reader: Reader, ss: int, lba: int) -> _Copy | str:
    """The header at ``lba`` and its entries, or why they cannot be trusted."""
    blocks = reader.size // ss
    if not 0 < lba < blocks:
        return f"LBA {lba} is not on the disk"
    raw = reader.read_at(lba * ss, ss)
    header = c_gpt.gpt_header(raw)
    if header.signature != SIGNATURE:
        return "no 'EFI PART' signature"
    if not HEADER_SIZE <= header.header_size <= ss:
        return f"header size {header.header_size} is out of range"
    covered = bytearray(raw[: header.header_size])
    covered[_HEADER_CRC : _HEADER_CRC + 4] = bytes(4)  # computed with itself zeroed
    if zlib.crc32(covered) != header.header_crc32:
        return "header CRC32 mismatch"
    if header.my_lba != lba:
        return f"header says it lies at LBA {header.my_lba}"
    count, size = header.num_partition_entries, header.sizeof_partition_entry
    if size < ENTRY_SIZE or size % 8 or count * size > MAX_ENTRY_ARRAY:
        return f"entry array of {count} entries of {size} bytes is not plausible"
    array_blocks = -(-count * size // ss)
    if header.partition_entry_lba + array_blocks > blocks or header.partition_entry_lba < 2:
        return f"entry array at LBA {header.partition_entry_lba} is not on the disk"
    if header.last_usable_lba >= blocks or header.first_usable_lba > header.last_usable_lba + 1:
        return (
            f"usable range LBA {header.first_usable_lba}-{header.last_usable_lba} "
            f"does not fit a disk of {blocks} blocks"
        )
    entries = reader.read_at(header.partition_entry_lba * ss, count * size)
    if zlib.crc32(entries) != header.partition_entry_array_crc32:
        return "entry array CRC32 mismatch"
    return _Copy(header, entries)


def detect_sector_size(reader: Reader) -> int | None:
    """The logical sector size a GPT on ``reader`` was written for, or None.

    For image files, whose sector size the kernel cannot tell: a valid header at
    LBA 1 (or a backup header at the last LBA) for 512 or 4096-byte blocks, behind a
    protective MBR.
    """
    if reader.size < 512 or not _has_protective_entry(reader.read_at(0, 512)):
        return None
    candidates = [ss for ss in SECTOR_SIZES if reader.size >= 3 * ss]
    for ss in candidates:
        if isinstance(_read_copy(reader, ss, 1), _Copy):
            return ss
    for ss in candidates:
        if isinstance(_read_copy(reader, ss, reader.size // ss - 1), _Copy):
            return ss
    return None


def parse(reader: Reader, sector_size: int) -> PartitionTable | None:
    """Read the GPT behind a protective MBR; None when LBA 0 has no 0xEE entry.

    A damaged primary header or entry array falls back to the backup, and the
    table's ``note`` says so (it also notes a damaged or misplaced backup). Raises
    PartitionTableError when the protective MBR announces a GPT and neither copy is
    valid.
    """
    ss = sector_size
    if reader.size < 3 * ss or not _has_protective_entry(reader.read_at(0, 512)):
        return None
    last_lba = reader.size // ss - 1
    primary = _read_copy(reader, ss, 1)
    if isinstance(primary, _Copy):
        alternate = primary.header.alternate_lba
        note = None
        if alternate != last_lba:
            note = (
                f"the backup GPT header is at LBA {alternate}, not at the last LBA {last_lba}: "
                "the disk was enlarged or the image cut; a restore writes it at the end"
            )
        else:
            backup = _read_copy(reader, ss, last_lba)
            if not isinstance(backup, _Copy):
                note = f"backup GPT at LBA {last_lba} damaged ({backup}); a restore rewrites it"
        return _table(primary, ss, note)

    backup = _read_copy(reader, ss, last_lba)
    if isinstance(backup, _Copy):
        note = f"primary GPT damaged ({primary}); read the backup at LBA {last_lba}"
        return _table(backup, ss, note)
    hint = ""
    other = detect_sector_size(reader)
    if other is not None and other != ss:
        hint = f"; the GPT was written for {other}-byte sectors, not {ss}"
    raise PartitionTableError(
        f"the protective MBR announces a GPT but both copies are damaged: "
        f"primary at LBA 1: {primary}; backup at LBA {last_lba}: {backup}{hint}",
        path=_where(reader),
    )


def _table(copy: _Copy, ss: int, note: str | None) -> PartitionTable:
    h = copy.header
    partitions: list[Partition] = []
    skipped: list[int] = []
    for index in range(h.num_partition_entries):
        offset = index * h.sizeof_partition_entry
        entry = c_gpt.gpt_entry(copy.entries[offset : offset + ENTRY_SIZE])
        if not any(entry.partition_type_guid):
            continue
        if entry.ending_lba < entry.starting_lba:
            skipped.append(index + 1)
            continue
        partitions.append(
            Partition(
                number=index + 1,
                start=entry.starting_lba * ss,
                size=(entry.ending_lba - entry.starting_lba + 1) * ss,
                type=_guid(entry.partition_type_guid),
                kind="gpt",
                name=_decode_name(entry.partition_name),
                uuid=_guid(entry.unique_partition_guid),
                attributes=entry.attributes,
            )
        )
    if skipped:
        extra = f"entries {skipped} end before they start and were skipped"
        note = f"{note}; {extra}" if note else extra
    return PartitionTable(
        kind="gpt",
        sector_size=ss,
        disk_id=_guid(h.disk_guid),
        partitions=tuple(partitions),
        first_usable_lba=h.first_usable_lba,
        last_usable_lba=h.last_usable_lba,
        entry_count=h.num_partition_entries,
        entry_size=h.sizeof_partition_entry,
        note=note,
    )


def _decode_name(raw: bytes) -> str:
    units = [bytes(raw[i : i + 2]) for i in range(0, len(raw), 2)]
    end = units.index(b"\0\0") if b"\0\0" in units else len(units)
    # surrogatepass keeps a lone surrogate, so build writes back the same bytes
    return b"".join(units[:end]).decode("utf-16-le", errors="surrogatepass")


def _encode_name(name: str | None, number: int) -> bytes:
    raw = (name or "").encode("utf-16-le", errors="surrogatepass")
    if len(raw) > 2 * NAME_UNITS or b"\0\0" in [raw[i : i + 2] for i in range(0, len(raw), 2)]:
        raise ValueError(f"partition {number}: name {name!r} is not 36 UTF-16 units without NUL")
    return raw.ljust(2 * NAME_UNITS, b"\0")


def _geometry(table: PartitionTable) -> tuple[int, int, int]:
    """Entry count, entry size and the blocks one entry array takes."""
    count = table.entry_count or DEFAULT_ENTRY_COUNT
    size = table.entry_size or ENTRY_SIZE
    return count, size, -(-count * size // table.sector_size)


def backup_area(table: PartitionTable, disk_size: int) -> tuple[int, int]:
    """``(offset, length)`` in bytes of the backup entry array and header on such a disk."""
    ss = table.sector_size
    _, _, array_blocks = _geometry(table)
    last_lba = disk_size // ss - 1
    return (last_lba - array_blocks) * ss, (array_blocks + 1) * ss


def min_disk_size(table: PartitionTable) -> int:
    """The smallest disk, in bytes, whose backup GPT leaves every partition usable."""
    ss = table.sector_size
    _, _, array_blocks = _geometry(table)
    first_usable = table.first_usable_lba or 2 + array_blocks
    last_needed = max([first_usable, *(p.end // ss - 1 for p in table.partitions)])
    return (last_needed + 1 + array_blocks + 1) * ss


def protective_mbr(disk_size: int, sector_size: int, boot_sector: bytes | None = None) -> bytes:
    """LBA 0 of a GPT disk of ``disk_size`` bytes, one sector long.

    From ``boot_sector`` (the source's LBA 0) the boot code, disk signature and any
    other bytes are kept. A plain protective entry is resized for this disk, keeping
    its end CHS as ``ff ff ff`` when it was (sfdisk) and recomputing it otherwise
    (sgdisk); a hybrid MBR (other entries beside the 0xEE one) is kept as it is. Without
    a 0xEE entry one is made as the UEFI spec describes.
    """
    sector = bytearray(sector_size)
    if boot_sector is not None:
        keep = boot_sector[:sector_size]
        sector[: len(keep)] = keep
    mbr = c_mbr.mbr(bytes(sector[:512]))
    last_lba = disk_size // sector_size - 1
    count = min(last_lba, PMBR_MAX_SECTORS)
    end_chs = chs_address(last_lba, overflow=b"\xff\xff\xff")
    valid = mbr.signature == MBR_SIGNATURE
    used = [e for e in mbr.partitions if e.nr_sects or e.sys_ind] if valid else []
    protective = [e for e in used if e.sys_ind == GPT_PROTECTIVE_TYPE]
    if protective and len(used) > 1:
        return bytes(sector)  # hybrid MBR: its entries describe fixed LBAs, keep them
    if protective:
        entry = protective[0]
        if (entry.end_head, entry.end_sector, entry.end_cyl) == (0xFF, 0xFF, 0xFF):
            end_chs = b"\xff\xff\xff"
    else:
        mbr.partitions = [c_mbr.mbr_partition() for _ in range(4)]
        entry = mbr.partitions[0]
        entry.boot_ind = 0
        entry.head, entry.sector, entry.cyl = chs_address(1)
        entry.sys_ind = GPT_PROTECTIVE_TYPE
        entry.start_sect = 1
    entry.end_head, entry.end_sector, entry.end_cyl = end_chs
    entry.nr_sects = count
    mbr.signature = MBR_SIGNATURE
    sector[:512] = mbr.dumps()
    return bytes(sector)


def build(
    table: PartitionTable,
    disk_size: int,
    *,
    protective: bool = False,
    boot_sector: bytes | None = None,
) -> list[tuple[int, bytes]]:
    """The writes, as ``(byte offset, bytes)``, that put ``table`` on a disk of ``disk_size``.

    Primary header at LBA 1 and entries from LBA 2; backup entries and header at the
    end of this disk, with ``last_usable_lba`` recomputed for it. The disk GUID, the
    entries (type, unique GUID, LBAs, attributes, name), ``first_usable_lba`` and the
    entry array geometry are kept, so building for the source's own size gives back
    the bytes a standard tool (sgdisk, sfdisk) wrote. With ``protective`` true LBA 0
    comes first, from ``protective_mbr(disk_size, sector_size, boot_sector)``.

    Raises ValueError when the table does not fit such a disk or cannot be encoded.
    """
    ss = table.sector_size
    if table.kind != "gpt":
        raise ValueError(f"cannot write a {table.kind} table as a GPT")
    count, esize, array_blocks = _geometry(table)
    if esize < ENTRY_SIZE or esize % 8:
        raise ValueError(f"entry size {esize} is not a multiple of 8 of at least 128 bytes")
    last_lba = disk_size // ss - 1
    backup_array_lba = last_lba - array_blocks
    first_usable = table.first_usable_lba or 2 + array_blocks
    last_usable = backup_array_lba - 1
    if first_usable < 2 + array_blocks:
        raise ValueError(f"first usable LBA {first_usable} overlaps the primary entry array")
    if disk_size < min_disk_size(table):
        raise ValueError(f"the table needs a disk of {min_disk_size(table)} bytes, not {disk_size}")

    array = bytearray(array_blocks * ss)
    seen: set[int] = set()
    for p in table.partitions:
        if not 1 <= p.number <= count or p.number in seen:
            raise ValueError(f"partition {p.number} is not a free entry of {count}")
        seen.add(p.number)
        if p.start % ss or p.size % ss or p.size <= 0:
            raise ValueError(f"partition {p.number} is not whole {ss}-byte sectors")
        first, last = p.start // ss, p.end // ss - 1
        if first < first_usable or last > last_usable:
            raise ValueError(
                f"partition {p.number} (LBA {first}-{last}) leaves the usable range "
                f"{first_usable}-{last_usable}"
            )
        if p.uuid is None:
            raise ValueError(f"partition {p.number} has no unique GUID")
        entry = c_gpt.gpt_entry(
            partition_type_guid=uuid.UUID(p.type).bytes_le,
            unique_partition_guid=uuid.UUID(p.uuid).bytes_le,
            starting_lba=first,
            ending_lba=last,
            attributes=p.attributes,
            partition_name=_encode_name(p.name, p.number),
        )
        offset = (p.number - 1) * esize
        array[offset : offset + ENTRY_SIZE] = entry.dumps()
    array_crc = zlib.crc32(array[: count * esize])

    def header(my_lba: int, alternate_lba: int, entry_lba: int) -> bytes:
        h = c_gpt.gpt_header(
            signature=SIGNATURE,
            revision=REVISION,
            header_size=HEADER_SIZE,
            my_lba=my_lba,
            alternate_lba=alternate_lba,
            first_usable_lba=first_usable,
            last_usable_lba=last_usable,
            disk_guid=uuid.UUID(table.disk_id).bytes_le,
            partition_entry_lba=entry_lba,
            num_partition_entries=count,
            sizeof_partition_entry=esize,
            partition_entry_array_crc32=array_crc,
        )
        h.header_crc32 = zlib.crc32(h.dumps())
        return bytes(h.dumps()).ljust(ss, b"\0")

    writes: list[tuple[int, bytes]] = []
    if protective:
        writes.append((0, protective_mbr(disk_size, ss, boot_sector)))
    writes += [
        (1 * ss, header(1, last_lba, 2)),
        (2 * ss, bytes(array)),
        (backup_array_lba * ss, bytes(array)),
        (last_lba * ss, header(last_lba, 1, backup_array_lba)),
    ]
    return writes
