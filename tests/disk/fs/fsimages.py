"""Filesystem images built by the real tools, and the oracles that judge our maps.

Each ``FsCase`` builds one filesystem in a regular file (no root needed), fills
it with a ``make_tree`` tree, and names the independent tools that say what is
used: ``dumpe2fs`` (free block ranges), ``fsck.fat`` and ``mshowfat`` (used
clusters, each file's chain), ``ntfsinfo`` (free clusters), for swap the
page size given to ``mkswap``, for XFS ``partclone.xfs``'s block bitmap. The files
are read back with ``debugfs``, ``mcopy`` and ``ntfscat``, never with blockvault's
parsers.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from blockvault.disk.device import open_device
from blockvault.disk.fs import FilesystemInfo
from blockvault.disk.fs.probe import probe
from blockvault.extents import ExtentMap
from blockvault.interop.partclone import PartcloneImage
from blockvault.interop.payload import Payload
from blockvault_demo.sample import make_tree, manifest
from tests.conftest import sh
from tests.fstree import tree

MiB = 1 << 20
# Machine-independent kinds: nested directories, random and compressible files, a
# large file of mixed pages, empty files and an empty directory.
TREE_KINDS = frozenset({"random", "compressible", "large", "empty"})


def source_tree(workdir: Path, size: int = 3 * MiB) -> Path:
    root = workdir / "src"
    make_tree(root, size, seed=7, kinds=TREE_KINDS)
    return root


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def new_image(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def read_map(image: Path, reader: Callable[..., FilesystemInfo] = probe) -> FilesystemInfo:
    with open_device(image) as dev:
        return reader(dev)


def copy_used(image: Path, used: ExtentMap, target: Path) -> Path:
    """A same-sized, all-zero file holding only the ``used`` bytes of ``image``."""
    size = image.stat().st_size
    with image.open("rb") as src, new_image(target, size).open("r+b") as dst:
        for extent in used:
            assert extent.end <= size, f"used extent {extent} lies past the image ({size})"
            src.seek(extent.offset)
            dst.seek(extent.offset)
            left = extent.length
            while left:
                chunk = src.read(min(left, 4 * MiB))
                dst.write(chunk)
                left -= len(chunk)
    return target


def blkid(image: Path) -> dict[str, str]:
    """libblkid's low-level probe: TYPE, VERSION, UUID, LABEL (UTF-8, unescaped)."""
    out = sh("blkid", "-p", "-o", "udev", image)
    tags = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    found = {k.removeprefix("ID_FS_"): v for k, v in tags.items() if k.startswith("ID_FS_")}
    if "LABEL_ENC" in found:  # udev's escaping: \xNN for unsafe characters
        found["LABEL"] = re.sub(
            r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m[1], 16)), found.pop("LABEL_ENC")
        )
    return found


def _number(pattern: str, text: str) -> int:
    found = re.search(pattern, text, re.M)
    assert found, f"{pattern!r} not in tool output:\n{text}"
    return int(found[1])


# --- ext ---------------------------------------------------------------------------


def dumpe2fs_used(image: Path) -> ExtentMap:
    """Used bytes according to dumpe2fs: every block it does not list as free."""
    out = sh("dumpe2fs", image)
    block = _number(r"^Block size:\s+(\d+)", out)
    count = _number(r"^Block count:\s+(\d+)", out)
    # With bigalloc, dumpe2fs ends a free range at the first block of its last cluster.
    ratio = _number(r"^Cluster size:\s+(\d+)", out) // block if "Cluster size:" in out else 1
    free = []
    for line in re.findall(r"^\s+Free blocks: (.*)$", out, re.M):
        for part in filter(None, (p.strip() for p in line.split(","))):
            first, _, last = part.partition("-")
            end = int(last or first) + ratio
            free.append((int(first) * block, (end - int(first)) * block))
    return ExtentMap.span(0, count * block) - ExtentMap(free)


