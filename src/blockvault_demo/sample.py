"""Sample disks and file trees for the demo, the test suite and the benchmarks.

Glossary:

tree
    A directory of realistic files written by :func:`make_tree`: copies of the
    system's own binaries and libraries, text, incompressible and highly
    compressible files, a larger file, empty files and directories, names with
    non-ASCII characters and symlinks. Its content is a function of ``(size,
    seed, kinds)`` and of the files installed on this machine.
disk image
    A regular file holding a partition table (GPT or MBR, or none) and one
    filesystem per partition, built by :func:`build_disk` from a :class:`DiskSpec`.

Invariants:

* Nothing here needs root. Every filesystem is made in its own temporary regular
  file next to the image and then copied to its offset. Root (or a setuid
  ``ntfs-3g``) only widens what can be done: NTFS trees with directories, and
  4096-byte-sector tables when ``sfdisk`` is older than util-linux 2.40.
* Partition offsets and sizes are never computed here: they are read back with
  ``sfdisk --json`` after ``sfdisk`` has placed them.
* Images stay sparse: the image starts as a hole and all-zero MiB blocks of a
  filesystem are never written.
* The library never prints; a missing tool or a failing tool is a
  :class:`~blockvault.errors.UsageError` whose one line names the tool.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

from blockvault.errors import UsageError

__all__ = [
    "FILESYSTEMS",
    "TABLES",
    "TREE_KINDS",
    "BuiltDisk",
    "BuiltPartition",
    "ChangeSummary",
    "ContentMode",
    "DiskSpec",
    "PartitionSpec",
    "TreeSummary",
    "build_disk",
    "change_tree",
    "demo_disk",
    "demo_trees",
    "make_tree",
    "manifest",
]

KiB: Final = 1024
MiB: Final = 1024 * KiB

FILESYSTEMS: Final = frozenset(
    {"ext2", "ext3", "ext4", "fat12", "fat16", "fat32", "ntfs", "swap", "raw", "empty"}
    | {"xfs", "btrfs"}
)
"""Values of :attr:`PartitionSpec.fs`. ``raw`` is seeded pseudo-random bytes (content no
tool recognises); ``empty`` leaves the partition all zeros."""

TABLES: Final = frozenset({"gpt", "mbr", "none"})

TREE_KINDS: Final = frozenset(
    {
        "binary",  # copies of /usr/bin executables
        "library",  # copies of shared libraries
        "text",  # /usr/share/doc copyright files and generated prose, nested directories
        "random",  # incompressible files ("photos", "packages")
        "compressible",  # logs, CSV, a half-zero file
        "large",  # one file of a few MiB: random, text and zero pages, some repeated
        "empty",  # empty files and an empty directory
        "unicode",  # names with é, ü, 日本
        "symlink",  # relative, absolute-dangling and directory symlinks
    }
)
"""Values of ``make_tree(kinds=...)``."""

ContentMode = Literal["none", "tree", "no-symlinks", "flat"]
"""How a partition's ``content`` directory was copied in:

