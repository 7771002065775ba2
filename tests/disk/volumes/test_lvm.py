"""LVM2 physical volumes imaged by their logical volumes.

The PVs are made by the real ``pvcreate``/``vgcreate``/``lvcreate --driverloaded n``
(metadata only: this host has no device-mapper to activate them); each LV's ext4 is
made by ``mkfs.ext4 -d`` in a temporary file and written at the physical extents that
``lvs -o seg_pe_ranges`` reports (blockvault_demo.sample_stack). Expected places come
from LVM's own report, file trees and checks from debugfs and e2fsck.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest

from blockvault.disk.device import open_device
from blockvault.disk.layout import read_layout
from blockvault.extents import ExtentMap
from blockvault.pipeline.backup import backup
from blockvault.pipeline.restore import restore
from blockvault.repo import Repository
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree, manifest
from blockvault_demo.sample_stack import (
    LogicalVolumeSpec,
    add_thin_pool,
    lvm_places,
    make_pv,
    pv_size,
    striped_vg,
)
from tests.conftest import blockvault, need_tools, needs_root, sh
from tests.fstree import ext_blocks, fsck, tree

MiB = 1024 * 1024

pytestmark = needs_root


def _gather(image: Path, offset: int, runs: list[tuple[int, int]], out: Path) -> Path:
    """An LV's bytes, run by run, into a file of their own."""
    with open(image, "rb") as src, open(out, "wb") as dst:
        for start, length in runs:
            src.seek(offset + start)
            dst.write(src.read(length))
    return out


class PvDisk(NamedTuple):
    image: Path
    offset: int  # of the PV partition
    vg: str
    places: dict[str, list[tuple[int, int]]]  # LV -> PV-relative runs, from lvs
    trees: dict[str, Path]  # LV -> the tree its ext4 was made from


@pytest.fixture(scope="module")
def pv_disk(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, int, str, dict[str, list[tuple[int, int]]], dict[str, Path]]:
    need_tools("pvcreate", "mkfs.ext4", "debugfs")
    work = tmp_path_factory.mktemp("lvm")
    trees = {"root": work / "root-tree", "home": work / "home-tree"}
    make_tree(trees["root"], 4 * MiB, seed=1)
    make_tree(trees["home"], 2 * MiB, seed=2)
    image = work / "disk.img"
    disk = build_disk(
        DiskSpec(
            "gpt", 96 * MiB, [PartitionSpec("ext4", 8 * MiB), PartitionSpec("empty", 80 * MiB)]
        ),
        image,
    )
    part = disk.partitions[1]
    vg = f"bv{uuid.uuid4().hex[:10]}"
    places = make_pv(
        image,
        part.offset,
        part.size,
        vg,
        [
            LogicalVolumeSpec("root", 24 * MiB, trees["root"]),
            LogicalVolumeSpec("home", 16 * MiB, trees["home"]),
        ],
    )
    return PvDisk(image, part.offset, vg, places, trees)


def test_pv_is_read_by_its_logical_volumes(pv_disk: PvDisk) -> None:
    image, _, vg, places, _ = pv_disk
    with open_device(str(image)) as device:
        layout = read_layout(device)
    part = layout.partitions[1]
    assert part.fs.type == "lvm2"
    volumes = {v.name: v for v in part.fs.volumes}
    assert list(volumes) == [vg, f"{vg}/root", f"{vg}/home"]
    assert volumes[vg].kind == "lvm2-pv" and volumes[vg].parent == ""
    for name in ("root", "home"):
        lv = volumes[f"{vg}/{name}"]
        assert (lv.kind, lv.parent, lv.filesystem) == ("lvm2-lv", vg, "ext4")
        # the mapping agrees with LVM's own report
        assert [(outer, length) for _, outer, length in lv.mapping] == places[name]
        assert lv.size == sum(length for _, length in places[name])
        assert 0 < lv.used_bytes < lv.size
    # the used map holds LV blocks and metadata only: free extents are skipped
    lvs = ExtentMap(run for runs in places.values() for run in runs)
    first_extent = min(start for runs in places.values() for start, _ in runs)
    assert not part.fs.used.subtract(lvs).subtract(ExtentMap.span(0, first_extent))
    assert part.fs.used_bytes < 0.5 * part.partition.size


