"""A root filesystem backed up file by file and restored into a freshly made filesystem boots.

The disk is ``blockvault_demo.sample_boot``'s (GPT, GRUB i386-pc in the MBR and the BIOS
boot partition, a Debian kernel and a busybox initramfs on an ext4 root found by UUID).
Its root is mounted read-only and backed up as files; a new disk gets the same
partition table and boot partition (copied) but a root filesystem made anew by
``mkfs.ext4`` with another block size, into which the snapshot is restored. The oracle
is the booted system: the initramfs prints the random token of this disk's marker file
only after finding the root by UUID and mounting it.

The new filesystem keeps the old one's UUID (``mkfs.ext4 -U``), as Relax-and-Recover
does when it recreates filesystems: a real system names its root by UUID in places a
file restore cannot see or should not rewrite (GRUB's core image embedded in the BIOS
boot partition here, the initramfs, /etc/fstab, /etc/crypttab), and keeping the UUID
makes all of them right without running the distribution's boot loader tools.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault_demo.sample_boot import boot, build_boot_disk
from tests.conftest import blockvault, need_tools, needs_root, sh
from tests.files.test_restore import CAPABILITY, state

pytestmark = [pytest.mark.qemu, needs_root]


def root_partition(image: Path) -> tuple[int, int]:
    """(offset, size) in bytes of the last partition, as sfdisk reads the table."""
    table = json.loads(sh("sfdisk", "--json", image))["partitiontable"]
    last = table["partitions"][-1]
    return last["start"] * 512, last["size"] * 512


def superblock(device: str, field: str) -> str:
    found = re.search(rf"^{field}:\s*(.+)$", sh("dumpe2fs", "-h", device), re.M)
    assert found, f"dumpe2fs shows no {field}"
    return found.group(1).strip()


def dress_up(root: Path) -> None:
    """What a real root has beyond a kernel: usr-merge symlinks, a file capability, a
    setuid program, a hard link, device nodes, a FIFO, owners other than root."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    ping = root / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF pretend\n")
    os.setxattr(ping, "security.capability", CAPABILITY)
    su = root / "usr/bin/su"
    su.write_bytes(b"\x7fELF pretend su\n")
    os.chmod(su, 0o4755)
    os.link(su, root / "usr/bin/su.hardlink")
    (root / "dev").mkdir()
    os.mknod(root / "dev/console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(root / "dev/initctl", 0o600)
    home = root / "home/ann"
    home.mkdir(parents=True)
    (home / "notes.txt").write_text("ünïcødé\n")
    for path in (home, home / "notes.txt"):
        os.chown(path, 1000, 1000)
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)


def test_a_root_restored_file_by_file_into_a_fresh_filesystem_boots(
    tmp_path: Path, loop: Callable[..., str], mounted: Callable[..., Path]
) -> None:
    need_tools("qemu-system-x86_64", "sfdisk", "mkfs.ext4", "dumpe2fs", "e2fsck", "fallocate")
    disk = build_boot_disk("bios", tmp_path / "source.img")
    offset, size = root_partition(disk.path)
    source_dev = loop(disk.path, offset=offset, size=size)
    source = mounted(source_dev, tmp_path / "source")
    dress_up(source)
    sh("mount", "-o", "remount,ro", source)
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    done = blockvault("-r", repo, "backup", source, "--json")
    assert done.returncode == 0, done.stderr
    snapshot = json.loads(done.stdout)["id"]

    # The new disk: same table, MBR and BIOS boot partition; the root made anew.
    new = tmp_path / "new.img"
    sh("cp", "--sparse=always", disk.path, new)
    sh("fallocate", "--punch-hole", "--offset", str(offset), "--length", str(size), new)
    new_dev = loop(new, offset=offset, size=size)
    sh("mkfs.ext4", "-q", "-b", "1024", "-U", disk.root_uuid, "-L", "bvroot", new_dev)
    assert superblock(new_dev, "Block size") != superblock(source_dev, "Block size")
    assert superblock(new_dev, "Directory Hash Seed") != superblock(
        source_dev, "Directory Hash Seed"
    )
    target = mounted(new_dev, tmp_path / "target")
    assert not (target / "boot").exists()

    done = blockvault("-r", repo, "restore", f"{snapshot}:{source}", target)
    assert done.returncode == 0, done.stderr

    ours, theirs = state(source), state(target)
    assert theirs | {".": ours["."]} == ours
    assert os.stat(target / "usr/bin/su").st_ino == os.stat(target / "usr/bin/su.hardlink").st_ino
    sh("umount", target)
    sh("e2fsck", "-fn", new_dev)  # clean: exits non-zero on any problem
    booted = boot(new, "bios", expect_token=disk.token, timeout=240)
    assert booted.booted, booted.reason
