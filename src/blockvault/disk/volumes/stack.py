"""A volume's content read through the stack above it: from the partition's bytes,
through each layer's mapping, decrypting at a LUKS layer.

Browse uses it on a snapshot's partition region (manifest ``VolumeRecord``s); anything
with the same fields (``Volume``) works, since only names, kinds, sizes and mappings
are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from blockvault.disk.device import Reader
from blockvault.disk.volumes import MAX_VOLUMES, MappedReader, Run, luks
from blockvault.errors import FilesystemError, LuksKeyRejected

__all__ = ["VolumeShape", "chain", "content_reader"]


class VolumeShape(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def parent(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mapping(self) -> tuple[Run, ...]: ...


def chain(volumes: Sequence[VolumeShape], name: str) -> list[VolumeShape]:
    """The volumes from the partition down to ``name``, outermost first; a parent that
    is missing or a loop (a hostile manifest) is a ``FilesystemError``."""
    by_name = {v.name: v for v in volumes}
    path: list[VolumeShape] = []
    current = name
    while current:
        volume = by_name.get(current)
        if volume is None or len(path) > min(len(volumes), MAX_VOLUMES):
            raise FilesystemError(
                f"volume {current!r} is missing or its parents form a loop",
                fs="volume",
                where=f"stack of {name}",
            )
        path.append(volume)
        current = volume.parent
    return path[::-1]


def content_reader(
    partition: Reader, volumes: Sequence[VolumeShape], name: str, key: bytes | None, where: str
) -> Reader:
    """The bytes of volume ``name`` (its filesystem), read from ``partition``'s bytes.
    A LUKS layer needs ``key``: ``LuksKeyRejected`` when it is missing or wrong."""
    reader = partition
    for volume in chain(volumes, name):
        if volume.kind.startswith("luks"):
            if key is None:
                raise LuksKeyRejected(
                    where=where, detail=f"{volume.name} is LUKS-encrypted and no key was given"
                )
            header = luks.read_header(reader)
            reader = luks.DecryptingReader(reader, header, luks.unlock(reader, header, key, where))
        else:
            reader = MappedReader(reader, volume.mapping, volume.size)
    return reader
