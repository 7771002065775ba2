"""VM disks: a snapshot leaves as qcow2/VHDX/VMDK/VHD/raw, a VM disk comes in as a snapshot.

Neither direction parses a VM format here: QEMU's tools do, over NBD.

- Export: the snapshot is served on a private UNIX socket (``SnapshotExport``: the whole
  disk as ``SnapshotImage`` reads it, holes named from the index alone: hole chunks and
  bytes no region uses) and ``qemu-img convert`` writes the file. It asks for block
  status, so holes are never read and stay holes in the file.
- Import: ``qemu-nbd --read-only`` serves the VM disk, our client reads it, and the
  ordinary backup images it (layout and filesystems detected as for a disk). Runs that
  block status calls zero are never requested: ``ExportDisk`` fills them itself.

A VM disk from elsewhere is hostile input: its format comes from its magic number
(QEMU never guesses), and an image that would make QEMU open other files (a backing
file, an external data file, VMDK extents elsewhere) is refused before it is served.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from blockvault.errors import DeviceError, Interrupted, SourceError, TargetError, UsageError
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.events import quiet as quiet_reporter
from blockvault.extents import ExtentMap
from blockvault.nbd.client import Client
from blockvault.nbd.server import Export, serving
from blockvault.pipeline.backup import backup
from blockvault.pipeline.stages import ZEROS
from blockvault.repo import format as fmt
from blockvault.repo.image import SnapshotImage
from blockvault.repo.index import Index, Region
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository

__all__ = [
    "READ_FORMATS",
    "WRITE_FORMATS",
    "ExportDisk",
    "SnapshotExport",
    "data_map",
    "export_vm_disk",
    "import_vm_disk",
    "probe_vm_disk",
    "served_by_qemu_nbd",
    "snapshot_export",
]

MiB = 1024 * 1024
TOOL_TIMEOUT = 120  # seconds for qemu-img info / qemu-nbd to start on an image


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

READ_FORMATS: dict[str, str] = {
    "qcow2": "qcow2",
    "vhdx": "vhdx",
    "vhd": "vpc",
    "vmdk": "vmdk",
    "vdi": "vdi",
}
"""Formats ``import_vm_disk`` reads: our name -> QEMU's driver."""


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
            raise DeviceError(f"qemu-img convert failed: {_last_line(errors.read())}", path=target)


def _last_line(output: bytes) -> str:
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines()]
    return next((line for line in reversed(lines) if line), "no message")[:500]


# ---- import ------------------------------------------------------------------------------

_VDI_SIGNATURE = bytes.fromhex("7f10dabe")  # 0xbeda107f, little-endian, at byte 64


def probe_vm_disk(path: str | os.PathLike[str]) -> str | None:
    """The VM format of ``path`` from its magic number (``READ_FORMATS``), or None."""
    try:
        with open(path, "rb") as file:
            head = file.read(512)
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - 512))
            tail = file.read(512)
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return None
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith((b"KDMV", b"COWD")):
        return "vmdk"
    if head[64:68] == _VDI_SIGNATURE:
        return "vdi"
    if head.startswith(b"conectix") or (size >= 1024 and tail.startswith(b"conectix")):
        return "vhd"  # dynamic (a copy of the footer first) or fixed (footer last)
    return None


def _image_opts(path: Path, driver: str) -> str:
    """QEMU's ``--image-opts`` for ``path``: no protocol prefix in the name is obeyed
    (a name such as ``nbd:...`` or ``json:...`` stays a file name)."""
    name = os.path.abspath(path).replace(",", ",,")
    return f"driver={driver},file.driver=file,file.filename={name}"