def dumpe2fs_groups_flagged(image: Path, flag: str) -> int:
    """How many groups dumpe2fs shows with ``flag`` (e.g. ``BLOCK_UNINIT``)."""
    return len(re.findall(rf"^Group \d+:.*\[.*{flag}.*\]", sh("dumpe2fs", image), re.M))


def build_ext(workdir: Path, size: int, *options: str) -> Path:
    image = new_image(workdir / "ext.img", size)
    sh("mke2fs", "-q", "-F", *options, "-d", source_tree(workdir), image)
    return image


def ext_used(image: Path, info: FilesystemInfo) -> None:
    assert info.used == dumpe2fs_used(image)


# --- FAT ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FatReport:
    """What ``fsck.fat -v`` says; its used count includes bad clusters."""

    data_start: int  # byte offset of cluster 2
    cluster: int  # bytes per cluster
    used_clusters: int
    clusters: int


def fsck_fat(image: Path) -> FatReport:
    out = sh("fsck.fat", "-n", "-v", image)
    return FatReport(
        data_start=_number(r"Data area starts at byte (\d+)", out),
        cluster=_number(r"(\d+) bytes per cluster", out),
        used_clusters=_number(r"(\d+)/\d+ clusters", out),
        clusters=_number(r"\d+/(\d+) clusters", out),
    )


def mshowfat_runs(image: Path, name: str) -> list[tuple[int, int]]:
    """Cluster runs ``(first, last)`` of one file, as mtools lists its chain."""
    out = sh("mshowfat", "-i", image, f"::/{name}")
    chain = out.split(" ", 1)[1] if " " in out else ""
    return [(int(a), int(b or a)) for a, b in re.findall(r"<(\d+)(?:-(\d+))?>", chain)]


def build_fat(workdir: Path, size: int, bits: int, *options: str) -> Path:
    image = new_image(workdir / "fat.img", size)
    src = source_tree(workdir)
    sh("mkfs.fat", "-F", str(bits), "-n", f"FAT{bits}", *options, image)
    sh("mcopy", "-s", "-i", image, *sorted(src.iterdir()), "::/")
    # Delete every other file and copy it back: chains around free gaps.
    for path in files_of(src)[::2]:
        name = path.relative_to(src).as_posix()
        sh("mdel", "-i", image, f"::/{name}")
        sh("mcopy", "-i", image, path, f"::/{name}")
    return image


def fat_used(image: Path, info: FilesystemInfo) -> None:
    report = fsck_fat(image)
    assert info.used.total == report.data_start + report.used_clusters * report.cluster
    assert info.used.covers(0, report.data_start)  # boot sector, FATs, root directory
    src = image.parent / "src"
    for path in files_of(src):
        for first, last in mshowfat_runs(image, path.relative_to(src).as_posix()):
            offset = report.data_start + (first - 2) * report.cluster
            assert info.used.covers(offset, (last - first + 1) * report.cluster), path


# --- NTFS --------------------------------------------------------------------------


def ntfs_name(rel: Path) -> str:
    return rel.as_posix().replace("/", "_")  # ntfscp cannot make directories


def build_ntfs(workdir: Path, size: int, *options: str) -> Path:
    image = new_image(workdir / "ntfs.img", size)
    sh("mkntfs", "-q", "-F", "-Q", "-f", "-L", "Völume", *options, image)
    src = source_tree(workdir)
    for path in files_of(src):
        sh("ntfscp", "-f", image, path, ntfs_name(path.relative_to(src)))
    return image


def ntfs_files(image: Path, source: Path) -> dict[str, bytes]:
    """Each file of ``source`` as ``ntfscat`` reads it from ``image``."""
    out = {}
    for path in files_of(source):
        name = ntfs_name(path.relative_to(source))
        cat = subprocess.run(["ntfscat", str(image), name], capture_output=True, check=True)
        out[name] = cat.stdout
    return out


