"""backup --system: the system's disk and partitions, from real mounts of a sample disk."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault.disk.system import choose_system
from blockvault.errors import SourceError
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk
from tests.conftest import blockvault, need_tools

MiB = 1 << 20


@pytest.fixture
def system(
    tmp_path: Path, loop: Callable[..., str], mounted: Callable[..., Path]
) -> tuple[Path, Path]:
    """GPT: ESP, ext4 /boot, ext4 /, BIOS boot, ext4 data; / and /boot mounted under a temp dir."""
    need_tools("sfdisk", "mkfs.fat", "mke2fs")
    disk = build_disk(
        DiskSpec(
            "gpt",
            120 * MiB,
            [
                PartitionSpec("fat32", 36 * MiB, "ESP", type="uefi"),
                PartitionSpec("ext4", 16 * MiB, "BOOT"),
                PartitionSpec("ext4", 32 * MiB, "ROOT"),
                PartitionSpec("empty", 1 * MiB, type="bios"),
                PartitionSpec("ext4", 0, "DATA"),
            ],
        ),
        tmp_path / "sys.img",
    )
    root = tmp_path / "root"
    p = {q.number: q for q in disk.partitions}
    mounted(loop(disk.path, offset=p[3].offset, size=p[3].size), root)
    mounted(loop(disk.path, offset=p[2].offset, size=p[2].size), root / "boot")
    return disk.path, root


def test_choice_is_root_boot_and_esp(system: tuple[Path, Path]) -> None:
    image, root = system
    choice = choose_system(root)
    assert choice.disk == image
    assert choice.partitions == (1, 2, 3, 4)
    assert choice.reasons == ("EFI System", "mounted on /boot", "mounted on /", "BIOS boot")


def test_backup_system_images_exactly_those(system: tuple[Path, Path], tmp_path: Path) -> None:
    image, root = system
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    # the running system's ext4 has no snapshot underneath (tests/pipeline/test_live.py)
    refused = blockvault("-r", repo, "backup", "--system", "--root", root)
    assert refused.returncode == 2 and "--live=unsafe-reread" in refused.stderr
    out = blockvault(
        "-r", repo, "backup", "--system", "--root", root, "--live=unsafe-reread", "--json"
    )
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["live"] == "unsafe-reread"
    imaged = sorted(p["number"] for p in snap["partitions"] if p.get("imaged", True))
    assert imaged == [1, 2, 3, 4], snap["partitions"]
    shown = blockvault("inspect", "--system", "--root", root)
    assert shown.returncode == 0, shown.stderr
    assert "mounted on /boot" in shown.stdout
    as_json = json.loads(blockvault("inspect", "--system", "--root", root, "--json").stdout)
    assert as_json["disk"] == str(image) and as_json["partitions"] == [1, 2, 3, 4]
    both = blockvault("inspect", "--system", image)
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1


def test_nothing_mounted_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nothing is mounted"):
        choose_system(tmp_path)
