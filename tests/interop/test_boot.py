"""Booting a snapshot without restoring it: ``verify --boot`` and ``boot``.

The disks are ``blockvault_demo.sample_boot``'s (firmware -> GRUB -> Linux -> an
initramfs that finds the root filesystem by UUID and prints a random token from it),
backed up into a repository. The oracle is the booted system itself: the token is
printed only after the whole boot chain was read through the NBD export of the
snapshot. The guest runs under TCG unless this host's KVM can run guests; the BIOS
checks take about 15-30 s, the UEFI ones (OVMF) longer, so they are marked ``qemu``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockvault.interop.boot import (
    CONSOLE_TAIL,
    LAST_LINE_MAX,
    ConsoleWatch,
    Machine,
    default_accel,
    firmware_for,
    snapshot_overlay,
    watch_guest,
)
from blockvault.pipeline.backup import backup
from blockvault.repo import Repository, Snapshot
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk
from blockvault_demo.sample_boot import OK_LINE, BootDisk, build_boot_disk
from tests.conftest import blockvault, need_tools, sh

MiB = 1024 * 1024
BOOT_CODE = 440  # bytes of MBR boot code before the disk signature


@dataclass(frozen=True)
class Booted:
    disk: BootDisk
    repo: Path
    snapshot: Snapshot

    @property
    def marker(self) -> str:
        return f"{OK_LINE} {self.disk.token}"


def backed_up(disk: BootDisk, repo_path: Path) -> Booted:
    repo = Repository.init(str(repo_path))
    return Booted(disk, repo_path, backup(repo, str(disk.path)))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("qemu-system-x86_64", "qemu-img", "grub-mkimage", "sgdisk")
    return tmp_path_factory.mktemp("boot")


@pytest.fixture(scope="module")
def bios(work: Path) -> Booted:
    return backed_up(build_boot_disk("bios", work / "bios.img"), work / "bios-repo")


@pytest.fixture(scope="module")
def uefi(work: Path) -> Booted:
    return backed_up(build_boot_disk("uefi", work / "uefi.img"), work / "uefi-repo")


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, with its SHA-256 and mode."""
    digest = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        body = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        digest[str(path.relative_to(root))] = f"{oct(info.st_mode)} {body}"
    return digest


# ---- the console watch and the firmware choice: no guest --------------------------------


def test_console_watch_finds_a_marker_split_across_reads() -> None:
    watch = ConsoleWatch(("login:", "READY 42"))
    assert watch.feed(b"Debian GNU/Linux 12 host ttyS0\r\n\r\nhost lo") is None
    assert watch.feed(b"gin: ") == "login:"
    assert watch.last_line == "host login:"


def test_console_watch_keeps_a_bounded_tail_and_quotes_a_clean_short_line() -> None:
    watch = ConsoleWatch(("login:",))
    for _ in range(64):
        watch.feed(b"x" * 65536)
    watch.feed(b"\r\n\x1b[2J\x1b[1;1HBooting from Hard Disk..." + b"!" * 500 + b"\r\n\r\n")
    assert len(watch._tail) == CONSOLE_TAIL
    assert watch.found is None
    assert watch.last_line.startswith("Booting from Hard Disk...!")
    assert len(watch.last_line) == LAST_LINE_MAX


def firmware_of(tmp_path: Path, spec: DiskSpec) -> str:
    disk = build_disk(spec, tmp_path / "disk.img")
    repo = Repository.init(str(tmp_path / "repo"))
    return firmware_for(backup(repo, str(disk.path)))


@pytest.mark.parametrize(
    ("table", "types", "expected"),
    [
        ("gpt", ["uefi", "linux"], "uefi"),
        ("gpt", ["bios", "linux"], "bios"),
        ("gpt", ["uefi", "bios", "linux"], "bios"),  # GRUB for BIOS wins: its core is there
        ("gpt", ["linux"], "bios"),
        ("mbr", ["0xef", "linux"], "bios"),
    ],
)
def test_firmware_is_chosen_from_the_snapshots_partition_table(
    tmp_path: Path, table: str, types: list[str], expected: str
) -> None:
    need_tools("sfdisk", "mkfs.ext4")
    parts = [
        PartitionSpec("empty" if t in ("bios", "0xef") else "raw", 2 * MiB, type=t)
        for t in types[:-1]
    ]
    spec = DiskSpec(table, 16 * MiB, [*parts, PartitionSpec("ext4", 0, "root")])
    assert firmware_of(tmp_path, spec) == expected