def _refuse_foreign_files(path: Path, opts: str) -> None:
    """Refuse an image unless ``qemu-img info`` shows it opens no other file."""
    try:
        proc = subprocess.run(
            ["qemu-img", "info", "--output=json", "--image-opts", opts],
            capture_output=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SourceError(f"qemu-img info took over {TOOL_TIMEOUT}s", path=path) from None
    if proc.returncode != 0:
        raise SourceError(f"not a readable VM disk: {_last_line(proc.stderr)}", path=path)
    try:
        info = json.loads(proc.stdout)
        specific = info.get("format-specific", {}).get("data", {})
        int(info["virtual-size"])
    except (ValueError, KeyError, AttributeError, TypeError):
        raise SourceError("qemu-img info said what we cannot read", path=path) from None
    if "backing-filename" in info or "full-backing-filename" in info:
        detail = f"has a backing file ({info.get('backing-filename')!r})"
        raise SourceError(f"{detail}: convert it to a standalone image first", path=path)
    if specific.get("data-file"):
        raise SourceError("keeps its data in another file: convert it first", path=path)
    own = os.path.realpath(path)
    for extent in specific.get("extents", []):
        if os.path.realpath(str(extent.get("filename", ""))) != own:
            raise SourceError("has extents in other files: convert it first", path=path)


@contextlib.contextmanager
def served_by_qemu_nbd(path: Path, format_name: str) -> Iterator[str]:
    """``qemu-nbd`` serving ``path`` read-only on a private socket; yields its URI.

    ``--fork`` makes qemu-nbd's first process exit once the socket is listening, so
    its exit is the signal that the server is ready (no polling). An image that would
    make QEMU open another file is refused first."""
    opts = _image_opts(path, READ_FORMATS[format_name])
    _refuse_foreign_files(path, opts)
    with tempfile.TemporaryDirectory(prefix="bv-qemu-nbd-") as private:
        sock = os.path.join(private, "nbd.sock")
        pidfile = os.path.join(private, "pid")
        command = ["qemu-nbd", "--read-only", "--image-opts", opts, "--socket", sock]
        command += ["--fork", "--pid-file", pidfile, "--shared=1"]
        try:
            proc = subprocess.run(command, capture_output=True, timeout=TOOL_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise SourceError(f"qemu-nbd took over {TOOL_TIMEOUT}s to start", path=path) from None
        if proc.returncode != 0:
            raise SourceError(f"qemu-nbd cannot serve it: {_last_line(proc.stderr)}", path=path)
        with open(pidfile, encoding="ascii") as file:
            pid = int(file.read().strip())
        try:
            yield f"nbd+unix:///?socket={sock}"
        finally:
            _stop(pid)


def _stop(pid: int, patience: float = 10.0) -> None:
    """End the qemu-nbd we started (no child of ours once forked: init reaps it, so a
    zombie counts as gone)."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + patience
        while _running(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.01)
    except ProcessLookupError:
        return


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rpartition(b")")[2].split()[0] != b"Z"
    except (FileNotFoundError, IndexError):
        return False


class IntoExport(Export, Protocol):
    """An export that also reads into a caller's buffer (``nbd.client.Client``)."""

    def readinto_at(self, buffer: bytearray | memoryview, offset: int) -> None: ...


class ExportDisk:
    """An export (a VM disk read through NBD) as a disk backup reads: runs the export
    calls holes are zeros filled here, never requested."""

    is_block = False
    logical_sector_size = 512

    def __init__(self, path: Path, export: IntoExport) -> None:
        self.path = path
        self.export = export
        self.size = export.size

    def read_at(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto_at(buf, offset)
        return bytes(buf)

    def readinto_at(self, buffer: bytearray | memoryview, offset: int) -> None:
        view = memoryview(buffer).cast("B")
        if offset < 0 or offset + len(view) > self.size:
            raise SourceError(
                f"read of {len(view)} bytes at offset {offset} is past the end ({self.size} bytes)",
                path=self.path,
            )
        for start, length, hole in self.export.extents(offset, len(view)):
            target = view[start - offset : start - offset + length]
            if not hole:
                self.export.readinto_at(target, start)
                continue
            for at in range(0, length, len(ZEROS)):
                piece = target[at : at + len(ZEROS)]
                piece[:] = memoryview(ZEROS)[: len(piece)]


def import_vm_disk(
    repo: Repository,
    path: str | os.PathLike[str],
    *,
    format_name: str | None = None,
    partitions: Sequence[int] | None = None,
    tags: Sequence[str] = (),
    reporter: Reporter = quiet_reporter,
) -> Snapshot:
    """Back up the VM disk at ``path`` as an ordinary disk snapshot; returns it.

    ``qemu-nbd`` serves it read-only, our client reads it, and ``backup`` images it
    (only used blocks, through the one write path); no raw copy is made.
    """
    image = Path(path)
    name = format_name or probe_vm_disk(image)
    if name is None:
        raise SourceError(f"is no VM disk ({', '.join(READ_FORMATS)})", path=image)
    if name not in READ_FORMATS:
        raise UsageError(f"{name!r} is no VM disk format ({', '.join(READ_FORMATS)})")
    with served_by_qemu_nbd(image, name) as uri, Client.connect(uri) as client:
        return backup(
            repo, ExportDisk(image, client), partitions=partitions, tags=tags, reporter=reporter
        )
