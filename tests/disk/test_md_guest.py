"""mdadm RAID1: members recognised on a disk, arrays imaged at the array level.

This host's kernel has no md driver, so ``mdadm --create`` runs in a QEMU guest
(blockvault_demo/guest.py) on three GPT disks built here, one array per superblock
version (1.2 at the start, 1.0 and 0.90 at the end of each member); the guest makes
an ext4 on each array and backs the assembled array up (``/dev/mdN``). Back on the
host, with the arrays stopped: each member is named by its array (uuid from
``blkid``, the outside oracle), imaged raw with a note, the two members of one
array are said to be one array and stored once, and the disk restores byte-exact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault_demo.guest import run_in_guest
from tests.conftest import blockvault as run
from tests.conftest import need_tools, needs_root, sh

MiB = 1024 * 1024
VERSIONS = ("1.2", "1.0", "0.90")
RAID_GUID = "A19D880F-05FC-4D3B-A006-743F0F84911E"

GUEST_SCRIPT = r"""
set -eu
export MDADM_NO_UDEV=1
W={work}
n=0
for disk in vda vdb vdc; do
    version=$(sed -n "$((n + 1))p" $W/versions)
    mdadm --create /dev/md$n --run --quiet --level=1 --raid-devices=2 \
        --metadata=$version --assume-clean /dev/${disk}1 /dev/${disk}2
    mkfs.ext4 -q -L array$n /dev/md$n
    mkdir -p /run/a$n && mount /dev/md$n /run/a$n
    for i in $(seq 1 20); do head -c $((i * 5000)) /dev/urandom > /run/a$n/file$i; done
    (cd /run/a$n && sha256sum file*) > $W/array$n.sha256
    umount /run/a$n
    blockvault -r $W/repo backup /dev/md$n --json > $W/array$n.json
    blockvault inspect /dev/$disk --json > $W/assembled$n.json
    mdadm --stop --quiet /dev/md$n
    n=$((n + 1))
done
"""


def member_disk(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    script = f"label: gpt\nsize=24MiB, type={RAID_GUID}\nsize=24MiB, type={RAID_GUID}\n"
    sh("sfdisk", "-q", path, input=script)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.qemu
@needs_root
@pytest.mark.timeout(1200)
def test_raid1_members_and_arrays(
    tmp_path: Path, loop: Callable[..., str], mounted: Callable[..., Path]
) -> None:
    need_tools("mdadm", "qemu-system-x86_64", "blkid", "e2fsck")
    work = tmp_path / "work"
    work.mkdir()
    (work / "versions").write_text("\n".join(VERSIONS) + "\n")
    disks = tuple(tmp_path / f"md{v}.img" for v in VERSIONS)
    for disk in disks:
        member_disk(disk)
    repo = work / "repo"
    assert run("-r", repo, "init").returncode == 0
    guest = run_in_guest(GUEST_SCRIPT.replace("{work}", str(work)), work, disks=disks)
    assert guest.ok, guest.console[-4000:]

    for n, (version, disk) in enumerate(zip(VERSIONS, disks, strict=True)):
        # the array, imaged at the array level inside the guest, restores here
        array = json.loads((work / f"array{n}.json").read_text())
        assert array["partitions"][0]["filesystem"] == "ext4", array
        restored = tmp_path / f"array{n}.img"
        done = run("-r", repo, "restore", array["id"], restored)
        assert done.returncode == 0, done.stderr
        sh("e2fsck", "-fn", restored)
        point = mounted(loop(restored), tmp_path / f"a{n}", "-o", "ro")
        sums = sh("sh", "-c", f"cd {point} && sha256sum file*")
        assert sums == (work / f"array{n}.sha256").read_text()

        # while assembled, the tree shows the array under each member
        tree = json.loads((work / f"assembled{n}.json").read_text())["tree"]
        for member in tree["children"]:
            assert member["kind"] == "md-member", member
            assert [(c["kind"], c["name"]) for c in member["children"]] == [
                ("md-array", f"/dev/md{n}")
            ], member

        # the members, on a disk of their own: recognised, noted, stored once
        shown = json.loads(run("inspect", disk, "--json").stdout)
        parts = shown["layout"]["partitions"] if "layout" in shown else shown["partitions"]
        table = json.loads(sh("sfdisk", "--json", disk))["partitiontable"]["partitions"]
        for part, row in zip(parts, table, strict=True):
            oracle = sh(
                "blkid", "-p", "-o", "export", "-O", str(row["start"] * 512),
                "-S", str(row["size"] * 512), disk,
            )  # fmt: skip
            assert "TYPE=linux_raid_member" in oracle, oracle
            expected = next(x for x in oracle.split() if x.startswith("UUID=")).split("=")[1]
            assert part["fs"]["uuid"] == expected, (version, part["fs"], oracle)
            assert f"metadata {version}" in part["fs"]["note"], part["fs"]
        backed = run("-r", repo, "backup", disk, "--json")
        assert backed.returncode == 0, backed.stderr
        assert "members of the same md array" in backed.stderr, backed.stderr
        stats = json.loads(backed.stdout)["stats"]
        # two 24 MiB members in 4 MiB chunks: only the chunks holding a superblock differ
        assert stats["new_chunks"] <= stats["chunks"] // 2 + 2, stats
        target = tmp_path / f"members{n}.img"
        done = run("-r", repo, "restore", json.loads(backed.stdout)["id"], target)
        assert done.returncode == 0, done.stderr
        assert digest(target) == digest(disk)  # superblocks and data, byte for byte
