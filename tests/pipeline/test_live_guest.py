"""Backing up a running system from LVM snapshots, inside a QEMU guest.

This host's kernel has no device-mapper, so the guest (blockvault_demo/guest.py: the
host's distribution kernel, the host's files read-only over 9p) does what needs it:
an ext4 root on an LVM logical volume is backed up **while a writer appends to it**,
with nothing but ``backup SOURCE`` (the mounted source implies ``--live``). A second
backup is killed (SIGKILL, at its first repository write) with its snapshot made;
the next backup removes that leftover. The host then restores the first snapshot
onto a blank image of another size and checks it with outside tools: ``e2fsck -fn``
clean without replaying anything (making the snapshot froze the filesystem), the
files written before the backup identical, the writer's log a gap-free prefix.
The same holds for a whole disk (GPT, an ext4, an LVM PV) whose filesystems in use are
on logical volumes (ext4 root, XFS home, an ext4 inside LUKS): each volume is read
from its snapshot, the LVM metadata as it was before them (the restored volume group
has no snapshot in it), and the restored disk activates in a guest kernel. That disk
is a bootable system with its root on LVM (GPT, a BIOS boot partition, an ext4 /boot,
the PV; sample_boot.py), and the restored copy boots under QEMU through GRUB, the
kernel and an initramfs that activates the volume group and mounts the root LV (its
marker token printed); with the root LV's first MiB zeroed it does not boot.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault_demo.guest import run_in_guest
from blockvault_demo.sample_boot import MARKER_PATH, boot, build_boot_disk
from tests.conftest import blockvault as run
from tests.conftest import need_tools, needs_root, sh

MiB = 1024 * 1024

LVM_IN_GUEST = r"""
set -eu
export LVM_SYSTEM_DIR=/run/lvm-etc DM_DISABLE_UDEV=1
mkdir -p $LVM_SYSTEM_DIR
cat > $LVM_SYSTEM_DIR/lvm.conf <<EOF
activation { udev_sync = 0 udev_rules = 0 }
backup { backup = 0 archive = 0 }
devices { obtain_device_list_from_udev = 0 }
EOF
"""

GUEST_SCRIPT = (
    LVM_IN_GUEST
    + r"""
