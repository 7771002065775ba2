"""A restored system disk boots: BIOS, GRUB, kernel and root found through restored bytes.

The disk is built by ``blockvault_demo.sample_boot`` (GRUB i386-pc in the MBR and BIOS boot
partition, a Debian kernel and a busybox initramfs on ext4) and booted under QEMU (TCG,
about 15 s). The oracle is the booted system itself: its initramfs prints the random
token of this disk's marker file only after finding the root filesystem by UUID. The
full matrix (UEFI, clone, smaller disks, 4096-byte sectors) is bench/boot_acceptance.py.
Nothing here needs root: the disk is an image file and QEMU emulates the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockvault.pipeline.backup import backup
from blockvault.pipeline.restore import restore
from blockvault.repo import Repository
from blockvault_demo.sample_boot import BootDisk, boot, build_boot_disk
from tests.conftest import need_tools, sh
from tests.fstree import extract, fsck

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def bios_disk(tmp_path_factory: pytest.TempPathFactory) -> BootDisk:
    need_tools("qemu-system-x86_64")
    return build_boot_disk("bios", tmp_path_factory.mktemp("boot") / "bios.img")


def test_bios_disk_restored_onto_a_larger_disk_boots(bios_disk: BootDisk, tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    snapshot = backup(repo, str(bios_disk.path))
    target = tmp_path / "larger.img"
    with open(target, "wb") as f:
        f.truncate(bios_disk.size * 2)

    result = restore(repo, snapshot, str(target), confirm=lambda _: True)

    assert result.gpt_moved
    assert "No problems found" in sh("sgdisk", "-v", target)
    table = json.loads(sh("sfdisk", "--json", target))["partitiontable"]
    root = table["partitions"][-1]
    fsck(extract(target, root["start"] * 512, root["size"] * 512, tmp_path / "root.ext4"), "ext4")
    booted = boot(target, "bios", expect_token=bios_disk.token, timeout=240)
    assert booted.booted, booted.reason
