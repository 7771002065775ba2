"""Independent oracles for the end-to-end tests: the filesystems' own tools.

Partitions are copied out of a disk image into their own file, then checked with
e2fsck / fsck.vfat / ntfsfix / xfs_repair and read back with debugfs / mcopy / ntfs-3g
(or ntfscat) / the kernel's XFS driver, never with blockvault's own parsers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blockvault_demo.sample import manifest

CHECK = {
    "ext": ["e2fsck", "-fn"],
    "fat": ["fsck.vfat", "-n"],
    "ntfs": ["ntfsfix", "-n"],
    "xfs": ["xfs_repair", "-n", "-f"],
    "btrfs": ["btrfs", "check", "--readonly", "--check-data-csum"],
}


def family(fs: str) -> str:
    return "ext" if fs.startswith("ext") else "fat" if fs.startswith("fat") else fs


def extract(image: Path, offset: int, size: int, out: Path) -> Path:
    """Copy ``size`` bytes at ``offset`` of ``image`` into a new sparse file ``out``."""
    with open(image, "rb") as src, open(out, "wb") as dst:
        dst.truncate(size)
        src.seek(offset)
        done = 0
        while done < size:
            block = src.read(min(4 << 20, size - done))
            if block.count(0) != len(block):
                dst.seek(done)
                dst.write(block)
            done += len(block)
    return out


def fsck(part: Path, fs: str) -> None:
    """Assert the filesystem's own checker finds nothing to fix."""
    command = CHECK.get(family(fs))
    if command is None:
        return
    proc = subprocess.run([*command, str(part)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(command)} failed:\n{proc.stdout}\n{proc.stderr}"


def tree(part: Path, fs: str, out: Path) -> dict[str, str]:
    """The file tree of a filesystem image, read by the filesystem's own tools."""
    out.mkdir(parents=True, exist_ok=True)
    kind = family(fs)
    if kind == "ext":
        subprocess.run(
            ["debugfs", "-R", f"rdump / {out}", str(part)], check=True, capture_output=True
        )
        shutil.rmtree(out / "lost+found", ignore_errors=True)
    elif kind == "fat":
        proc = subprocess.run(
            ["mdir", "-i", str(part), "-b", "::/"], capture_output=True, check=False
        )
        if proc.stdout.strip():
            subprocess.run(
                ["mcopy", "-s", "-n", "-m", "-i", str(part), "::/*", str(out)],
                check=True,
                capture_output=True,
            )
    elif kind == "ntfs":
        mnt = out.parent / f"{out.name}-mnt"
        mnt.mkdir()
        subprocess.run(
            ["ntfs-3g", "-o", "ro", str(part), str(mnt)], check=True, capture_output=True
        )
        try:
            shutil.copytree(
                mnt,
                out,
                symlinks=True,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("System Volume Information"),
            )
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    elif kind == "xfs":  # the kernel's reader (a loop mount: root)
        with _loop_mounted(part, out, "norecovery") as mnt:
            return manifest(mnt)
    elif kind == "btrfs":
        # the default subvolume at the top, the others as the directories they are
        # mounted at; nologreplay: read the image as it is, never write to it
        with _loop_mounted(part, out, "rescue=nologreplay") as mnt:
            shutil.copytree(mnt, out, symlinks=True, dirs_exist_ok=True)
    else:
        raise ValueError(fs)
    return manifest(out)


@contextmanager
def _loop_mounted(part: Path, out: Path, options: str) -> Iterator[Path]:
    """``part`` mounted read-only by the kernel through a loop device, beside ``out``."""
    mnt = out.parent / f"{out.name}-mnt"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-o", f"loop,ro,{options}", str(part), str(mnt)],
        check=True,
        capture_output=True,
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def _field(text: str, pattern: str, what: str) -> int:
    found = re.search(pattern, text, re.MULTILINE)
    assert found is not None, f"no {what} in:\n{text}"
    return int(found[1])


def _run(*command: str | Path) -> str:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}  # mtools: images without a geometry
    return subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, check=True, env=env
    ).stdout


def hidden_sectors(part: Path, fs: str) -> int:
    """The sectors before the volume that a FAT or NTFS boot sector records, as
    ``minfo`` (mtools) reads a FAT's and ``file -s`` (libmagic) an NTFS one's."""
    if family(fs) == "fat":
        return _field(_run("minfo", "-i", part, "::"), r"^hidden sectors: (\d+)", "hidden sectors")
    assert family(fs) == "ntfs", fs
    return _field(_run("file", "-s", part), r"hidden sectors (\d+)", "hidden sectors")


def fat_sectors(part: Path) -> int:
    """The sectors a FAT volume spans, as ``minfo`` reads its boot sector."""
    info = _run("minfo", "-i", part, "::")
    small = _field(info, r"^small size: (\d+) sectors", "small size")
    return small or _field(info, r"^big size: (\d+) sectors", "big size")


def ntfs_clusters(part: Path) -> tuple[int, int]:
    """An NTFS volume's size in clusters and its cluster size, as ``ntfsinfo`` reads them."""
    info = _run("ntfsinfo", "--force", "-m", part)  # a resized volume is marked for check
    clusters = _field(info, r"Volume Size in Clusters: (\d+)", "volume size")
    return clusters, _field(info, r"Cluster Size: (\d+)", "cluster size")


def ext_blocks(part: Path) -> int:
    """An ext2/3/4 filesystem's block count, as ``dumpe2fs -h`` reads its superblock."""
    return _field(_run("dumpe2fs", "-h", part), r"^Block count:\s+(\d+)", "block count")
