"""blockvault's XFS reader against the kernel's, on the shapes the small trees miss:
a directory of thousands of entries (node form), a file of hundreds of extents
(an extent B+tree), a sparse file; and a damaged extent tree that must fail, not loop.

The filesystem is made by mkfs.xfs and filled and read back through a loop mount
(root), or filled by ``mkfs.xfs -p`` (v4 and v5, no root); the reader opens the image
file directly.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault.browse.filesystem import Filesystem
from blockvault.browse.xfs import XfsFilesystem
from tests.conftest import need_tools, needs_root, sh
from tests.disk.fs.fsimages import V4, build_xfs_proto

MiB = 1024 * 1024
BLOCK = 4096


def kernel_view(root: Path) -> dict[str, tuple[str, int, int, str]]:
    """path -> (kind, mode, size, sha256 or link target), as the kernel shows them."""
    out: dict[str, tuple[str, int, int, str]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = Path(dirpath, name)
            st = full.lstat()
            rel = "/" + full.relative_to(root).as_posix()
            if full.is_symlink():
                out[rel] = ("symlink", st.st_mode, st.st_size, os.readlink(full))
            elif full.is_dir():
                out[rel] = ("dir", st.st_mode, 0, "")
            else:
                out[rel] = (
                    "file",
                    st.st_mode,
                    st.st_size,
                    hashlib.sha256(full.read_bytes()).hexdigest(),
                )
    return out


def reader_view(fs: Filesystem[object]) -> dict[str, tuple[str, int, int, str]]:
    out: dict[str, tuple[str, int, int, str]] = {}
    for entry in fs.walk("/"):
        if entry.path == "/":
            continue
        if entry.kind == "file":
            detail = hashlib.sha256(fs.open(entry.path).read()).hexdigest()
        else:
            detail = entry.target or ""
        out[entry.path] = (entry.kind, entry.mode, entry.size, detail)
    return out


@pytest.fixture(scope="module")
def image(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict[str, tuple[str, int, int, str]]]]:
    need_tools("mkfs.xfs", "xfs_bmap")
    work = tmp_path_factory.mktemp("xfs-shapes")
    path = work / "xfs.img"
    with path.open("wb") as f:
        f.truncate(320 * MiB)
    sh("mkfs.xfs", "-q", "-f", path)
    mnt = work / "mnt"
    mnt.mkdir()
    sh("mount", "-o", "loop", path, mnt)
    try:
        big = mnt / "big-directory"
        big.mkdir()
        for i in range(3000):
            (big / f"entry-{i:05}-{'x' * (i % 40)}").write_bytes(i.to_bytes(4, "big"))
        # every other block written: 400 extents, far more than the inode holds
        with open(mnt / "fragmented", "wb") as f:
            for i in range(400):
                f.seek(2 * i * BLOCK)
                f.write(hashlib.sha256(str(i).encode()).digest() * (BLOCK // 32))
        with open(mnt / "sparse", "wb") as f:
            f.seek(50 * MiB)
            f.write(b"end")
        os.symlink("big-directory/entry-00007-xxxxxxx", mnt / "link")
        formats = sh("xfs_bmap", "-v", mnt / "fragmented")
        view = kernel_view(mnt)
    finally:
        sh("umount", mnt)
    assert len(re.findall(r"^\s*\d+:", formats, re.MULTILINE)) > 300  # many extents
    yield path, view


@pytest.mark.root
@needs_root
def test_reader_sees_what_the_kernel_sees(
    image: tuple[Path, dict[str, tuple[str, int, int, str]]],
) -> None:
    path, view = image
    with path.open("rb") as f:
        assert reader_view(XfsFilesystem(f)) == view


@pytest.mark.parametrize("version", [4, 5])
def test_prototype_filled_xfs_reads_back(version: int, tmp_path: Path) -> None:
    """v4 and v5 filled by mkfs.xfs -p (no mount): contents, modes, owners, the link."""
    need_tools("mkfs.xfs")
    image, expected = build_xfs_proto(tmp_path, *(V4 if version == 4 else ()))
    with image.open("rb") as f:
        fs = XfsFilesystem(f)
        assert [e.name for e in fs.listdir("/")] == ["hello.txt", "link", "sub"]
        for path, content in expected.items():
            entry = fs.entry(path)
            got = entry.target.encode() if entry.target else fs.open(path).read()
            assert got == content, path
        hello, sub = fs.entry("/hello.txt"), fs.entry("/sub")
        assert (hello.mode, hello.uid, hello.gid) == (0o100644, 1000, 1000)
        assert sub.mode == 0o40750
        assert fs.open("/link").read() == expected["/sub/data.bin"]  # followed


@pytest.mark.root
@needs_root
def test_a_looping_extent_tree_fails_instead_of_looping(
    image: tuple[Path, dict[str, tuple[str, int, int, str]]], tmp_path: Path
) -> None:
    path, _ = image
    with path.open("rb") as f:
        fs = XfsFilesystem(f)
        node = fs._resolve("/fragmented", True)[1]
        fork = node.datafork().read()
        fanout = (len(fork) - 4) // 16
        pointer = int.from_bytes(fork[4 + fanout * 8 : 4 + fanout * 8 + 8], "big")
        block = fs._linear(pointer, 1)
    copy = tmp_path / "damaged.img"
    sh("cp", "--sparse=always", path, copy)
    with copy.open("r+b") as f:  # the first leaf becomes a node pointing at itself
        f.seek(block * BLOCK + 4)
        f.write((1).to_bytes(2, "big"))
        f.seek(block * BLOCK + 72 + (BLOCK - 72) // 16 * 8)
        f.write(pointer.to_bytes(8, "big"))
    with copy.open("rb") as f, pytest.raises(ValueError, match="extent tree"):
        XfsFilesystem(f).open("/fragmented").read()
