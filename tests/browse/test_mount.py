"""FUSE mounts of snapshots, as root: images byte-identical to the source, kernel
mounts of them showing the source trees, and nothing left behind.

Oracles: the source disk image (the sample disks are fresh sparse files, so every
unused byte is zero and the whole image must match), the trees the disks were built
from, the kernel's own ext4 driver and ntfs-3g, /proc/self/mountinfo and losetup.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from blockvault.browse.mount import state_path
from blockvault_demo.sample import manifest
from tests.browse.conftest import Backed
from tests.conftest import IS_ROOT, sh

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT, reason="FUSE mounts with loop devices need root"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(shutil.which("fusermount3") is None, reason="fuse3 is not installed"),
]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["blockvault", *map(str, args)], capture_output=True, text=True)


def digest(path: Path, offset: int = 0, size: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = size if size is not None else os.path.getsize(path) - offset
        while left > 0:
            block = f.read(min(4 << 20, left))
            assert block, "short read"
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def mounts_under(path: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4]
            if point == str(path) or point.startswith(f"{path}/"):
                found.append(point)
    return found


def loops_under(path: Path) -> list[str]:
    out = sh("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE")
    return [line for line in out.splitlines() if str(path) in line]


def assert_clean(mnt: Path) -> None:
    assert mounts_under(mnt) == []
    assert loops_under(mnt) == []
    assert not state_path(mnt).exists()


def wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_images_are_the_source_and_filesystems_mount(multi: Backed, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    repo = multi.repo.location
    proc = cli("-r", repo, "mount", "--json", "--filesystems", multi.snapshot.id[:12], mnt)
    assert proc.returncode == 0, proc.stderr
    try:
        state = json.loads(proc.stdout)
        assert {i["partition"]: i["how"] for i in state["inner"]} == {
            1: "blockvault",
            2: "kernel",
            3: "ntfs-3g",
        }
        assert sorted(os.listdir(mnt)) == [
            "disk.img", "p1", "p1.img", "p2", "p2.img", "p3", "p3.img"
        ]  # fmt: skip
        assert digest(mnt / "disk.img") == digest(multi.disk.path)
        for part in multi.disk.partitions:
            image = mnt / f"p{part.number}.img"
            assert image.stat().st_size == part.size
            assert digest(image) == digest(multi.disk.path, part.offset, part.size)
        # random offsets, across chunk boundaries
        with open(mnt / "p2.img", "rb") as f, open(multi.disk.path, "rb") as src:
            for offset in (0, 65535, 3 * 65536 - 7, multi.disk.partitions[1].size - 10):
                f.seek(offset)
                src.seek(multi.disk.partitions[1].offset + offset)
                assert f.read(100_000) == src.read(
                    min(100_000, multi.disk.partitions[1].size - offset)
                )
        # the kernel's own ext4 driver reads the image file like a disk
        kernel = tmp_path / "kernel"
        kernel.mkdir()
        sh("mount", "-o", "ro,loop,noload", mnt / "p2.img", kernel)
        try:
            got = {k: v for k, v in manifest(kernel).items() if not k.startswith("lost+found")}
            assert got == manifest(multi.trees[2])
        finally:
            sh("umount", kernel)
        # the filesystems under pN/: kernel ext4, ntfs-3g, and blockvault's FAT reader
        for number in (1, 2, 3):
            if number == 3 and multi.disk.partitions[2].content != "tree":
                continue
            got = {
                k: v
                for k, v in manifest(mnt / f"p{number}").items()
                if not k.startswith(("lost+found", "System Volume Information"))
            }
            assert got == manifest(multi.trees[number]), number
    finally:
        done = cli("umount", mnt)
    assert done.returncode == 0, done.stderr
    assert_clean(mnt)


def test_mountpoint_errors(multi: Backed, tmp_path: Path) -> None:
    repo = multi.repo.location
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    cases = [
        (tmp_path / "missing", "does not exist"),
        (full, "not empty"),
    ]
    for point, words in cases:
        proc = cli("-r", repo, "mount", "latest", point)
        assert proc.returncode == 2 and words in proc.stderr and proc.stderr.count("\n") == 1
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert cli("-r", repo, "mount", "latest", mnt).returncode == 0
    try:
        again = cli("-r", repo, "mount", "latest", mnt)
        assert again.returncode == 2 and "busy" in again.stderr
        # a process inside the mount keeps it busy: umount says so and leaves it working
        holder = subprocess.Popen(["sleep", "60"], cwd=mnt)
        try:
            busy = cli("umount", mnt)
            assert busy.returncode == 2 and "busy" in busy.stderr
            assert (mnt / "disk.img").exists()
        finally:
            holder.kill()
            holder.wait()
    finally:
        assert cli("umount", mnt).returncode == 0
    assert_clean(mnt)
    nothing = cli("umount", mnt)
    assert nothing.returncode == 2 and "not a blockvault mount" in nothing.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_foreground_mount_cleans_up_on_signals(
    multi: Backed, tmp_path: Path, sig: signal.Signals
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        ["blockvault", "-r", multi.repo.location, "mount", "-f", "--filesystems", "latest", mnt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(mounts_under(mnt)) >= 3)  # FUSE, ext4 (loop), ntfs-3g
        assert loops_under(mnt)
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            cli("umount", mnt)
    assert proc.returncode in (130, 143), proc.stderr.read() if proc.stderr else ""
    assert_clean(mnt)


def test_umount_cleans_up_after_the_server_was_killed(multi: Backed, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert cli("-r", multi.repo.location, "mount", "--filesystems", "latest", mnt).returncode == 0
    state = json.loads(state_path(mnt).read_text())
    os.kill(state["pid"], signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{state['pid']}").exists() or _zombie(state["pid"]))
    done = cli("umount", mnt)
    assert done.returncode == 0, done.stderr
    assert_clean(mnt)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_fuse_errors_are_the_right_errno_and_logged(tmp_path: Path) -> None:
    """A FAT view (served by blockvault's reader, also as root) with hostile long names
    and a damaged chunk: listings leave the hostile names out instead of failing, each
    failure is its own errno, and the log names the cause."""
    from blockvault.browse.mount import log_path
    from blockvault.pipeline.backup import backup
    from blockvault.repo import Repository
    from blockvault.repo import format as fmt
    from tests.browse.test_hostile import disk, patch_fat_long_name

    tree = tmp_path / "tree"
    (tree / "dir").mkdir(parents=True)
    (tree / "ok.txt").write_text("fine")
    content = os.urandom(1 << 20)
    (tree / "big.bin").write_bytes(content)
    (tree / "m0QQQQQQQQ").write_text("hostile")
    image = disk(tmp_path, "fat", "fat16", 24 << 20, tree)
    patch_fat_long_name(image, "m0QQQQQQQQ", "../../x.txt")
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)
    snap = backup(repo, str(image))
    # where the file's middle lies, found in the image itself (FAT stores it contiguous)
    at = image.read_bytes().find(content[1 << 19 : (1 << 19) + 4096])
    assert at > 0
    region = repo.load_index(snap).region(fmt.REGION_PARTITION, 1)
    assert region is not None
    chunk = region.chunk_ids[at // (64 * 1024)].hex()
    stored = tmp_path / "repo" / fmt.chunk_name(chunk)
    stored.write_bytes(stored.read_bytes()[:-100])  # truncated: damaged
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log_path(mnt).unlink(missing_ok=True)
    proc = cli("-r", repo.location, "mount", "--filesystems", "latest", mnt)
    assert proc.returncode == 0, proc.stderr
    try:
        assert sorted(os.listdir(mnt / "p1")) == ["big.bin", "dir", "ok.txt"]
        assert (mnt / "p1" / "ok.txt").read_text() == "fine"
        cases = [
            (lambda: os.stat(mnt / "p1" / "missing"), errno.ENOENT),
            (lambda: os.stat(mnt / "p1" / "ok.txt" / "x"), errno.ENOTDIR),
            (lambda: (mnt / "p1" / "big.bin").read_bytes(), errno.EIO),
            (lambda: digest(mnt / "p1.img", at, 4096), errno.EIO),
        ]
        for call, code in cases:
            with pytest.raises(OSError) as caught:
                call()
            assert caught.value.errno == code
    finally:
        assert cli("umount", mnt).returncode == 0
    logged = log_path(mnt).read_text()
    assert f"/p1/big.bin: chunk {chunk}" in logged and "damaged" in logged
    assert "../../x.txt" in logged and "not listed" in logged
    assert "/missing" not in logged  # a plain answer (ENOENT) is no error
    assert_clean(mnt)