* ``none``: nothing was copied (no content, or swap/raw/empty);
* ``tree``: everything, directories and symlinks included (ext2/3/4, NTFS via ntfs-3g);
* ``no-symlinks``: files and directories, symlinks skipped (FAT);
* ``flat``: regular files only, each into the root directory under its relative path
  with ``/`` replaced by ``_``; directories and symlinks skipped (NTFS via ntfscp,
  when ntfs-3g cannot mount)."""

_FS_FAMILY: Final = {
    "ext2": "ext",
    "ext3": "ext",
    "ext4": "ext",
    "fat12": "fat",
    "fat16": "fat",
    "fat32": "fat",
    "ntfs": "ntfs",
    "swap": "swap",
    "raw": "raw",
    "empty": "empty",
    "xfs": "xfs",
    "btrfs": "btrfs",
}

# Partition type aliases, resolved here rather than by sfdisk because sfdisk's own
# alias list varies by version (2.38 has no "bios"). Anything else is passed through
# as a GUID (GPT) or hex code (MBR).
_GPT_TYPES: Final = {
    "linux": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    "swap": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
    "uefi": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    "esp": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    "bios": "21686148-6449-6E6F-744E-656564454649",
    "msdata": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",  # Microsoft basic data
    "home": "933AC7E1-2EB4-4F13-B844-0E14E2AEF915",
    "lvm": "E6D6D379-F507-44C2-A23C-238F2A3DF928",
    "raid": "A19D880F-05FC-4D3B-A006-743F0F84911E",
}
_MBR_TYPES: Final = {
    "linux": "83",
    "swap": "82",
    "uefi": "ef",
    "esp": "ef",
    "msdata": "07",
    "ntfs": "07",
    "fat12": "01",
    "fat16": "0e",  # FAT16, LBA
    "fat32": "0c",  # FAT32, LBA
    "nonfs": "da",  # "Non-FS data"
    "lvm": "8e",
    "raid": "fd",
}
_DEFAULT_TYPE: Final = {
    "gpt": {"ext": "linux", "fat": "msdata", "ntfs": "msdata", "swap": "swap"}
    | {"xfs": "linux", "btrfs": "linux"},
    "mbr": {"ext": "linux", "fat": "", "ntfs": "ntfs", "swap": "swap"}
    | {"xfs": "linux", "btrfs": "linux"},
}  # mbr fat: by FAT width
_CONTENT_FAMILIES: Final = ("ext", "fat", "ntfs", "xfs", "btrfs")  # take a content directory
_MBR_EXTENDED: Final = frozenset({"5", "f", "85"})  # as sfdisk --json spells them
_SECTOR_SIZES: Final = (512, 1024, 2048, 4096)
_LABEL_FORBIDDEN: Final = re.compile(r'["\n\r\x00]')
_TYPE_ALLOWED: Final = re.compile(r"^[0-9A-Za-z-]+$")


@dataclass(frozen=True)
class PartitionSpec:
    """One partition (or the whole disk when the table is ``none``).

    ``size`` is in bytes, a multiple of the sector size; ``0`` means "the rest of the
    disk" and is allowed for the last partition only. ``content`` is a directory copied
    into ext2/3/4, FAT, NTFS, XFS and btrfs filesystems (XFS by a loop mount, so as
    root). ``type`` is an alias (``linux``, ``swap``,
    ``uefi``/``esp``, ``bios``, ``msdata``, ``home``, ``lvm``, ``raid``, and for MBR also
    ``ntfs``, ``fat12``, ``fat16``, ``fat32``, ``nonfs``), a GPT type GUID or an MBR hex
    code. By default it follows ``fs`` (Linux data, Linux swap, Microsoft basic data for
    FAT and NTFS on GPT; 83, 82, 01/0e/0c, 07 on MBR; Linux data or da for raw and
    empty), except that a FAT partition labelled ``ESP`` is an EFI System Partition.
    On GPT a ``label`` also becomes the partition name.
    """

    fs: str
    size: int
    label: str | None = None
    content: Path | None = None
    type: str | None = None

    def __post_init__(self) -> None:
        if self.fs not in FILESYSTEMS:
            raise UsageError(
                f"unknown filesystem {self.fs!r}; choose one of {', '.join(sorted(FILESYSTEMS))}"
            )
        if self.size < 0:
            raise UsageError(f"partition size {self.size} is negative")
        if self.label is not None and _LABEL_FORBIDDEN.search(self.label):
            raise UsageError(f"label {self.label!r} contains a quote or a control character")
        if self.type is not None and not _TYPE_ALLOWED.match(self.type):
            raise UsageError(f"partition type {self.type!r} is not an alias, GUID or hex code")
        if self.content is not None and _FS_FAMILY[self.fs] not in _CONTENT_FAMILIES:
            raise UsageError(f"{self.fs} partitions take no content directory")


@dataclass(frozen=True)
class DiskSpec:
    """A disk image to build.

    ``table`` is ``gpt``, ``mbr`` or ``none`` (exactly one partition spec, its
    filesystem on the whole disk). ``first_offset`` is where the first partition
    starts, in bytes. For MBR, ``logical_from=k`` puts ``partitions[k:]`` (0-based)
    as logical partitions inside an extended partition spanning the rest of the disk,
    so ``k`` is also the number of primary partitions before it (at most 3).
    """

    table: str
    size: int
    partitions: Sequence[PartitionSpec]
    sector_size: int = 512
    first_offset: int = 1 * MiB
    logical_from: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "partitions", tuple(self.partitions))
        ss = self.sector_size
        if self.table not in TABLES:
            raise UsageError(f"unknown partition table {self.table!r}; use gpt, mbr or none")
        if ss not in _SECTOR_SIZES:
            raise UsageError(f"sector size {ss} is not one of {_SECTOR_SIZES}")
        if self.size <= 0 or self.size % ss:
            raise UsageError(f"disk size {self.size} is not a positive multiple of {ss}")
        if self.first_offset <= 0 or self.first_offset % ss:
            raise UsageError(f"first_offset {self.first_offset} is not a multiple of {ss}")
        for index, part in enumerate(self.partitions):
            if part.size % ss:
                raise UsageError(f"partition {index} size {part.size} is not a multiple of {ss}")
            if part.size == 0 and index != len(self.partitions) - 1:
                raise UsageError(f"partition {index} has size 0, allowed for the last one only")
        count = len(self.partitions)
        if self.table == "none" and count != 1:
            raise UsageError(f"a disk without partition table holds 1 filesystem, not {count}")
        if self.table == "none" and self.partitions[0].size not in (0, self.size):
            raise UsageError("without partition table the filesystem size must be the disk size")
        if self.logical_from is not None:
            if self.table != "mbr":
                raise UsageError("logical partitions exist on MBR disks only")
            if not 0 <= self.logical_from <= min(3, count):
                raise UsageError(f"logical_from={self.logical_from} must be between 0 and 3")
        elif self.table == "mbr" and count > 4:
            raise UsageError(f"MBR holds 4 primary partitions, not {count}; set logical_from")
        if self.table == "gpt" and count > 128:
            raise UsageError(f"GPT holds 128 partitions, not {count}")


@dataclass(frozen=True)
class BuiltPartition:
    """A partition as sfdisk placed it. ``number`` is the kernel's (1-4 primary,
    5 and up logical, 0 for the whole disk); ``type`` is spelt as ``sfdisk --json``
    reports it (upper-case GUID, or MBR hex without leading zero)."""

    number: int
    offset: int
    size: int
    type: str
    fs: str
    label: str | None
    content: ContentMode


@dataclass(frozen=True)
class BuiltDisk:
    path: Path
    table: str
    size: int
    sector_size: int
    partitions: tuple[BuiltPartition, ...]
    extended: tuple[int, int] | None = None
    """Offset and size in bytes of the MBR extended partition, if any."""

    def by_label(self, label: str) -> BuiltPartition:
        for part in self.partitions:
            if part.label == label:
                return part
        raise KeyError(label)


@dataclass(frozen=True)
class TreeSummary:
    files: int
    directories: int
    symlinks: int
    bytes: int


@dataclass(frozen=True)
class ChangeSummary:
    """Bytes touched by :func:`change_tree`, by kind of change."""

    rewritten: int
    appended: int
    added: int
    deleted: int

    @property
    def total(self) -> int:
        return self.rewritten + self.appended + self.added + self.deleted


# --------------------------------------------------------------------------- tools

_PACKAGES: Final = {
    "sfdisk": "fdisk",
    "losetup": "mount",
    "umount": "mount",
    "mke2fs": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "mkntfs": "ntfs-3g",
    "ntfscp": "ntfs-3g",
    "ntfs-3g": "ntfs-3g",
    "mkswap": "util-linux",
    "mkfs.btrfs": "btrfs-progs",
    "fusermount3": "fuse3",
    "fusermount": "fuse3",
}
# Users' PATH often lacks the sbin directories where mkfs.* and sfdisk live.
_SBIN: Final = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def _which(name: str) -> str | None:
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN])
    return shutil.which(name, path=search)


def _tool(name: str) -> str:
    found = _which(name)
    if found is None:
        raise UsageError(f"{name} not found: apt-get install {_PACKAGES.get(name, name)}")
    return found


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C.UTF-8"  # non-ASCII names through mtools and ntfscp
    env["MTOOLS_SKIP_CHECK"] = "1"  # an image file has no real geometry
    return env


def _last_line(text: bytes) -> str:
    lines = [line.strip() for line in text.decode(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def _run(name: str, *args: str | os.PathLike[str] | int, stdin: str | None = None) -> str:
    command = [_tool(name), *(os.fspath(a) if not isinstance(a, int) else str(a) for a in args)]
    try:
        done = subprocess.run(
            command,
            check=True,
            capture_output=True,
            input=b"" if stdin is None else stdin.encode(),
            env=_env(),
        )
    except subprocess.CalledProcessError as exc:
        why = _last_line(exc.stderr) or _last_line(exc.stdout) or f"exit status {exc.returncode}"
        raise UsageError(f"{name} failed: {why}") from exc
    return done.stdout.decode(errors="replace")


@cache
def _sfdisk_knows_sector_size() -> bool:
    # util-linux 2.40 added --sector-size; before it a regular file is always 512.
    return "--sector-size" in _run("sfdisk", "--help")


# --------------------------------------------------------------------------- disks


def build_disk(spec: DiskSpec, path: Path, *, ntfs_mount: bool | None = None) -> BuiltDisk:
    """Write the disk image ``spec`` describes to ``path`` (replaced if it exists).

    ``ntfs_mount`` chooses how NTFS content is copied: ``None`` tries an ntfs-3g FUSE
    mount (works as root, or when ntfs-3g is setuid) and falls back to ntfscp;
    ``True`` requires the mount; ``False`` always uses ntfscp (the flat layout).
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UsageError(f"{path} exists and is not a regular file; sample disks are image files")
    method = _table_method(spec) if spec.table != "none" else "file"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as image:
        image.truncate(spec.size)
    try:
        return _build(spec, path, method, ntfs_mount)
    except BaseException:
        path.unlink(missing_ok=True)  # no half-built image that looks usable
        raise


