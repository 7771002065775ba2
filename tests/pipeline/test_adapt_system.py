"""``restore --adapt`` without booting anything: the refusal before writing, the
fstab rewrite read back by debugfs, the steps a system without GRUB or an
initramfs generator cannot take, and a hostile root whose /boot leads out of it.
(The boot itself: tests/rescue/test_adapt_qemu.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT, blockvault, need_tools, sh

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT, reason="adapt mounts the restored system: needs root"),
]

MIB = 1 << 20
DISK = 64 * MIB
ROOT_START, ROOT_SIZE = 1 * MIB, 40 * MIB  # partition 1: ext4, the Linux root
BOOT_START, BOOT_SIZE = 41 * MIB, 16 * MIB  # partition 2: ext4, /boot
LAYOUT = (
    "label: gpt\n"
    "start=2048, size=81920, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"
    "start=83968, size=32768, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"
)


def make_disk(path: Path, tree: Path | None) -> None:
    """A GPT disk: an ext4 root made from ``tree`` (or FAT, without one), an ext4 /boot.
    (Not a FAT ESP: this host's kernel may lack vfat; BIOS adapting leaves it alone.)"""
    need_tools("sfdisk", "mkfs.ext4", "mkfs.fat", "debugfs", "blkid")
    with open(path, "wb") as file:
        file.truncate(DISK)
    sh("sfdisk", "--quiet", path, input=LAYOUT)
    if tree is None:
        sh("mkfs.fat", f"--offset={ROOT_START // 512}", path, str(ROOT_SIZE // 1024))
    else:
        ext4(path, ROOT_START, ROOT_SIZE, tree)
    ext4(path, BOOT_START, BOOT_SIZE, None)


def ext4(image: Path, start: int, size: int, tree: Path | None) -> None:
    content = ["-d", str(tree)] if tree else []
    sh("mkfs.ext4", "-q", *content, "-E", f"offset={start}", image, f"{size // 1024}k")


def linux_tree(tmp_path: Path, fstab: str) -> Path:
    tree = tmp_path / "tree"
    for folder in ("etc", "usr/bin", "boot", "dev", "proc", "sys", "run"):
        (tree / folder).mkdir(parents=True)
    (tree / "etc" / "fstab").write_text(fstab)
    return tree


def backed_up(tmp_path: Path, tree: Path | None) -> Path:
    repo, disk = tmp_path / "repo", tmp_path / "source.img"
    make_disk(disk, tree)
    for args in (("-r", repo, "init"), ("-r", repo, "backup", disk)):
        done = blockvault(*args)
        assert done.returncode == 0, done.stderr
    return repo


def blank(path: Path, fill: bytes = b"\0") -> Path:
    path.write_bytes(fill * DISK)
    return path


def read_back(image: Path, path: str) -> str:
    """A file of the restored root, read by e2fsprogs (not by us)."""
    return sh("debugfs", "-R", f"cat {path}", f"{image}?offset={ROOT_START}")


def adapt(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """``blockvault ARGS``, its temporary folders (where adapt mounts) in one of the
    target's: another test's mounts are not ours."""
    target = Path(args[4])
    private = target.with_name("tmp")
    private.mkdir(exist_ok=True)
    return blockvault(*args, env={"TMPDIR": str(private)})


def assert_nothing_left(target: Path) -> None:
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    assert not [p for p in points if p.startswith(str(target.with_name("tmp")))]
    assert sh("losetup", "--associated", target).strip() == ""


def test_device_names_in_fstab_become_uuids_and_missing_tools_are_named(
    tmp_path: Path,
) -> None:
    fstab = (
        "# static file system information\n"
        "/dev/sda1 / ext4 errors=remount-ro 0 1\n"
        "/dev/sda2\t/boot ext4 defaults 0 2\n"
        "UUID=0000-0000 /mnt/elsewhere vfat noauto 0 0\n"
        "proc /proc proc defaults 0 0\n"
    )
    repo = backed_up(tmp_path, linux_tree(tmp_path, fstab))
    target = blank(tmp_path / "target.img")
    done = adapt(
        "-r", repo, "restore", "latest", target, "--yes", "--adapt", "--adapt-firmware", "bios"
    )
    assert done.returncode == 0, done.stderr
    root_uuid = sh("blkid", "-p", "-O", str(ROOT_START), "-o", "value", "-s", "UUID", target)
    boot_uuid = sh("blkid", "-p", "-O", str(BOOT_START), "-o", "value", "-s", "UUID", target)
    root_uuid, boot_uuid = root_uuid.strip(), boot_uuid.strip()
    assert read_back(target, "/etc/fstab") == (
        "# static file system information\n"
        f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n"
        f"UUID={boot_uuid}\t/boot ext4 defaults 0 2\n"
        "UUID=0000-0000 /mnt/elsewhere vfat noauto 0 0\n"
        "proc /proc proc defaults 0 0\n"
    )
    assert read_back(target, "/etc/fstab.before-adapt") == fstab
    out = done.stdout
    assert "adapted the system on " in out and "for BIOS: 2 changes" in out, out
    assert f"~ fstab: /dev/sda1 -> UUID={root_uuid}" in out
    assert f"~ fstab: /dev/sda2 -> UUID={boot_uuid}" in out
    assert "- fstab: UUID=0000-0000 is not on the restored disk (left as is)" in out
    assert "- initramfs: the restored system has neither update-initramfs nor dracut" in out
    assert "- boot loader: the restored system has no grub-install (left as is)" in out
    assert_nothing_left(target)


def test_json_carries_the_changes(tmp_path: Path) -> None:
    repo = backed_up(tmp_path, linux_tree(tmp_path, "/dev/vda1 / ext4 defaults 0 1\n"))
    target = blank(tmp_path / "target.img")
    done = adapt(
        "-r", repo, "restore", "latest", target, "--yes", "--adapt",
        "--adapt-firmware", "uefi", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["written_bytes"] > 0
    assert report["adapt"]["firmware"] == "uefi"
    assert [c.split(" -> ")[0] for c in report["adapt"]["changes"]] == ["fstab: /dev/vda1"]


def test_a_snapshot_without_a_linux_root_is_refused_before_writing(tmp_path: Path) -> None:
    repo = backed_up(tmp_path, None)
    target = blank(tmp_path / "target.img", b"\xa5")
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    done = adapt("-r", repo, "restore", "latest", target, "--yes", "--adapt")
    assert done.returncode == 2, done.stderr
    assert "no partition holds a Linux root filesystem" in done.stderr
    assert "restore it without --adapt" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == before


def test_a_boot_folder_that_is_a_link_out_of_the_image_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("host data\n")
    tree = linux_tree(
        tmp_path, "/dev/sda1 / ext4 defaults 0 1\n/dev/sda2 /boot vfat defaults 0 2\n"
    )
    (tree / "boot").rmdir()
    (tree / "boot").symlink_to(outside)  # absolute: on the host it leads out of the image
    repo = backed_up(tmp_path, tree)
    target = blank(tmp_path / "target.img")
    done = adapt("-r", repo, "restore", "latest", target, "--yes", "--adapt")
    assert done.returncode == 1, done.stderr
    assert "/boot passes a symbolic link; refused" in done.stderr
    assert "Traceback" not in done.stderr
    assert not os.path.ismount(outside)
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]
    assert_nothing_left(target)


def test_uefi_without_an_esp_says_so_and_creates_none(tmp_path: Path) -> None:
    tree = linux_tree(tmp_path, "/dev/sda1 / ext4 defaults 0 1\n")
    for folder in ("usr/sbin", "usr/lib/grub/x86_64-efi"):
        (tree / folder).mkdir(parents=True)
    (tree / "usr/sbin/grub-install").write_text("")  # present, never run: no ESP to install in
    repo = backed_up(tmp_path, tree)
    target = blank(tmp_path / "target.img")
    done = adapt(
        "-r", repo, "restore", "latest", target, "--yes", "--adapt", "--adapt-firmware", "uefi"
    )
    assert done.returncode == 0, done.stderr
    assert "GRUB: no EFI System Partition on " in done.stdout, done.stdout
    assert "UEFI cannot boot it (none is created)" in done.stdout
    assert sh("sfdisk", "--dump", target).count("start=") == 2  # still two partitions
    assert_nothing_left(target)
