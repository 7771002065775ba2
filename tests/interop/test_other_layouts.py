"""FOG directories, bare partclone images and raw dd images, imported and restored.

FOG is not installed here: its directory is built exactly as FOG names and writes it
(``d1.partitions`` from ``sfdisk -d``, ``d1.mbr`` the first sector of a dos disk,
``d1p<N>.img`` partclone piped through gzip, ``d1.original.swapuuids``) with the real
partclone, sfdisk, dd and gzip. Expected bytes are the built disk's own.
"""

from __future__ import annotations

import base64
import filecmp
import json
import subprocess
from pathlib import Path

import pytest

from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import blockvault, need_tools, sh
from tests.fstree import extract, fsck

MiB = 1024 * 1024


def repository(work: Path) -> Path:
    repo = work / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    return repo


def imported(repo: Path, source: Path, kind: str) -> dict[str, object]:
    done = blockvault("-r", repo, "import", source, "--json")
    assert done.returncode == 0, done.stderr
    [snap] = json.loads(done.stdout)
    assert str(snap["source"]).startswith(kind)
    return snap  # type: ignore[no-any-return]


def restored(repo: Path, snap: dict[str, object], target: Path) -> Path:
    done = blockvault("-r", repo, "restore", str(snap["id"]), target)
    assert done.returncode == 0, done.stderr
    return target


def test_fog_directory(tmp_path: Path) -> None:
    need_tools("partclone.ext4", "partclone.fat32", "gzip", "mkswap")
    make_tree(tmp_path / "tree", 3 * MiB, seed=7)
    disk = build_disk(
        DiskSpec(
            "mbr",
            96 * MiB,
            [
                PartitionSpec("ext4", 48 * MiB, content=tmp_path / "tree"),
                PartitionSpec("fat32", 36 * MiB, content=tmp_path / "tree"),
                PartitionSpec("swap", 0),
            ],
        ),
        tmp_path / "fog.img",
    )
    fog = tmp_path / "fogimage"
    fog.mkdir()
    dump = sh("sfdisk", "-d", disk.path).replace(str(disk.path), "/dev/sda")
    (fog / "d1.partitions").write_text(dump)
    sh("dd", f"if={disk.path}", f"of={fog / 'd1.mbr'}", "bs=512", "count=1", "status=none")
    for part in disk.partitions[:2]:
        raw = extract(disk.path, part.offset, part.size, tmp_path / f"p{part.number}")
        tool = "partclone.ext4" if part.fs == "ext4" else "partclone.fat32"
        with (fog / f"d1p{part.number}.img").open("wb") as out:
            clone = subprocess.Popen(
                [tool, "-q", "-c", "-s", str(raw), "-o", "-"], stdout=subprocess.PIPE
            )
            subprocess.run(["gzip", "-c"], stdin=clone.stdout, stdout=out, check=True)
            assert clone.wait() == 0
    swap = disk.partitions[2]
    uuid = sh(
        "blkid",
        "-p",
        "-o",
        "value",
        "-s",
        "UUID",
        extract(disk.path, swap.offset, swap.size, tmp_path / "sw"),
    ).strip()
    (fog / "d1.original.swapuuids").write_text(f"/dev/sda3 {uuid}\n")
    repo = repository(tmp_path)
    snap = imported(repo, fog, "fog:")
    target = restored(repo, snap, tmp_path / "restored.img")
    assert filecmp.cmp(disk.path, target, shallow=False)
    for part in disk.partitions:
        fsck(extract(target, part.offset, part.size, tmp_path / f"r{part.number}"), part.fs)


def test_bare_partclone_image_split_and_compressed(tmp_path: Path) -> None:
    need_tools("partclone.ext4", "zstd", "split")
    make_tree(tmp_path / "tree", 3 * MiB, seed=8)
    fs = tmp_path / "fs.img"
    with fs.open("wb") as f:
        f.truncate(40 * MiB)
    sh("mkfs.ext4", "-q", "-d", tmp_path / "tree", fs)
    packed = tmp_path / "packed.zst"
    with packed.open("wb") as out:
        clone = subprocess.Popen(
            ["partclone.ext4", "-q", "-c", "-s", str(fs), "-o", "-"], stdout=subprocess.PIPE
        )
        subprocess.run(["zstd", "-q", "-c"], stdin=clone.stdout, stdout=out, check=True)
        assert clone.wait() == 0
    sh("split", "-b", "500000", "-a", "2", packed, tmp_path / "root.ext4-ptcl-img.zst.")
    repo = repository(tmp_path)
    snap = imported(repo, tmp_path / "root.ext4-ptcl-img.zst.aa", "partclone:")
    assert snap["table"] == "none" and snap["disk_size"] == 40 * MiB
    [part] = snap["partitions"]  # type: ignore[misc]
    assert part["filesystem"] == "ext4"
    target = restored(repo, snap, tmp_path / "restored.img")
    assert filecmp.cmp(fs, target, shallow=False)
    fsck(target, "ext4")