def _build(spec: DiskSpec, path: Path, method: _TableMethod, ntfs_mount: bool | None) -> BuiltDisk:
    extended: tuple[int, int] | None = None
    if spec.table == "none":
        placed = [(0, 0, spec.size, "")]
    else:
        placed, extended = _write_table(spec, path, method)

    built: list[BuiltPartition] = []
    with tempfile.TemporaryDirectory(prefix=".blockvault-sample-", dir=path.parent) as tmp:
        work = Path(tmp)
        fd = os.open(path, os.O_WRONLY)
        try:
            for index, (part, (number, offset, size, type_)) in enumerate(
                zip(spec.partitions, placed, strict=True)
            ):
                mode = _fill_partition(
                    part, index, fd, offset, size, spec.sector_size, work, ntfs_mount
                )
                built.append(BuiltPartition(number, offset, size, type_, part.fs, part.label, mode))
        finally:
            os.close(fd)
    return BuiltDisk(path, spec.table, spec.size, spec.sector_size, tuple(built), extended)


_TableMethod = Literal["file", "option", "loop"]


def _table_method(spec: DiskSpec) -> _TableMethod:
    """How sfdisk can be told the sector size: a regular file is always 512 to it,
    ``--sector-size`` exists since util-linux 2.40, a loop device needs root."""
    if spec.sector_size == 512:
        return "file"
    if _sfdisk_knows_sector_size():
        return "option"
    if os.geteuid() == 0:
        return "loop"
    raise UsageError(
        f"{spec.sector_size}-byte sectors need sfdisk --sector-size (util-linux 2.40 or "
        "later) or root for a loop device"
    )


def _partition_type(spec: DiskSpec, part: PartitionSpec) -> str:
    aliases = _GPT_TYPES if spec.table == "gpt" else _MBR_TYPES
    family = _FS_FAMILY[part.fs]
    if part.type is not None:
        return aliases.get(part.type.lower(), part.type)
    if family in ("raw", "empty"):
        return aliases["linux" if spec.table == "gpt" else "nonfs"]
    if family == "fat" and (part.label or "").lower() == "esp":
        return aliases["uefi"]
    alias = _DEFAULT_TYPE[spec.table][family] or part.fs
    return aliases[alias]


def _sfdisk_script(spec: DiskSpec) -> str:
    ss = spec.sector_size
    first = spec.first_offset // ss
    lines = [f"label: {'gpt' if spec.table == 'gpt' else 'dos'}", "unit: sectors"]
    if spec.table == "gpt" and spec.first_offset < 1 * MiB:
        lines.append(f"first-lba: {first}")  # sfdisk's default first usable LBA is 1 MiB
    entries: list[list[str]] = []
    for index, part in enumerate(spec.partitions):
        if index == spec.logical_from:
            entries.append(["type=5"])  # extended, no size: the rest of the disk
        fields = []
        if part.size:
            fields.append(f"size={part.size // ss}")
        fields.append(f"type={_partition_type(spec, part)}")
        if spec.table == "gpt" and part.label:
            fields.append(f'name="{part.label}"')
        entries.append(fields)
    if entries:
        entries[0].insert(0, f"start={first}")
    lines.extend(", ".join(fields) for fields in entries)
    return "\n".join(lines) + "\n"


_SFDISK_WRITE: Final = ("--quiet", "--no-reread", "--no-tell-kernel")


def _write_table(
    spec: DiskSpec, path: Path, method: _TableMethod
) -> tuple[list[tuple[int, int, int, str]], tuple[int, int] | None]:
    """Let sfdisk place the partitions; return (number, offset, size, type) per spec
    partition and the extended partition's (offset, size)."""
    script = _sfdisk_script(spec)
    ss = spec.sector_size
    if method == "file":
        _run("sfdisk", *_SFDISK_WRITE, path, stdin=script)
        table = _sfdisk_json(path)
    elif method == "option":
        _run("sfdisk", "--sector-size", ss, *_SFDISK_WRITE, path, stdin=script)
        table = _sfdisk_json(path, "--sector-size", str(ss))
    else:
        with _loop_device(path, ss) as device:
            _run("sfdisk", *_SFDISK_WRITE, device, stdin=script)
            table = _sfdisk_json(device)
    if table.get("sectorsize", ss) != ss:
        raise UsageError(f"sfdisk wrote {table['sectorsize']}-byte sectors, not {ss}")

    device = str(table["device"])
    placed: list[tuple[int, int, int, str]] = []
    extended: tuple[int, int] | None = None
    for entry in table.get("partitions", []):
        node = str(entry["node"])
        number = int(node[len(device) :].lstrip("p")) if node.startswith(device) else 0
        offset, size, type_ = int(entry["start"]) * ss, int(entry["size"]) * ss, str(entry["type"])
        if spec.table == "mbr" and type_.lower() in _MBR_EXTENDED:
            extended = (offset, size)
        else:
            placed.append((number, offset, size, type_))
    if len(placed) != len(spec.partitions):
        raise UsageError(f"sfdisk placed {len(placed)} partitions, not {len(spec.partitions)}")
    return placed, extended