def test_pv_round_trip_keeps_used_bytes_and_skips_free_extents(
    pv_disk: PvDisk, tmp_path: Path
) -> None:
    image, offset, vg, places, _ = pv_disk
    work = tmp_path / "src.img"
    work.write_bytes(image.read_bytes())
    # garbage in the VG's free extents (after the last LV) must not be imaged
    last = max(start + length for runs in places.values() for start, length in runs)
    with open(work, "r+b") as f:
        f.seek(offset + last)
        f.write(os.urandom(4 * MiB))
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(work))
    record = snap.partitions[1]
    assert record.filesystem == "lvm2"
    assert [v.name for v in record.volumes] == [vg, f"{vg}/root", f"{vg}/home"]
    restored = tmp_path / "restored.img"
    restore(repo, snap, str(restored))
    # everything but the garbage is byte-identical (the source's unused bytes are zero)
    got, want = restored.read_bytes(), image.read_bytes()
    assert got == want
    for name in ("root", "home"):
        copy = _gather(restored, offset, places[name], tmp_path / f"{name}.img")
        fsck(copy, "ext4")
        src = _gather(image, offset, places[name], tmp_path / f"{name}-src.img")
        assert tree(copy, "ext4", tmp_path / f"{name}-t") == tree(
            src, "ext4", tmp_path / f"{name}-u"
        )


def test_logical_volumes_are_browsed_by_vg_lv(pv_disk: PvDisk, tmp_path: Path) -> None:
    image, _, vg, _, trees = pv_disk
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    done = blockvault("-r", repo, "backup", "-p", "2", image)
    assert done.returncode == 0, done.stderr
    info = blockvault("-r", repo, "info", "latest", env={"COLUMNS": "200"})
    assert info.returncode == 0 and "Volumes" in info.stdout, info.stderr
    assert f"{vg}/root" in info.stdout and "lvm2-lv" in info.stdout
    listing = blockvault("-r", repo, "ls", "latest")
    assert f"2: {vg}/root" in listing.stdout and f"2: {vg}/home" in listing.stdout
    for name, source in trees.items():
        ls = blockvault("-r", repo, "ls", f"latest:{vg}/{name}:/")
        assert ls.returncode == 0, ls.stderr
        assert sorted(ls.stdout.split()) == sorted([*os.listdir(source), "lost+found"])
        dest = tmp_path / name
        done = blockvault("-r", repo, "extract", f"latest:{vg}/{name}:/", dest)
        assert done.returncode == 0, done.stderr
        shutil.rmtree(dest / "lost+found")
        assert manifest(dest) == manifest(source)
    some = next(p for p in sorted(trees["home"].rglob("*")) if p.is_file() and not p.is_symlink())
    address = f"latest:{vg}/home:/{some.relative_to(trees['home'])}"
    cat = subprocess.run(["blockvault", "-r", repo, "cat", address], capture_output=True)
    assert cat.returncode == 0 and cat.stdout == some.read_bytes()
    found = blockvault("-r", repo, "find", some.name)
    assert found.returncode == 0, found.stderr
    assert f":{vg}/home:/{some.relative_to(trees['home'])}" in found.stdout
    missing = blockvault("-r", repo, "ls", f"latest:{vg}/nothing:/")
    assert missing.returncode == 2 and "no logical volume" in missing.stderr
    assert missing.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("target_size", "shrinks_lv"),
    [(128 * MiB, False), (72 * MiB, False), (44 * MiB, True)],
    ids=["larger", "smaller-free-extents", "smaller-last-lv"],
)
def test_restore_resizes_the_pv_and_its_last_lv(
    pv_disk: PvDisk, tmp_path: Path, target_size: int, shrinks_lv: bool
) -> None:
    """Onto another size the PV's metadata is rewritten (pe_count, the last LV's extents)
    and the last LV's ext4 resized; LVM's own vgck/pvs/lvs read the result."""
    image, _, _, places, trees = pv_disk
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(image))
    target = tmp_path / "target.img"
    with open(target, "wb") as f:
        f.truncate(target_size)
    grow = target_size > image.stat().st_size
    result = restore(
        repo, snap, str(target), confirm=lambda _: True, grow=grow, scratch=str(tmp_path)
    )
    assert result.grown
    part = json.loads(sh("sfdisk", "--json", target))["partitiontable"]["partitions"][1]
    offset, size = part["start"] * 512, part["size"] * 512
    _, pe_count = pv_size(target, offset, size)
    assert pe_count == (size - MiB) // MiB  # every whole extent after pe_start
    after = lvm_places(target, offset, size)  # vgck passed
    assert after["root"] == places["root"]  # the first LV did not move or change
    (old_home,) = places["home"]
    (new_home,) = after["home"]
    assert new_home[0] == old_home[0]
    if grow:
        assert new_home[0] + new_home[1] == MiB + pe_count * MiB  # to the PV's end
    else:
        assert (new_home[1] < old_home[1]) == shrinks_lv
    for name in ("root", "home"):
        copy = _gather(target, offset, after[name], tmp_path / f"{name}.img")
        fsck(copy, "ext4")
        block = int(re.search(r"Block size:\s+(\d+)", sh("dumpe2fs", "-h", copy))[1])  # type: ignore[index]
        assert ext_blocks(copy) * block == sum(n for _, n in after[name])  # fills its LV
        got = tree(copy, "ext4", tmp_path / f"{name}-t")
        assert got == manifest(trees[name])


