"""NTFS: the allocation map from ``$Bitmap``.

Path to the bitmap, each step checked:

  boot sector     sector and cluster size, total sectors, where the MFT starts.
  $MFT (record 0) its unnamed ``$DATA`` runlist maps MFT record numbers to
                  clusters; the first extent always holds the system records.
  $Bitmap (rec 6) its unnamed ``$DATA`` is one bit per cluster, LSB first;
                  set means allocated. Read through its runlist.
  $Volume (rec 3) its ``$VOLUME_NAME`` is the label.

Every MFT record is protected by an update sequence: the last two bytes of
each 512-byte stride are replaced on disk by a check value and restored from
the update sequence array ("fixups"); a mismatch means a torn or corrupt record.

Besides the clusters the bitmap marks, the boot sector and the backup boot
sector are used. The backup is the sector after the last one the boot sector
counts (``number_of_sectors`` excludes it), outside every cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from blockvault.disk.device import Reader
from blockvault.disk.fs import FilesystemInfo
from blockvault.disk.fs.bitmap import set_runs
from blockvault.disk.fs.c_ntfs import FILE_MAGIC, NTFS_OEM_ID, c_ntfs, cluster_sectors
from blockvault.errors import FilesystemError
from blockvault.extents import ExtentMap
from blockvault.text import plural

__all__ = ["detect", "read"]

NTFS_BLOCK_SIZE = 512  # stride of the update sequence, whatever the sector size
MFT_RECORD_IN_USE = 0x0001
AT_DATA = 0x80
AT_VOLUME_NAME = 0x60
AT_END = 0xFFFFFFFF
FILE_MFT = 0
FILE_VOLUME = 3
FILE_BITMAP = 6
# Bitmap bytes read and scanned at a time (16 MiB maps 512 GiB of 4 KiB clusters).
_BITMAP_PIECE = 16 << 20


def detect(reader: Reader) -> bool:
    """The boot sector names itself NTFS (as the kernel and libblkid check)."""
    if reader.size < 512:
        return False
    boot = c_ntfs.NTFS_BOOT_SECTOR(reader.read_at(0, 512))
    return bytes(boot.oem_id) == NTFS_OEM_ID


@dataclass(frozen=True)
class _Run:
    """``length`` clusters of a stream from ``vcn`` on; ``lcn`` None is a hole."""

    vcn: int
    lcn: int | None
    length: int


@dataclass(frozen=True)
class _Volume:
    reader: Reader
    sector: int
    cluster: int
    record_size: int
    clusters: int

    def fail(self, detail: str, where: str) -> FilesystemError:
        return FilesystemError(detail, fs="ntfs", where=where)

    def read_stream(self, runs: list[_Run], offset: int, length: int, what: str) -> bytes:
        """``length`` bytes at ``offset`` of a non-resident stream mapped by ``runs``."""
        out = bytearray()
        for run in runs:
            start = run.vcn * self.cluster
            end = start + run.length * self.cluster
            lo, hi = max(offset, start), min(offset + length, end)
            if lo >= hi:
                continue
            if run.lcn is None:
                out += bytes(hi - lo)
            else:
                out += self.reader.read_at(run.lcn * self.cluster + lo - start, hi - lo)
            if len(out) == length:
                return bytes(out)
        raise self.fail(f"bytes {offset}-{offset + length} are not mapped by its runlist", what)

    def record(self, mft: list[_Run], number: int) -> bytes:
        """MFT record ``number`` with its fixups applied, checked to be in use."""
        where = f"MFT record {number}"
        data = bytearray(self.read_stream(mft, number * self.record_size, self.record_size, where))
        header = c_ntfs.MFT_RECORD(bytes(data[: len(c_ntfs.MFT_RECORD)]))
        if bytes(header.magic) != FILE_MAGIC:
            raise self.fail(
                f"magic {bytes(header.magic)!r}, expected {FILE_MAGIC!r}; run chkdsk /f on Windows",
                where,
            )
        strides = self.record_size // NTFS_BLOCK_SIZE
        usa = header.usa_ofs
        if header.usa_count != strides + 1 or usa + 2 * header.usa_count > NTFS_BLOCK_SIZE:
            raise self.fail(
                f"update sequence of {plural(header.usa_count, 'entry')} at {usa} does not fit "
                f"a {self.record_size}-byte record",
                where,
            )
        check = data[usa : usa + 2]
        for i in range(1, strides + 1):
            tail = i * NTFS_BLOCK_SIZE - 2
            if data[tail : tail + 2] != check:
                raise self.fail(
                    f"fixup {i} does not match: a torn write or corruption; "
                    "run chkdsk /f on Windows",
                    where,
                )
            data[tail : tail + 2] = data[usa + 2 * i : usa + 2 * i + 2]
        if not header.flags & MFT_RECORD_IN_USE:
            raise self.fail("the record is not in use", where)
        return bytes(data)


@dataclass(frozen=True)
class _Attribute:
    header: Any  # the parsed ATTR_RECORD
    raw: bytes  # the whole record: name, value or runlist are found by offset in it


def _attributes(record: bytes, where: str) -> Iterator[_Attribute]:
    """The attribute records of an MFT record, in order."""
    header = c_ntfs.MFT_RECORD(record[: len(c_ntfs.MFT_RECORD)])
    pos = int(header.attrs_offset)
    end = min(int(header.bytes_in_use), len(record))
    while pos + 8 <= end:
        raw = record[pos : pos + len(c_ntfs.ATTR_RECORD)].ljust(len(c_ntfs.ATTR_RECORD), b"\0")
        attr = c_ntfs.ATTR_RECORD(raw)
        if attr.type == AT_END:
            return
        if attr.length < 16 or attr.length % 8 or pos + attr.length > end:
            raise FilesystemError(
                f"attribute at byte {pos} has length {attr.length}", fs="ntfs", where=where
            )
        yield _Attribute(attr, record[pos : pos + attr.length])
        pos += attr.length
    raise FilesystemError("attributes run past the end of the record", fs="ntfs", where=where)


def _unnamed(record: bytes, type_: int, where: str) -> _Attribute | None:
    """The first unnamed attribute of ``type_`` starting at cluster 0 of its value."""
    for attr in _attributes(record, where):
        h = attr.header
        first_extent = not h.non_resident or h.non_resident_part.lowest_vcn == 0
        if h.type == type_ and not h.name_length and first_extent:
            return attr
    return None


def _runlist(attr: _Attribute, where: str) -> list[_Run]:
    """Decode the mapping pairs of a non-resident attribute.

    Each run is a header byte (low nibble: bytes of the length, high nibble:
    bytes of the signed LCN delta, 0 for a hole), the length, then the delta
    from the previous run's LCN. A zero header ends the list.
    """
    raw = attr.raw
    pos = int(attr.header.non_resident_part.mapping_pairs_offset)
    vcn = int(attr.header.non_resident_part.lowest_vcn)
    lcn = 0
    runs: list[_Run] = []
    while pos < len(raw) and raw[pos]:
        size_len, size_off = raw[pos] & 0x0F, raw[pos] >> 4
        pos += 1
        if not size_len or pos + size_len + size_off > len(raw):
            raise FilesystemError(f"malformed runlist at byte {pos - 1}", fs="ntfs", where=where)
        length = int.from_bytes(raw[pos : pos + size_len], "little", signed=True)
        pos += size_len
        if length <= 0:
            raise FilesystemError(f"run of {length} clusters", fs="ntfs", where=where)
        if size_off:
            lcn += int.from_bytes(raw[pos : pos + size_off], "little", signed=True)
            pos += size_off
            if lcn < 0:
                raise FilesystemError(f"run at negative cluster {lcn}", fs="ntfs", where=where)
            runs.append(_Run(vcn, lcn, length))
        else:
            runs.append(_Run(vcn, None, length))
        vcn += length
    return runs


def _non_resident_data(volume: _Volume, record: bytes, where: str) -> tuple[Any, list[_Run]]:
    """The unnamed ``$DATA`` of a system file: its sizes and its runs, checked."""
    attr = _unnamed(record, AT_DATA, where)
    if attr is None or not attr.header.non_resident:
        raise volume.fail("no non-resident unnamed $DATA attribute", where)
    runs = _runlist(attr, where)
    for run in runs:
        if run.lcn is not None and run.lcn + run.length > volume.clusters:
            raise volume.fail(
                f"run at cluster {run.lcn}+{run.length} lies past the volume's "
                f"{volume.clusters} clusters",
                where,
            )
    return attr.header.non_resident_part, runs


def _volume(reader: Reader) -> tuple[_Volume, Any]:
    boot = c_ntfs.NTFS_BOOT_SECTOR(reader.read_at(0, len(c_ntfs.NTFS_BOOT_SECTOR)))
    where = "boot sector (byte 0)"

    def fail(detail: str) -> FilesystemError:
        return FilesystemError(detail, fs="ntfs", where=where)

    sector = int(boot.bpb.bytes_per_sector)
    if sector not in (256, 512, 1024, 2048, 4096):
        raise fail(f"{sector} bytes per sector")
    spc = cluster_sectors(int(boot.bpb.sectors_per_cluster))
    if spc == 0 or spc & (spc - 1):
        raise fail(f"{boot.bpb.sectors_per_cluster} sectors per cluster")
    cluster = sector * spc
    per_record = int(boot.clusters_per_mft_record)
    record_size = per_record * cluster if per_record > 0 else 1 << -per_record
    if not NTFS_BLOCK_SIZE <= record_size <= 65536 or record_size & (record_size - 1):
        raise fail(f"MFT record size {record_size}")
    total_sectors = int(boot.number_of_sectors)
    if total_sectors <= 0 or total_sectors * sector > reader.size:
        raise fail(
            f"the volume spans {total_sectors} sectors of {sector} bytes but its partition "
            f"has only {reader.size} bytes: the image is truncated or the partition was shrunk"
        )
    clusters = total_sectors // spc
    if not 0 <= boot.mft_lcn < clusters:
        raise fail(f"the MFT starts at cluster {boot.mft_lcn}, outside {clusters} clusters")
    return _Volume(reader, sector, cluster, record_size, clusters), boot


def read(reader: Reader) -> FilesystemInfo:
    """The allocation map of the NTFS volume on ``reader``."""
    volume, boot = _volume(reader)
    # Bootstrap: record 0 lies at mft_lcn; its own runlist then maps every other record.
    first = [_Run(0, int(boot.mft_lcn), -(-volume.record_size // volume.cluster))]
    _, mft = _non_resident_data(volume, volume.record(first, FILE_MFT), "$MFT (record 0)")

    where = "$Bitmap (record 6)"
    part, runs = _non_resident_data(volume, volume.record(mft, FILE_BITMAP), where)
    need = (volume.clusters + 7) // 8
    if part.data_size < need:
        raise volume.fail(f"{part.data_size} bytes cannot map {volume.clusters} clusters", where)
    mapped = (part.highest_vcn + 1) * volume.cluster
    if mapped < min(need, part.initialized_size):
        raise volume.fail(
            "the bitmap continues in extension records (an attribute list), "
            "which blockvault does not read yet",
            where,
        )
    present = min(need, int(part.initialized_size))  # bytes past it read as zeros
    cluster = volume.cluster
    pieces = [(0, volume.sector)]
    for offset in range(0, present, _BITMAP_PIECE):
        chunk = volume.read_stream(runs, offset, min(_BITMAP_PIECE, present - offset), where)
        base = offset * 8
        nbits = min(len(chunk) * 8, volume.clusters - base)
        pieces.extend(((base + s) * cluster, n * cluster) for s, n in set_runs(chunk, nbits))
    used = ExtentMap(pieces)
    size = int(boot.number_of_sectors) * volume.sector
    if size + volume.sector <= reader.size:
        used |= ExtentMap.span(size, volume.sector)  # the backup boot sector
        size += volume.sector
    return FilesystemInfo(
        type="ntfs",
        size=size,
        block_size=cluster,
        used=used,
        label=_label(volume, mft),
        uuid=f"{boot.volume_serial_number:016X}",
    )


def _label(volume: _Volume, mft: list[_Run]) -> str | None:
    where = "$Volume (record 3)"
    attr = _unnamed(volume.record(mft, FILE_VOLUME), AT_VOLUME_NAME, where)
    if attr is None or attr.header.non_resident:
        return None
    value = attr.header.resident
    raw = attr.raw[value.value_offset : value.value_offset + value.value_length]
    return raw.decode("utf-16-le", "replace") or None