def _sfdisk_json(target: Path | str, *options: str) -> dict[str, Any]:
    table = json.loads(_run("sfdisk", *options, "--json", target))["partitiontable"]
    if not isinstance(table, dict):
        raise UsageError(f"sfdisk --json {target}: unexpected output")
    return table


@contextlib.contextmanager
def _loop_device(path: Path, sector_size: int) -> Iterator[str]:
    """A loop device over ``path`` with ``sector_size``-byte sectors (root only)."""
    out = _run("losetup", "--find", "--show", "--sector-size", sector_size, path)
    device = out.strip()
    try:
        yield device
    finally:
        _run("losetup", "--detach", device)


def _fill_partition(
    part: PartitionSpec,
    index: int,
    image: int,
    offset: int,
    size: int,
    sector_size: int,
    work: Path,
    ntfs_mount: bool | None,
) -> ContentMode:
    family = _FS_FAMILY[part.fs]
    if family == "empty":
        return "none"
    if family == "raw":
        rng = random.Random(f"raw:{index}:{part.label}")
        for pos in range(0, size, MiB):
            _pwrite_all(image, rng.randbytes(min(MiB, size - pos)), offset + pos)
        return "none"

    fs_file = work / f"partition-{index}.img"
    with open(fs_file, "wb") as f:
        f.truncate(size)
    os.chmod(fs_file, 0o600)  # mkswap warns about anything wider
    start_sector = offset // sector_size  # "hidden sectors" in FAT and NTFS boot sectors
    mode: ContentMode = "none"
    label = part.label
    if family == "ext":
        # 4 KiB blocks as on real systems (mke2fs would pick 1 KiB below 512 MiB).
        options = ["-q", "-F", "-t", part.fs, "-b", str(max(4096, sector_size))]
        options += ["-L", label] if label else []
        options += ["-d", os.fspath(part.content)] if part.content else []
        _run("mke2fs", *options, fs_file)
        mode = "tree" if part.content else "none"
    elif family == "fat":
        bits = part.fs.removeprefix("fat")
        options = ["-F", bits, "-S", str(sector_size), "-h", str(start_sector)]
        if sector_size > 512:  # 4 KiB clusters; mkfs.fat's default leaves too few of them
            options += ["-s", "1"]
        options += ["-n", label] if label else []
        _run("mkfs.vfat", *options, fs_file)
        if part.content:
            _fat_copy(part.content, fs_file)
            mode = "no-symlinks"
    elif family == "ntfs":
        options = ["-F", "-Q", "-q", "-s", str(sector_size), "-p", str(start_sector)]
        options += ["-H", "255", "-S", "63"] + (["-L", label] if label else [])
        _run("mkntfs", *options, fs_file)
        if part.content:
            mode = _ntfs_copy(part.content, fs_file, work / f"mnt-{index}", ntfs_mount)
    elif family == "swap":
        _run("mkswap", *(["-L", label] if label else []), fs_file)
    elif family == "xfs":
        _run("mkfs.xfs", "-q", "-f", *(["-L", label] if label else []), fs_file)
        if part.content:
            _xfs_copy(part.content, fs_file, work / f"mnt-{index}")
            mode = "tree"

    elif family == "btrfs":  # --rootdir fills it without mounting (no root needed)
        options = ["-q", "-f", "-s", "4096", *(["-L", label] if label else [])]
        options += ["--rootdir", os.fspath(part.content)] if part.content else []
        _run("mkfs.btrfs", *options, fs_file)
        mode = "tree" if part.content else "none"
    _splice(fs_file, image, offset)
    fs_file.unlink()
    return mode


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


_ZERO_MIB: Final = bytes(MiB)


def _splice(source: Path, image: int, offset: int) -> None:
    """Copy ``source`` into ``image`` at ``offset``, skipping holes and all-zero MiB
    blocks; the destination range must already read as zeros (a fresh image does)."""
    with open(source, "rb") as f:
        fd = f.fileno()
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            # Work in MiB blocks aligned to the partition so zero-skipping is stable.
            block_start = data - data % MiB
            while block_start < hole:
                length = min(MiB, end - block_start)
                block = os.pread(fd, length, block_start)
                if block != _ZERO_MIB[: len(block)]:
                    _pwrite_all(image, block, offset + block_start)
                block_start += MiB
            pos = max(hole, block_start)


# --------------------------------------------------------------------------- content copy


def _walk(root: Path) -> Iterator[tuple[Path, Literal["dir", "file", "symlink"]]]:
    """Every entry under ``root`` (not root itself), parents before children, sorted;
    symlinks are reported, never followed."""
    for name in sorted(os.listdir(root)):
        full = root / name
        st = os.lstat(full)
        rel = Path(name)
        if stat.S_ISLNK(st.st_mode):
            yield rel, "symlink"
        elif stat.S_ISDIR(st.st_mode):
            yield rel, "dir"
            for sub, kind in _walk(full):
                yield rel / sub, kind
        elif stat.S_ISREG(st.st_mode):
            yield rel, "file"


