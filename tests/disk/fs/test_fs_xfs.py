"""The XFS allocation map against partclone.xfs's block bitmap, and hostile images.

Filesystems are made by ``mkfs.xfs`` and filled through the kernel (a loop mount,
so those cases need root); the oracle is the bitmap ``partclone.xfs -c`` writes
into its image header, read by blockvault's partclone reader (which checks the
header and bitmap CRCs). A copy holding only the mapped bytes must pass
``xfs_repair -n`` and mount with the same tree. The hostile cases patch one field of
a fresh filesystem and need no root.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault.disk.device import open_device
from blockvault.disk.fs import FilesystemInfo, xfs
from blockvault.disk.fs.probe import probe
from blockvault.errors import FilesystemError
from blockvault_demo.sample import make_tree, manifest
from tests.conftest import blockvault, need_tools, sh

from .fsimages import TREE_KINDS, V4, build_xfs_proto, copy_used, partclone_image, read_map

MiB = 1 << 20
SMALLEST = 300 * MiB  # mkfs.xfs makes no smaller v5 filesystem


def mkfs(path: Path, size: int, *options: str) -> Path:
    need_tools("mkfs.xfs")
    with path.open("wb") as f:
        f.truncate(size)
    sh("mkfs.xfs", "-q", "-f", *options, path)
    return path


def fill_realistic(root: Path) -> None:
    """A tree, a reflinked copy, a preallocated file, then deletions (free holes)."""
    make_tree(root / "tree", 24 * MiB, seed=18, kinds=TREE_KINDS)
    sh("cp", "-a", "--reflink=auto", root / "tree", root / "copy")
    sh("fallocate", "-l", str(3 * MiB), root / "prealloc")
    for index, path in enumerate(sorted(p for p in (root / "tree").rglob("*") if p.is_file())):
        if index % 3 == 0:
            path.unlink()
    (root / "many").mkdir()
    for i in range(2000):  # several inode chunks, a directory in node form
        (root / "many" / f"f{i:05}").write_bytes(b"x" * (i % 7))


def fill_nothing(root: Path) -> None:
    pass


CASES: dict[str, tuple[int, tuple[str, ...], Callable[[Path], None]]] = {
    # mkfs.xfs defaults: v5, reflink, sparse inodes, finobt, bigtime
    "empty-default": (320 * MiB, (), fill_nothing),
    "filled-8-ags": (1024 * MiB, ("-d", "agcount=8"), fill_realistic),
    "filled-1k-blocks-rmapbt": (320 * MiB, ("-b", "size=1024", "-m", "rmapbt=1"), fill_realistic),
    # this kernel mounts no v4 filesystem, so it stays as mkfs.xfs made it
    "empty-v4": (320 * MiB, V4, fill_nothing),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    size, options, fill = CASES[request.param]
    if fill is not fill_nothing and os.geteuid() != 0:
        pytest.skip("needs root to fill an XFS (a loop mount)")
    work = tmp_path_factory.mktemp(request.param)
    image = mkfs(work / "xfs.img", size, *options)
    if fill is not fill_nothing:
        mnt = work / "mnt"
        mnt.mkdir()
        sh("mount", "-o", "loop", image, mnt)
        try:
            fill(mnt)
            (work / "manifest").write_text(repr(sorted(manifest(mnt).items())))
        finally:
            sh("umount", mnt)
    return image


def test_used_map_equals_partclone_bitmap(built: Path, tmp_path: Path) -> None:
    need_tools("partclone.xfs")
    info = read_map(built)
    pc = partclone_image(built, tmp_path)
    assert info.type == "xfs"
    assert info.block_size == pc.header.block_size
    assert info.size == pc.header.device_size
    assert info.used == pc.used
    assert info.used_bytes < info.size  # something is free: the map is no raw span


def test_only_mapped_bytes_make_the_same_filesystem(
    built: Path, tmp_path: Path, loop: Callable[..., str], mounted: Callable[..., Path]
) -> None:
    need_tools("xfs_repair")
    copy = copy_used(built, read_map(built).used, tmp_path / "copy.img")
    sh("xfs_repair", "-n", "-f", copy)
    recorded = built.parent / "manifest"
    if recorded.exists():  # filled, so mountable by this kernel
        mnt = mounted(loop(copy), tmp_path / "mnt", "-o", "ro,norecovery")
        assert repr(sorted(manifest(mnt).items())) == recorded.read_text()


@pytest.mark.parametrize("version", [4, 5])
def test_filled_by_mkfs_prototype_without_root(version: int, tmp_path: Path) -> None:
    """v4 filled as no mount here can: mkfs.xfs -p writes the files."""
    need_tools("mkfs.xfs", "partclone.xfs", "xfs_repair")
    image, _ = build_xfs_proto(tmp_path, *(V4 if version == 4 else ()))
    info = read_map(image)
    assert info.used == partclone_image(image, tmp_path).used
    sh("xfs_repair", "-n", "-f", copy_used(image, info.used, tmp_path / "copy.img"))


def test_label_and_uuid_agree_with_blkid(tmp_path: Path) -> None:
    image = mkfs(tmp_path / "xfs.img", SMALLEST, "-L", "home")
    info = read_map(image)
    assert info.label == "home"
    assert info.uuid == sh("blkid", "-o", "value", "-s", "UUID", image).strip()
    assert info.size == SMALLEST


# --- hostile images: one field patched, a clear FilesystemError, no loop --------------

AGF = 512  # the AGF is the second sector of group 0 (mkfs.xfs's 512-byte sectors)


def _patch(image: Path, offset: int, value: int, width: int) -> None:
    with image.open("r+b") as f:
        f.seek(offset)
        f.write(value.to_bytes(width, "big"))


def _u32(image: Path, offset: int) -> int:
    with image.open("rb") as f:
        f.seek(offset)
        return int.from_bytes(f.read(4), "big")


BLOCK = 4096
BNO_ROOT = AGF + 16  # agf_roots[0]
BNO_LEVEL = AGF + 28  # agf_levels[0]


def _hostile(tmp_path: Path) -> Path:
    return mkfs(tmp_path / "xfs.img", SMALLEST)


def _cycle(image: Path) -> None:
    # a two-level tree whose root names itself as its only child
    root = _u32(image, BNO_ROOT)
    _patch(image, BNO_LEVEL, 2, 4)
    _patch(image, root * BLOCK + 4, 1, 2)  # bb_level
    _patch(image, root * BLOCK + 6, 1, 2)  # bb_numrecs
    fanout = (BLOCK - 56) // 12
    _patch(image, root * BLOCK + 56 + fanout * 8, root, 4)  # the first pointer


HOSTILE: dict[str, Callable[[Path], None]] = {
    "tree-points-at-itself": _cycle,
    "tree-too-high": lambda image: _patch(image, BNO_LEVEL, 200, 4),
    "root-outside-group": lambda image: _patch(image, BNO_ROOT, 0xFFFFFFF0, 4),
    "numrecs-past-block": lambda image: _patch(image, _u32(image, BNO_ROOT) * BLOCK + 6, 0xFFFF, 2),
    "free-extent-past-group": lambda image: _patch(
        image, _u32(image, BNO_ROOT) * BLOCK + 56 + 4, 0xFFFFFFF, 4
    ),
    "headers-called-free": lambda image: _patch(image, _u32(image, BNO_ROOT) * BLOCK + 56, 0, 4),
    "agf-length-wrong": lambda image: _patch(image, AGF + 12, 7, 4),
    "agfl-count-huge": lambda image: _patch(image, AGF + 48, 10_000, 4),
    "agcount-zero": lambda image: _patch(image, 88, 0, 4),
    "block-size-odd": lambda image: _patch(image, 4, 3000, 4),
    "larger-than-device": lambda image: _patch(image, 8, 1 << 40, 8),
}


@pytest.mark.parametrize("damage", sorted(HOSTILE))
def test_damaged_structures_raise_filesystem_error(tmp_path: Path, damage: str) -> None:
    image = _hostile(tmp_path)
    assert read_map(image).type == "xfs"  # sound before the patch
    HOSTILE[damage](image)
    with pytest.raises(FilesystemError, match="xfs filesystem") as caught:
        read_map(image)
    assert "xfs_repair" in str(caught.value)


def test_backup_of_a_damaged_xfs_image_is_one_line_naming_it(tmp_path: Path) -> None:
    image = _hostile(tmp_path)
    _patch(image, BNO_LEVEL, 200, 4)
    assert blockvault("-r", tmp_path / "repo", "init").returncode == 0
    done = blockvault("-r", tmp_path / "repo", "backup", image)
    assert done.returncode != 0
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "damaged filesystem (xfs filesystem allocation group 0" in line
    assert "xfs_repair -n" in line and "--raw" in line


def test_truncated_image_raises(tmp_path: Path) -> None:
    image = _hostile(tmp_path)
    os.truncate(image, SMALLEST // 2)
    with pytest.raises(FilesystemError, match="do not fit"):
        read_map(image)


def test_probe_finds_xfs_and_only_xfs(tmp_path: Path) -> None:
    image = _hostile(tmp_path)
    with open_device(image) as dev:
        assert xfs.detect(dev)
        info: FilesystemInfo = probe(dev)
    assert info.type == "xfs"
