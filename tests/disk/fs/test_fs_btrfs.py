"""The btrfs map on filesystems as a running system leaves them, judged from outside.

Each case is made by ``mkfs.btrfs`` and then used through the kernel (mounted on a
loop device): subvolumes, a nested subvolume, a read-only snapshot, files deleted
after the snapshot and new ones written (and one left empty). Three oracles:

* btrfs-progs' own dump of the chunk and extent trees (``btrfs_progs_used``): our
  map must equal it exactly;
* ``partclone.btrfs``'s bitmap: it must differ from ours only where partclone is
  wrong, which the test proves for each differing block (see below);
* a copy holding only the bytes we call used must pass ``btrfs check`` (data
  checksums included) and mount with the same files, subvolumes and snapshot.

partclone.btrfs 0.3.23 differs in two ways, both its own fault:

* it copies only the first copy of DUP metadata (it maps each tree block through
  the chunk's first stripe only). The second copy is live: btrfs reads it when the
  first fails its checksum. Each such block is shown to be byte-identical to its
  first copy, which partclone does keep;
* it keeps some blocks no extent item records: tree blocks freed by later
  transactions (their space is free, the extent tree no longer lists them). Each is
  shown to hold no extent btrfs-progs lists.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from dissect.util.hash import crc32c  # type: ignore[import-untyped]

from blockvault.disk.device import open_device
from blockvault.disk.fs import FilesystemInfo, btrfs
from blockvault.disk.fs.c_btrfs import SUPER_INFO_OFFSET, c_btrfs
from blockvault.disk.fs.probe import probe
from blockvault.errors import FilesystemError
from blockvault.extents import ExtentMap
from blockvault.interop.partclone import PartcloneImage
from blockvault.interop.payload import Payload
from blockvault_demo.sample import make_tree
from tests.conftest import IS_ROOT, need_tools, sh
from tests.fstree import fsck, tree

from .fsimages import (
    TREE_KINDS,
    btrfs_progs_used,
    copy_used,
    new_image,
    progs_chunks,
    progs_extents,
    progs_physical,
    read_map,
)

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root to mount btrfs on a loop device")


def _mount(image: Path, mountpoint: Path, *options: str) -> None:
    mountpoint.mkdir(parents=True, exist_ok=True)
    sh("mount", "-o", ",".join(("loop", *options)), image, mountpoint)


def _umount(mountpoint: Path) -> None:
    subprocess.run(["umount", str(mountpoint)], check=False)


def build_used(workdir: Path, *mkfs: str, size: int = 512 * MiB) -> Path:
    """A filesystem as a system leaves it: top-level files, subvolume ``home`` with a
    nested subvolume, a read-only snapshot of ``home``, then half of the files deleted
    from ``home`` and new ones written (the snapshot keeps the old blocks)."""
    image = new_image(workdir / "btrfs.img", size)
    sh("mkfs.btrfs", "-q", "-f", "-L", "used", *mkfs, image)
    mnt = workdir / "mnt"
    _mount(image, mnt)
    try:
        make_tree(mnt / "etc", 4 * MiB, seed=1, kinds=TREE_KINDS)
        sh("btrfs", "subvolume", "create", mnt / "home")
        sh("btrfs", "subvolume", "create", mnt / "home" / "user")
        make_tree(mnt / "home" / "user" / "docs", 6 * MiB, seed=2, kinds=TREE_KINDS)
        make_tree(mnt / "home" / "shared", 6 * MiB, seed=3, kinds=TREE_KINDS)
        sh("sync")
        sh("btrfs", "subvolume", "snapshot", "-r", mnt / "home", mnt / "home-snap")
        for path in sorted(p for p in (mnt / "home" / "shared").rglob("*") if p.is_file())[::2]:
            path.unlink()
        make_tree(mnt / "home" / "new", 3 * MiB, seed=4, kinds=TREE_KINDS)
        (mnt / "etc" / "hostname").write_text("btrfs-test\n")
    finally:
        _umount(mnt)
    return image


def build_empty(workdir: Path) -> Path:
    """Made by mkfs and mounted once by the kernel, nothing written."""
    image = new_image(workdir / "btrfs.img", 256 * MiB)
    sh("mkfs.btrfs", "-q", "-f", image)
    _mount(image, workdir / "mnt")
    _umount(workdir / "mnt")
    return image


CASES: dict[str, Callable[[Path], Path]] = {
    "empty": build_empty,
    "dup-metadata": lambda w: build_used(w),
    "single-metadata": lambda w: build_used(w, "-m", "single"),
    "mixed": lambda w: build_used(w, "-M", size=384 * MiB),
    "4k-nodes-sha256": lambda w: build_used(w, "-n", "4096", "--csum", "sha256"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("mkfs.btrfs", "btrfs", "partclone.btrfs")
    return CASES[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def info(image: Path) -> FilesystemInfo:
    return read_map(image)


def mounted_tree(image: Path, out: Path) -> dict[str, str]:
    return tree(image, "btrfs", out)


def test_map_equals_btrfs_progs_extent_tree(image: Path, info: FilesystemInfo) -> None:
    assert info.type == "btrfs" and info.note is None
    assert info.used == btrfs_progs_used(image)
    # far less than the filesystem: deleted files and empty block groups are skipped
    assert info.used.total < 64 * MiB


def partclone_map(image: Path, out: Path) -> tuple[ExtentMap, int]:
    sh("partclone.btrfs", "-q", "-c", "-s", image, "-O", out)
    with Payload([out]) as payload:
        pc = PartcloneImage(payload)
        return pc.used, pc.header.block_size


def partclone_restore_damage(pc: Path, size: int) -> set[int]:
    """The tree blocks ``btrfs check`` finds missing after partclone restores ``pc``."""
    out = new_image(pc.with_suffix(".restored"), size)
    sh("partclone.btrfs", "-q", "-r", "-C", "-s", pc, "-O", out)
    check = subprocess.run(
        ["btrfs", "check", "--readonly", str(out)], capture_output=True, text=True, check=False
    )
    named = {int(n) for n in re.findall(r"bad tree block (\d+)", check.stdout + check.stderr)}
    assert check.returncode != 0 or not named
    return named


def test_partclone_differs_only_where_it_is_wrong(
    image: Path, info: FilesystemInfo, tmp_path: Path
) -> None:
    theirs, block = partclone_map(image, tmp_path / "pc.img")
    ours = info.used.align_out(block)
    chunks = progs_chunks(image)
    data = image.read_bytes()

    # 1. Ours alone: second copies of DUP blocks, equal to first copies partclone
    # keeps; or blocks partclone loses outright (snapshot tree blocks).
    mirrors, lost = 0, set()
    for extent in ours - theirs:
        for at in range(extent.offset, extent.end, block):
            chunk, index = next(
                (c, i) for c in chunks for i, s in enumerate(c.stripes) if s <= at < s + c.length
            )
            first = chunk.stripes[0] + at - chunk.stripes[index]
            if index > 0 and theirs.covers(first, block):
                assert chunk.type.endswith("|DUP"), chunk
                assert data[at : at + block] == data[first : first + block]
                mirrors += 1
            else:
                lost.add(chunk.logical + at - chunk.stripes[index])
    if any(c.type.endswith("|DUP") for c in chunks):
        assert mirrors > 0  # the DUP case really shows the difference
    if lost:  # partclone's own restore of its image names the very blocks it lost
        named = partclone_restore_damage(tmp_path / "pc.img", image.stat().st_size)
        assert named and named <= lost

    # 2. Theirs alone: blocks the extent tree does not list (free space).
    allocated = ExtentMap(
        copy
        for logical, length in progs_extents(image)
        for copy in progs_physical(chunks, logical, length)
    )
    assert not (theirs - ours).intersect(allocated)


def test_copy_of_used_bytes_checks_clean_and_mounts_the_same(
    image: Path, info: FilesystemInfo, tmp_path: Path
) -> None:
    copy = copy_used(image, info.used, tmp_path / "copy.img")
    fsck(copy, "btrfs")
    expected = mounted_tree(image, tmp_path / "expected")
    if not image.parent.name.startswith("empty"):
        assert "home-snap/shared" in expected and "home/user/docs" in expected
    assert mounted_tree(copy, tmp_path / "got") == expected
    assert read_map(copy) == info


# --- hostile images ------------------------------------------------------------------


def _super(data: bytearray) -> None:
    """Recompute the primary superblock's crc32c after an edit."""
    at = SUPER_INFO_OFFSET
    struct.pack_into("<I", data, at, crc32c.crc32c(bytes(data[at + 32 : at + 4096])))


