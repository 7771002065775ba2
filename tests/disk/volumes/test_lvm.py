"""LVM2 physical volumes imaged by their logical volumes.

The PVs are made by the real ``pvcreate``/``vgcreate``/``lvcreate --driverloaded n``
(metadata only: this host has no device-mapper to activate them); each LV's ext4 is
made by ``mkfs.ext4 -d`` in a temporary file and written at the physical extents that
``lvs -o seg_pe_ranges`` reports (blockvault_demo.sample_stack). Expected places come
from LVM's own report, file trees and checks from debugfs and e2fsck.
"""

from __future__ import annotations

import os
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
from blockvault_demo.sample_stack import LogicalVolumeSpec, make_pv
from tests.conftest import blockvault, need_tools, needs_root
from tests.fstree import fsck, tree

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
    missing = blockvault("-r", repo, "ls", f"latest:{vg}/nothing:/")
    assert missing.returncode == 2 and "no logical volume" in missing.stderr
    assert missing.stderr.count("\n") == 1
