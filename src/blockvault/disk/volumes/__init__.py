"""Volume layers: LUKS and LVM2 between a partition and its filesystems.

A partition may hold a stack rather than a filesystem: partition -> LUKS -> LVM
physical volume -> logical volumes -> filesystems. Each layer maps its content (the
"inner" bytes) onto the bytes of the layer it lies in (the "outer" bytes), so a
filesystem's allocation map composes outwards into the partition's used map.

Glossary:
  volume       one layer of the stack: a LUKS container, an LVM physical volume (named
               by its volume group, ``vg0``) or a logical volume (``vg0/root``).
  parent       the volume a volume lies in; ``""`` is the partition itself.
  mapping      runs ``(inner offset, outer offset, length)``: where the volume's bytes
               lie in its parent's content (partition-relative bytes when the parent is
               ``""``, the plaintext of a LUKS container, a PV's bytes).
  metadata     a layer's own structures (LUKS header and key slots, PV label and
               metadata areas), always kept byte-exact in the used map.

Each layer module (``luks``, ``lvm``) has ``detect(reader)`` and a ``read`` that
returns a ``FilesystemInfo`` whose ``used`` already contains the layer's metadata and
the mapped-out used maps of its children, and whose ``volumes`` lists the whole tree
below the partition, parents before children.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from blockvault.disk.device import Reader
from blockvault.errors import FilesystemError
from blockvault.extents import ExtentMap

__all__ = ["MAX_VOLUMES", "MappedReader", "Run", "Volume", "check_mapping", "map_out", "nest"]

Run = tuple[int, int, int]  # (inner offset, outer offset, length)

MAX_VOLUMES = 256  # volumes below one partition; more is damage or an attack


@dataclass(frozen=True)
class Volume:
    """One layer below a partition, as backup, ``info``, browse and restore see it."""

    name: str  # "luks", "vg0" (a PV, by its VG), "vg0/root" (an LV)
    parent: str  # name of the volume it lies in; "" = the partition
    kind: str  # "luks1" | "luks2" | "lvm2-pv" | "lvm2-lv"
    filesystem: str  # FilesystemInfo.type of its content ("raw" when unread, "" for a PV)
    size: int  # bytes of content
    mapping: tuple[Run, ...]  # where that content lies in the parent's content
    used_bytes: int  # bytes of content in use (metadata included)
    label: str | None = None
    uuid: str | None = None
    encrypted: bool = False  # its bytes are ciphertext on the partition (LUKS and below)
    note: str | None = None  # e.g. "locked: no key given, imaged raw"


def map_out(inner: ExtentMap, mapping: Iterable[Run]) -> ExtentMap:
    """The outer bytes that hold the ``inner`` bytes of a volume mapped by ``mapping``."""
    pieces: list[tuple[int, int]] = []
    for start, outer, length in mapping:
        for extent in inner.clip(start, length):
            pieces.append((outer + extent.offset - start, extent.length))
    return ExtentMap(pieces)


def check_mapping(mapping: Iterable[Run], size: int, outer_size: int, fs: str, where: str) -> None:
    """Refuse runs that leave the volume or its parent: a hostile header must not make
    us read or restore outside the partition."""
    for start, outer, length in mapping:
        if start < 0 or outer < 0 or length <= 0 or start + length > size:
            raise FilesystemError(
                f"segment {start}+{length} is outside the volume", fs=fs, where=where
            )
        if outer + length > outer_size:
            raise FilesystemError(
                f"segment at byte {outer} ({length} bytes) lies past the end of its container "
                f"({outer_size} bytes)",
                fs=fs,
                where=where,
            )


class MappedReader:
    """A volume's content read through its mapping: bytes no run covers read as zeros
    (an LV segment on another PV, say)."""

    def __init__(self, outer: Reader, mapping: Iterable[Run], size: int) -> None:
        self._outer = outer
        self._runs = sorted(mapping)
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise FilesystemError(
                f"read of {length} bytes at {offset} leaves the volume of {self._size} bytes",
                fs="volume",
                where="mapping",
            )
        out = bytearray(length)
        for start, outer, run_length in self._runs:
            lo, hi = max(offset, start), min(offset + length, start + run_length)
            if lo < hi:
                out[lo - offset : hi - offset] = self._outer.read_at(outer + lo - start, hi - lo)
        return bytes(out)


def nest(volumes: tuple[Volume, ...], parent: str) -> list[Volume]:
    """Volumes found inside volume ``parent``: top-level ones hang from it, and a LUKS
    container is named after its place (``vg0/home:luks``) so names stay unique."""
    renamed = {v.name: f"{parent}:{v.name}" for v in volumes if v.kind.startswith("luks")}
    return [
        replace(
            v,
            name=renamed.get(v.name, v.name),
            parent=renamed.get(v.parent, v.parent) if v.parent else parent,
        )
        for v in volumes
    ]
