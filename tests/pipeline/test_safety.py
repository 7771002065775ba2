"""Every refusal, through the real command line: one line on stderr, an exit code,
no traceback, and nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault.repo import format as fmt
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, demo_disk
from tests.conftest import blockvault as run
from tests.conftest import kill_when_stopped, needs_root, sh

MiB = 1024 * 1024


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    tmp = tmp_path_factory.mktemp("safety")
    content = tmp / "content"
    content.mkdir()
    (content / "hello.txt").write_text("hello\n" * 1000)
    spec = DiskSpec(
        "gpt",
        64 * MiB,
        [
            PartitionSpec("fat32", 36 * MiB, "ESP", content),
            PartitionSpec("ext4", 0, "root", content),
        ],
    )
    return build_disk(spec, tmp / "small.img")


@pytest.fixture(scope="module")
def repo(small_disk: BuiltDisk, tmp_path_factory: pytest.TempPathFactory) -> Path:
    location = tmp_path_factory.mktemp("repo") / "repo"
    assert run("-r", location, "init").returncode == 0
    proc = run("-r", location, "backup", small_disk.path)
    assert proc.returncode == 0, proc.stderr
    return location


def test_backup_prints_snapshot_id_and_json(repo: Path, small_disk: BuiltDisk) -> None:
    proc = run("-r", repo, "backup", small_disk.path, "--tag", "t1", "--json")
    assert proc.returncode == 0
    snap = json.loads(proc.stdout)
    assert snap["tags"] == ["t1"] and len(snap["id"]) == 64
    listed = json.loads(run("-r", repo, "snapshots", "--json").stdout)
    assert snap["id"] in [s["id"] for s in listed]
    info = json.loads(run("-r", repo, "info", snap["id"][:10], "--json").stdout)
    assert info["snapshot"]["id"] == snap["id"]
    assert [r["region"] for r in info["regions"]] == ["boot areas", "partition 1", "partition 2"]
    human = run("-r", repo, "info", "latest")
    assert human.returncode == 0 and "fat32" in human.stdout and "ext4" in human.stdout
    inspect = json.loads(run("inspect", small_disk.path, "--json").stdout)
    assert inspect["table"]["kind"] == "gpt"


def test_missing_repository(tmp_path: Path) -> None:
    one_line_error(run("-r", tmp_path / "nope", "snapshots"), 3, "no repository")
    one_line_error(run("snapshots", env={"BLOCKVAULT_REPO": ""}), 2, "-r REPO")


def test_unknown_snapshot(repo: Path, tmp_path: Path) -> None:
    one_line_error(run("-r", repo, "restore", "deadbeef", tmp_path / "t.img"), 3, "deadbeef")
    one_line_error(run("-r", repo, "info", "zz"), 3, "no snapshot")


def test_bad_sources(repo: Path, small_disk: BuiltDisk, tmp_path: Path) -> None:
    one_line_error(run("-r", repo, "backup", tmp_path / "missing.img"), 2, "no such file")
    one_line_error(run("-r", repo, "backup", "/dev/null"), 2, "not a block device")
    truncated = tmp_path / "truncated.img"
    truncated.write_bytes(small_disk.path.read_bytes()[: 20 * MiB])
    one_line_error(run("-r", repo, "backup", truncated), 2, "truncated")
    one_line_error(run("-r", repo, "backup", small_disk.path, "-p", "7"), 2, "no partition 7")
    one_line_error(
        run("-r", repo, "backup", small_disk.path, "--compression", "gzip"), 2, "compression"
    )


def test_target_too_small_is_refused_before_writing(repo: Path, tmp_path: Path) -> None:
    target = tmp_path / "small-target.img"
    target.write_bytes(b"\x11" * (10 * MiB))
    before = digest(target)
    one_line_error(run("-r", repo, "restore", "latest", target, "--yes"), 2, "too small", "missing")
    assert digest(target) == before


def test_non_empty_target_needs_yes(repo: Path, small_disk: BuiltDisk, tmp_path: Path) -> None:
    target = tmp_path / "full.img"
    target.write_bytes(b"\x22" * small_disk.size)
    before = digest(target)
    one_line_error(run("-r", repo, "restore", "latest", target), 2, "--yes")
    assert digest(target) == before
    proc = run("-r", repo, "restore", "latest", target, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert run("-r", repo, "verify", "latest", "--against", target).returncode == 0


def test_corrupt_chunk_is_reported_and_never_written(small_disk: BuiltDisk, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run("-r", repo, "init")
    assert run("-r", repo, "backup", small_disk.path).returncode == 0
    chunk = next(f for f in (repo / fmt.DATA_DIR).rglob("*") if f.is_file())
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    chunk.write_bytes(bytes(raw))
    proc = run("-r", repo, "verify")
    assert proc.returncode == 4
    assert "damaged" in proc.stderr and "FAILED" in proc.stdout
    target = tmp_path / "t.img"
    one_line_error(run("-r", repo, "restore", "latest", target), 4, chunk.name[:12])


def test_verify_against_detects_a_changed_byte(
    repo: Path, small_disk: BuiltDisk, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.img"
    sh("cp", "--sparse=always", small_disk.path, copy)
    assert run("-r", repo, "verify", "latest", "--against", copy).returncode == 0
    root = small_disk.partitions[1]
    with open(copy, "r+b") as f:  # the ext4 superblock is always in use
        f.seek(root.offset + 1024 + 100)
        byte = f.read(1)
        f.seek(root.offset + 1024 + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = run("-r", repo, "verify", "latest", "--against", copy)
    assert proc.returncode == 4
    assert str(root.offset + 1024 + 100) in proc.stderr


@needs_root
def test_mounted_target_is_refused(
    repo: Path,
    small_disk: BuiltDisk,
    tmp_path: Path,
    loop: Callable[..., str],
    mounted: Callable[..., Path],
) -> None:
    target = tmp_path / "target.img"
    sh("cp", "--sparse=always", small_disk.path, target)
    root = small_disk.partitions[1]
    part = loop(target, offset=root.offset, size=root.size)
    mounted(part, tmp_path / "mnt")
    before = digest(target)
    one_line_error(
        run("-r", repo, "restore", "latest", target, "--yes"), 2, "in use", str(tmp_path / "mnt")
    )
    disk = loop(target)
    one_line_error(run("-r", repo, "restore", "latest", disk, "--yes"), 2, "in use")
    assert digest(target) == before


@needs_root
def test_disk_holding_the_repository_is_refused(
    small_disk: BuiltDisk,
    tmp_path: Path,
    loop: Callable[..., str],
    mounted: Callable[..., Path],
) -> None:
    holder = tmp_path / "holder.img"
    with open(holder, "wb") as f:
        f.truncate(128 * MiB)
    dev = loop(holder)
    sh("mkfs.ext4", "-q", dev)
    mnt = mounted(dev, tmp_path / "mnt")
    repo = mnt / "repo"
    assert run("-r", repo, "init").returncode == 0
    assert run("-r", repo, "backup", small_disk.path).returncode == 0
    one_line_error(run("-r", repo, "restore", "latest", dev, "--yes"), 2, "holds the repository")
    one_line_error(run("-r", repo, "restore", "latest", holder, "--yes"), 2, "holds the repository")
    one_line_error(
        run("-r", repo, "restore", "latest", repo / "inside.img"), 2, "holds the repository"
    )


@needs_root
@pytest.mark.parametrize("sector_size", [512, 4096])
def test_loop_device_source_and_target(
    sector_size: int, tmp_path: Path, loop: Callable[..., str]
) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (content / "a.bin").write_bytes(os.urandom(3 * MiB))
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(96 * MiB)
    source = loop(image, sector_size=sector_size)
    sh("sfdisk", "--quiet", source, input="label: gpt\n,32M,L\n,,L\n")
    layout = json.loads(sh("sfdisk", "--json", source))["partitiontable"]
    parts = layout["partitions"]
    p1 = loop(image, offset=parts[0]["start"] * sector_size, size=parts[0]["size"] * sector_size)
    sh("mkfs.ext4", "-q", "-d", content, p1)
    repo = tmp_path / "repo"
    run("-r", repo, "init")
    proc = run("-r", repo, "backup", source, "--json")
    assert proc.returncode == 0, proc.stderr
    snap = json.loads(proc.stdout)
    assert snap["sector_size"] == sector_size
    out_image = tmp_path / "out.img"
    with open(out_image, "wb") as f:
        f.truncate(96 * MiB)
    target = loop(out_image, sector_size=sector_size)
    proc = run("-r", repo, "restore", "latest", target, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert (
        json.loads(sh("sfdisk", "--json", target))["partitiontable"]["partitions"][0]["start"]
        == parts[0]["start"]
    )
    assert run("-r", repo, "verify", "latest", "--against", target).returncode == 0
    restored_p1 = loop(
        out_image, offset=parts[0]["start"] * sector_size, size=parts[0]["size"] * sector_size
    )
    sh("e2fsck", "-fn", restored_p1)
    if sector_size == 4096:
        other_image = tmp_path / "other.img"
        with open(other_image, "wb") as f:
            f.truncate(96 * MiB)
        other = loop(other_image, sector_size=512)
        # a 512-byte-sector disk gets the table rescaled (see tests/disk/test_sectors.py)
        proc = run("-r", repo, "restore", "latest", other, "--yes")
        assert proc.returncode == 0, proc.stderr
        sh("sfdisk", "--verify", other)
        moved = json.loads(sh("sfdisk", "--json", other))["partitiontable"]["partitions"][0]
        assert (moved["start"], moved["size"]) == (parts[0]["start"] * 8, parts[0]["size"] * 8)
        converted_p1 = loop(other_image, offset=moved["start"] * 512, size=moved["size"] * 512)
        sh("e2fsck", "-fn", converted_p1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    return demo_disk(tmp_path_factory.mktemp("demo") / "demo.img")


@pytest.mark.parametrize(
    "where",
    [
        f"every=1,under={fmt.DATA_DIR}/",  # the first chunk
        f"every=40,under={fmt.DATA_DIR}/",  # half way through the chunks
        f"every=1,under={fmt.INDEX_DIR}/",  # all chunks stored, the index not yet
        f"every=1,under={fmt.SNAPSHOT_DIR}/",  # the index stored, the manifest not yet
    ],
)
def test_killed_backup_leaves_a_consistent_repository(
    where: str, demo: BuiltDisk, tmp_path: Path
) -> None:
    """SIGKILL at a chosen write (frozen there by $BLOCKVAULT_FAULTS, storage/faulty.py,
    then killed: no cleanup runs): no snapshot, a repository that checks clean, a rerun
    that completes and restores byte for byte, and a marker that unlock clears."""
    disk = demo
    repo = tmp_path / "repo"
    run("-r", repo, "init")
    command = ["blockvault", "-r", str(repo), "backup", str(disk.path)]
    assert kill_when_stopped(command, f"signal=STOP,operations=write,{where}")
    assert json.loads(run("-r", repo, "snapshots", "--json").stdout) == []
    assert run("-r", repo, "check").returncode == 0
    rerun = run("-r", repo, "backup", disk.path, "--json")
    assert rerun.returncode == 0, rerun.stderr
    target = tmp_path / "restored.img"
    assert run("-r", repo, "restore", "latest", target).returncode == 0
    assert run("-r", repo, "verify", "latest", "--against", disk.path).returncode == 0
    assert digest(target) == digest(disk.path)
    unlocked = run("-r", repo, "unlock", "--json")
    assert unlocked.returncode == 0, unlocked.stderr
    assert not list((repo / fmt.SESSION_DIR).iterdir())


@needs_root
def test_disks_lists_loop_devices(small_disk: BuiltDisk, loop: Callable[..., str]) -> None:
    dev = loop(small_disk.path)
    proc = run("disks", "--json")
    assert proc.returncode == 0, proc.stderr
    found = {d["path"]: d for d in json.loads(proc.stdout)}
    assert dev in found
    layout = found[dev]["layout"]
    assert layout["table"]["kind"] == "gpt"
    assert [p["fs"]["type"] for p in layout["partitions"]] == ["fat32", "ext4"]
    expected = json.loads(sh("sfdisk", "--json", dev))["partitiontable"]["partitions"]
    assert [p["partition"]["start"] // 512 for p in layout["partitions"]] == [
        p["start"] for p in expected
    ]
    human = run("disks")
    assert human.returncode == 0 and dev in human.stdout


@needs_root
def test_backup_of_a_mounted_read_write_filesystem_is_refused(
    small_disk: BuiltDisk,
    repo: Path,
    tmp_path: Path,
    loop: Callable[..., str],
    mounted: Callable[..., Path],
) -> None:
    """ext4 on a plain partition has no snapshot underneath: refused, the options named
    (tests/pipeline/test_live.py reads it with --live=unsafe-reread)."""
    image = tmp_path / "live.img"
    sh("cp", "--sparse=always", small_disk.path, image)
    root = small_disk.partitions[1]
    mounted(loop(image, offset=root.offset, size=root.size), tmp_path / "mnt")
    proc = run("-r", repo, "backup", image)
    one_line_error(proc, 2, "mounted read-write", "--live=unsafe-reread", "LVM")
    sh("mount", "-o", "remount,ro", tmp_path / "mnt")
    quiet = run("-r", repo, "backup", image)
    assert quiet.returncode == 0 and "read-write" not in quiet.stderr
