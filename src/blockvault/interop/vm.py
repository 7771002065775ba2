"""VM disks out: a snapshot served as an NBD export, written by ``qemu-img convert``.

No VM format is written here: the snapshot is served on a private UNIX socket
(``SnapshotExport``: the whole disk as ``SnapshotImage`` reads it, holes named from the
index alone: hole chunks and bytes no region uses) and ``qemu-img convert`` writes the
file. It asks for block status, so holes are never read and stay holes in the file.
``vm_import`` is the other direction.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from blockvault.errors import DeviceError, Interrupted, TargetError
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.nbd.server import Export, serving
from blockvault.repo import format as fmt
from blockvault.repo.image import SnapshotImage
from blockvault.repo.index import Index, Region
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository

__all__ = [
    "WRITE_FORMATS",
    "PaddedExport",
    "SnapshotExport",
    "data_map",
    "export_vm_disk",
    "snapshot_export",
    "tool_message",
]

MiB = 1024 * 1024


class VmFormat(NamedTuple):
    qemu: str  # QEMU's driver name
    options: tuple[str, ...]  # qemu-img convert -o, for writing it
    align: int = 1  # the disk size is rounded up to this (Azure wants whole MiB)


WRITE_FORMATS: dict[str, VmFormat] = {
    "qcow2": VmFormat("qcow2", ()),
    "vhdx": VmFormat("vhdx", ("subformat=dynamic",)),
    "vmdk": VmFormat("vmdk", ("subformat=monolithicSparse",)),
    "vhd": VmFormat("vpc", ("subformat=fixed", "force_size=on"), MiB),  # Azure's kind
    "raw": VmFormat("raw", ()),
}
"""Formats ``export_vm_disk`` writes, by our name."""


def data_map(index: Index, disk_size: int) -> ExtentMap:
    """Bytes of the disk that hold stored data: each region's used bytes, less its hole
    chunks, the boot areas only outside the imaged partitions."""
    partitions = ExtentMap(
        (r.start, r.size) for r in index.regions if r.kind == fmt.REGION_PARTITION
    )
    data = ExtentMap()
    for region in index.regions:
        stored = _stored(region, index.chunk_size).shift(region.start)
        if region.kind == fmt.REGION_DISK:
            stored = stored - partitions
        data = data | stored
    return data.clip(0, disk_size)


def _stored(region: Region, chunk_size: int) -> ExtentMap:
    holes = ExtentMap(
        (k * chunk_size, chunk_size) for k, raw in enumerate(region.chunk_ids) if raw == fmt.HOLE
    )
    return region.used.clip(0, region.size) - holes


class SnapshotExport:
    """A snapshot's disk for ``nbd.server.serving``; safe for several reader threads
    (the region readers lock their caches; the repository's reads are thread-safe)."""

    def __init__(self, image: SnapshotImage, data: ExtentMap, chunk_size: int) -> None:
        self.image = image
        self.size = image.size
        self.data = data
        self.chunk_size = chunk_size
        self._stripes = [threading.Lock() for _ in range(64)]

    def read_at(self, offset: int, length: int) -> bytes:
        # reads that start in one chunk-sized window take turns: the second finds the
        # chunk in the region reader's cache instead of fetching and decompressing it too
        with self._stripes[offset // self.chunk_size % len(self._stripes)]:
            return self.image.read_at(offset, length)

    def extents(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        cursor, end = offset, offset + length
        for run in self.data.clip(offset, length):
            if run.offset > cursor:
                yield cursor, run.offset - cursor, True
            yield run.offset, run.length, False
            cursor = run.end
        if cursor < end:
            yield cursor, end - cursor, True


def snapshot_export(repo: Repository, snapshot: Snapshot) -> Export:
    """The whole disk of ``snapshot`` as an NBD export, holes from its index."""
    snapshot.require_disk("serving, booting or exporting it as a VM disk")
    index = repo.load_index(snapshot)
    image = SnapshotImage(repo, snapshot, index)
    return SnapshotExport(image, data_map(index, snapshot.disk_size), index.chunk_size)


class PaddedExport:
    """An export made longer with a hole at its end (a fixed VHD for Azure must be a
    whole number of MiB)."""

    def __init__(self, inner: Export, size: int) -> None:
        self.inner = inner
        self.size = size

    def read_at(self, offset: int, length: int) -> bytes:
        inside = max(0, min(offset + length, self.inner.size) - offset)
        head = self.inner.read_at(offset, inside) if inside else b""
        return head + bytes(length - inside)

    def extents(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        end = offset + length
        if offset < self.inner.size:
            yield from self.inner.extents(offset, min(end, self.inner.size) - offset)
        tail = max(offset, self.inner.size)
        if tail < end:
            yield tail, end - tail, True


# ---- export ------------------------------------------------------------------------------


def export_vm_disk(
    repo: Repository,
    snapshot: Snapshot,
    dest: str | os.PathLike[str],
    format_name: str,
    *,
    reporter: Reporter = quiet_reporter,
) -> None:
    """Write ``snapshot``'s disk to ``dest`` as a ``format_name`` VM disk (``WRITE_FORMATS``).

    ``qemu-img convert`` reads the snapshot over NBD from a private UNIX socket and
    writes a temporary name beside ``dest``, renamed once complete: ``dest`` is the
    whole image or absent.
    """
    vm = WRITE_FORMATS[format_name]
    target = Path(dest)
    if target.exists() or target.is_symlink():
        raise TargetError("exists already; remove it or choose another name", path=target)
    if not target.parent.is_dir():
        raise TargetError("its directory does not exist", path=target)
    export = snapshot_export(repo, snapshot)
    size = -(-export.size // vm.align) * vm.align
    if size != export.size:
        export = PaddedExport(export, size)
    part = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    command = ["qemu-img", "convert", "-p", "-f", "raw", "-O", vm.qemu]
    if vm.options:
        command += ["-o", ",".join(vm.options)]
    try:
        with serving(export) as uri:
            reporter(TaskStarted("export", size, str(target)))
            _convert([*command, uri, str(part)], size, target, reporter)
            reporter(TaskFinished("export"))
        os.replace(part, target)
    except Interrupted as exc:
        exc.outcome = f"{target} was not written"
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def _convert(command: list[str], size: int, target: Path, reporter: Reporter) -> None:
    """Run ``qemu-img convert -p``; its percentages become progress events."""
    done = 0
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdout is not None
        try:
            while chunk := os.read(proc.stdout.fileno(), 4096):
                for found in _PERCENT.findall(chunk):
                    now = min(size, int(float(found) * size / 100))
                    if now > done:
                        reporter(TaskAdvanced("export", now - done))
                        done = now
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0:
            errors.seek(0)
            raise DeviceError(
                f"qemu-img convert failed: {tool_message(errors.read())}", path=target
            )


def tool_message(output: bytes) -> str:
    """The last line a QEMU tool wrote, for an error message (bounded)."""
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines()]
    return next((line for line in reversed(lines) if line), "no message")[:500]
