"""The unattended job's log: bounded, and kept on the restored system's root, never
through a symlink the restored filesystem holds. (The whole path, inside the rescue
system after a restore: test_qemu.py.)"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from blockvault.rescue.joblog import BoundedLog, keep_on_target, log_name
from tests.conftest import need_tools, sh

NOW = 1_764_000_000.0


def test_the_log_keeps_its_bound_and_the_final_line(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    with open(path, "w", encoding="utf-8") as file:
        log = BoundedLog(file, limit=100)
        for n in range(50):
            log.line(f"line {n:04d}")  # 10 bytes each: 10 fit
        log.line("BLOCKVAULT-RESCUE-OK", final=True)
    lines = path.read_text().splitlines()
    assert lines[:10] == [f"line {n:04d}" for n in range(10)]
    assert lines[10:] == ["[40 lines left out: the log is bounded]", "BLOCKVAULT-RESCUE-OK"]


def filesystem(tmp_path: Path, name: str, tree: Callable[[Path], None]) -> Path:
    """An ext4 image made by mkfs.ext4 from a tree ``tree`` fills."""
    source = tmp_path / f"{name}-tree"
    source.mkdir()
    tree(source)
    image = tmp_path / f"{name}.ext4"
    sh("mkfs.ext4", "-q", "-F", "-d", source, image, "16M")
    return image


def listing(image: Path, folder: str) -> list[str]:
    """The names in ``folder`` as e2fsprogs reads them (an oracle besides the kernel's)."""
    out = sh("debugfs", "-R", f"ls -p {folder}", image)
    return sorted(
        n
        for n in (line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6)
        if n not in ("", ".", "..")
    )


def test_the_log_lands_in_var_log_of_the_restored_root(
    tmp_path: Path, loop: Callable[..., str]
) -> None:
    need_tools("mkfs.ext4", "debugfs", "blkid", "lsblk")

    def linux_root(root: Path) -> None:
        (root / "etc").mkdir()
        (root / "var" / "log").mkdir(parents=True)

    image = filesystem(tmp_path, "root", linux_root)
    log = tmp_path / "job.log"
    log.write_text("BLOCKVAULT-RESCUE-START blockvault restore\nBLOCKVAULT-RESCUE-OK\n")
    device = loop(image)
    kept = keep_on_target(log, device, now=NOW)
    assert kept == f"{device}:/var/log/{log_name(NOW)}"
    assert listing(image, "/var/log") == [log_name(NOW)]
    copy = sh("debugfs", "-R", f"cat /var/log/{log_name(NOW)}", image)
    assert copy == log.read_text()


def test_no_root_or_a_symlinked_var_log_gets_no_log(
    tmp_path: Path, loop: Callable[..., str]
) -> None:
    need_tools("mkfs.ext4", "debugfs", "blkid", "lsblk")
    outside = tmp_path / "outside"
    outside.mkdir()

    def hostile_root(root: Path) -> None:
        (root / "etc").mkdir()
        (root / "var").mkdir()
        os.symlink(outside, root / "var" / "log")  # the rescue system's own folder

    def data_only(root: Path) -> None:
        (root / "var" / "log").mkdir(parents=True)  # no etc/: not a root

    log = tmp_path / "job.log"
    log.write_text("BLOCKVAULT-RESCUE-OK\n")
    for name, tree in (("hostile", hostile_root), ("data", data_only)):
        image = filesystem(tmp_path, name, tree)
        assert keep_on_target(log, loop(image), now=NOW) is None
    assert list(outside.iterdir()) == []
    fat = tmp_path / "fat.img"
    sh("truncate", "-s", "16M", fat)
    sh("mkfs.vfat", fat)
    assert keep_on_target(log, loop(fat), now=NOW) is None