def ntfs_used(image: Path, info: FilesystemInfo) -> None:
    out = sh("ntfsinfo", "-m", image)
    cluster = _number(r"Cluster Size: (\d+)", out)
    total = _number(r"Volume Size in Clusters: (\d+)", out)
    free = _number(r"Free Clusters: (\d+)", out)
    sector = _number(r"Sector Size: (\d+)", out)
    assert info.used.clip(0, total * cluster).total == (total - free) * cluster
    # Past the clusters only the backup boot sector, which mkntfs writes to the last sector.
    size = image.stat().st_size
    tail = info.used.clip(total * cluster, size - total * cluster)
    assert tail.to_pairs() == [(size - sector, sector)]


# --- swap --------------------------------------------------------------------------


def build_swap(workdir: Path, page: int, size: int = 8 * MiB) -> Path:
    image = new_image(workdir / "swap.img", size)
    sh("mkswap", "-p", str(page), "-L", "swaplabel", image)
    return image


# --- xfs ---------------------------------------------------------------------------


def build_xfs(workdir: Path, size: int, *options: str) -> Path:
    """An XFS as ``mkfs.xfs`` makes it; filling one needs a mount (test_fs_xfs.py)."""
    image = new_image(workdir / "xfs.img", size)
    sh("mkfs.xfs", "-q", "-f", "-L", "xfslabel", *options, image)
    return image


V4 = ("-m", "crc=0,finobt=0,reflink=0,rmapbt=0,bigtime=0,inobtcount=0", "-i", "sparse=0")
"""mkfs.xfs options for a version 4 XFS (deprecated; this kernel cannot mount one)."""


def build_xfs_proto(workdir: Path, *options: str) -> tuple[Path, dict[str, bytes]]:
    """An XFS filled by ``mkfs.xfs -p`` from a prototype file (no mount, no root): a
    file, a directory with a 100 KB file and a symlink. Returns the image and
    path -> content (symlink: target) as written."""
    (workdir / "hello.txt").write_bytes(b"hello\n")
    (workdir / "data.bin").write_bytes(bytes(range(256)) * 400)
    proto = workdir / "proto"
    proto.write_text(
        "/dev/null\n0 0\nd--755 0 0\n"
        f"hello.txt ---644 1000 1000 {workdir / 'hello.txt'}\n"
        f"sub d--750 0 0\ndata.bin ---600 0 0 {workdir / 'data.bin'}\n$\n"
        "link l--777 0 0 sub/data.bin\n$\n"
    )
    image = new_image(workdir / "xfs.img", 320 * MiB)
    sh("mkfs.xfs", "-q", "-f", *options, "-p", proto, image)
    expected = {
        "/hello.txt": b"hello\n",
        "/sub/data.bin": (workdir / "data.bin").read_bytes(),
        "/link": b"sub/data.bin",
    }
    return image, expected


def partclone_image(image: Path, work: Path) -> PartcloneImage:
    """What ``partclone.xfs -c`` makes of ``image``: its header and block bitmap."""
    out = work / f"{image.stem}.partclone"
    sh("partclone.xfs", "-c", "-q", "-s", image, "-o", out, "-L", work / "partclone.log")
    return PartcloneImage(Payload([out]))


def xfs_used(image: Path, info: FilesystemInfo) -> None:
    assert info.used == partclone_image(image, image.parent).used


# --- btrfs -------------------------------------------------------------------------


def build_btrfs(workdir: Path, size: int, *options: str) -> Path:
    image = new_image(workdir / "btrfs.img", size)
    sh("mkfs.btrfs", "-q", "-f", "-L", "bvtest", *options, "--rootdir", source_tree(workdir), image)
    return image


@dataclass(frozen=True)
class ProgsChunk:
    """A chunk as ``btrfs inspect-internal dump-tree -t chunk`` prints it."""

    logical: int
    length: int
    type: str  # "METADATA|DUP", "DATA|single", ...
    stripes: tuple[int, ...]  # physical offsets


