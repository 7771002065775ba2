"""Export a snapshot as a Clonezilla image directory (what ``ocs-sr savedisk`` writes).

A Clonezilla or Rescuezilla boot medium restores the result with its own tools, so a
blockvault image never locks anyone in. The directory holds:

  disk, parts           the disk name; the partitions that have a payload
  dev-fs.list           device, filesystem and size of every imaged partition
  <d>-pt.sf             ``sfdisk -d`` of the table: what Clonezilla recreates it from
  <d>-pt.parted[.compact], <d>-chs.sf, <d>-mbr
  <d>-hidden-data-after-mbr              MBR disks: sectors 1 .. first partition
  <p>-ebr               MBR disks: the first sector of each extended partition
  <d>-gpt-1st, -gpt-2nd, -gpt.gdisk, -gpt.sgdisk   GPT disks: both copies, sgdisk backup
  swappt-<p>.info       UUID and LABEL of a swap partition (Clonezilla runs mkswap)
  <p>.<fs>-ptcl-img.zst[.aa ...]        a partclone image, zstd-compressed, split
  <p>.dd-ptcl-img.zst[.aa ...]          partitions no partclone reads: the raw bytes
  blkdev.list, clonezilla-img, Info-*.txt                 what a person looks at

The table files come from the real ``sfdisk``, ``parted`` and ``sgdisk`` run on a
sparse scratch file holding only the snapshot's boot areas, with the scratch file's
name replaced by ``/dev/<disk>``. Everything is written into a hidden sibling
directory renamed onto DEST at the end, so DEST is either complete or absent.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Final, NamedTuple, cast

import zstandard

from blockvault.disk.fs.probe import probe
from blockvault.errors import (
    DeviceError,
    FormatError,
    Interrupted,
    TargetError,
    UsageError,
)
from blockvault.events import Reporter, TaskAdvanced, TaskFinished, TaskStarted, quiet
from blockvault.extents import ExtentMap
from blockvault.interop.partclone_write import PartcloneImage, block_size_for, write_image
from blockvault.repo import format as fmt
from blockvault.repo.image import RegionReader, SnapshotImage
from blockvault.repo.index import Index
from blockvault.repo.manifest import PartitionRecord, Snapshot
from blockvault.repo.repository import Repository

__all__ = [
    "ClonezillaExport",
    "PieceWriter",
    "export_clonezilla",
    "partition_name",
    "piece_suffix",
]

SECTOR: Final = 512
HIDDEN_LIMIT: Final = 1024 * 1024 * 1024  # drbl-ocs.conf hidden_data_after_mbr_limit (MiB)
FAT32_PIECE: Final = 4096 * 1000 * 1000  # Clonezilla's VOL_LIMIT on FAT: 4096 MB
ZSTD_LEVEL: Final = 3
FS_PROBE_BYTES: Final = 64 * 1024  # parted's filesystem probes read no further
READ_BYTES: Final = 4 * 1024 * 1024
_DISK_NAME: Final = re.compile(r"^[a-z][a-z0-9]{0,31}$")
_DISK_KINDS: Final = ("sd", "hd", "vd", "xvd", "nvme", "mmcblk")


class _Payload(NamedTuple):
    fs_tag: str  # partclone's header tag
    name: str  # Clonezilla's filesystem word in file names and dev-fs.list


PAYLOADS: Final = {
    "ext2": _Payload("EXTFS", "ext2"),
    "ext3": _Payload("EXTFS", "ext3"),
    "ext4": _Payload("EXTFS", "ext4"),
    "fat12": _Payload("FAT12", "vfat"),
    "fat16": _Payload("FAT16", "vfat"),
    "fat32": _Payload("FAT32", "vfat"),
    "ntfs": _Payload("NTFS", "ntfs"),
}
"""blockvault filesystem -> partclone image; anything else goes as ``dd`` (raw bytes)."""


@dataclass(frozen=True)
class ClonezillaExport:
    directory: Path
    disk_name: str
    parts: tuple[str, ...]  # partitions with a payload
    payload_bytes: int  # compressed bytes of every payload piece
    seconds: float


def partition_name(disk: str, number: int) -> str:
    """Linux's name for partition ``number`` of ``disk``: sda1, but nvme0n1p1."""
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


