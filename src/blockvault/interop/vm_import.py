"""VM disks in: ``qemu-nbd --read-only`` serves the VM disk, our NBD client reads it, and
the ordinary backup images it (layout and filesystems detected as for a disk). Runs that
block status calls zero are never requested: ``ExportDisk`` fills them itself. No raw
copy is made.

A VM disk from elsewhere is hostile input: its format comes from its magic number
(QEMU never guesses), and an image that would make QEMU open other files (a backing
file, an external data file, VMDK extents elsewhere) is refused before it is served.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from blockvault.errors import SourceError, UsageError
from blockvault.events import Reporter
from blockvault.events import quiet as quiet_reporter
from blockvault.interop.vm import tool_message
from blockvault.nbd.client import Client
from blockvault.nbd.server import Export
from blockvault.pipeline.backup import backup
from blockvault.pipeline.stages import ZEROS
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository

__all__ = [
    "READ_FORMATS",
    "ExportDisk",
    "import_vm_disk",
    "probe_vm_disk",
    "served_by_qemu_nbd",
]

TOOL_TIMEOUT = 120  # seconds for qemu-img info / qemu-nbd to start on an image

READ_FORMATS: dict[str, str] = {
    "qcow2": "qcow2",
    "vhdx": "vhdx",
    "vhd": "vpc",
    "vmdk": "vmdk",
    "vdi": "vdi",
}
"""Formats ``import_vm_disk`` reads: our name -> QEMU's driver."""

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
        raise SourceError(f"not a readable VM disk: {tool_message(proc.stderr)}", path=path)
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
            raise SourceError(f"qemu-nbd cannot serve it: {tool_message(proc.stderr)}", path=path)
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