def progs_chunks(image: Path) -> list[ProgsChunk]:
    out = sh("btrfs", "inspect-internal", "dump-tree", "-t", "chunk", image)
    chunks = []
    for item in re.split(r"\n\titem \d+ ", out):
        key = re.match(r"key \(FIRST_CHUNK_TREE CHUNK_ITEM (\d+)\)", item)
        if key:
            length = _number(r"length (\d+)", item)
            kind = re.search(r"type (\S+)", item)
            assert kind, item
            stripes = tuple(int(x) for x in re.findall(r"stripe \d+ devid \d+ offset (\d+)", item))
            chunks.append(ProgsChunk(int(key[1]), length, kind[1], stripes))
    return chunks


def progs_extents(image: Path) -> list[tuple[int, int]]:
    """Logical (start, length) of every EXTENT_ITEM and METADATA_ITEM in the extent
    tree, as ``btrfs inspect-internal dump-tree -t extent`` prints its leaves."""
    nodesize = _number(r"^nodesize\s+(\d+)", sh("btrfs", "inspect-internal", "dump-super", image))
    out = sh("btrfs", "inspect-internal", "dump-tree", "-t", "extent", image)
    found = []
    for start, kind, offset in re.findall(
        r"^\titem \d+ key \((\d+) (EXTENT_ITEM|METADATA_ITEM) (\d+)\)", out, re.M
    ):
        found.append((int(start), int(offset) if kind == "EXTENT_ITEM" else nodesize))
    return found


def progs_physical(chunks: list[ProgsChunk], logical: int, length: int) -> list[tuple[int, int]]:
    """Every copy of a logical range on the (single) device; single and DUP only."""
    for chunk in chunks:
        if chunk.logical <= logical < chunk.logical + chunk.length:
            assert logical + length <= chunk.logical + chunk.length
            assert chunk.type.endswith(("|single", "|DUP")), chunk.type
            return [(s + logical - chunk.logical, length) for s in chunk.stripes]
    raise AssertionError(f"logical {logical} in no chunk")


def btrfs_progs_used(image: Path) -> ExtentMap:
    """What btrfs-progs says is used: the boot area and primary superblock, the
    mirrors that fit, and every copy of every extent the extent tree records."""
    size = image.stat().st_size
    used = [(0, 68 * 1024)] + [(at, 4096) for at in (64 * MiB, 256 << 30) if at + 4096 <= size]
    chunks = progs_chunks(image)
    for logical, length in progs_extents(image):
        used += progs_physical(chunks, logical, length)
    return ExtentMap(used)


def btrfs_used(image: Path, info: FilesystemInfo) -> None:
    assert info.note is None
    assert info.used == btrfs_progs_used(image)


# --- the cases every filesystem map runs -------------------------------------------


@dataclass(frozen=True)
class FsCase:
    """One filesystem recipe and the independent tools that judge it."""

    id: str
    type: str  # the FilesystemInfo.type we must report
    module: str  # the blockvault.disk.fs module that reads it
    tools: tuple[str, ...]
    build: Callable[[Path], Path]
    check_used: Callable[[Path, FilesystemInfo], None]

    def read_back(self, image: Path, source: Path, scratch: Path) -> object:
        """The files of ``source`` as the filesystem's own tools read them from ``image``."""
        if self.module in ("ext", "fat", "btrfs"):
            return tree(image, self.type, scratch)
        if self.module == "ntfs":
            return ntfs_files(image, source)
        return None

    def expected(self, source: Path) -> object:
        if self.module in ("ext", "fat", "btrfs"):
            return manifest(source)
        if self.module == "ntfs":
            return {ntfs_name(p.relative_to(source)): p.read_bytes() for p in files_of(source)}
        return None


E2 = ("mke2fs", "dumpe2fs", "debugfs", "e2fsck", "blkid")
FAT = ("mkfs.fat", "fsck.fat", "mcopy", "mdel", "mshowfat", "blkid")
XFS = ("mkfs.xfs", "partclone.xfs", "xfs_repair", "blkid")
NTFS = ("mkntfs", "ntfscp", "ntfsinfo", "ntfsfix", "ntfscat", "blkid")
BTRFS = ("mkfs.btrfs", "btrfs", "blkid", "mount")


