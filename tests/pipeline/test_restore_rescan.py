"""A whole-disk restore onto a block device has the kernel take up the restored
partition table: the partitions have devices right after ``restore``, holding the
restored filesystems, and partitions of the table it replaced are gone."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault.disk.rescan import kernel_partitions
from tests.conftest import IS_ROOT, blockvault, need_tools, sh

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT, reason="loop devices need root"),
]

MIB = 1 << 20
DISK = 48 * MIB
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
RESTORED = f"label: gpt\nstart=2048, size=16MiB, type={LINUX}\nsize=20MiB, type={LINUX}\n"
# what the target held before: four partitions, none where the restored ones are
OLD = "label: dos\n" + "size=8MiB, type=83\n" * 4
UUIDS = ("6f1d4d0e-2b83-4c55-9f0a-0d6c3c1f2a01", "6f1d4d0e-2b83-4c55-9f0a-0d6c3c1f2a02")


@pytest.fixture
def scanned_loop() -> Iterator[list[str]]:
    """Attach images to loop devices with partition scanning; detached after."""
    attached: list[str] = []
    yield attached
    for device in attached:
        subprocess.run(["losetup", "--detach", device], capture_output=True, check=False)


def attach(image: Path, attached: list[str]) -> str:
    device = sh("losetup", "--find", "--show", "--partscan", image).strip()
    attached.append(device)
    return device


def test_restore_has_the_kernel_show_the_restored_partitions(
    tmp_path: Path, scanned_loop: list[str]
) -> None:
    need_tools("sfdisk", "mkfs.ext4", "blkid", "partx")
    source = tmp_path / "source.img"
    with open(source, "wb") as file:
        file.truncate(DISK)
    sh("sfdisk", "--quiet", source, input=RESTORED)
    for (start, size), uuid in zip(((1, 16), (17, 20)), UUIDS, strict=True):
        sh("mkfs.ext4", "-q", "-U", uuid, "-E", f"offset={start * MIB}", source, f"{size}M")
    repo = tmp_path / "repo"
    for args in (("-r", repo, "init"), ("-r", repo, "backup", source)):
        done = blockvault(*args)
        assert done.returncode == 0, done.stderr

    target_image = tmp_path / "target.img"
    with open(target_image, "wb") as file:
        file.truncate(DISK)
    sh("sfdisk", "--quiet", target_image, input=OLD)
    target = attach(target_image, scanned_loop)
    subprocess.run(["partx", "--add", target], capture_output=True, check=False)
    assert kernel_partitions(target) == {1, 2, 3, 4}  # the old table, as the kernel sees it

    done = blockvault("-r", repo, "restore", "latest", target, "--yes")
    assert done.returncode == 0, done.stderr
    assert "partition table" not in done.stderr, done.stderr  # no warning
    assert kernel_partitions(target) == {1, 2}
    for number, uuid in enumerate(UUIDS, start=1):
        device = f"{target}p{number}"
        assert Path(device).is_block_device()
        probed = sh("blkid", "-p", "-o", "value", "-s", "UUID", device).strip()
        assert probed == uuid
        sh("e2fsck", "-fn", device)