def test_the_sample_boot_disks_get_their_own_firmware(bios: Booted, uefi: Booted) -> None:
    assert firmware_for(bios.snapshot) == "bios"
    assert firmware_for(uefi.snapshot) == "uefi"


# ---- the overlay takes the writes ------------------------------------------------------


def test_writes_to_the_overlay_never_reach_the_snapshot(bios: Booted, tmp_path: Path) -> None:
    need_tools("qemu-io")
    repo = Repository.open(str(bios.repo))
    before = tree_digest(bios.repo)
    with snapshot_overlay(repo, bios.snapshot, tmp_path) as overlay:
        sh("qemu-io", "-f", "qcow2", "-c", "write -P 0xa5 0 1M", overlay)
        read = sh("qemu-io", "-f", "qcow2", "-c", "read -P 0xa5 0 1M", overlay)
        assert "Pattern verification failed" not in read
        info = json.loads(sh("qemu-img", "info", "--output=json", overlay))
        assert info["backing-filename"].startswith("nbd+unix://")
        assert info["virtual-size"] == bios.disk.size
        # the snapshot, served again beside it, still has the disk's own first MiB
        (tmp_path / "again").mkdir()
        with snapshot_overlay(repo, bios.snapshot, tmp_path / "again") as fresh:
            sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", fresh, bios.disk.path)
    assert tree_digest(bios.repo) == before
    assert not (tmp_path / "overlay.qcow2").exists()


# ---- verify --boot -----------------------------------------------------------------------