def _ext(id: str, type: str, size: int, *options: str) -> FsCase:
    return FsCase(id, type, "ext", E2, lambda w: build_ext(w, size, "-t", type, *options), ext_used)


def _fat(id: str, bits: int, size: int, *options: str) -> FsCase:
    return FsCase(
        id, f"fat{bits}", "fat", FAT, lambda w: build_fat(w, size, bits, *options), fat_used
    )


def _ntfs(id: str, size: int, *options: str) -> FsCase:
    return FsCase(id, "ntfs", "ntfs", NTFS, lambda w: build_ntfs(w, size, *options), ntfs_used)


def _btrfs(id: str, size: int, *options: str) -> FsCase:
    return FsCase(id, "btrfs", "btrfs", BTRFS, lambda w: build_btrfs(w, size, *options), btrfs_used)


def _swap(id: str, page: int) -> FsCase:
    def used(image: Path, info: FilesystemInfo) -> None:
        assert info.used == ExtentMap.span(0, page)  # the page size mkswap was given

    return FsCase(id, "swap", "swap", ("mkswap", "blkid"), lambda w: build_swap(w, page), used)


CASES = [
    _ext("ext2-1k", "ext2", 16 * MiB, "-b", "1024"),
    _ext("ext2-no-sparse_super", "ext2", 32 * MiB, "-O", "^sparse_super,^resize_inode"),
    _ext("ext3-2k", "ext3", 32 * MiB, "-b", "2048"),
    _ext("ext4-4k", "ext4", 64 * MiB, "-b", "4096"),
    # 300 MiB of 1 KiB blocks: 38 groups, most of them BLOCK_UNINIT.
    _ext("ext4-1k-many-groups", "ext4", 300 * MiB, "-b", "1024"),
    _ext("ext4-no-flex_bg", "ext4", 64 * MiB, "-b", "1024", "-O", "^flex_bg"),
    _ext("ext4-64bit", "ext4", 64 * MiB, "-b", "1024", "-O", "64bit"),
    # 64-byte descriptors in 1 KiB blocks: 16 groups per meta group, 8 meta groups.
    _ext("ext4-meta_bg", "ext4", 1024 * MiB, "-b", "1024", "-O", "64bit,meta_bg,^resize_inode"),
    _ext("ext4-sparse_super2", "ext4", 64 * MiB, "-b", "1024", "-O", "sparse_super2"),
    _ext("ext4-bigalloc", "ext4", 64 * MiB, "-O", "bigalloc", "-C", "16384"),
    _ext("ext4-gdt_csum", "ext4", 64 * MiB, "-b", "1024", "-O", "^metadata_csum,uninit_bg"),
    _fat("fat12", 12, 8 * MiB),
    _fat("fat16", 16, 24 * MiB),
    _fat("fat32", 32, 40 * MiB),
    _fat("fat32-4k-sectors", 32, 300 * MiB, "-S", "4096"),
    _ntfs("ntfs-4k", 40 * MiB),
    _ntfs("ntfs-512b-clusters", 24 * MiB, "-c", "512"),
    _ntfs("ntfs-64k-clusters", 100 * MiB, "-c", "65536"),
    FsCase(
        "xfs", "xfs", "xfs", XFS, lambda w: build_xfs(w, 320 * MiB, "-b", "size=2048"), xfs_used
    ),
    _btrfs("btrfs-dup", 256 * MiB),  # single-device default: DUP metadata
    _btrfs("btrfs-mixed-xxhash", 128 * MiB, "-M", "--csum", "xxhash"),
    _btrfs("btrfs-single-fat-metadata", 256 * MiB, "-m", "single", "-O", "^skinny-metadata"),
    _swap("swap-4k", 4096),
    _swap("swap-64k", 65536),
]
