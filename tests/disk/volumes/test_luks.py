"""LUKS1 and LUKS2 containers: imaged whole without a key, by used sectors (still
encrypted) with one, and never a byte of plaintext in the repository.

Containers are made by the real ``cryptsetup luksFormat`` on a loop device (fast
PBKDF2 or small Argon2 so the tests are quick). There is no device-mapper here to
open them, so the inner ext4 (``mkfs.ext4 -d`` in a temporary file) is encrypted with
the volume key that ``cryptsetup luksDump --dump-volume-key`` reports and written at
the payload offset it reports (blockvault_demo.sample_stack). The restored container
is checked by ``cryptsetup open --test-passphrase``; its plaintext, decrypted by our
reader, by ``e2fsck -fn`` and debugfs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from blockvault.disk.device import Region, open_device
from blockvault.disk.layout import read_layout
from blockvault.disk.volumes import luks
from blockvault.errors import LuksKeyRejected
from blockvault.extents import ExtentMap
from blockvault.repo import Repository
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from blockvault_demo.sample_stack import (
    LogicalVolumeSpec,
    LuksContainer,
    luks_format,
    make_pv,
    write_encrypted,
)
from tests.conftest import blockvault, need_tools, needs_root, sh
from tests.fstree import fsck, tree

MiB = 1024 * 1024
PASSPHRASE = b"correct horse battery staple\n"  # a key file is used byte for byte
MARKER = b"blockvault-plaintext-marker-" + b"7f3a9c" * 8  # file content to search for
DIRECTORY = b"dir-marker-c9a3f7"  # a name in a directory block

pytestmark = needs_root


class LuksDisk(NamedTuple):
    image: Path
    offset: int  # of the LUKS partition
    size: int
    container: LuksContainer
    key_file: Path
    plain: Path  # the inner ext4 image, plaintext
    tree: Path


def _luks_disk(work: Path, luks_type: str, *extra: str) -> LuksDisk:
    need_tools("cryptsetup", "mkfs.ext4", "debugfs")
    content = work / "tree"
    make_tree(content, 3 * MiB, seed=7)
    (content / "secret.txt").write_bytes(MARKER * 200)
    (content / DIRECTORY.decode()).mkdir()
    image = work / "disk.img"
    disk = build_disk(
        DiskSpec(
            "gpt", 80 * MiB, [PartitionSpec("ext4", 8 * MiB), PartitionSpec("empty", 64 * MiB)]
        ),
        image,
    )
    part = disk.partitions[1]
    key_file = work / "key"
    key_file.write_bytes(PASSPHRASE)
    container = luks_format(image, part.offset, part.size, key_file, luks_type, *extra)
    plain = work / "plain.img"
    plain.touch()
    os.truncate(plain, part.size - container.payload_offset)
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", content, plain)
    write_encrypted(image, part.offset, container, plain)
    return LuksDisk(image, part.offset, part.size, container, key_file, plain, content)


@pytest.fixture(
    scope="module",
    params=[
        ("luks1",),
        ("luks2",),
        ("luks2", "--sector-size", "4096"),
        ("luks2", "--pbkdf", "argon2id", "--pbkdf-memory", "1024", "--pbkdf-force-iterations", "4"),
    ],
    ids=["luks1", "luks2", "luks2-4k", "luks2-argon2id"],
)
def luks_disk(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LuksDisk:
    return _luks_disk(tmp_path_factory.mktemp("luks"), *request.param)


def test_without_a_key_the_container_is_imaged_whole(luks_disk: LuksDisk) -> None:
    with open_device(str(luks_disk.image)) as device:
        layout = read_layout(device)
    part = layout.partitions[1]
    assert part.fs.type.startswith("luks")
    assert part.fs.used == ExtentMap.span(0, luks_disk.size)
    (volume,) = part.fs.volumes
    assert volume.encrypted and volume.filesystem == "raw" and "no key" in (volume.note or "")
    assert any("no key given" in w for w in layout.warnings)


def test_with_the_key_only_used_sectors_count(luks_disk: LuksDisk) -> None:
    with open_device(str(luks_disk.image)) as device:
        layout = read_layout(device, {2: PASSPHRASE})
    part = layout.partitions[1]
    (volume,) = part.fs.volumes
    assert (volume.name, volume.filesystem, volume.encrypted) == ("luks", "ext4", True)
    payload = luks_disk.container.payload_offset
    assert volume.mapping == ((0, payload, luks_disk.size - payload),)
    assert part.fs.used.covers(0, payload)  # header and key slots, byte-exact
    assert part.fs.used_bytes < payload + 0.3 * (luks_disk.size - payload)
    assert volume.used_bytes < 0.3 * volume.size


def test_a_wrong_key_is_refused_in_one_line(luks_disk: LuksDisk, tmp_path: Path) -> None:
    with open_device(str(luks_disk.image)) as device, pytest.raises(LuksKeyRejected):
        read_layout(device, {None: b"wrong"})
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"wrong")
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    done = blockvault("-r", repo, "backup", "--luks-key-file", f"2={wrong}", luks_disk.image)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "partition 2" in done.stderr, done.stderr


def test_no_plaintext_in_the_repository_and_restore_opens(
    luks_disk: LuksDisk, tmp_path: Path
) -> None:
    plain_bytes = luks_disk.plain.read_bytes()
    assert MARKER in plain_bytes and DIRECTORY in plain_bytes  # the search below can fail
    repo_path = tmp_path / "repo"
    env = {"BLOCKVAULT_PASSWORD": "repo pass"}
    assert blockvault("-r", repo_path, "init", "--encryption", "repokey", env=env).returncode == 0
    done = blockvault(
        "-r", repo_path, "backup", "--luks-key-file", f"2={luks_disk.key_file}",
        luks_disk.image, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    repo = Repository.open(str(repo_path), passphrase=lambda: "repo pass")
    (snap,) = repo.snapshots()
    record = snap.partitions[1]
    assert record.volumes[0].encrypted and record.volumes[0].filesystem == "ext4"
    # far less than the partition: only used sectors were stored
    assert snap.stats.used_bytes < 0.5 * luks_disk.size
    # every stored chunk, decrypted and decompressed by the repository: no plaintext
    chunks = repo.stored_chunk_ids()
    assert chunks
    for chunk_id in chunks:
        data = repo.get_chunk(chunk_id)
        assert MARKER[:32] not in data
        assert DIRECTORY not in data  # an ext4 directory block in the clear
    restored = tmp_path / "restored.img"
    done = blockvault("-r", repo_path, "restore", snap.id, restored, env=env)
    assert done.returncode == 0, done.stderr
    # every used byte identical: the ciphertext written back where it was
    with open_device(str(luks_disk.image)) as src, open_device(str(restored)) as dst:
        for extent in ExtentMap(
            (luks_disk.offset + e.offset, e.length)
            for e in read_layout(src, {2: PASSPHRASE}).partitions[1].fs.used
        ):
            assert src.read_at(extent.offset, extent.length) == dst.read_at(
                extent.offset, extent.length
            )
        # the plaintext, decrypted by our reader, is a clean ext4 with the same files
        region = Region(dst, luks_disk.offset, luks_disk.size)
        header = luks.read_header(region)
        key = luks.unlock(region, header, PASSPHRASE, "restored")
        assert key == luks_disk.container.key
        plain = luks.DecryptingReader(region, header, key)
        copy = tmp_path / "plain.img"
        with open(copy, "wb") as out:
            for at in range(0, plain.size, 4 * MiB):
                out.write(plain.read_at(at, min(4 * MiB, plain.size - at)))
    fsck(copy, "ext4")
    assert tree(copy, "ext4", tmp_path / "t") == tree(luks_disk.plain, "ext4", tmp_path / "u")
    # and cryptsetup opens the restored container with the same passphrase
    loop = sh("losetup", "--find", "--show", "--offset", str(luks_disk.offset), "--sizelimit",
              str(luks_disk.size), restored).strip()  # fmt: skip
    try:
        sh("cryptsetup", "open", "--test-passphrase", "--key-file", luks_disk.key_file, loop)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def test_lvm_inside_luks_is_read_to_its_logical_volumes(tmp_path: Path) -> None:
    """The Ubuntu/Debian "LVM with encryption" layout: partition -> LUKS2 -> PV -> LVs.
    The PV is made by pvcreate on a plaintext file, then encrypted into the container."""
    need_tools("cryptsetup", "pvcreate", "mkfs.ext4")
    content = tmp_path / "tree"
    make_tree(content, 2 * MiB, seed=3)
    image = tmp_path / "disk.img"
    disk = build_disk(DiskSpec("gpt", 80 * MiB, [PartitionSpec("empty", 72 * MiB)]), image)
    part = disk.partitions[0]
    key_file = tmp_path / "key"
    key_file.write_bytes(PASSPHRASE)
    container = luks_format(image, part.offset, part.size, key_file, "luks2")
    plain = tmp_path / "pv.img"
    plain.touch()
    os.truncate(plain, part.size - container.payload_offset)
    vg = f"bv{os.urandom(5).hex()}"
    places = make_pv(
        plain, 0, plain.stat().st_size, vg, [LogicalVolumeSpec("root", 20 * MiB, content)]
    )
    write_encrypted(image, part.offset, container, plain)
    with open_device(str(image)) as device:
        layout = read_layout(device, {None: PASSPHRASE})
    info = layout.partitions[0].fs
    names = [(v.name, v.parent, v.kind, v.filesystem, v.encrypted) for v in info.volumes]
    assert names == [
        ("luks", "", "luks2", "lvm2", True),
        (vg, "luks", "lvm2-pv", "", True),
        (f"{vg}/root", vg, "lvm2-lv", "ext4", True),
    ]
    root = info.volumes[2]
    assert [(outer, length) for _, outer, length in root.mapping] == places["root"]
    # the used map: header area, PV metadata and the LV's used blocks, nothing more
    assert info.used_bytes < container.payload_offset + 8 * MiB


def test_browsing_an_encrypted_partition_takes_the_key(luks_disk: LuksDisk, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    key = f"2={luks_disk.key_file}"
    done = blockvault("-r", repo, "backup", "-p", "2", "--luks-key-file", key, luks_disk.image)
    assert done.returncode == 0, done.stderr
    locked = blockvault("-r", repo, "ls", "latest:2/")
    assert locked.returncode == 2 and "no key was given" in locked.stderr
    assert locked.stderr.count("\n") == 1
    ls = blockvault("-r", repo, "ls", "--luks-key-file", key, "latest:2/")
    assert ls.returncode == 0, ls.stderr
    assert sorted(ls.stdout.split()) == sorted([*os.listdir(luks_disk.tree), "lost+found"])
    cat = subprocess.run(
        ["blockvault", "-r", repo, "cat", "--luks-key-file", key, "latest:2/secret.txt"],
        capture_output=True,
        check=False,
    )
    assert cat.returncode == 0 and cat.stdout == MARKER * 200
