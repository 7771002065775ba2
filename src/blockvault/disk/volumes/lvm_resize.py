"""Resize an LVM2 physical volume for a restore onto a smaller or larger partition.

What changes, and nothing else: the PV's ``dev_size`` and ``pe_count``, the extent
count of the last logical volume (the one whose extents end last on the PV; it must be
one linear segment, so its bytes are contiguous and its filesystem can be resized by
its own tool), the VG's ``seqno``, the label's device size, and both checksums. The
new metadata text is written at the start of the metadata area's ring buffer. A PV
with a metadata area at its end (``--pvmetadatacopies 2``) is refused: that area
would have to move.

Order matters for a shrink: the LV's filesystem is shrunk first (by the caller,
with its own tool, refusing below its minimum), then the metadata is rewritten.
For a grow the metadata is rewritten first, then the filesystem grown into the LV.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from blockvault.disk.device import Device, Region
from blockvault.disk.volumes.c_lvm import (
    LABEL_SCAN_SECTORS,
    MDA_HEADER_SIZE,
    SECTOR_SIZE,
    c_lvm,
    calc_crc,
)
from blockvault.disk.volumes.lvm import PhysicalVolume, logical_volumes, read_pv
from blockvault.disk.volumes.lvm_config import Config, dump
from blockvault.errors import UsageError

__all__ = ["PvResize", "plan_resize", "write_resized"]


@dataclass(frozen=True)
class PvResize:
    """How a PV of ``old_size`` bytes becomes ``new_size``."""

    old_size: int
    new_size: int
    pe_count: int  # the new extent count
    lv: str  # "vg0/root": the last LV
    lv_offset: int  # PV-relative start of its one segment
    lv_size: int  # bytes before
    new_lv_size: int  # bytes after (equal when only free extents go or come)


def _refuse(detail: str) -> UsageError:
    return UsageError(f"cannot resize the LVM physical volume: {detail}; nothing was written")


def _last_lv(pv: PhysicalVolume) -> tuple[str, int, int]:
    """Name, first extent and extent count of the LV ending last; every LV checked to be
    on this PV only."""
    lvs = logical_volumes(pv)
    if not lvs:
        raise _refuse(f"volume group {pv.vg_name} has no logical volume")
    last = max(
        lvs, key=lambda lv: max(outer + length for _, outer, length in lv.mapping or [(0, 0, 0)])
    )
    if len(last.mapping) != 1 or not last.readable:
        raise _refuse(f"{last.name}, the last logical volume, is not one linear segment")
    _, outer, length = last.mapping[0]
    first = (outer - pv.pe_start) // pv.extent_size
    return last.name, first, length // pv.extent_size


def plan_resize(reader: Region | Device, new_size: int) -> PvResize:
    """Check that the PV on ``reader`` can become ``new_size`` bytes, and how."""
    pv = read_pv(reader)
    if any(extent.offset >= pv.pe_start for extent in pv.metadata):
        raise _refuse("it has a metadata area at its end")
    name, first, count = _last_lv(pv)
    pe_count = (new_size - pv.pe_start) // pv.extent_size
    lv_end = first + count
    if pe_count <= first:
        raise _refuse(
            f"{name} starts at extent {first}, but only {max(pe_count, 0)} extents fit in "
            f"{new_size} bytes"
        )
    new_end = pe_count if pe_count > pv.pe_count else min(lv_end, pe_count)
    return PvResize(
        old_size=reader.size,
        new_size=new_size,
        pe_count=pe_count,
        lv=name,
        lv_offset=pv.pe_start + first * pv.extent_size,
        lv_size=count * pv.extent_size,
        new_lv_size=(new_end - first) * pv.extent_size,
    )


def _resized_text(pv: PhysicalVolume, plan: PvResize) -> Config:
    text = copy.deepcopy(pv.text)
    vg = text[pv.vg_name]
    assert isinstance(vg, dict)
    vg["seqno"] = int(str(vg.get("seqno", 0))) + 1
    pvs = vg["physical_volumes"]
    assert isinstance(pvs, dict)
    this = pvs[pv.pv_key]
    assert isinstance(this, dict)
    this["dev_size"] = plan.new_size // SECTOR_SIZE
    this["pe_count"] = plan.pe_count
    lvs = vg["logical_volumes"]
    assert isinstance(lvs, dict)
    lv = lvs[plan.lv.split("/", 1)[1]]
    assert isinstance(lv, dict)
    segment = lv["segment1"]
    assert isinstance(segment, dict)
    segment["extent_count"] = plan.new_lv_size // pv.extent_size
    return text


def write_resized(device: Device, base: int, plan: PvResize) -> None:
    """Rewrite the label and metadata of the PV at ``base`` of ``device`` as ``plan``
    says (its filesystem is the caller's)."""
    pv = read_pv(Region(device, base, plan.old_size))
    text = dump(_resized_text(pv, plan)).encode() + b"\0"
    mda_offset = min(e.offset for e in pv.metadata if e.offset >= LABEL_SCAN_SECTORS * SECTOR_SIZE)
    header = bytearray(device.read_at(base + mda_offset, MDA_HEADER_SIZE))
    mda = c_lvm.mda_header(bytes(header))
    if len(text) > mda.size - MDA_HEADER_SIZE:
        raise _refuse("the new metadata does not fit its area")
    device.write_at(base + mda_offset + MDA_HEADER_SIZE, text)
    locn = c_lvm.raw_locn(offset=MDA_HEADER_SIZE, size=len(text), checksum=calc_crc(text), flags=0)
    at = len(c_lvm.mda_header)
    header[at : at + len(c_lvm.raw_locn)] = locn.dumps()
    header[0:4] = calc_crc(bytes(header[4:])).to_bytes(4, "little")
    device.write_at(base + mda_offset, bytes(header))
    for sector in range(LABEL_SCAN_SECTORS):
        raw = bytearray(device.read_at(base + sector * SECTOR_SIZE, SECTOR_SIZE))
        if raw[:8] != b"LABELONE":
            continue
        label = c_lvm.label_header(bytes(raw))
        size_at = label.offset_xl + 32  # pv_header.device_size_xl, after the 32-byte uuid
        raw[size_at : size_at + 8] = plan.new_size.to_bytes(8, "little")
        raw[16:20] = calc_crc(bytes(raw[20:])).to_bytes(4, "little")
        device.write_at(base + sector * SECTOR_SIZE, bytes(raw))
        break