def test_raw_dd_image(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", 2 * MiB, seed=9)
    disk = build_disk(
        DiskSpec("gpt", 40 * MiB, [PartitionSpec("ext4", 0, content=tmp_path / "tree")]),
        tmp_path / "dd.img",
    )
    repo = repository(tmp_path)
    done = blockvault("-r", repo, "import", disk.path, "--json")
    assert done.returncode == 0, done.stderr
    [snap] = json.loads(done.stdout)
    target = restored(repo, snap, tmp_path / "restored.img")
    assert filecmp.cmp(disk.path, target, shallow=False)


def test_something_else_is_refused_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image\n" * 100)
    repo = repository(tmp_path)
    done = blockvault("-r", repo, "import", junk)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "is no image blockvault can import" in done.stderr
    forced = blockvault("-r", repo, "import", junk, "--format", "partclone")
    assert forced.returncode != 0 and "no partclone-image magic" in forced.stderr
    assert "Traceback" not in forced.stderr


@pytest.mark.parametrize("name", ["../evil", "sda1/../../x"])
def test_hostile_names_in_a_clonezilla_directory(tmp_path: Path, name: str) -> None:
    image = tmp_path / "cz"
    image.mkdir()
    (image / "parts").write_text(name + "\n")
    (image / "disk").write_text("sda\n")
    repo = repository(tmp_path)
    done = blockvault("-r", repo, "import", image)
    assert done.returncode != 0 and "is not a plain device name" in done.stderr, done.stderr


def test_redo_rescue_image(tmp_path: Path) -> None:
    """Redo Rescue is not packaged here: the image is built as Rescuezilla's parser
    (parser/redorescue_image.py) reads one: a ``.redo`` JSON with ``drive_bytes``, the
    base64 ``sfdisk -d`` dump and first disk bytes, and per partition a gzip'd
    partclone image split into ``<id>_<part>_NNN.img`` pieces."""
    need_tools("partclone.ext4", "gzip", "split")
    make_tree(tmp_path / "tree", 2 * MiB, seed=10)
    disk = build_disk(
        DiskSpec("mbr", 48 * MiB, [PartitionSpec("ext4", 0, content=tmp_path / "tree")]),
        tmp_path / "redo.img",
    )
    redo = tmp_path / "redoimage"
    redo.mkdir()
    part = disk.partitions[0]
    raw = extract(disk.path, part.offset, part.size, tmp_path / "p1")
    packed = tmp_path / "p1.gz"
    with packed.open("wb") as out:
        clone = subprocess.Popen(
            ["partclone.ext4", "-q", "-c", "-s", str(raw), "-o", "-"], stdout=subprocess.PIPE
        )
        subprocess.run(["gzip", "-c"], stdin=clone.stdout, stdout=out, check=True)
        assert clone.wait() == 0
    sh(
        "split",
        "-b",
        "300000",
        "-d",
        "-a",
        "3",
        "--additional-suffix=.img",
        packed,
        redo / "20240501_sda1_",
    )
    dump = sh("sfdisk", "-d", disk.path).replace(str(disk.path), "/dev/sda")
    meta = {
        "id": "20240501",
        "timestamp": "Wed, 01 May 2024 10:00:00 +0000",
        "drive_bytes": disk.size,
        "sfd_bin": base64.b64encode(dump.encode()).decode(),
        "mbr_bin": base64.b64encode(disk.path.read_bytes()[:512]).decode(),
        "parts": {"sda1": {"fs": "ext4", "bytes": part.size}},
    }
    (redo / "20240501.redo").write_text(json.dumps(meta))
    assert len(list(redo.glob("*.img"))) > 1
    repo = repository(tmp_path)
    snap = imported(repo, redo, "redo:")
    target = restored(repo, snap, tmp_path / "restored.img")
    assert filecmp.cmp(disk.path, target, shallow=False)
    fsck(extract(target, part.offset, part.size, tmp_path / "r1"), "ext4")
    # a missing middle piece is named
    (redo / "20240501_sda1_001.img").unlink()
    done = blockvault("-r", repo, "import", redo / "20240501.redo")
    assert done.returncode != 0 and "20240501_sda1_001.img is missing" in done.stderr, done.stderr
