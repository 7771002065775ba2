"""Backing up a running system from an LVM snapshot, inside a QEMU guest.

This host's kernel has no device-mapper, so the guest (blockvault_demo/guest.py: the
host's distribution kernel, the host's files read-only over 9p) does what needs it:
an ext4 root on an LVM logical volume is backed up **while a writer appends to it**,
with nothing but ``backup SOURCE`` (the mounted source implies ``--live``). A second
backup is killed (SIGKILL, at its first repository write) with its snapshot made;
the next backup removes that leftover. The host then restores the first snapshot
onto a blank image of another size and checks it with outside tools: ``e2fsck -fn``
clean without replaying anything (making the snapshot froze the filesystem), the
files written before the backup identical, the writer's log a gap-free prefix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault_demo.guest import run_in_guest
from tests.conftest import blockvault as run
from tests.conftest import need_tools, needs_root, sh

MiB = 1024 * 1024

GUEST_SCRIPT = r"""
set -eu
export LVM_SYSTEM_DIR=/run/lvm-etc DM_DISABLE_UDEV=1
mkdir -p $LVM_SYSTEM_DIR
cat > $LVM_SYSTEM_DIR/lvm.conf <<EOF
activation { udev_sync = 0 udev_rules = 0 }
backup { backup = 0 archive = 0 }
devices { obtain_device_list_from_udev = 0 }
EOF
W={work}
pvcreate -q /dev/vda
vgcreate -q bvg /dev/vda
lvcreate -q -y -L 64M -n root bvg
mkfs.ext4 -q -L root /dev/bvg/root
mkdir -p /run/root && mount /dev/bvg/root /run/root
mkdir /run/root/etc
for i in $(seq 1 40); do head -c $((i * 3000)) /dev/urandom > /run/root/etc/file$i; done
sync
(cd /run/root && sha256sum etc/*) > $W/before.sha256
( n=0; while :; do n=$((n + 1)); echo "line $n" >> /run/root/log.txt;
  head -c 65536 /dev/urandom > /run/root/churn.$((n % 20)); done ) &
writer=$!
sleep 2
blockvault -r $W/repo backup /dev/bvg/root --json > $W/live.json 2> $W/live.err
BLOCKVAULT_FAULTS=signal=KILL,every=1,operations=write \
    blockvault -r $W/repo backup /dev/bvg/root > /dev/null 2>&1 || true
lvs --reportformat json -o lv_name,lv_tags > $W/after-crash.json
blockvault -r $W/repo backup /dev/bvg/root --json > $W/next.json 2> $W/next.err
kill $writer
lvs --reportformat json -o lv_name,lv_tags > $W/after.json
umount /run/root
"""


def lv_names(path: Path) -> list[str]:
    return sorted(lv["lv_name"] for lv in json.loads(path.read_text())["report"][0]["lv"])


@pytest.mark.qemu
@needs_root
@pytest.mark.timeout(1200)
def test_running_system_on_lvm_is_backed_up_from_a_snapshot_while_it_writes(
    tmp_path: Path, loop: Callable[..., str], mounted: Callable[..., Path]
) -> None:
    need_tools("lvcreate", "qemu-system-x86_64", "e2fsck")
    work = tmp_path / "work"
    work.mkdir()
    disk = tmp_path / "pv.img"
    with open(disk, "wb") as f:
        f.truncate(160 * MiB)
    assert run("-r", work / "repo", "init").returncode == 0
    guest = run_in_guest(GUEST_SCRIPT.replace("{work}", str(work)), work, disks=(disk,))
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
    point = mounted(loop(target), tmp_path / "mnt", "-o", "ro")
    assert sh("sh", "-c", f"cd {point} && sha256sum etc/*") == (work / "before.sha256").read_text()
    lines = (point / "log.txt").read_text().splitlines()
    assert lines and all(re.fullmatch(rf"line {i + 1}", s) for i, s in enumerate(lines))