def piece_suffix(index: int) -> str:
    """GNU split's two-letter suffix (``split -a 2``): aa, ab, ... zz."""
    if not 0 <= index < 26 * 26:
        raise UsageError(
            f"a partition image needs more than {26 * 26} pieces (.aa to .zz, as Clonezilla "
            "names them): give --split a larger size"
        )
    return chr(97 + index // 26) + chr(97 + index % 26)


class PieceWriter:
    """A binary sink writing ``prefix`` whole, or ``prefix.aa``, ``.ab``... of at most
    ``piece`` bytes each (as Clonezilla's ``split -a 2 -b``)."""

    def __init__(self, prefix: Path, piece: int | None) -> None:
        self.prefix, self.piece = prefix, piece
        self.paths: list[Path] = []
        self.written = 0
        self._fh: BinaryIO | None = None
        self._room = 0
        self._open_next()

    def _open_next(self) -> None:
        self._close_file()
        path = self.prefix
        if self.piece is not None:
            path = self.prefix.with_name(f"{self.prefix.name}.{piece_suffix(len(self.paths))}")
        self.paths.append(path)
        self._fh = open(path, "xb")  # noqa: SIM115 - closed by close()
        self._room = self.piece or -1

    def _close_file(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while view:
            if self._room == 0:
                self._open_next()
            take = len(view) if self._room < 0 else min(self._room, len(view))
            assert self._fh is not None
            self._fh.write(view[:take])
            if self._room > 0:
                self._room -= take
            view = view[take:]
        self.written += len(data)
        return len(data)

    def close(self) -> None:
        self._close_file()


def export_clonezilla(
    repo: Repository,
    snapshot: Snapshot,
    dest: str | os.PathLike[str],
    *,
    disk_name: str | None = None,
    split: int | None = None,
    reporter: Reporter = quiet,
) -> ClonezillaExport:
    """Write ``snapshot`` as a Clonezilla ``savedisk`` image directory ``dest`` (which
    must not exist, or be empty). ``split``: the largest payload piece in bytes."""
    started = time.monotonic()
    snapshot.require_disk("a Clonezilla export")
    target = Path(os.path.abspath(dest))
    disk = disk_name or default_disk_name(snapshot)
    _check_request(snapshot, target, disk, split)
    index = repo.load_index(snapshot)
    jobs = _jobs(repo, snapshot, index)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        total = sum(job.reads for job in jobs)
        reporter(TaskStarted("export", total, f"Clonezilla image {target}"))
        _write_tables(repo, snapshot, index, scratch, disk)
        compressed = 0
        for job in jobs:
            compressed += _write_payload(
                job,
                scratch / partition_name(disk, job.record.number),
                split,
                lambda n: reporter(TaskAdvanced("export", n)),
            )
        parts = tuple(partition_name(disk, job.record.number) for job in jobs)
        _write_lists(snapshot, scratch, disk, parts)
        _publish(scratch, target)
    except BaseException as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(exc, Interrupted):
            exc.outcome = f"nothing was written: {target} was not created"
        raise
    reporter(TaskFinished("export"))
    return ClonezillaExport(target, disk, parts, compressed, time.monotonic() - started)


def default_disk_name(snapshot: Snapshot) -> str:
    """The source's kernel name when it was a disk (``/dev/nvme0n1``), else ``sda``
    (an image file, a loop device)."""
    name = snapshot.source.removeprefix("/dev/")
    real = snapshot.source.startswith("/dev/") and _DISK_NAME.match(name)
    return name if real and name.startswith(_DISK_KINDS) else "sda"


def _check_request(snapshot: Snapshot, target: Path, disk: str, split: int | None) -> None:
    if not _DISK_NAME.match(disk):
        raise UsageError(
            f"disk name {disk!r} is not a kernel disk name such as sda or nvme0n1 "
            "(lower-case letters and digits)"
        )
    if split is not None and split < 1024 * 1024:
        raise UsageError(f"--split {split} is below 1 MiB: give a size such as 4G or fat32")
    if snapshot.table not in ("gpt", "mbr"):
        raise UsageError(
            f"snapshot {snapshot.id[:12]} has no partition table; a Clonezilla disk image "
            "needs one (export it as a .bvi or a VM disk instead)"
        )
    if snapshot.sector_size != SECTOR:
        raise UsageError(
            f"snapshot {snapshot.id[:12]} has {snapshot.sector_size}-byte sectors; Clonezilla "
            "images hold 512-byte sector disks only"
        )
    if target.is_symlink() or (target.exists() and (not target.is_dir() or any(target.iterdir()))):
        raise TargetError(
            "exists and is not an empty directory; name a new directory", path=str(target)
        )
    if not target.parent.is_dir():
        raise TargetError("its parent directory does not exist", path=str(target))


@dataclass(frozen=True)
class _Job:
    """One partition's payload: a partclone image, or (``image`` None) its raw bytes."""

    record: PartitionRecord
    payload: _Payload
    reader: RegionReader
    image: PartcloneImage | None

    @property
    def reads(self) -> int:
        """Bytes of the partition it reads (what progress counts)."""
        return self.image.used.total if self.image else self.reader.size


def _jobs(repo: Repository, snapshot: Snapshot, index: Index) -> list[_Job]:
    """Imaged partitions that get a payload, in order; swap gets none (mkswap remakes
    it), and partitions no partclone reads go raw (partclone.dd)."""
    jobs = []
    for record in sorted(snapshot.imaged_partitions, key=lambda p: p.number):
        if record.filesystem == "swap":
            continue
        region = index.region(fmt.REGION_PARTITION, record.number)
        if region is None:  # load_index checked the regions against the manifest
            raise FormatError(f"partition {record.number} has no region in the snapshot's index")
        reader = RegionReader(repo, region, index.chunk_size)
        payload = PAYLOADS.get(record.filesystem, _Payload("raw", "dd"))
        image = None
        if payload.name != "dd":
            block_size = block_size_for(_fs_block_size(reader, record), region.size)
            image = PartcloneImage.of(payload.fs_tag, region.size, block_size, region.used)
        jobs.append(_Job(record, payload, reader, image))
    return jobs


def _write_payload(
    job: _Job, prefix: Path, split: int | None, advanced: Callable[[int], None]
) -> int:
    """One partition as ``<p>.<fs>-ptcl-img.zst[.aa...]``; the compressed bytes written."""
    pieces = PieceWriter(prefix.with_name(f"{prefix.name}.{job.payload.name}-ptcl-img.zst"), split)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
    try:
        # zstandard wants a file; PieceWriter has the one method it calls (write)
        with compressor.stream_writer(cast(IO[bytes], pieces), closefd=False) as stream:
            if job.image is None:
                # partclone.dd saves and restores the bare bytes (no header, no bitmap)
                _copy_raw(job.reader, job.reader.size, stream.write, advanced)
            else:
                write_image(job.image, job.reader.read_at, stream.write, advanced)
    finally:
        pieces.close()
    return pieces.written


def _fs_block_size(reader: RegionReader, record: PartitionRecord) -> int:
    """The block size partclone uses for this filesystem: ext's block, NTFS's cluster,
    FAT's sector (partclone.fat counts sectors)."""
    if record.filesystem.startswith("fat"):
        return SECTOR
    info = probe(reader)
    if info.type != record.filesystem:
        raise FormatError(
            f"partition {record.number} of the snapshot reads as {info.type}, "
            f"its manifest says {record.filesystem}"
        )
    return info.block_size


def _copy_raw(
    reader: RegionReader,
    size: int,
    sink: Callable[[bytes], object],
    advanced: Callable[[int], None],
) -> None:
    for offset in range(0, size, READ_BYTES):
        n = min(READ_BYTES, size - offset)
        sink(reader.read_at(offset, n))
        advanced(n)


# ------------------------------------------------------------------ partition tables


def _write_tables(repo: Repository, snapshot: Snapshot, index: Index, out: Path, disk: str) -> None:
    """The table files, made by the real tools from a sparse scratch copy of the boot
    areas and the first bytes of each partition (where parted finds the filesystem
    that Clonezilla's restore reads from ``-pt.parted``: swap is found that way)."""
    image = SnapshotImage(repo, snapshot, index)
    scratch = out / ".tables"
    boot = index.region(fmt.REGION_DISK)
    assert boot is not None  # load_index checked it spans the disk
    heads = ExtentMap((p.start, min(FS_PROBE_BYTES, p.size)) for p in snapshot.imaged_partitions)
    with open(scratch, "xb") as f:
        f.truncate(snapshot.disk_size)
        for extent in boot.used | heads:
            for offset in range(extent.offset, extent.end, READ_BYTES):
                f.seek(offset)
                f.write(image.read_at(offset, min(READ_BYTES, extent.end - offset)))
    try:
        rename = _renamer(str(scratch), disk)
        dump = rename(_tool("sfdisk", "-d", scratch))
        (out / f"{disk}-pt.sf").write_text(dump)
        (out / f"{disk}-chs.sf").write_text(_chs(_tool("sfdisk", "-g", scratch)))
        for suffix, unit in (("", "s"), (".compact", "compact")):
            text = _tool("parted", "-s", scratch, "unit", unit, "print")
            (out / f"{disk}-pt.parted{suffix}").write_text(rename(text))
        (out / f"{disk}-mbr").write_bytes(image.read_at(0, SECTOR))
        if snapshot.table == "gpt":
            sectors = snapshot.disk_size // SECTOR
            (out / f"{disk}-gpt-1st").write_bytes(image.read_at(0, 34 * SECTOR))
            # ocs-sr's dd skips N - 33 + 1 sectors and reads 33: the last 32 it gets
            backup = image.read_at((sectors - 32) * SECTOR, 32 * SECTOR)
            (out / f"{disk}-gpt-2nd").write_bytes(backup)
            _tool("sgdisk", "-b", out / f"{disk}-gpt.gdisk", scratch)
            (out / f"{disk}-gpt.sgdisk").write_text(rename(_tool("sgdisk", "-p", scratch)))
        else:
            first = min((p.start for p in snapshot.partitions), default=SECTOR)
            if SECTOR < first < SECTOR + HIDDEN_LIMIT:
                (out / f"{disk}-hidden-data-after-mbr").write_bytes(
                    image.read_at(SECTOR, first - SECTOR)
                )
            for name, start in _extended(dump):  # Clonezilla rewrites their boot code
                (out / f"{name}-ebr").write_bytes(image.read_at(start * SECTOR, SECTOR))
    finally:
        scratch.unlink()


def _renamer(scratch: str, disk: str) -> Callable[[str], str]:
    """Replace the scratch file's name by ``/dev/<disk>`` and its partitions' names
    (``<scratch>3``) by ``/dev/<partition>``."""
    pattern = re.compile(re.escape(scratch) + r"(\d*)")

    def rename(text: str) -> str:
        return pattern.sub(
            lambda m: f"/dev/{partition_name(disk, int(m[1])) if m[1] else disk}", text
        )

    return rename


_EXTENDED_LINE: Final = re.compile(
    r"^/dev/(?P<name>[a-z0-9]+) : start=\s*(?P<start>\d+),.*\btype=(?:5|f|85)\b", re.MULTILINE
)


def _extended(dump: str) -> list[tuple[str, int]]:
    """(name, start sector) of each extended partition in an ``sfdisk -d`` dump."""
    return [(m["name"], int(m["start"])) for m in _EXTENDED_LINE.finditer(dump)]


def _chs(geometry: str) -> str:
    """``<d>-chs.sf`` from ``sfdisk -g``'s ``N cylinders, H heads, S sectors/track``."""
    found = {
        word: re.search(rf"(\d+) {word}", geometry) for word in ("cylinders", "heads", "sectors")
    }
    return "".join(f"{word}={m[1] if m else ''}\n" for word, m in found.items())


def _tool(*command: str | os.PathLike[str]) -> str:
    try:
        done = subprocess.run(
            [str(c) for c in command],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError:
        raise DeviceError(
            f"{command[0]} is not installed; it writes Clonezilla's table files "
            "(apt install fdisk parted gdisk)",
            path=str(command[0]),
        ) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise FormatError(f"{command[0]} cannot read the snapshot's partition table: {last}")
    return done.stdout


# ------------------------------------------------------------------ lists and notes


def _write_lists(snapshot: Snapshot, out: Path, disk: str, parts: tuple[str, ...]) -> None:
    sizes = _parted_sizes((out / f"{disk}-pt.parted.compact").read_text())
    (out / "disk").write_text(f"{disk}\n")
    (out / "parts").write_text(" ".join(parts) + "\n")
    fs_lines = [
        "# <Device name>   <File system>   <Size>",
        "# File system is got from ocs-get-dev-info. It might be different from that of "
        "blkid or parted.",
    ]
    blk_lines = [f"{'KNAME':<8}{'NAME':<9}{'SIZE':>7} TYPE FSTYPE MOUNTPOINT MODEL"]
    blk_lines.append(f"{disk:<8}{disk:<9}{_human(snapshot.disk_size):>7} disk")
    swap_lines: list[str] = []  # ocs-sr appends swap partitions after the saved ones
    for record in sorted(snapshot.partitions, key=lambda p: p.number):
        name = partition_name(disk, record.number)
        fs = PAYLOADS[record.filesystem].name if record.filesystem in PAYLOADS else ""
        fs = fs or record.filesystem
        blk_lines.append(f"{name:<8}{'`-' + name:<9}{_human(record.size):>7} part {fs}".rstrip())
        if not record.imaged:
            continue
        line = f"/dev/{name} {fs or 'raw'} {sizes.get(record.number, '')}".rstrip()
        (swap_lines if record.filesystem == "swap" else fs_lines).append(line)
        if record.filesystem == "swap":
            (out / f"swappt-{name}.info").write_text(
                f'UUID="{_shell_safe(record.uuid)}"\nLABEL="{_shell_safe(record.label)}"\n'
            )
    (out / "dev-fs.list").write_text("\n".join(fs_lines + swap_lines) + "\n")
    (out / "blkdev.list").write_text("\n".join(blk_lines) + "\n")
    log = (
        f"This image was exported by blockvault from snapshot {snapshot.id} "
        f"(host {_shell_safe(snapshot.host)}, taken {snapshot.time}).\n"
        f"Disk /dev/{disk}: {snapshot.disk_size} bytes, {snapshot.table} partition table.\n"
        f"Saved partitions: {' '.join(parts)}\n"
    )
    (out / "clonezilla-img").write_text(log)
    (out / "Info-img-id.txt").write_text(
        "# This checksum is only for identifying the image. Created by the command: "
        f"sha512sum clonezilla-img\nIMG_ID={hashlib.sha512(log.encode()).hexdigest()}\n"
    )
    (out / "Info-saved-by-cmd.txt").write_text(
        f"blockvault export {snapshot.id} DIR --format clonezilla\n"
    )
    payload = sum(p.stat().st_size for p in out.iterdir() if "-ptcl-img" in p.name)
    (out / "Info-img-size.txt").write_text(f"Image size (Bytes):\n{payload}\n")


def _parted_sizes(compact: str) -> dict[int, str]:
    """Partition number -> the Size column of ``parted unit compact print`` (``126MB``),
    which is what Clonezilla writes in dev-fs.list."""
    sizes: dict[int, str] = {}
    for line in compact.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0].isdigit():
            sizes[int(fields[0])] = fields[3]
    return sizes


def _human(size: int) -> str:
    """lsblk's SIZE column: binary units, one decimal below 10."""
    value, unit = float(size), "B"
    for next_unit in "KMGTP":
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{value:.1f}{unit}" if value < 10 and unit != "B" else f"{value:.0f}{unit}"


def _shell_safe(text: str | None) -> str:
    """A value Clonezilla sources in a shell (swappt-*.info): no quotes, no expansion."""
    return re.sub(r"[^A-Za-z0-9._ -]", "", text or "")


def _publish(scratch: Path, target: Path) -> None:
    """Rename the finished directory onto ``target`` (rename replaces an empty one)."""
    for path in scratch.iterdir():
        os.chmod(path, 0o644)
    os.chmod(scratch, 0o755)
    fd = os.open(scratch, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(scratch, target)
    except OSError as exc:
        raise TargetError(f"cannot be created: {exc.strerror}", path=str(target)) from None