def test_restore_refuses_a_pv_that_cannot_fit(pv_disk: PvDisk, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    assert blockvault("-r", repo, "backup", pv_disk.image).returncode == 0
    target = tmp_path / "target.img"
    with open(target, "wb") as f:
        f.truncate(30 * MiB)
    done = blockvault("-r", repo, "restore", "--yes", "--scratch", tmp_path, "latest", target)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "nothing was written" in done.stderr, done.stderr
    assert target.read_bytes().count(0) == 30 * MiB  # not a byte written


def test_backup_of_one_logical_volume(pv_disk: PvDisk, tmp_path: Path) -> None:
    image, offset, vg, places, trees = pv_disk
    repo_path = tmp_path / "repo"
    assert blockvault("-r", repo_path, "init").returncode == 0
    done = blockvault("-r", repo_path, "backup", "-p", f"{vg}/root", image)
    assert done.returncode == 0, done.stderr
    repo = Repository.open(str(repo_path))
    (snap,) = repo.snapshots()
    assert [p.number for p in snap.imaged_partitions] == [2]
    notes = {v.name: v.note for v in snap.partitions[1].volumes}
    assert notes[f"{vg}/root"] is None and "not imaged" in (notes[f"{vg}/home"] or "")
    restored = tmp_path / "restored.img"
    restore(repo, snap, str(restored))
    root = _gather(restored, offset, places["root"], tmp_path / "root.img")
    fsck(root, "ext4")
    assert tree(root, "ext4", tmp_path / "root-t") == manifest(trees["root"])
    home = _gather(restored, offset, places["home"], tmp_path / "home.img")
    assert home.read_bytes().count(0) == home.stat().st_size  # not a byte of it stored
    missing = blockvault("-r", repo_path, "backup", "-p", f"{vg}/nothing", image)
    assert missing.returncode == 2 and "no logical volume" in missing.stderr
    assert missing.stderr.count("\n") == 1


def test_restore_of_one_logical_volume_onto_a_file(pv_disk: PvDisk, tmp_path: Path) -> None:
    image, _, vg, _, trees = pv_disk
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    assert blockvault("-r", repo, "backup", image).returncode == 0
    target = tmp_path / "home.img"
    done = blockvault("-r", repo, "restore", "--partition", f"{vg}/home", "latest", target)
    assert done.returncode == 0, done.stderr
    assert target.stat().st_size == 16 * MiB
    fsck(target, "ext4")
    assert tree(target, "ext4", tmp_path / "t") == manifest(trees["home"])
    missing = blockvault("-r", repo, "restore", "--partition", f"{vg}/x", "latest", target)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
def test_mount_shows_logical_volumes(pv_disk: PvDisk, tmp_path: Path) -> None:
    need_tools("fusermount3")
    image, offset, vg, places, trees = pv_disk
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    assert blockvault("-r", repo, "backup", image).returncode == 0
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = blockvault("-r", repo, "mount", "--filesystems", "latest", mnt)
    assert done.returncode == 0, done.stderr
    try:
        names = os.listdir(mnt)
        assert {f"{vg}-root.img", f"{vg}-home.img", f"{vg}-root", f"{vg}-home"} <= set(names)
        lv = (mnt / f"{vg}-home.img").read_bytes()
        assert lv == _gather(image, offset, places["home"], tmp_path / "home.img").read_bytes()
        got = {k: v for k, v in manifest(mnt / f"{vg}-root").items() if "lost+found" not in k}
        assert got == manifest(trees["root"])
    finally:
        done = blockvault("umount", mnt)
    assert done.returncode == 0, done.stderr


def test_thin_pools_are_detected_and_imaged_raw(tmp_path: Path) -> None:
    """A thin pool and a thin volume (written by vgcfgrestore: lvcreate needs
    device-mapper for them): the pool's hidden data and metadata volumes are kept whole,
    byte for byte, and every volume that is not read says why."""
    need_tools("pvcreate", "vgcfgrestore", "mkfs.ext4")
    content = tmp_path / "tree"
    make_tree(content, 1 * MiB, seed=5)
    image = tmp_path / "pv.img"
    image.touch()
    os.truncate(image, 48 * MiB)
    vg = f"bv{uuid.uuid4().hex[:10]}"
    make_pv(image, 0, 48 * MiB, vg, [LogicalVolumeSpec("root", 12 * MiB, content)])
    add_thin_pool(image, 0, 48 * MiB, vg, first=12)
    places = lvm_places(image, 0, 48 * MiB)  # vgck accepts it; lvs -a lists the hidden LVs
    (tdata,) = places["[pool_tdata]"]
    with open(image, "r+b") as f:  # thin data, as a thin volume would have written it
        f.seek(tdata[0])
        f.write(os.urandom(tdata[1]))
    with open_device(str(image)) as device:
        layout = read_layout(device)
    volumes = {v.name: v for v in layout.partitions[0].fs.volumes}
    assert volumes[f"{vg}/root"].filesystem == "ext4" and volumes[f"{vg}/root"].note is None
    assert "thin-pool" in (volumes[f"{vg}/pool"].note or "")
    assert "thin" in (volumes[f"{vg}/thin"].note or "") and volumes[f"{vg}/thin"].used_bytes == 0
    assert "hidden" in (volumes[f"{vg}/pool_tdata"].note or "")
    assert any(f"{vg}/thin" in w for w in layout.warnings)
    assert layout.partitions[0].fs.used.covers(*tdata)
    repo = Repository.init(str(tmp_path / "repo"))
    snap = backup(repo, str(image))
    restored = tmp_path / "restored.img"
    restore(repo, snap, str(restored))
    assert restored.read_bytes() == image.read_bytes()


def test_an_lv_striped_across_pvs_is_kept_raw_on_each(tmp_path: Path) -> None:
    """An LV striped over two PVs (two partitions of one disk) cannot be read from either
    alone: each partition keeps its stripes whole and says why."""
    need_tools("pvcreate")
    image = tmp_path / "disk.img"
    disk = build_disk(
        DiskSpec(
            "gpt", 40 * MiB, [PartitionSpec("empty", 18 * MiB), PartitionSpec("empty", 18 * MiB)]
        ),
        image,
    )
    parts = [(p.offset, p.size) for p in disk.partitions]
    vg = f"bv{uuid.uuid4().hex[:10]}"
    runs = striped_vg(image, parts, vg, 16 * MiB)
    with open(image, "r+b") as f:  # data in every stripe
        for offset, _ in parts:
            f.seek(offset + MiB)
            f.write(os.urandom(8 * MiB))
    with open_device(str(image)) as device:
        layout = read_layout(device)
    for here, part in zip(runs, layout.partitions, strict=True):
        lv = next(v for v in part.fs.volumes if v.name == f"{vg}/striped")
        assert "other PVs" in (lv.note or "")
        assert sum(length for _, _, length in lv.mapping) == 8 * MiB  # half of it lies here
        assert here and all(part.fs.used.covers(start, length) for start, length in here)
    assert sum("other PVs" in w for w in layout.warnings) == 2
    repo = Repository.init(str(tmp_path / "repo"))
    restored = tmp_path / "restored.img"
    restore(repo, backup(repo, str(image)), str(restored))
    assert restored.read_bytes() == image.read_bytes()
