"""VM disks out and in, judged by QEMU's own tools and the filesystems' checkers.

The sample disk is built by sfdisk and mkfs in a fresh sparse file, so every byte it
does not use is zero: a restore into a fresh file must reproduce it byte for byte, and
an exported VM disk must compare equal to it (``qemu-img compare``), which checks every
used block without trusting our maps. Its allocated size (the kernel's ``st_blocks``)
bounds how large a sparse export may be.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockvault.errors import Interrupted
from blockvault.events import Event, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.extents import ExtentMap
from blockvault.interop.vm import export_vm_disk, snapshot_export
from blockvault.interop.vm_import import ExportDisk, served_by_qemu_nbd
from blockvault.nbd.client import Client
from blockvault.nbd.server import serving
from blockvault.pipeline.backup import backup
from blockvault.pipeline.restore import restore
from blockvault.repo import Repository, Snapshot
from blockvault_demo.sample import (
    TREE_KINDS,
    BuiltDisk,
    DiskSpec,
    PartitionSpec,
    build_disk,
    make_tree,
)
from tests.conftest import blockvault, need_tools, sh
from tests.fstree import extract, fsck

MiB = 1024 * 1024
QEMU = {"qcow2": "qcow2", "vhdx": "vhdx", "vmdk": "vmdk", "vhd": "vpc", "vdi": "vdi"}


@dataclass(frozen=True)
class Sample:
    disk: BuiltDisk
    repo: Repository
    snapshot: Snapshot


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    need_tools("qemu-img", "qemu-nbd", "mkfs.vfat", "mkfs.ext4")
    work = tmp_path_factory.mktemp("vm")
    make_tree(work / "fat", 2 * MiB, seed=21, kinds=TREE_KINDS - {"symlink", "large"})
    make_tree(work / "ext", 6 * MiB, seed=22)
    disk = build_disk(
        DiskSpec(
            "gpt",
            80 * MiB + 64 * 1024,  # not whole MiB: the fixed VHD rounds it up
            [
                PartitionSpec("fat32", 36 * MiB, "ESP", work / "fat"),
                PartitionSpec("ext4", 32 * MiB, "root", work / "ext"),
            ],
        ),
        work / "disk.img",
    )
    repo = Repository.init(str(work / "repo"), chunk_size=256 * 1024)
    return Sample(disk, repo, backup(repo, str(disk.path)))


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def qemu_info(path: Path, fmt: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(
        sh("qemu-img", "info", "--output=json", "-f", QEMU.get(fmt, fmt), path)
    )
    return info


def check_filesystems(image: Path, disk: BuiltDisk, tmp: Path) -> None:
    for part in disk.partitions:
        fsck(extract(image, part.offset, part.size, tmp / f"p{part.number}.img"), part.fs)


# ---- export ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["qcow2", "vhdx", "vmdk"])
def test_export_passes_qemu_img_check_compares_equal_and_is_sparse(
    sample: Sample, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"disk.{fmt}"
    done = blockvault("-r", sample.repo.location, "export", sample.snapshot.id, out)
    assert done.returncode == 0, done.stderr
    assert f"written to {out}" in done.stderr
    sh("qemu-img", "check", "-f", fmt, out)
    restored = tmp_path / "restored.img"
    restore(sample.repo, sample.snapshot, str(restored))
    assert "identical" in sh("qemu-img", "compare", "-f", "raw", "-F", fmt, restored, out)
    assert "identical" in sh("qemu-img", "compare", "-f", "raw", "-F", fmt, sample.disk.path, out)
    assert qemu_info(out, fmt)["virtual-size"] == sample.disk.size
    # sparse: about the source's allocated bytes, far below the disk's size
    assert allocated(out) <= allocated(sample.disk.path) * 1.1 + 2 * MiB
    assert allocated(out) < sample.disk.size / 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_export_fixed_vhd_whole_mib_for_azure(sample: Sample, tmp_path: Path) -> None:
    out = tmp_path / "disk.vhd"
    done = blockvault("-r", sample.repo.location, "export", sample.snapshot.id, out)
    assert done.returncode == 0, done.stderr
    info = qemu_info(out, "vhd")
    size = info["virtual-size"]
    assert isinstance(size, int) and size % MiB == 0
    assert sample.disk.size < size < sample.disk.size + MiB
    assert out.stat().st_size == size + 512  # fixed: the disk, then the 512-byte footer
    assert out.read_bytes()[-512:].startswith(b"conectix")
    # the same bytes, and the added tail reads as zeros
    assert "identical" in sh("qemu-img", "compare", "-f", "raw", "-F", "vpc", sample.disk.path, out)


def test_export_raw_is_the_disk_as_a_sparse_file(sample: Sample, tmp_path: Path) -> None:
    out = tmp_path / "disk.img"
    done = blockvault(
        "-r", sample.repo.location, "export", "--format", "raw", sample.snapshot.id, out
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == sample.disk.path.read_bytes()
    assert allocated(out) <= allocated(sample.disk.path) * 1.1 + 2 * MiB


def test_a_one_file_image_exports_to_a_vm_disk_without_a_repository(
    sample: Sample, tmp_path: Path
) -> None:
    """A .bvi stands wherever SNAPSHOT does: the chain repository -> .bvi -> qcow2."""
    bvi = tmp_path / "disk.bvi"
    made = blockvault("-r", sample.repo.location, "export", sample.snapshot.id, bvi)
    assert made.returncode == 0, made.stderr
    out = tmp_path / "disk.qcow2"
    done = blockvault("export", bvi, out)
    assert done.returncode == 0, done.stderr
    sh("qemu-img", "check", "-f", "qcow2", out)
    assert "identical" in sh(
        "qemu-img", "compare", "-f", "raw", "-F", "qcow2", sample.disk.path, out
    )


def test_export_refuses_an_existing_file_and_an_unknown_suffix(
    sample: Sample, tmp_path: Path
) -> None:
    out = tmp_path / "disk.qcow2"
    out.write_bytes(b"precious")
    done = blockvault("-r", sample.repo.location, "export", sample.snapshot.id, out)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"blockvault: error: target {out}: exists already; remove it or choose another name"
    ]
    assert out.read_bytes() == b"precious"
    done = blockvault("-r", sample.repo.location, "export", sample.snapshot.id, tmp_path / "x.foo")
    assert done.returncode == 2 and "give --format" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.qcow2"]


# ---- import ------------------------------------------------------------------------------


def convert(source: Path, fmt: str, out: Path) -> Path:
    # force_size: the exact size, not one rounded to a CHS geometry
    options = ["-o", "subformat=dynamic,force_size=on"] if fmt == "vhd" else []
    sh("qemu-img", "convert", "-f", "raw", "-O", QEMU[fmt], *options, source, out)
    return out


@pytest.mark.parametrize("fmt", ["qcow2", "vhdx", "vmdk", "vdi", "vhd"])
def test_import_restores_byte_identical_and_fsck_clean(
    sample: Sample, tmp_path: Path, fmt: str
) -> None:
    image = convert(sample.disk.path, fmt, tmp_path / f"vm.{fmt}")
    done = blockvault("-r", sample.repo.location, "import", image)
    assert done.returncode == 0, done.stderr
    snap = sample.repo.resolve(done.stdout.strip())
    assert snap.source == str(image)
    # detected as a disk: the same table and filesystems as the image the VM disk holds
    assert snap.table == "gpt"
    assert [(p.number, p.filesystem) for p in snap.partitions] == [
        (p.number, p.fs) for p in sample.disk.partitions
    ]
    # deduplicated against the backup of the same disk: nothing new stored
    assert snap.stats.new_chunks == 0
    restored = tmp_path / "restored.img"
    restore(sample.repo, snap, str(restored))
    assert restored.read_bytes() == sample.disk.path.read_bytes()
    check_filesystems(restored, sample.disk, tmp_path)


class Recording:
    """An export that remembers what was read from it."""

    def __init__(self, inner: Client) -> None:
        self.inner = inner
        self.size = inner.size
        self.read = ExtentMap()

    def read_at(self, offset: int, length: int) -> bytes:
        self.read = self.read | ExtentMap.span(offset, length)
        return self.inner.read_at(offset, length)

    def readinto_at(self, buffer: bytearray | memoryview, offset: int) -> None:
        self.read = self.read | ExtentMap.span(offset, len(buffer))
        self.inner.readinto_at(buffer, offset)

    def extents(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        return self.inner.extents(offset, length)


def test_import_never_reads_what_qemu_reports_as_zeros(sample: Sample, tmp_path: Path) -> None:
    need_tools("nbdinfo")
    image = convert(sample.disk.path, "qcow2", tmp_path / "vm.qcow2")
    mapped = json.loads(
        sh("nbdinfo", "--json", "--map", "--", "[", "qemu-nbd", "-r", "-f", "qcow2", image, "]")
    )
    zeros = ExtentMap((m["offset"], m["length"]) for m in mapped if m["type"] & 2)
    assert zeros.total > sample.disk.size / 2
    with served_by_qemu_nbd(image, "qcow2") as uri, Client.connect(uri) as client:
        recording = Recording(client)
        snap = backup(sample.repo, ExportDisk(image, recording))
    assert recording.read and not recording.read & zeros
    assert snap.stats.new_chunks == 0


def test_a_backing_file_is_refused_unread(sample: Sample, tmp_path: Path) -> None:
    secret = tmp_path / "secret.img"
    secret.write_bytes(b"host secret".ljust(MiB, b"\0"))
    image = tmp_path / "overlay.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", secret, image)
    done = blockvault("-r", sample.repo.location, "import", image)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"blockvault: error: source {image}: has a backing file")


def test_vmdk_extents_in_other_files_are_refused(sample: Sample, tmp_path: Path) -> None:
    flat = tmp_path / "elsewhere.img"
    flat.write_bytes(bytes(MiB))
    descriptor = tmp_path / "disk.vmdk"
    descriptor.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n'
        f'RW 2048 FLAT "{flat}" 0\n'
        'ddb.adapterType = "ide"\n'
    )
    done = blockvault("-r", sample.repo.location, "import", descriptor)
    assert done.returncode == 2 and "no image blockvault can import" in done.stderr
    done = blockvault("-r", sample.repo.location, "import", "--format", "vmdk", descriptor)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"blockvault: error: source {descriptor}: has extents in other files: convert it first"
    ]


def test_a_damaged_qcow2_gets_one_line(sample: Sample, tmp_path: Path) -> None:
    image = convert(sample.disk.path, "qcow2", tmp_path / "vm.qcow2")
    with open(image, "r+b") as f:  # the L1 table offset and size, overwritten
        f.seek(36)
        f.write(b"\xff" * 12)
    done = blockvault("-r", sample.repo.location, "import", image)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"blockvault: error: source {image}: not a readable VM disk")


def test_export_progress_comes_from_qemu_img(sample: Sample, tmp_path: Path) -> None:
    events: list[Event] = []
    export_vm_disk(
        sample.repo, sample.snapshot, tmp_path / "disk.qcow2", "qcow2", reporter=events.append
    )
    assert events[0] == TaskStarted("export", sample.disk.size, str(tmp_path / "disk.qcow2"))
    assert events[-1] == TaskFinished("export")
    advanced = [e.done_bytes for e in events if isinstance(e, TaskAdvanced)]
    assert len(advanced) > 1 and sum(advanced) == sample.disk.size


def test_interrupted_export_leaves_nothing(sample: Sample, tmp_path: Path) -> None:
    def interrupt(event: Event) -> None:
        if isinstance(event, TaskAdvanced):  # qemu-img is running and writing
            raise Interrupted("SIGINT", 2)

    out = tmp_path / "disk.vhdx"
    with pytest.raises(Interrupted) as caught:
        export_vm_disk(sample.repo, sample.snapshot, out, "vhdx", reporter=interrupt)
    assert caught.value.outcome == f"{out} was not written"
    assert list(tmp_path.iterdir()) == []


def test_snapshot_holes_seen_by_nbdinfo_are_zeros_on_the_disk(sample: Sample) -> None:
    need_tools("nbdinfo")
    with serving(snapshot_export(sample.repo, sample.snapshot)) as uri:
        mapped = json.loads(sh("nbdinfo", "--json", "--map", uri))
    holes = [(m["offset"], m["length"]) for m in mapped if m["type"] == 3]
    data = sum(m["length"] for m in mapped if m["type"] == 0)
    assert sum(n for _, n in holes) + data == sample.disk.size
    # at most the used bytes are data (the index's used maps, cut to 512-byte blocks)
    assert data <= allocated(sample.disk.path)
    with open(sample.disk.path, "rb") as disk:
        for offset, length in holes:
            disk.seek(offset)
            assert disk.read(length).count(0) == length, f"hole at {offset} holds data"
