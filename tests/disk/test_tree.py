"""``inspect`` and ``disks`` show a disk's whole stack as a tree, mounts included.

The disk is built by the real tools: an ext4 partition (mkfs.ext4) and an LVM PV
(pvcreate/vgcreate/lvcreate, blockvault_demo.sample_stack) with two logical volumes
of sizes given here; the ext4 is loop-mounted from the image as a user would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk
from blockvault_demo.sample_stack import LogicalVolumeSpec, make_pv
from tests.conftest import blockvault as run
from tests.conftest import need_tools, needs_root

MiB = 1024 * 1024

pytestmark = needs_root


def by_name(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every node below ``node`` by name."""
    found = {}
    for child in node["children"]:
        found[child["name"]] = child
        found.update(by_name(child))
    return found


def test_tree_shows_partitions_volumes_filesystems_and_mounts(
    tmp_path: Path, loop: Callable[..., str], mounted: Callable[..., Path]
) -> None:
    need_tools("pvcreate", "mkfs.ext4")
    image = tmp_path / "disk.img"
    disk = build_disk(
        DiskSpec(
            "gpt", 96 * MiB, [PartitionSpec("ext4", 16 * MiB, "boot"), PartitionSpec("empty", 0)]
        ),
        image,
    )
    content = tmp_path / "content"
    content.mkdir()
    (content / "hello.txt").write_text("hello\n")
    vg = f"bv{uuid.uuid4().hex[:10]}"
    pv = disk.partitions[1]
    make_pv(
        image,
        pv.offset,
        pv.size,
        vg,
        [
            LogicalVolumeSpec("root", 24 * MiB, content),
            LogicalVolumeSpec("home", 16 * MiB, content),
        ],
    )
    boot = disk.partitions[0]
    point = mounted(loop(image, offset=boot.offset, size=boot.size), tmp_path / "boot")

    shown = run("inspect", image, "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert [p["partition"]["number"] for p in data["partitions"]] == [
        1,
        2,
    ]  # the layout is still there
    tree = data["tree"]
    assert tree["kind"] == "disk" and tree["filesystem"] == "gpt"
    nodes = by_name(tree)
    assert nodes["1"]["filesystem"] == "ext4" and nodes["1"]["label"] == "boot"
    assert nodes["1"]["mounts"] == [str(point)]
    assert [c["name"] for c in nodes["2"]["children"]] == [vg]
    assert nodes[vg]["kind"] == "lvm2-pv"
    lvs = {c["name"]: c for c in nodes[vg]["children"]}
    assert set(lvs) == {f"{vg}/root", f"{vg}/home"}
    assert lvs[f"{vg}/root"]["size"] == 24 * MiB and lvs[f"{vg}/home"]["size"] == 16 * MiB
    assert all(lv["filesystem"] == "ext4" and lv["kind"] == "lvm2-lv" for lv in lvs.values())

    human = run("inspect", image, env={"COLUMNS": "200"})
    assert human.returncode == 0, human.stderr
    assert f"{vg}/root" in human.stdout and f"on {point}" in human.stdout

    whole = loop(image)
    listed = json.loads(run("disks", "--json").stdout)
    mine = next(d for d in listed if d["path"] == whole)
    assert by_name(mine["tree"])["1"]["mounts"] == [str(point)]
    assert f"{vg}/home" in by_name(mine["tree"])