def _node_crc(data: bytearray, physical: int, nodesize: int) -> None:
    crc = crc32c.crc32c(bytes(data[physical + 32 : physical + nodesize]))
    struct.pack_into("<I", data, physical, crc)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small DUP-metadata filesystem to damage."""
    need_tools("mkfs.btrfs", "btrfs")
    work = tmp_path_factory.mktemp("hostile")
    src = work / "src"
    make_tree(src, 2 * MiB, seed=5, kinds=TREE_KINDS)
    image = new_image(work / "plain.img", 256 * MiB)
    sh("mkfs.btrfs", "-q", "-f", "--rootdir", src, image)
    return image


def _map_of(data: bytes | bytearray, tmp_path: Path) -> FilesystemInfo:
    path = tmp_path / "damaged.img"
    path.write_bytes(bytes(data))
    return read_map(path)


def _extent_root(image: Path) -> tuple[int, list[tuple[int, int]]]:
    """The extent tree root's logical address and its copies, by btrfs-progs."""
    out = sh("btrfs", "inspect-internal", "dump-tree", "-t", "extent", image)
    found = re.search(r"^(?:leaf|node) (\d+) ", out, re.M)  # the root comes first
    assert found, out
    logical = int(found[1])
    return logical, progs_physical(progs_chunks(image), logical, 16384)


