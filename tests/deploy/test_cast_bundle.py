"""``cast send disk.bvi``: a one-file image deployed by multicast without a repository,
over the namespace network of test_cast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockvault.pipeline.backup import backup
from blockvault.repo import Repository
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import IS_ROOT, blockvault
from tests.deploy.test_cast import check_copy, finish, network

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT, reason="needs root for network namespaces"),
]

MiB = 1024 * 1024


def test_cast_send_of_an_image_to_one_receiver(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", 6 * MiB, seed=31)
    disk = build_disk(
        DiskSpec("gpt", 32 * MiB, [PartitionSpec("ext4", 0, content=tmp_path / "tree")]),
        tmp_path / "disk.img",
    )
    repo = Repository.init(str(tmp_path / "repo"))
    backup(repo, str(disk.path))
    image = tmp_path / "disk.bvi"
    done = blockvault("-r", tmp_path / "repo", "export", "latest", image, "--split", "1M")
    assert done.returncode == 0, done.stderr
    target = tmp_path / "target.img"
    with network([1500, 1500]) as net:
        receiver = net.receive(net.receivers[0], target, "--max-wait", "30", "--json")
        sender = net.run(
            net.sender,
            "cast",
            "send",
            image,
            "--interface",
            "cast0",
            "--session",
            net.prefix,
            "--key-file",
            net.key_file,
            "--min-receivers",
            "1",
            "--max-wait",
            "20",
            "--timeout",
            "40",
            "--json",
        )
        rc, _, err = finish(receiver)
        code, out, serr = finish(sender)
    assert code == 0, serr
    assert rc == 0, err
    assert [r["status"] for r in json.loads(out)["receivers"]] == ["verified"]
    check_copy(target, disk, tmp_path)
