"""LVM2 physical volumes: the label, the metadata areas and the logical volumes.

Layout in brief (lib/format_text/, lib/label/):

  label          ``LABELONE`` in one of the first four 512-byte sectors, then the PV
                 header: the PV's uuid and size, the data area (where extents start)
                 and up to two metadata areas (usually one at 4 KiB).
  metadata area  an ``mda_header`` sector, then a ring buffer of metadata text
                 versions; the header's first ``raw_locn`` names the committed one.
  text           the volume group: ``extent_size`` (sectors), each PV's ``pe_start``
                 and ``pe_count``, and each LV's segments: ``start_extent``,
                 ``extent_count`` and a type; ``striped`` segments (linear is one
                 stripe) list ``[pv, first extent]`` per stripe.

A PV is imaged by its logical volumes: the label sectors and metadata areas are used
whole (byte-exact), each LV lying wholly on this PV in ``striped`` segments is probed
for a filesystem (through its mapping) and only that filesystem's used blocks count;
other LVs (thin pools, snapshots, RAID, mirrors, LVs with extents on other PVs) have
their extents on this PV used whole, with a note. Free extents are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from blockvault.disk.device import Reader
from blockvault.disk.fs import FilesystemInfo
from blockvault.disk.volumes import (
    MAX_VOLUMES,
    MappedReader,
    Run,
    Volume,
    check_mapping,
    map_out,
    nest,
)
from blockvault.disk.volumes.c_lvm import (
    FMTT_MAGIC,
    LABEL_ID,
    LABEL_SCAN_SECTORS,
    LVM2_LABEL,
    MDA_HEADER_SIZE,
    SECTOR_SIZE,
    c_lvm,
    calc_crc,
)
from blockvault.disk.volumes.lvm_config import Config, Value, parse
from blockvault.errors import FilesystemError
from blockvault.extents import ExtentMap

__all__ = ["PhysicalVolume", "detect", "read", "read_pv"]

MAX_AREAS = 8  # data and metadata areas listed in a PV header (LVM writes 1 + 2)
MAX_TEXT = 16 << 20  # metadata text we read; LVM's default area is 1 MiB
MAX_SEGMENTS = 1024  # of one LV
MAX_STRIPES = 128  # LVM allows 128
MAX_RUNS = 4096  # mapping runs of one LV

Probe = Callable[[Reader], FilesystemInfo]


def _error(detail: str, where: str = "label") -> FilesystemError:
    return FilesystemError(detail, fs="lvm2", where=where)


def _label_sector(reader: Reader) -> int | None:
    for sector in range(LABEL_SCAN_SECTORS):
        if (sector + 1) * SECTOR_SIZE > reader.size:
            return None
        if reader.read_at(sector * SECTOR_SIZE, 8) == LABEL_ID:
            return sector
    return None


def detect(reader: Reader) -> bool:
    sector = _label_sector(reader)
    return sector is not None and reader.read_at(sector * SECTOR_SIZE + 24, 8) == LVM2_LABEL


@dataclass(frozen=True)
class PhysicalVolume:
    """What the label and the committed metadata say about one PV."""

    uuid: str  # 32 characters, no dashes
    metadata: ExtentMap  # label sectors and metadata areas, PV-relative
    vg_name: str
    vg: Config  # the volume group section of the metadata text
    pv_key: str  # this PV's name in the text ("pv0")
    pe_start: int  # bytes
    pe_count: int
    extent_size: int  # bytes


def read_pv(reader: Reader) -> PhysicalVolume:
    """Label, PV header and committed metadata; ``FilesystemError`` when damaged."""
    sector = _label_sector(reader)
    if sector is None:
        raise _error("no LABELONE in the first four sectors")
    raw = reader.read_at(sector * SECTOR_SIZE, SECTOR_SIZE)
    label = c_lvm.label_header(raw)
    if label.crc_xl != calc_crc(raw[20:]):
        raise _error("label checksum does not match")
    if label.sector_xl != sector or not 32 <= label.offset_xl <= SECTOR_SIZE - 40:
        raise _error(f"label says sector {label.sector_xl}, offset {label.offset_xl}")
    pos = label.offset_xl
    header = c_lvm.pv_header(raw[pos:])
    uuid = bytes(header.pv_uuid).decode("ascii", "replace")
    pos += len(c_lvm.pv_header)
    lists: list[list[tuple[int, int]]] = [[], []]  # data areas, metadata areas
    for areas in lists:
        while True:
            if pos + 16 > SECTOR_SIZE or len(areas) > MAX_AREAS:
                raise _error("area lists run past the label sector")
            locn = c_lvm.disk_locn(raw[pos : pos + 16])
            pos += 16
            if locn.offset == 0:
                break
            areas.append((locn.offset, locn.size))
    data_areas, mdas = lists
    metadata = ExtentMap.span(0, LABEL_SCAN_SECTORS * SECTOR_SIZE)
    text = None
    for offset, size in mdas:
        if size < MDA_HEADER_SIZE or offset + size > reader.size:
            raise _error(f"metadata area at {offset} ({size} bytes) leaves the device")
        metadata = metadata | ExtentMap.span(offset, size)
        if text is None:
            text = _committed_text(reader, offset, size)
    if text is None:
        raise _error("no metadata area on this PV holds the volume group (an orphan PV)")
    return _physical_volume(parse(text), uuid, metadata, data_areas, reader.size)


def _committed_text(reader: Reader, offset: int, size: int) -> str | None:
    """The committed metadata text of the area at ``offset``, or None when empty."""
    where = f"metadata area at byte {offset}"
    raw = reader.read_at(offset, MDA_HEADER_SIZE)
    header = c_lvm.mda_header(raw)
    if bytes(header.magic) != FMTT_MAGIC or header.checksum_xl != calc_crc(raw[4:]):
        raise _error("bad magic or checksum", where)
    if header.start != offset or header.size != size:
        raise _error(f"header says start {header.start}, size {header.size}", where)
    locn = c_lvm.raw_locn(raw[len(c_lvm.mda_header) :])
    if locn.offset == 0 or locn.size == 0:
        return None
    if locn.size > min(MAX_TEXT, size - MDA_HEADER_SIZE) or not (
        MDA_HEADER_SIZE <= locn.offset < size
    ):
        raise _error(f"text of {locn.size} bytes at {locn.offset} leaves the area", where)
    first = min(locn.size, size - locn.offset)  # the ring buffer wraps after the header
    text = reader.read_at(offset + locn.offset, first)
    if first < locn.size:
        text += reader.read_at(offset + MDA_HEADER_SIZE, locn.size - first)
    if calc_crc(text) != locn.checksum:
        raise _error("metadata text checksum does not match", where)
    try:
        return text.rstrip(b"\0").decode()
    except UnicodeDecodeError:
        raise _error("metadata text is not UTF-8", where) from None


def _int(section: Config, key: str, where: str, limit: int = 1 << 62) -> int:
    value = section.get(key)
    if not isinstance(value, int) or not 0 <= value <= limit:
        raise _error(f"{key} = {value!r} is not a count", where)
    return value


def _section(section: Config, key: str, where: str) -> Config:
    value = section.get(key, {})
    if not isinstance(value, dict):
        raise _error(f"{key} is not a section", where)
    return value


def _physical_volume(
    text: Config, uuid: str, metadata: ExtentMap, data_areas: list[tuple[int, int]], size: int
) -> PhysicalVolume:
    groups = [(name, v) for name, v in text.items() if isinstance(v, dict)]
    if len(groups) != 1:
        raise _error(f"{len(groups)} volume groups in the metadata text", "metadata text")
    vg_name, vg = groups[0]
    where = f"volume group {vg_name}"
    extent_size = _int(vg, "extent_size", where, 1 << 32) * SECTOR_SIZE
    if extent_size == 0:
        raise _error("extent_size = 0", where)
    for key, pv in _section(vg, "physical_volumes", where).items():
        if isinstance(pv, dict) and str(pv.get("id", "")).replace("-", "") == uuid:
            pv_where = f"{where}, {key}"
            pe_start = _int(pv, "pe_start", pv_where) * SECTOR_SIZE
            pe_count = _int(pv, "pe_count", pv_where)
            if pe_start + pe_count * extent_size > size:
                raise _error(
                    f"{pe_count} extents from byte {pe_start} leave the {size}-byte device",
                    pv_where,
                )
            if data_areas and data_areas[0][0] != pe_start:
                raise _error(f"data area at {data_areas[0][0]} but pe_start {pe_start}", pv_where)
            return PhysicalVolume(uuid, metadata, vg_name, vg, key, pe_start, pe_count, extent_size)
    raise _error(f"this PV ({uuid}) is not in the metadata of {vg_name}", where)


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    size: int
    mapping: tuple[Run, ...]  # LV bytes -> PV bytes, on this PV only
    readable: bool  # wholly on this PV in striped segments: its filesystem can be read
    note: str | None


def logical_volumes(pv: PhysicalVolume) -> list[LogicalVolume]:
    """Every LV of the VG with its extents on this PV, in metadata order."""
    lvs = _section(pv.vg, "logical_volumes", f"volume group {pv.vg_name}")
    if len(lvs) > MAX_VOLUMES:
        raise _error(f"{len(lvs)} logical volumes", f"volume group {pv.vg_name}")
    return [_logical_volume(pv, name, lv) for name, lv in lvs.items() if isinstance(lv, dict)]


def _logical_volume(pv: PhysicalVolume, name: str, lv: Config) -> LogicalVolume:
    where = f"logical volume {pv.vg_name}/{name}"
    count = _int(lv, "segment_count", where, MAX_SEGMENTS)
    ext = pv.extent_size
    runs: list[Run] = []
    size = 0
    elsewhere = False
    types = set()
    for n in range(1, count + 1):
        seg = _section(lv, f"segment{n}", where)
        seg_where = f"{where}, segment{n}"
        start = _int(seg, "start_extent", seg_where, pv.pe_count << 8)
        extents = _int(seg, "extent_count", seg_where, pv.pe_count << 8)
        size = max(size, (start + extents) * ext)
        kind = seg.get("type")
        types.add(str(kind))
        if kind != "striped":
            continue
        stripes = seg.get("stripes")
        stripe_count = _int(seg, "stripe_count", seg_where, MAX_STRIPES)
        if (
            not isinstance(stripes, list)
            or stripe_count == 0
            or len(stripes) != 2 * stripe_count
            or extents % stripe_count
        ):
            raise _error(f"stripes {stripes!r} do not match stripe_count", seg_where)
        per_stripe = extents // stripe_count
        pairs = list(zip(stripes[0::2], stripes[1::2], strict=True))
        for stripe_pv, first in pairs:
            if not isinstance(first, int) or first < 0:
                raise _error(f"stripe start {first!r}", seg_where)
            if stripe_pv == pv.pv_key and first + per_stripe > pv.pe_count:
                raise _error(f"extents {first}+{per_stripe} pass the PV's {pv.pe_count}", seg_where)
        elsewhere |= any(p != pv.pv_key for p, _ in pairs)
        runs.extend(_stripe_runs(pv, start * ext, extents * ext, pairs, seg, seg_where))
        if len(runs) > MAX_RUNS:
            raise _error(f"more than {MAX_RUNS} mapping runs", where)
    status = lv.get("status", [])
    visible = isinstance(status, list) and "VISIBLE" in status
    readable = types == {"striped"} and not elsewhere and visible and bool(runs)
    note = None
    if not readable:
        why = (
            "it has extents on other PVs"
            if elsewhere
            else f"segment type {', '.join(sorted(types))}"
            if types != {"striped"}
            else "a hidden (internal) volume"
        )
        note = f"{why}: its extents on this PV imaged raw"
    mapping = tuple(sorted(runs))
    check_mapping(mapping, size, pv.pe_start + pv.pe_count * ext, "lvm2", where)
    return LogicalVolume(f"{pv.vg_name}/{name}", size, mapping, readable, note)


def _stripe_runs(
    pv: PhysicalVolume,
    lv_offset: int,
    length: int,
    pairs: list[tuple[Value, Value]],
    seg: Config,
    where: str,
) -> list[Run]:
    """Runs of one striped segment that lie on this PV (one run for a linear one)."""
    ext = pv.extent_size
    count = len(pairs)
    if count == 1:
        stripe_pv, first = pairs[0]
        assert isinstance(first, int)
        return [(lv_offset, pv.pe_start + first * ext, length)] if stripe_pv == pv.pv_key else []
    chunk = _int(seg, "stripe_size", where, 1 << 32) * SECTOR_SIZE
    if chunk == 0 or (length // count) % chunk or length // chunk > MAX_RUNS * 4:
        raise _error(f"stripe_size {chunk} bytes does not fit the segment", where)
    runs = []
    for k in range(length // chunk):
        stripe_pv, first = pairs[k % count]
        if stripe_pv == pv.pv_key:
            assert isinstance(first, int)
            runs.append(
                (lv_offset + k * chunk, pv.pe_start + first * ext + (k // count) * chunk, chunk)
            )
    return runs


def read(reader: Reader, probe: Probe) -> FilesystemInfo:
    """The PV's used map: its metadata, and each LV's used blocks mapped onto it."""
    pv = read_pv(reader)
    used = pv.metadata
    volumes: list[Volume] = []
    for lv in logical_volumes(pv):
        if lv.readable:
            try:
                info = probe(MappedReader(reader, lv.mapping, lv.size))
            except FilesystemError as exc:
                info = _raw(lv, f"{exc}; imaged raw")
        else:
            info = _raw(lv, lv.note or "imaged raw")
        used = used | map_out(info.used, lv.mapping)
        volumes.append(
            Volume(
                name=lv.name,
                parent=pv.vg_name,
                kind="lvm2-lv",
                filesystem=info.type,
                size=lv.size,
                mapping=lv.mapping,
                used_bytes=info.used_bytes,
                label=info.label,
                uuid=info.uuid,
                note=info.note,
            )
        )
        volumes.extend(nest(info.volumes, lv.name))
    pv_volume = Volume(
        name=pv.vg_name,
        parent="",
        kind="lvm2-pv",
        filesystem="",
        size=reader.size,
        mapping=((0, 0, reader.size),),
        used_bytes=used.total,
        uuid=pv.uuid,
    )
    return FilesystemInfo(
        type="lvm2",
        size=reader.size,
        block_size=SECTOR_SIZE,
        used=used,
        uuid=pv.uuid,
        volumes=(pv_volume, *volumes),
    )


def _raw(lv: LogicalVolume, note: str) -> FilesystemInfo:
    """An LV whose content we do not read: all of it counts (only what lies here maps)."""
    return FilesystemInfo("raw", lv.size, SECTOR_SIZE, ExtentMap.span(0, lv.size), note=note)
