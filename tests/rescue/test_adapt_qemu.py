"""Universal restore under QEMU: a real Debian system, installed for a BIOS machine
with a virtio disk (and booted there once), is restored onto an NVMe disk of a UEFI
machine with empty NVRAM. Without --adapt it fails where it really does (no boot
entry nor removable loader for the firmware; on a BIOS machine with NVMe, no driver
for the root disk in the initramfs); with --adapt it reaches its login prompt on
NVMe, BIOS and UEFI (OVMF with a fresh copy of its variable store: no boot entry).

The adapt runs here, on loop devices (running it in a TCG guest instead took over
25 minutes, the initramfs alone). It never mounts the EFI System Partition (this
kernel has no vfat): mtools writes it. Guests run under TCG unless KVM can run
them; the Debian disk is cached with the rescue build cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from blockvault.interop.boot import BootCheck, Firmware, Machine, default_accel, watch_guest
from blockvault.rescue.build import DEFAULT_CACHE
from blockvault_demo.sample_debian import DISK_BYTES, DebianDisk, build_debian_disk
from tests.conftest import IS_ROOT, blockvault, need_tools, sh

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT, reason="mmdebstrap and loop devices need root"),
]

CACHE = Path(os.environ.get("BLOCKVAULT_RESCUE_CACHE", str(DEFAULT_CACHE))).expanduser()
BOOT_TIMEOUT = 900.0  # seconds: OVMF, GRUB, the kernel and systemd under TCG
LOGIN = "login:"
# where a UEFI machine with empty NVRAM and no loader at EFI/BOOT/BOOTX64.EFI ends up
NO_LOADER = ("Shell>", "No bootable option", "UEFI Interactive Shell")
# where an initramfs without the root disk's driver ends up
NO_ROOT_DEVICE = ("ALERT!", "Gave up waiting for root file system device")
# where a GRUB that found no menu ends up
GRUB_PROMPT = ("grub>", "grub rescue>")
ESP_OFFSET = 2 * 1024 * 1024  # sample_debian's layout: 1 MiB gap, 1 MiB BIOS boot, then ESP


@pytest.fixture(scope="module")
def debian() -> DebianDisk:
    need_tools("mmdebstrap", "qemu-system-x86_64", "mdir")
    return build_debian_disk(CACHE)


@pytest.fixture(scope="module")
def repo(debian: DebianDisk, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("adapt") / "repo"
    for args in (("-r", repo, "init"), ("-r", repo, "backup", debian.path)):
        done = blockvault(*args)
        assert done.returncode == 0, done.stderr
    return repo


@pytest.fixture(scope="module")
def restored_as_is(repo: Path) -> Path:
    """The snapshot restored without --adapt onto a blank disk."""
    target = repo.parent / "as-is.img"
    with open(target, "wb") as file:
        file.truncate(DISK_BYTES)
    done = blockvault("-r", repo, "restore", "latest", target, "--yes")
    assert done.returncode == 0, done.stderr
    return target


def boot(disk: Path, firmware: Firmware, markers: tuple[str, ...]) -> tuple[BootCheck, str]:
    """Boot ``disk`` as the machine's NVMe disk; what it showed, and its console."""
    log = disk.with_name(f"{disk.stem}-{firmware}-nvme.console")  # kept for a failing test
    check = watch_guest(
        Machine(firmware, default_accel(), memory=1024, cpus=1, controller="nvme"),
        disk,
        disk_format="raw",
        markers=markers,
        timeout=BOOT_TIMEOUT,
        console_log=log,
    )
    return check, log.read_bytes().decode(errors="replace")


def test_without_adapt_uefi_finds_no_boot_loader(restored_as_is: Path) -> None:
    check, console = boot(restored_as_is, "uefi", (LOGIN, *NO_LOADER))
    assert check.marker in NO_LOADER, (check, console[-2000:])
    assert LOGIN not in console


def test_without_adapt_bios_on_nvme_finds_no_root_disk(
    restored_as_is: Path, debian: DebianDisk
) -> None:
    # the BIOS boot loader still works (SeaBIOS reads NVMe), the initramfs has no nvme driver
    check, console = boot(restored_as_is, "bios", (LOGIN, *NO_ROOT_DEVICE))
    assert check.marker in NO_ROOT_DEVICE, (check, console[-2000:])
    assert f"UUID={debian.root_uuid} does not exist" in console or "Gave up" in console


def adapted(repo: Path, firmware: Firmware) -> tuple[Path, dict[str, list[str]]]:
    """The snapshot restored with --adapt for ``firmware`` onto a blank disk image
    (here, on loop devices); the disk and the adapt report."""
    target = repo.parent / f"adapted-{firmware}.img"
    with open(target, "wb") as file:
        file.truncate(DISK_BYTES)
    done = blockvault(
        "-r", repo, "restore", "latest", target, "--yes",
        "--adapt", "--adapt-firmware", firmware, "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, list[str]] = json.loads(done.stdout)["adapt"]
    return target, report


def test_with_adapt_the_system_boots_from_nvme(repo: Path, debian: DebianDisk) -> None:
    target, report = adapted(repo, "bios")
    changes = report["changes"]
    assert f"fstab: /dev/vda2 -> UUID={debian.esp_uuid}" in changes
    assert any(c.startswith("initramfs: MODULES=most") for c in changes), changes
    assert any(c.startswith("GRUB: installed for BIOS") for c in changes), changes
    check, console = boot(target, "bios", (LOGIN, *NO_ROOT_DEVICE))
    assert check.marker == LOGIN, (check, console[-2000:])
    assert f"BLOCKVAULT-ADAPT {debian.token}" in console


def test_with_adapt_the_system_boots_uefi_from_nvme(repo: Path, debian: DebianDisk) -> None:
    target, report = adapted(repo, "uefi")
    assert any("EFI/BOOT/BOOTX64.EFI" in c for c in report["changes"]), report
    assert any(s.startswith("UEFI boot entry: not written") for s in report["skipped"])
    # the loader is where UEFI looks on a disk without boot entries (read by mtools)
    listing = sh("mdir", "-b", "-i", f"{target}@@{ESP_OFFSET}", "::/EFI/BOOT")
    assert "BOOTX64.EFI" in listing.upper(), listing
    check, console = boot(target, "uefi", (LOGIN, *NO_LOADER, *NO_ROOT_DEVICE, *GRUB_PROMPT))
    assert check.marker == LOGIN, (check, console[-2000:])
    assert f"BLOCKVAULT-ADAPT {debian.token}" in console