def test_verify_boot_passes_for_a_bios_snapshot_prints_the_time_and_writes_nothing(
    bios: Booted,
) -> None:
    before = tree_digest(bios.repo)
    done = blockvault(
        "-r", bios.repo, "verify", bios.snapshot.id[:12], "--boot",
        "--marker", bios.marker, "--timeout", "240",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"snapshot {bios.snapshot.id[:12]} booted in " in done.stdout
    seconds = float(done.stdout.split("booted in ")[1].split("s")[0])
    assert 0 < seconds < 240
    assert f"(bios, {default_accel()})" in done.stdout
    assert tree_digest(bios.repo) == before


def test_verify_boot_fails_when_the_boot_loader_was_damaged(bios: Booted, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.img"
    sh("cp", "--sparse=always", bios.disk.path, damaged)
    with open(damaged, "r+b") as disk:
        disk.write(bytes(BOOT_CODE))  # GRUB's boot.img gone: the BIOS jumps into zeros
    repo = tmp_path / "repo"
    snap = backup(Repository.init(str(repo)), str(damaged))
    done = blockvault(
        "-r", repo, "verify", snap.id, "--boot", "--marker", bios.marker, "--timeout", "20"
    )
    assert done.returncode == 5, done.stderr
    *_, line = done.stderr.strip().splitlines()
    assert line.startswith("blockvault: error: ")
    assert f"snapshot {snap.id[:12]} did not boot: no marker within 20s" in line
    assert "last console line: 'Booting from Hard Disk...'" in line
    assert "Traceback" not in done.stderr


def test_a_machine_qemu_cannot_make_is_one_line_with_qemus_reason(bios: Booted) -> None:
    done = blockvault(
        "-r", bios.repo, "verify", "latest", "--boot", "--memory", str(64 * 1024 * 1024)
    )  # 64 TiB of guest memory
    assert done.returncode == 1, done.stderr
    *_, line = done.stderr.strip().splitlines()
    assert line.startswith("blockvault: error: QEMU: qemu-system-x86_64 exited with status 1: ")
    assert "memory" in line
    refused = blockvault("-r", bios.repo, "verify", "latest", "--boot", "--memory", "16")
    assert refused.returncode == 2
    assert "at least 64 MiB" in refused.stderr


@pytest.mark.qemu
def test_verify_boot_passes_for_a_uefi_snapshot_with_json(uefi: Booted) -> None:
    done = blockvault(
        "-r", uefi.repo, "verify", "latest", "--boot",
        "--marker", uefi.marker, "--timeout", "400", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["snapshot"] == uefi.snapshot.id
    assert result["booted"] is True
    assert result["marker"] == uefi.marker
    assert result["firmware"] == "uefi"
    assert 0 < result["seconds"] < 400


@pytest.mark.qemu
def test_uefi_firmware_cannot_boot_a_bios_only_disk(bios: Booted) -> None:
    """--firmware overrides the choice; OVMF finds no EFI boot loader on the BIOS disk."""
    done = blockvault(
        "-r", bios.repo, "verify", "latest", "--boot", "--firmware", "uefi",
        "--marker", bios.marker, "--timeout", "30",
    )  # fmt: skip
    assert done.returncode == 5, done.stderr
    assert "(uefi, " in done.stderr


@pytest.mark.qemu
def test_verify_boot_passes_at_a_login_prompt_without_a_marker(work: Path) -> None:
    """The default marker: busybox getty's own prompt ("blockvault-bios login: ")."""
    disk = build_boot_disk("bios", work / "login.img", login=True)
    booted = backed_up(disk, work / "login-repo")
    done = blockvault("-r", booted.repo, "verify", "latest", "--boot", "--timeout", "240")
    assert done.returncode == 0, done.stderr
    assert "the console showed 'login:'" in done.stdout


# ---- boot, on the terminal ---------------------------------------------------------------


@pytest.mark.qemu
def test_boot_shows_the_console_keeps_the_overlay_and_writes_nothing(
    bios: Booted, tmp_path: Path
) -> None:
    before = tree_digest(bios.repo)
    kept = tmp_path / "writes,format=raw.qcow2"  # a comma QEMU must not read as an option
    done = blockvault("-r", bios.repo, "boot", "latest", "--keep-overlay", kept)
    assert done.returncode == 0, done.stderr
    assert bios.marker in done.stdout  # the guest's serial console, on our stdout
    assert f"its writes are in {kept}" in done.stderr
    info = json.loads(sh("qemu-img", "info", "--output=json", kept))
    assert info["format"] == "qcow2"
    assert info["backing-filename"].startswith("nbd+unix://")
    assert tree_digest(bios.repo) == before
    refused = blockvault("-r", bios.repo, "boot", "latest", "--keep-overlay", kept)
    assert refused.returncode == 2
    assert "already exists" in refused.stderr


@pytest.mark.qemu
def test_ctrl_c_stops_the_guest_and_cleans_up(bios: Booted, tmp_path: Path) -> None:
    """SIGINT once the firmware is running (seen on the console, not timed): QEMU is
    stopped, the private directory is removed, exit 130 with one line."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        ["blockvault", "-r", str(bios.repo), "boot", "latest", "--accel", "tcg"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen = b""
    while b"SeaBIOS" not in seen:
        data = proc.stdout.read1(4096)
        assert data, "the console closed before the firmware spoke"
        seen += data
    proc.send_signal(signal.SIGINT)
    proc.stdout.read()
    assert proc.wait(timeout=30) == 130
    stderr = proc.stderr.read().decode()
    assert "interrupted by SIGINT: the guest was stopped" in stderr
    assert "the repository was only read" in stderr
    assert not list(tmp_path.glob("blockvault-boot-*"))
    assert not list(tmp_path.glob("bv-nbd-*"))


# ---- a bootable snapshot exported to qcow2 ----------------------------------------------


@pytest.mark.qemu
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_a_snapshot_exported_to_qcow2_boots(
    request: pytest.FixtureRequest, firmware: str, tmp_path: Path
) -> None:
    booted: Booted = request.getfixturevalue(firmware)
    qcow2 = tmp_path / "disk.qcow2"
    done = blockvault("-r", booted.repo, "export", "latest", qcow2)
    assert done.returncode == 0, done.stderr
    sh("qemu-img", "check", qcow2)
    check = watch_guest(
        Machine(booted.disk.firmware, default_accel(), memory=512),
        qcow2,
        disk_format="qcow2",
        markers=(booted.marker,),
        timeout=400,
    )
    assert check.booted, check.last_line