def _fat_copy(content: Path, image: Path) -> None:
    # mcopy -s follows symlinks and fails on dangling ones, so copy directory by
    # directory: one mmd for all directories, one mcopy per directory's files.
    entries = list(_walk(content))
    dirs = [rel for rel, kind in entries if kind == "dir"]
    if dirs:
        _run("mmd", "-i", image, *(f"::/{rel.as_posix()}" for rel in dirs))
    by_dir: dict[Path, list[str]] = {}
    for rel, kind in entries:
        if kind == "file":
            by_dir.setdefault(rel.parent, []).append(os.fspath(content / rel))
    for parent, files in by_dir.items():
        target = "::/" if parent == Path(".") else f"::/{parent.as_posix()}/"
        _run("mcopy", "-i", image, "-m", "-Q", "-D", "o", *files, target)


def _ntfs_copy(content: Path, image: Path, mountpoint: Path, mount: bool | None) -> ContentMode:
    if mount is not False:
        failure = _ntfs_mount_copy(content, image, mountpoint)
        if failure is None:
            return "tree"
        if mount:
            raise UsageError(f"ntfs-3g could not mount {image.name}: {failure}")
    taken: set[str] = set()
    for rel, kind in _walk(content):
        if kind != "file":
            continue
        name = "_".join(rel.parts)
        while name.lower() in taken or name.startswith("-"):
            name = "_" + name
        taken.add(name.lower())
        _run("ntfscp", image, content / rel, name)
    return "flat"


def _ntfs_mount_copy(content: Path, image: Path, mountpoint: Path) -> str | None:
    """Copy ``content`` through an ntfs-3g FUSE mount; return why not if it cannot
    mount, None when done."""
    ntfs3g = _which("ntfs-3g")
    if ntfs3g is None:
        return "ntfs-3g not found"
    mountpoint.mkdir()
    log_path = mountpoint.with_suffix(".log")
    with open(log_path, "wb") as log:
        # no_detach: the process lives until the volume is unmounted and flushed, so
        # waiting for it is waiting for the NTFS image to be complete.
        process = subprocess.Popen(
            [ntfs3g, "-o", "no_detach", os.fspath(image), os.fspath(mountpoint)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=_env(),
        )
    deadline = time.monotonic() + 10
    while not os.path.ismount(mountpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
            process.wait()
            return _last_line(log_path.read_bytes()) or "mount failed"
        time.sleep(0.01)
    try:
        _copy_tree(content, mountpoint)
    finally:
        try:
            _unmount(mountpoint)
        finally:
            try:
                status = process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                status = process.wait()
    if status != 0:
        raise UsageError(f"ntfs-3g failed: {_last_line(log_path.read_bytes())}")
    return None


def _xfs_copy(content: Path, image: Path, mountpoint: Path) -> None:
    """Copy ``content`` into the XFS in ``image`` through the kernel (a loop mount,
    so root): no userspace tool writes files into an XFS."""
    if os.geteuid() != 0:
        raise UsageError("filling an XFS partition needs root (a loop mount)")
    mountpoint.mkdir()
    _run("mount", "-o", "loop", image, mountpoint)
    try:
        _run("cp", "-a", f"{content}/.", mountpoint)
    finally:
        _run("umount", mountpoint)


def _unmount(mountpoint: Path) -> None:
    for name in ("fusermount3", "fusermount"):
        if _which(name):
            _run(name, "-u", mountpoint)
            return
    _run("umount", mountpoint)


def _copy_tree(source: Path, target: Path) -> None:
    # shutil.copytree would copy permission bits, which ntfs-3g refuses by default.
    for rel, kind in _walk(source):
        src, dst = source / rel, target / rel
        if kind == "dir":
            dst.mkdir()
        elif kind == "symlink":
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copyfile(src, dst)
    for rel, _kind in reversed(list(_walk(source))):
        mtime = os.lstat(source / rel).st_mtime_ns
        with contextlib.suppress(OSError):  # best effort: mtimes are not compared
            os.utime(target / rel, ns=(mtime, mtime), follow_symlinks=False)


def manifest(root: Path) -> dict[str, str]:
    """Relative POSIX path -> ``dir``, ``symlink:<target>`` or ``file:<sha256>`` for
    everything under ``root``: what trees are compared by."""
    result: dict[str, str] = {}
    for rel, kind in _walk(Path(root)):
        full = Path(root) / rel
        if kind == "dir":
            result[rel.as_posix()] = "dir"
        elif kind == "symlink":
            result[rel.as_posix()] = f"symlink:{os.readlink(full)}"
        else:
            digest = hashlib.sha256()
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(MiB), b""):
                    digest.update(block)
            result[rel.as_posix()] = f"file:{digest.hexdigest()}"
    return result


# --------------------------------------------------------------------------- trees

_SAFE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_LIB_DIRS: Final = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
)
_EPOCH: Final = 1_600_000_000  # mtimes are set from here on, deterministically


@cache
def _system_files(kind: str) -> tuple[tuple[str, str, int], ...]:
    """(source, destination relative path, size) of readable regular system files of
    ``kind``, sorted: the pool make_tree draws copies from (read-only)."""
    found: list[tuple[str, str, int]] = []

    def scan(directory: str, pattern: str, low: int, high: int) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return
        for name in names:
            source = os.path.join(directory, name)
            try:
                st = os.lstat(source)
            except OSError:
                continue
            if (
                stat.S_ISREG(st.st_mode)
                and low <= st.st_size <= high
                and re.search(pattern, name)
                and _SAFE_NAME.match(name)
                and os.access(source, os.R_OK)
            ):
                found.append((source, source.lstrip("/"), st.st_size))

    if kind == "binary":
        scan("/usr/bin", "", 4 * KiB, 4 * MiB)
    elif kind == "library":
        for directory in _LIB_DIRS:
            scan(directory, r"\.so", 4 * KiB, 4 * MiB)
            if found:
                break
    elif kind == "doc":
        try:
            packages = sorted(os.listdir("/usr/share/doc"))
        except OSError:
            packages = []
        for package in packages:
            source = f"/usr/share/doc/{package}/copyright"
            if _SAFE_NAME.match(package) and os.path.isfile(source):
                size = os.path.getsize(source)
                if 256 <= size <= 256 * KiB and os.access(source, os.R_OK):
                    found.append((source, source.lstrip("/"), size))
    return tuple(found)