W={work}
# in_use MOUNTPOINT SUMS: files summed into SUMS, and a writer appending numbered lines
# and rewriting files there until killed (its pid added to $writers)
writers=""
in_use() {
    mkdir $1/etc
    for i in $(seq 1 30); do head -c $((i * 3000)) /dev/urandom > $1/etc/file$i; done
    sync
    (cd $1 && sha256sum etc/*) > $2
    ( n=0; while :; do n=$((n + 1)); echo "line $n" >> $1/log.txt;
      head -c 65536 /dev/urandom > $1/churn.$((n % 20)); done ) &
    writers="$writers $!"
}
# ext4_on DEVICE MOUNTPOINT
ext4_on() { mkfs.ext4 -q $1 && mkdir -p $2 && mount $1 $2; }

vgcreate -q bvg /dev/vda
lvcreate -q -y -L 64M -n root bvg
ext4_on /dev/bvg/root /run/root
in_use /run/root $W/before.sha256
sleep 2
blockvault -r $W/repo backup /dev/bvg/root --json > $W/live.json 2> $W/live.err
BLOCKVAULT_FAULTS=signal=KILL,every=1,operations=write \
    blockvault -r $W/repo backup /dev/bvg/root > /dev/null 2>&1 || true
lvs --reportformat json -o lv_name,lv_tags > $W/after-crash.json
blockvault -r $W/repo backup /dev/bvg/root --json > $W/next.json 2> $W/next.err
kill $writers
lvs --reportformat json -o lv_name,lv_tags > $W/after.json
umount /run/root

# a whole disk whose filesystems in use are on LVM, one of them inside LUKS: each
# volume read from a snapshot (the filesystem in LUKS frozen while it is made)
writers=""
vgcreate -q bvd /dev/vdb3
lvcreate -q -y -L 48M -n root bvd
ext4_on /dev/bvd/root /run/droot
echo {token} > /run/droot/{marker}
in_use /run/droot $W/disk-before.sha256
lvcreate -q -y -L 64M -n home bvd
TEST_DIR=/run TEST_DEV=/dev/bvd/home QA_CHECK_FS=1 mkfs.xfs -q /dev/bvd/home  # < 300 MB
mkdir -p /run/home && mount /dev/bvd/home /run/home
in_use /run/home $W/home-before.sha256
lvcreate -q -y -L 24M -n secret bvd
printf bv-live-key > $W/key
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file $W/key /dev/bvd/secret
cryptsetup open --key-file $W/key /dev/bvd/secret secret
ext4_on /dev/mapper/secret /run/secret
in_use /run/secret $W/secret-before.sha256
sleep 2
blockvault -r $W/repo backup /dev/vdb --json > $W/disk.json 2> $W/disk.err
kill $writers
lvs --reportformat json -o lv_name,lv_tags bvd > $W/disk-after.json
umount /run/droot /run/home /run/secret
cryptsetup close secret
"""
)

# the restored disk in a real kernel: its volume group activates, its volume checks clean
RESTORED_SCRIPT = (
    LVM_IN_GUEST
    + r"""
vgchange -ay bvd
lvs --reportformat json -o lv_name bvd > {work}/restored-lvs.json
e2fsck -fn /dev/bvd/root
cryptsetup open --key-file {work}/key /dev/bvd/secret secret
e2fsck -fn /dev/mapper/secret
mkdir -p /run/secret && mount -o ro /dev/mapper/secret /run/secret
(cd /run/secret && sha256sum etc/*) > {work}/secret-restored.sha256
cp /run/secret/log.txt {work}/secret-log.txt
umount /run/secret
cryptsetup close secret
"""
)


def lv_names(path: Path) -> list[str]:
    return sorted(lv["lv_name"] for lv in json.loads(path.read_text())["report"][0]["lv"])


@pytest.mark.qemu
@needs_root
@pytest.mark.timeout(1200)
def test_running_system_on_lvm_is_backed_up_from_a_snapshot_while_it_writes(
    tmp_path: Path, loop: Callable[..., str], mounted: Callable[..., Path]
) -> None:
    need_tools("lvcreate", "cryptsetup", "mkfs.xfs", "qemu-system-x86_64", "e2fsck")
    work = tmp_path / "work"
    work.mkdir()
    disk = tmp_path / "pv.img"
    with open(disk, "wb") as f:
        f.truncate(160 * MiB)
    assert run("-r", work / "repo", "init").returncode == 0
    whole = build_boot_disk("bios", tmp_path / "whole.img", size=320 * MiB, lvm_root="bvd/root")
    script = GUEST_SCRIPT.replace("{work}", str(work)).replace("{token}", whole.token)
    guest = run_in_guest(script.replace("{marker}", MARKER_PATH), work, disks=(disk, whole.path))
    assert guest.ok, guest.console[-4000:]

    live = json.loads((work / "live.json").read_text())
    assert live["live"] == "lvm-snapshot" and live["source"] == "/dev/bvg/root"
    assert "reading the LVM snapshot" in (work / "live.err").read_text()
    leftover = [n for n in lv_names(work / "after-crash.json") if n != "root"]
    assert len(leftover) == 1 and leftover[0].startswith("bvlive-root-"), leftover
    assert f"removed the LVM snapshot bvg/{leftover[0]}" in (work / "next.err").read_text()
    assert lv_names(work / "after.json") == ["root"]  # nothing left behind

    target = tmp_path / "restored.img"
    with open(target, "wb") as f:
        f.truncate(96 * MiB)  # another size than the 64 MiB volume
    done = run("-r", work / "repo", "restore", "--yes", live["id"], target)
    assert done.returncode == 0, done.stderr
    sh("e2fsck", "-fn", target)  # clean as it is: no journal to replay
    same_as_written(mounted(loop(target), tmp_path / "mnt", "-o", "ro"), work / "before.sha256")

    # the whole disk: restored onto a larger blank disk, its LV read back by LVM's own
    # report of where the extents lie; no snapshot in the restored volume group
    backed = json.loads((work / "disk.json").read_text())
    assert backed["live"] == "lvm-snapshot", backed
    assert (
        "reading bvd/root, bvd/home, bvd/secret from the LVM snapshots"
        in (work / "disk.err").read_text()
    )
    assert lv_names(work / "disk-after.json") == ["home", "root", "secret"]
    target = tmp_path / "whole-restored.img"
    with open(target, "wb") as f:
        f.truncate(384 * MiB)
    done = run("-r", work / "repo", "restore", "--yes", backed["id"], target)
    assert done.returncode == 0, done.stderr
    pv = json.loads(sh("sfdisk", "--json", target))["partitiontable"]["partitions"][2]
    root = tmp_path / "droot.img"
    pv_device = loop(target, offset=pv["start"] * 512, size=pv["size"] * 512)
    names, root_at = read_lv(pv_device, "root", root)
    assert names == ["home", "root", "secret"]
    sh("e2fsck", "-fn", root)  # clean: the volume was frozen for its snapshot
    again = run_in_guest(RESTORED_SCRIPT.replace("{work}", str(work)), work, disks=(target,))
    assert again.ok, again.console[-4000:]
    assert lv_names(work / "restored-lvs.json") == ["home", "root", "secret"]
    assert (work / "secret-restored.sha256").read_text() == (
        work / "secret-before.sha256"
    ).read_text()
    gap_free((work / "secret-log.txt").read_text())
    same_as_written(
        mounted(loop(root), tmp_path / "droot", "-o", "ro"), work / "disk-before.sha256"
    )
    home = tmp_path / "home.img"
    read_lv(pv_device, "home", home)
    # XFS keeps its log dirty across a freeze: the first mount replays it, then it is clean
    same_as_written(mounted(loop(home), tmp_path / "home"), work / "home-before.sha256")
    sh("umount", tmp_path / "home")
    sh("xfs_repair", "-n", home)

    # the restored system boots: GRUB from the restored MBR and BIOS boot partition, the
    # kernel from the restored /boot, the root LV activated and mounted by the initramfs
    booted = boot(target, "bios", expect_token=whole.token, workdir=tmp_path)
    assert booted.booted, booted.reason + "\n" + booted.console[-3000:]
    assert "/dev/bvd/root" in booted.console
    with open(target, "r+b") as f:  # a restore that lost the root LV's start does not boot
        f.seek(pv["start"] * 512 + root_at)
        f.write(bytes(MiB))
    broken = boot(target, "bios", expect_token=whole.token, workdir=tmp_path)
    assert not broken.booted and "cannot mount /dev/bvd/root" in broken.reason, broken.reason


def same_as_written(point: Path, sums: Path) -> None:
    """The files written before the backup are whole; the writer's log is a gap-free
    prefix of what it wrote (the moment of the snapshot, nothing torn)."""
    assert sh("sh", "-c", f"cd {point} && sha256sum etc/*") == sums.read_text()
    gap_free((point / "log.txt").read_text())


def gap_free(log: str) -> None:
    lines = log.splitlines()
    assert lines and all(re.fullmatch(rf"line {i + 1}", s) for i, s in enumerate(lines))


def read_lv(pv: str, name: str, out: Path) -> tuple[list[str], int]:
    """Copy logical volume ``name`` of the PV on ``pv`` into ``out`` by the segments
    ``lvs`` reports (metadata only: nothing is activated); returns the VG's LV names
    and where on the PV the volume's first byte lies."""
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "LVM_SYSTEM_DIR": scratch, "LVM_SUPPRESS_FD_WARNINGS": "1"}

        def report(kind: str, *args: str, key: str = "lv") -> list[dict[str, str]]:
            out = subprocess.run(
                [kind, *args, "--devices", pv, "--reportformat", "json", "--units", "b",
                 "--nosuffix"],
                capture_output=True, text=True, env=env, check=True,
            ).stdout  # fmt: skip
            rows: list[dict[str, str]] = json.loads(out)["report"][0][key]
            return rows

        (pvs,) = report("pvs", "-o", "pe_start,vg_extent_size", key="pv")
        start, extent = int(pvs["pe_start"]), int(pvs["vg_extent_size"])
        names = sorted(lv["lv_name"] for lv in report("lvs", "-o", "lv_name"))
        segments = report(
            "lvs", "--segments", "-o", "lv_name,seg_start_pe,seg_size_pe,seg_pe_ranges", key="seg"
        )
    first_byte = -1
    with open(pv, "rb") as src, open(out, "wb") as dst:
        for seg in segments:
            if seg["lv_name"] != name:
                continue
            first = int(seg["seg_pe_ranges"].rpartition(":")[2].partition("-")[0])
            if int(seg["seg_start_pe"]) == 0:
                first_byte = start + first * extent
            src.seek(start + first * extent)
            dst.seek(int(seg["seg_start_pe"]) * extent)
            dst.write(src.read(int(seg["seg_size_pe"]) * extent))
    return names, first_byte