def test_a_damaged_first_copy_is_read_from_the_second(plain: Path, tmp_path: Path) -> None:
    good = read_map(plain)
    _logical, copies = _extent_root(plain)
    assert len(copies) == 2  # DUP
    data = bytearray(plain.read_bytes())
    data[copies[0][0] + 200] ^= 0xFF  # fails its checksum now
    assert _map_of(data, tmp_path) == good
    data[copies[1][0] + 200] ^= 0xFF
    with pytest.raises(FilesystemError, match="fails its checksum"):
        _map_of(data, tmp_path)


def test_a_node_claiming_the_wrong_level_or_address_is_refused(plain: Path, tmp_path: Path) -> None:
    _logical, copies = _extent_root(plain)
    for field, value, message in ((100, 3, "has level 3"), (48, 12345 * 4096, "says it is at")):
        data = bytearray(plain.read_bytes())
        for physical, size in copies:
            if field == 100:
                data[physical + field] = value
            else:
                struct.pack_into("<Q", data, physical + field, value)
            _node_crc(data, physical, size)
        with pytest.raises(FilesystemError, match=message):
            _map_of(data, tmp_path)


def test_a_leaf_with_too_many_items_is_refused(plain: Path, tmp_path: Path) -> None:
    _logical, copies = _extent_root(plain)
    data = bytearray(plain.read_bytes())
    for physical, size in copies:
        struct.pack_into("<I", data, physical + 96, 0xFFFFFFFF)  # nritems
        _node_crc(data, physical, size)
    with pytest.raises(FilesystemError, match="claims 4294967295 items"):
        _map_of(data, tmp_path)


def _super_field(name: str) -> int:
    return SUPER_INFO_OFFSET + int(c_btrfs.btrfs_super_block.fields[name].offset)


@pytest.mark.parametrize(
    ("at", "fmt", "value", "message"),
    [
        (_super_field("sys_chunk_array_size"), "<I", 4096, "sys_chunk_array_size 4096"),
        (_super_field("sectorsize"), "<I", 1000, "sector size 1000"),
        (_super_field("nodesize"), "<I", 1 << 20, "node size 1048576"),
        (_super_field("csum_type"), "<H", 9, "checksum type 9"),
        (_super_field("dev_item") + 8, "<Q", 1 << 50, "the device is 1125899906842624 bytes"),
    ],
)
def test_superblock_lies_are_refused(
    plain: Path, tmp_path: Path, at: int, fmt: str, value: int, message: str
) -> None:
    data = bytearray(plain.read_bytes())
    struct.pack_into(fmt, data, at, value)
    _super(data)
    with pytest.raises(FilesystemError, match=message):
        _map_of(data, tmp_path)


def test_a_superblock_edited_without_its_checksum_is_refused(plain: Path, tmp_path: Path) -> None:
    data = bytearray(plain.read_bytes())
    data[_super_field("label")] ^= 1
    with pytest.raises(FilesystemError, match="superblock's crc32c checksum does not match"):
        _map_of(data, tmp_path)


def test_one_device_of_several_is_imaged_raw_with_a_note(tmp_path: Path) -> None:
    need_tools("mkfs.btrfs")
    a = new_image(tmp_path / "a.img", 160 * MiB)
    b = new_image(tmp_path / "b.img", 160 * MiB)
    sh("mkfs.btrfs", "-q", "-f", "-d", "raid1", "-m", "raid1", a, b)
    for path in (a, b):
        info = read_map(path)
        assert info.type == "btrfs"
        assert info.used == ExtentMap.span(0, path.stat().st_size)
        assert info.note and "2-device" in info.note


def test_probe_names_btrfs(plain: Path) -> None:
    with open_device(plain) as dev:
        assert btrfs.detect(dev)
        assert probe(dev).type == "btrfs"


def test_a_log_awaiting_replay_keeps_every_allocated_chunk(tmp_path: Path) -> None:
    """An image taken while mounted, after an fsync but before the transaction commit
    (the state a crash leaves): the fsynced file is only in the tree log. The copy of
    the bytes we call used must still replay it."""
    need_tools("mkfs.btrfs", "btrfs")
    image = new_image(tmp_path / "live.img", 256 * MiB)
    sh("mkfs.btrfs", "-q", "-f", image)
    mnt, payload = tmp_path / "mnt", random.Random(3).randbytes(3 * MiB)
    _mount(image, mnt, "commit=300")
    try:
        sh("sync")
        fd = os.open(mnt / "fsynced.bin", os.O_CREAT | os.O_WRONLY)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        crashed = tmp_path / "crashed.img"
        shutil.copyfile(image, crashed)  # as the disk is now: log written, no commit
    finally:
        _umount(mnt)
    info = read_map(crashed)
    assert info.note and "tree log" in info.note
    chunks = progs_chunks(crashed)
    whole = ExtentMap((s, c.length) for c in chunks for s in c.stripes)
    assert whole and not (whole - info.used)
    copy = copy_used(crashed, info.used, tmp_path / "copy.img")
    _mount(copy, mnt)  # read-write: the kernel replays the log
    try:
        assert (mnt / "fsynced.bin").read_bytes() == payload
    finally:
        _umount(mnt)