@cache
def _word_table() -> tuple[str, ...]:
    """A fixed pseudo-language of 3000 words spread over 65536 slots in Zipf-like
    proportion, so a uniform 16-bit random number draws a word with a natural
    frequency."""
    rng = random.Random("vocabulary")
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < 3000:
        word = "".join(
            rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.choice((1, 2, 2, 3)))
        )
        if rng.random() < 0.3:
            word += rng.choice(consonants)
        if word not in seen:
            seen.add(word)
            words.append(word)
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(words))))
    total = cumulative[-1]
    return tuple(
        words[min(bisect.bisect(cumulative, (slot + 0.5) / 65536 * total), len(words) - 1)]
        for slot in range(65536)
    )


def _prose(rng: random.Random, size: int) -> bytes:
    table = _word_table()
    out = b""
    while len(out) < size:
        count = (size - len(out)) // 4 + 16
        slots = array.array("H", rng.randbytes(2 * count))
        if sys.byteorder == "big":
            slots.byteswap()  # the same text on every architecture
        words = [table[slot] for slot in slots]
        lines = (" ".join(words[i : i + 11]) for i in range(0, count, 11))
        out += (".\n".join(lines) + ".\n").encode()
    return out[:size]


def _log_lines(rng: random.Random, size: int) -> bytes:
    services = ("systemd", "kernel", "sshd", "cron", "NetworkManager", "dbus-daemon")
    messages = (
        "Started Session {n} of user alice.",
        "Accepted publickey for alice from 10.0.{a}.{b} port {n} ssh2",
        "eth0: link becomes ready",
        "CRON[{n}]: (root) CMD (run-parts /etc/cron.hourly)",
        "Reached target Timers.",
        "audit: type=1400 apparmor=STATUS operation=profile_load pid={n}",
    )
    out = bytearray()
    second = rng.randrange(86400 * 300)
    while len(out) < size:
        bits = rng.getrandbits(64)  # one draw for all the fields of a line
        second += 1 + (bits & 31)
        day, rest = divmod(second, 86400)
        message = messages[(bits >> 5) % len(messages)].format(
            n=(bits >> 8) & 0xFFFF, a=(bits >> 24) & 0xFF, b=(bits >> 32) & 0xFF
        )
        out += (
            f"2024-{1 + day // 28 % 12:02d}-{1 + day % 28:02d}T{rest // 3600:02d}:"
            f"{rest // 60 % 60:02d}:{rest % 60:02d} host "
            f"{services[(bits >> 40) % len(services)]}[{(bits >> 48) % 9999 + 1}]: {message}\n"
        ).encode()
    return bytes(out[:size])


def _csv(rng: random.Random, size: int) -> bytes:
    out = bytearray(b"id,timestamp,sensor,value,status\n")
    row, stamp = 0, 1_700_000_000
    while len(out) < size:
        row += 1
        stamp += 60
        value = 20.0 + rng.random() * 5
        status = "ok" if value < 24.5 else "high"
        out += f"{row},{stamp},sensor-{row % 8},{value:.2f},{status}\n".encode()
    return bytes(out[:size])


def _synthetic_binary(rng: random.Random, size: int) -> bytes:
    # ELF-looking: a header, code-like random runs and zero padding between sections.
    out = bytearray(b"\x7fELF\x02\x01\x01" + bytes(9))
    while len(out) < size:
        out += rng.randbytes(rng.randrange(512, 16 * KiB))
        out += bytes(rng.randrange(0, 4 * KiB))
    return bytes(out[:size])


def _sizes(rng: random.Random, budget: int, low: int, high: int) -> Iterator[int]:
    """Log-uniform sizes in [low, high] that add up to ``budget``."""
    while budget >= low:
        size = min(budget, int(low * (high / low) ** rng.random()))
        if budget - size < low:
            size = budget
        yield size
        budget -= size


class _TreeWriter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.written = 0
        # Lower-cased names per directory: FAT and Windows are case-insensitive.
        self.names: dict[Path, set[str]] = {}

    def _claim(self, rel: str) -> Path | None:
        path = Path(rel)
        taken = self.names.setdefault(path.parent, set())
        if path.name.lower() in taken:
            return None
        taken.add(path.name.lower())
        (self.root / path.parent).mkdir(parents=True, exist_ok=True)
        return self.root / path

    def write(self, rel: str, data: bytes, mode: int = 0o644) -> bool:
        target = self._claim(rel)
        if target is None:
            return False
        target.write_bytes(data)
        os.chmod(target, mode)
        self.written += len(data)
        return True

    def copy(self, rel: str, source: str, mode: int) -> int:
        target = self._claim(rel)
        if target is None:
            return 0
        try:
            shutil.copyfile(source, target)
        except OSError:
            target.unlink(missing_ok=True)
            self.names[Path(rel).parent].discard(Path(rel).name.lower())
            return 0
        os.chmod(target, mode)
        size = target.stat().st_size
        self.written += size
        return size

    def directory(self, rel: str) -> None:
        if self._claim(rel) is not None:
            (self.root / rel).mkdir()

    def symlink(self, rel: str, target: str) -> None:
        path = self._claim(rel)
        if path is not None:
            os.symlink(target, path)

    def copy_system(
        self, rng: random.Random, kind: str, budget: int, mode: int, limit: int = 10**9
    ) -> tuple[int, list[str]]:
        """Copy a seeded choice of system files of ``kind`` worth about ``budget``."""
        pool = list(_system_files(kind))
        rng.shuffle(pool)
        copied: list[str] = []
        for source, rel, size in pool:
            if budget < 4 * KiB or len(copied) >= limit:
                break
            if size <= budget:
                done = self.copy(rel, source, mode)
                if done:
                    copied.append(rel)
                    budget -= done
        return budget, copied


_SHARES: Final = {
    "binary": 0.25,
    "library": 0.20,
    "text": 0.15,
    "random": 0.20,
    "compressible": 0.20,
}


def make_tree(
    root: Path, size: int, seed: int = 0, kinds: Collection[str] = TREE_KINDS
) -> TreeSummary:
    """Write a realistic file tree of about ``size`` bytes under ``root`` (created if
    missing, must be empty). Same ``(size, seed, kinds)`` on the same machine, same
    paths, bytes and mtimes; see :data:`TREE_KINDS` for what each kind adds."""
    wanted = frozenset(kinds)
    if unknown := wanted - TREE_KINDS:
        raise UsageError(f"unknown tree kinds {sorted(unknown)}; use {sorted(TREE_KINDS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise UsageError(f"{root} is not empty; make_tree writes into an empty directory")
    rng = random.Random(f"tree:{seed}")
    tree = _TreeWriter(root)

    large = min(max(size // 8, 64 * KiB), 6 * MiB) if "large" in wanted else 0
    shares = {kind: share for kind, share in _SHARES.items() if kind in wanted}
    scale = sum(shares.values()) or 1.0
    budget = {kind: int((size - large) * share / scale) for kind, share in shares.items()}
    first_binary: str | None = None

    if "binary" in wanted:
        left, copied = tree.copy_system(rng, "binary", budget["binary"], 0o755)
        first_binary = copied[0] if copied else None
        for n, part in enumerate(_sizes(rng, left, 16 * KiB, 512 * KiB)):
            tree.write(f"usr/local/bin/tool-{n}", _synthetic_binary(rng, part), 0o755)
    if "library" in wanted:
        left, _ = tree.copy_system(rng, "library", budget["library"], 0o644)
        for n, part in enumerate(_sizes(rng, left, 16 * KiB, 512 * KiB)):
            tree.write(f"usr/local/lib/libsample{n}.so.1", _synthetic_binary(rng, part))
    if "text" in wanted:
        left, _ = tree.copy_system(rng, "doc", budget["text"] // 3, 0o644, limit=40)
        left += budget["text"] - budget["text"] // 3
        projects = ("alpha", "beta", "gamma")
        for n, part in enumerate(_sizes(rng, left, 2 * KiB, 96 * KiB)):
            if n % 3 == 0:
                rel = f"home/user/Documents/notes-{n:03d}.txt"
            else:  # nested directories, up to 8 levels deep
                depth = "/".join(f"level{d}" for d in range(n % 4))
                rel = f"home/user/projects/{projects[n % 3]}/src/{depth}/module_{n:03d}.txt"
            tree.write(rel.replace("//", "/"), _prose(rng, part))
    if "random" in wanted:
        for n, part in enumerate(_sizes(rng, budget["random"], 16 * KiB, 1 * MiB)):
            if n % 2:
                rel = f"var/cache/apt/archives/package-{n:03d}_1.0_amd64.deb"
            else:
                rel = f"home/user/Pictures/IMG_{1000 + n:04d}.jpg"
            tree.write(rel, rng.randbytes(part))
    if "compressible" in wanted:
        for n, part in enumerate(_sizes(rng, budget["compressible"], 8 * KiB, 2 * MiB)):
            if n % 3 == 0:
                tree.write(f"var/log/syslog.{n}", _log_lines(rng, part))
            elif n % 3 == 1:
                tree.write(f"home/user/data/readings-{n:03d}.csv", _csv(rng, part))
            else:  # a preallocated file: half zeros, as databases and VM disks have
                half = part // 2
                tree.write(
                    f"var/lib/app/prealloc-{n}.img", rng.randbytes(half) + bytes(part - half)
                )
    if large:
        tree.write("var/lib/app/store.db", _large_file(rng, large))
    if "empty" in wanted:
        for rel in ("tmp/.keep", "home/user/.cache/lock", "var/lib/app/empty.dat"):
            tree.write(rel, b"")
        tree.directory("mnt/empty-dir")
    if "unicode" in wanted:
        # Longer than 8.3 on purpose: mtools stores "café.txt" as the short name CAFÉ.TXT
        # with lower-case flags, which readers disagree about.
        tree.write("home/user/Documents/café-crème.txt", _prose(rng, 3000))
        tree.write("home/user/Documents/Übersicht für Müller.txt", _prose(rng, 5000))
        tree.write("home/user/Documents/日本/メモ.txt", "日本語のテキスト。\n".encode() * 200)
    if "symlink" in wanted:
        if first_binary is not None:
            name = Path(first_binary).name
            tree.symlink("usr/local/bin/default-tool", f"../../bin/{name}")
        tree.symlink("home/user/docs", "Documents")  # to a directory (may not exist)
        tree.symlink("etc/localtime", "/usr/share/zoneinfo/Etc/UTC")  # dangling inside
    _set_mtimes(root, random.Random(f"mtime:{seed}"))
    return _summarize(root)


def _large_file(rng: random.Random, size: int) -> bytes:
    # 256 KiB pages: random, text, zeros, and repeats of an earlier random page, so
    # compression and deduplication both find something inside one file.
    page = 256 * KiB
    out = bytearray()
    earlier: list[bytes] = []
    while len(out) < size:
        choice = rng.randrange(8)
        if choice < 4 or not earlier:
            data = rng.randbytes(page)
            earlier.append(data)
        elif choice < 6:
            data = _prose(rng, page)
        elif choice < 7:
            data = bytes(page)
        else:
            data = rng.choice(earlier)
        out += data
    return bytes(out[:size])


def _set_mtimes(root: Path, rng: random.Random) -> None:
    entries = list(_walk(root))
    stamps = [_EPOCH + rng.randrange(100_000_000) for _ in entries]
    # Children first: setting a child's time does not touch its directory's.
    for (rel, _kind), stamp in reversed(list(zip(entries, stamps, strict=True))):
        os.utime(root / rel, (stamp, stamp), follow_symlinks=False)


def _summarize(root: Path) -> TreeSummary:
    files = dirs = links = total = 0
    for rel, kind in _walk(root):
        if kind == "dir":
            dirs += 1
        elif kind == "symlink":
            links += 1
        else:
            files += 1
            total += os.lstat(root / rel).st_size
    return TreeSummary(files, dirs, links, total)


def change_tree(root: Path, fraction: float, seed: int = 0) -> ChangeSummary:
    """Change about ``fraction`` of the bytes of the regular files under ``root``, as
    between two backups: rewrite ranges inside files, append, add and delete files.
    Deterministic for a seed and a given tree; changed files get new mtimes."""
    if not 0.0 <= fraction <= 1.0:
        raise UsageError(f"fraction {fraction} is not between 0 and 1")
    root = Path(root)
    rng = random.Random(f"change:{seed}")
    entries = list(_walk(root))
    files = [rel for rel, kind in entries if kind == "file"]
    dirs = [Path(".")] + [rel for rel, kind in entries if kind == "dir"]
    sizes = {rel: os.lstat(root / rel).st_size for rel in files}
    budget = int(sum(sizes.values()) * fraction)
    stamp = _EPOCH + 200_000_000 + seed
    counts = {"rewrite": 0, "append": 0, "add": 0, "delete": 0}
    added = 0
    actions = ("rewrite", "append", "add", "delete")
    for _attempt in range(100_000):
        if budget <= 0:
            break
        action = rng.choices(actions, weights=(50, 10, 25, 15))[0]
        if action != "add" and not files:
            action = "add"
        if action == "rewrite":
            rel = rng.choice(files)
            if sizes[rel] == 0:
                continue
            length = min(sizes[rel], budget, rng.choice((4, 16, 64, 256, 1024)) * KiB)
            start = rng.randrange(sizes[rel] - length + 1)
            with open(root / rel, "r+b") as f:
                f.seek(start)
                f.write(rng.randbytes(length))
        elif action == "append":
            rel = rng.choice(files)
            length = min(budget, rng.randrange(1 * KiB, 64 * KiB))
            with open(root / rel, "ab") as f:
                f.write(_prose(rng, length))
            sizes[rel] += length
        elif action == "add":
            length = min(budget, rng.choice((4, 32, 128, 512)) * KiB)
            rel = rng.choice(dirs) / f"new-{seed}-{added}.dat"
            added += 1
            data = rng.randbytes(length) if rng.random() < 0.5 else _prose(rng, length)
            (root / rel).write_bytes(data)
            files.append(rel)
            sizes[rel] = length
        else:
            small = [rel for rel in files if sizes[rel] <= budget]
            if not small:
                continue
            rel = rng.choice(small)
            length = sizes.pop(rel)
            files.remove(rel)
            (root / rel).unlink()
            counts[action] += length
            budget -= max(length, 1)
            continue
        os.utime(root / rel, (stamp, stamp))
        counts[action] += length
        budget -= length
    return ChangeSummary(counts["rewrite"], counts["append"], counts["add"], counts["delete"])


# --------------------------------------------------------------------------- the demo

_DEMO_ESP: Final = 40 * MiB
_DEMO_SWAP: Final = 16 * MiB
_DEMO_NTFS: Final = 60 * MiB
_DEMO_TAIL: Final = 20 * MiB  # GPT header, alignment and ~19 MiB left unpartitioned at the end


def _esp_tree(root: Path, seed: int) -> None:
    rng = random.Random(f"esp:{seed}")
    root.mkdir(parents=True, exist_ok=True)
    tree = _TreeWriter(root)
    pool = sorted(
        (entry for entry in _system_files("binary") if 256 * KiB <= entry[2] <= 2 * MiB),
        key=lambda entry: entry[0],
    )
    rng.shuffle(pool)
    loaders = ("EFI/BOOT/BOOTX64.EFI", "EFI/debian/shimx64.efi", "EFI/debian/grubx64.efi")
    for rel, source in zip(loaders, pool, strict=False):
        tree.copy(rel, source[0], 0o755)
    for rel in loaders:
        if not (root / rel).exists():
            tree.write(rel, _synthetic_binary(rng, 1 * MiB))
    tree.write(
        "EFI/debian/grub.cfg", b"search.fs_uuid 0000-0000 root\nconfigfile $prefix/grub.cfg\n"
    )
    tree.write(
        "EFI/BOOT/BOOTX64.CSV", "shimx64.efi,debian,,This is the boot entry\n".encode("utf-16")
    )
    tree.write("loader/loader.conf", b"default debian.conf\ntimeout 3\n")
    tree.write(
        "loader/entries/debian.conf",
        b"title Debian\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=LABEL=root ro quiet\n",
    )
    tree.write("vmlinuz", rng.randbytes(3 * MiB))  # compressed kernel: incompressible
    tree.write("initrd.img", rng.randbytes(1 * MiB) + _prose(rng, 1 * MiB))
    _set_mtimes(root, random.Random(f"esp-mtime:{seed}"))


def demo_trees(directory: Path, seed: int = 0) -> dict[str, Path]:
    """Write the contents of the demo disk's filesystems under ``directory``: label ->
    tree (``ESP`` boot files, ``root`` a full tree with symlinks, ``Data`` a tree
    without symlinks)."""
    directory = Path(directory)
    trees = {"ESP": directory / "esp", "root": directory / "root", "Data": directory / "data"}
    _esp_tree(trees["ESP"], seed)
    make_tree(trees["root"], 56 * MiB, seed=seed)
    make_tree(trees["Data"], 24 * MiB, seed=seed + 1, kinds=TREE_KINDS - {"symlink"})
    return trees


def demo_disk(path: Path, size: int = 256 * MiB, *, seed: int = 0) -> BuiltDisk:
    """The demo disk: GPT with an EFI System Partition (FAT32, 40 MiB), an ext4 root
    (``size`` - 136 MiB, 120 MiB by default), Linux swap (16 MiB) and NTFS data
    (60 MiB), each filesystem holding :func:`demo_trees`; the last 19 MiB are left
    unpartitioned, as on many real disks."""
    root_size = size - _DEMO_ESP - _DEMO_SWAP - _DEMO_NTFS - _DEMO_TAIL
    if root_size < 64 * MiB or size % MiB:
        raise UsageError(f"the demo disk needs a whole number of MiB, at least 200 MiB, not {size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".blockvault-demo-", dir=path.parent) as tmp:
        trees = demo_trees(Path(tmp), seed)
        spec = DiskSpec(
            "gpt",
            size,
            [
                PartitionSpec("fat32", _DEMO_ESP, "ESP", trees["ESP"], "uefi"),
                PartitionSpec("ext4", root_size, "root", trees["root"]),
                PartitionSpec("swap", _DEMO_SWAP, "swap"),
                PartitionSpec("ntfs", _DEMO_NTFS, "Data", trees["Data"]),
            ],
        )
        return build_disk(spec, path)
