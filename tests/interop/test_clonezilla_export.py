"""Export to a Clonezilla image directory, restored by the real tools.

The sample disks are built by sfdisk and mkfs.* in fresh sparse files, so every byte
a filesystem does not use is zero. A restore the way Clonezilla does it (sfdisk from
``-pt.sf``, the boot code and hidden sectors by dd, each payload joined, decompressed
and given to ``partclone.<fs> -r``, swap remade by mkswap from ``swappt-*.info``) onto
a fresh file must then give back the whole disk byte for byte, which checks every
used block without trusting our own maps; fsck is the other oracle.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault.disk.device import open_device
from blockvault.disk.fs.probe import probe
from blockvault.events import Event, TaskAdvanced, TaskFinished, TaskStarted
from blockvault.interop.c_partclone import c_partclone
from blockvault.interop.clonezilla_export import export_clonezilla
from blockvault.interop.partclone_write import PartcloneImage, block_size_for, write_image
from blockvault.repo import Repository
from blockvault_demo.sample import (
    BuiltDisk,
    DiskSpec,
    PartitionSpec,
    build_disk,
    demo_disk,
    make_tree,
)
from tests.conftest import blockvault, need_tools, needs_root, sh
from tests.fstree import extract, fsck

MiB = 1024 * 1024
SECTOR = 512


def backup(tmp: Path, image: Path) -> Path:
    repo = tmp / "repo"
    if not repo.exists():
        assert blockvault("-r", repo, "init", "--encryption", "none").returncode == 0
    done = blockvault("-r", repo, "backup", image)
    assert done.returncode == 0, done.stderr
    return repo


def export(repo: Path, dest: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return blockvault("-r", repo, "export", "latest", dest, "--format", "clonezilla", *options)


def payload_pieces(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}.*-ptcl-img.zst*"))


def partition_numbers(image: Path) -> dict[int, dict[str, int]]:
    """Partition number -> ``sfdisk --json`` entry (start and size in sectors)."""
    layout = json.loads(sh("sfdisk", "--json", image))["partitiontable"]["partitions"]
    return {int(e["node"].removeprefix(str(image)).lstrip("p")): e for e in layout}


def restore_clonezilla(directory: Path, target: Path, loop: Callable[..., str]) -> None:
    """Restore a Clonezilla ``savedisk`` directory onto the image file ``target`` with
    the tools Clonezilla uses, as ``ocs-sr restoredisk`` does."""
    disk = (directory / "disk").read_text().split()[0]
    parts = (directory / "parts").read_text().split()
    table = (directory / f"{disk}-pt.sf").read_text()
    sh("sfdisk", "--force", "-q", target, input=table)
    if "label: dos" in table:  # Clonezilla writes back the boot code and the gap after it
        sh(
            "dd",
            f"if={directory / f'{disk}-mbr'}",
            f"of={target}",
            "bs=446",
            "count=1",
            "conv=notrunc",
        )
        hidden = directory / f"{disk}-hidden-data-after-mbr"
        if hidden.exists():
            sh("dd", f"if={hidden}", f"of={target}", "bs=512", "seek=1", "conv=notrunc")
    fs_of = {
        line.split()[0].removeprefix("/dev/"): line.split()[1]
        for line in (directory / "dev-fs.list").read_text().splitlines()
        if line.startswith("/dev/")
    }
    for number, entry in partition_numbers(target).items():
        name = f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"
        device = loop(target, offset=entry["start"] * SECTOR, size=entry["size"] * SECTOR)
        if name in parts:
            pieces = payload_pieces(directory, name)
            fs = pieces[0].name.split(".")[1].removesuffix("-ptcl-img")
            tool = ["partclone.dd"] if fs == "dd" else [f"partclone.{fs}", "-r"]
            joined = b"".join(p.read_bytes() for p in pieces)
            raw = subprocess.run(["zstd", "-dc"], input=joined, capture_output=True, check=True)
            done = subprocess.run(
                [*tool, "-s", "-", "-o", device], input=raw.stdout, capture_output=True
            )
            assert done.returncode == 0, done.stderr.decode(errors="replace")[-500:]
        elif fs_of.get(name) == "swap":
            info = dict(
                line.split("=", 1)
                for line in (directory / f"swappt-{name}.info").read_text().splitlines()
            )
            sh("mkswap", "-U", info["UUID"].strip('"'), "-L", info["LABEL"].strip('"'), device)


def assert_restored(source: Path, restored: Path, tmp: Path, filesystems: dict[int, str]) -> None:
    by_number = partition_numbers(source)
    for number, fs in filesystems.items():
        entry = by_number[number]
        offset, size = entry["start"] * SECTOR, entry["size"] * SECTOR
        fsck(extract(restored, offset, size, tmp / f"p{number}.img"), fs)
    same = subprocess.run(["cmp", source, restored], capture_output=True, text=True)
    assert same.returncode == 0, f"restored disk differs from the source: {same.stdout}"


@pytest.mark.root
@needs_root
def test_gpt_demo_disk_restores_with_partclone(tmp_path: Path, loop: Callable[..., str]) -> None:
    """GPT: FAT32 ESP, ext4, swap, NTFS; payloads split into 1 MiB pieces."""
    need_tools("partclone.restore", "zstd", "parted", "sgdisk")
    disk = demo_disk(tmp_path / "demo.img")
    repo = backup(tmp_path, disk.path)
    out = tmp_path / "cz"
    done = export(repo, out, "--split", "1M")
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    for required in (
        "disk",
        "parts",
        "dev-fs.list",
        "blkdev.list",
        "clonezilla-img",
        "sda-pt.sf",
        "sda-pt.parted",
        "sda-chs.sf",
        "sda-mbr",
        "sda-gpt-1st",
        "sda-gpt-2nd",
        "sda-gpt.gdisk",
        "swappt-sda3.info",
    ):
        assert required in names
    assert (out / "parts").read_text().split() == ["sda1", "sda2", "sda4"]
    assert "sda2.ext4-ptcl-img.zst.ab" in names and "sda2.ext4-ptcl-img.zst" not in names
    assert all(p.stat().st_size <= MiB for p in out.glob("*-ptcl-img.zst.*"))
    assert "sda1.vfat-ptcl-img.zst.aa" in names and "sda4.ntfs-ptcl-img.zst.aa" in names
    # the GPT copies are the source's own sectors, and sgdisk reads its backup file
    size = disk.path.stat().st_size
    with open(disk.path, "rb") as f:
        assert (out / "sda-gpt-1st").read_bytes() == f.read(34 * SECTOR)
        f.seek(size - 32 * SECTOR)  # what ocs-sr's dd gets: see the savedisk test
        assert (out / "sda-gpt-2nd").read_bytes() == f.read(32 * SECTOR)
    restored = tmp_path / "restored.img"
    restored.write_bytes(b"")
    subprocess.run(["truncate", "-s", str(size), restored], check=True)
    restore_clonezilla(out, restored, loop)
    assert_restored(disk.path, restored, tmp_path, {1: "fat32", 2: "ext4", 4: "ntfs"})


def mbr_disk(tmp_path: Path) -> BuiltDisk:
    """MBR: ext4, FAT16, raw, then logical NTFS and swap; boot code in the first 446
    bytes and a GRUB-like core in the gap before the first partition."""
    content = tmp_path / "tree"
    make_tree(content, 2 * MiB, seed=3, kinds={"text"})
    spec = DiskSpec(
        "mbr",
        160 * MiB,
        [
            PartitionSpec("ext4", 40 * MiB, "root", content),
            PartitionSpec("fat16", 30 * MiB, "BOOT", content),
            PartitionSpec("raw", 8 * MiB),
            PartitionSpec("ntfs", 40 * MiB, "Data", content),
            PartitionSpec("swap", 0, "swap"),
        ],
        logical_from=3,
    )
    disk = build_disk(spec, tmp_path / "mbr.img")
    with open(disk.path, "r+b") as f:
        f.write(b"\xeb\x63" + bytes(range(200)) * 2)
        f.seek(SECTOR)
        f.write(b"core.img" * 4096)
    return disk


@pytest.mark.root
@needs_root
def test_mbr_disk_with_logical_partitions_restores_with_partclone(
    tmp_path: Path, loop: Callable[..., str]
) -> None:
    """The raw partition goes as a partclone.dd payload; the boot code, the hidden
    sectors before the first partition and the extended partition's EBR by dd."""
    need_tools("partclone.restore", "zstd", "parted")
    disk = mbr_disk(tmp_path)
    repo = backup(tmp_path, disk.path)
    out = tmp_path / "cz"
    done = export(repo, out, "--disk-name", "vda")
    assert done.returncode == 0, done.stderr
    assert (out / "disk").read_text().split() == ["vda"]
    assert (out / "parts").read_text().split() == ["vda1", "vda2", "vda3", "vda5"]
    assert (out / "vda3.dd-ptcl-img.zst").exists()
    assert (out / "swappt-vda6.info").read_text().splitlines()[1] == 'LABEL="swap"'
    hidden = (out / "vda-hidden-data-after-mbr").read_bytes()
    assert len(hidden) == MiB - SECTOR and hidden.startswith(b"core.img")
    assert disk.extended is not None
    with open(disk.path, "rb") as f:
        f.seek(disk.extended[0])
        assert (out / "vda4-ebr").read_bytes() == f.read(SECTOR)
    restored = tmp_path / "restored.img"
    subprocess.run(["truncate", "-s", str(disk.size), restored], check=True)
    restore_clonezilla(out, restored, loop)
    assert_restored(disk.path, restored, tmp_path, {1: "ext4", 2: "fat16", 5: "ntfs"})


def test_partclone_writer_matches_partclone(tmp_path: Path) -> None:
    """For ext4 and FAT32 the image is partclone's own, byte for byte (same used map,
    same header, bitmap and strip checksums); partclone.chkimg accepts all three."""
    need_tools("partclone.extfs", "partclone.fat", "partclone.chkimg", "mkfs.ext4", "mkntfs")
    content = tmp_path / "tree"
    make_tree(content, 3 * MiB, seed=1, kinds={"random"})
    cases = {"ext4": ("EXTFS", "extfs"), "fat32": ("FAT32", "fat"), "ntfs": ("NTFS", "ntfs")}
    for fs, (tag, tool) in cases.items():
        spec = DiskSpec("none", 48 * MiB, [PartitionSpec(fs, 0, "T", content)])
        built = build_disk(spec, tmp_path / f"{fs}.img")
        theirs = tmp_path / f"{fs}.theirs"
        sh(f"partclone.{tool}", "-q", "-c", "-s", built.path, "-o", theirs)
        reference = theirs.read_bytes()
        head = c_partclone.image_head_v2(reference[:110])
        device = open_device(built.path)
        info = probe(device)
        image = PartcloneImage.of(
            tag,
            device.size,
            block_size_for(512 if fs == "fat32" else info.block_size, device.size),
            info.used,
            strip_bytes=head.blocks_per_checksum * head.block_size,
        )
        ours = tmp_path / f"{fs}.ours"
        with open(ours, "wb") as f:
            write_image(image, device.read_at, f.write)
        assert ours.stat().st_size == image.size
        if fs != "ntfs":  # partclone.ntfs leaves out the backup boot sector; we keep it
            assert ours.read_bytes() == reference
        sh("partclone.chkimg", "-s", ours)


def test_damaged_checksum_is_caught_by_partclone(tmp_path: Path) -> None:
    """The strip checksums are real: partclone.chkimg refuses a flipped data byte."""
    need_tools("partclone.chkimg", "mkfs.ext4")
    spec = DiskSpec("none", 16 * MiB, [PartitionSpec("ext4", 0)])
    built = build_disk(spec, tmp_path / "e.img")
    device = open_device(built.path)
    info = probe(device)
    image = PartcloneImage.of("EXTFS", device.size, info.block_size, info.used)
    data = bytearray()
    write_image(image, device.read_at, data.extend)
    data[image.size - 100] ^= 0x40  # inside the last strip's blocks
    (tmp_path / "bad").write_bytes(bytes(data))
    checked = subprocess.run(["partclone.chkimg", "-s", tmp_path / "bad"], capture_output=True)
    assert checked.returncode != 0


def test_export_refuses_bad_requests(tmp_path: Path) -> None:
    need_tools("mkfs.ext4")
    spec = DiskSpec("gpt", 32 * MiB, [PartitionSpec("ext4", 0)])
    built = build_disk(spec, tmp_path / "d.img")
    repo = backup(tmp_path, built.path)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("mine")
    for dest, options, words in (
        (busy, (), "is not an empty directory"),
        (tmp_path / "a", ("--disk-name", "../x"), "is not a kernel disk name"),
        (tmp_path / "b", ("--split", "1000"), "below 1 MiB"),
        (tmp_path / "no" / "c", (), "parent directory does not exist"),
    ):
        done = export(repo, dest, *options)
        assert done.returncode == 2, done.stderr
        assert words in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert (busy / "keep").read_text() == "mine" and sorted(p.name for p in busy.iterdir()) == [
        "keep"
    ]
    assert not (tmp_path / "a").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export(repo, empty).returncode == 0
    assert (empty / "parts").read_text().split() == ["sda1"]


OCS_NAMESPACE = Path(__file__).with_name("ocs_namespace.sh")
# -j2: the hidden sectors after the MBR too; -icds/-scr: no interactive size checks;
# -iefi/-irhr/-ius/-iui: leave the restored system and this machine's NVRAM alone
RESTOREDISK = (
    "-batch",
    "-nogui",
    "-j2",
    "-icds",
    "-scr",
    "-iefi",
    "-irhr",
    "-ius",
    "-iui",
    "-p",
    "true",
)


def ocs_sr(
    tmp_path: Path,
    image: Path,
    layout: dict[int, dict[str, int]],
    loop: Callable[..., str],
    *args: str | Path,
) -> str:
    """Run ``ocs-sr ARGS img sda`` where /dev/sda is ``image`` and /dev/sdaN its
    partitions as ``layout`` places them (loop devices in a private mount namespace);
    its output, after checking that it succeeded."""
    devices = [f"sda:{loop(image)}"] + [
        f"sda{n}:{loop(image, offset=p['start'] * SECTOR, size=p['size'] * SECTOR)}"
        for n, p in layout.items()
    ]
    work = tmp_path / "ns"
    work.mkdir()
    command = ["unshare", "-m", OCS_NAMESPACE, work, *devices, "--", "ocs-sr", *args, "img", "sda"]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=600)
    log = ran.stdout + ran.stderr
    assert ran.returncode == 0, log[-3000:]
    return log


@pytest.mark.root
@needs_root
@pytest.mark.parametrize("table", ["gpt", "mbr"])
def test_ocs_sr_restores_the_exported_directory(
    tmp_path: Path, loop: Callable[..., str], table: str
) -> None:
    """Clonezilla itself (``ocs-sr -batch restoredisk``, in a private mount namespace
    whose /dev/sda* are loop devices) restores the exported disk: partition table,
    boot code, hidden sectors, EBR, partclone and dd payloads and the swap it remakes.
    The only bytes it changes on its own are the NTFS records its ``ntfsfix -d``
    rewrites, so the source gets the same ``ntfsfix -d`` before the disks are compared."""
    need_tools("ocs-sr", "unshare", "partclone.restore", "zstd", "parted", "ntfsfix")
    if table == "gpt":
        disk = demo_disk(tmp_path / "demo.img")
        filesystems, ntfs = {1: "fat32", 2: "ext4", 4: "ntfs"}, 4
    else:
        disk = mbr_disk(tmp_path)
        filesystems, ntfs = {1: "ext4", 2: "fat16", 5: "ntfs"}, 5
    repo = backup(tmp_path, disk.path)
    ocsroot = tmp_path / "partimag"
    ocsroot.mkdir()
    done = export(repo, ocsroot / "img")
    assert done.returncode == 0, done.stderr
    restored = tmp_path / "restored.img"
    subprocess.run(["truncate", "-s", str(disk.size), restored], check=True)
    layout = partition_numbers(disk.path)
    log = ocs_sr(tmp_path, restored, layout, loop, *RESTOREDISK, "-or", ocsroot, "restoredisk")
    assert "End of restoredisk job for image img" in log
    part = layout[ntfs]
    sh("ntfsfix", "-d", loop(disk.path, offset=part["start"] * SECTOR, size=part["size"] * SECTOR))
    assert_restored(disk.path, restored, tmp_path, filesystems)


def test_interrupted_export_leaves_nothing(tmp_path: Path) -> None:
    """SIGINT halfway (sent by the repository's fault hook after 20 chunk reads): no
    DEST, no hidden scratch directory, one line saying so, exit 130."""
    need_tools("mkfs.ext4", "parted")
    content = tmp_path / "tree"
    make_tree(content, 24 * MiB, seed=5, kinds={"random"})
    spec = DiskSpec("gpt", 64 * MiB, [PartitionSpec("ext4", 0, "root", content)])
    built = build_disk(spec, tmp_path / "d.img")
    repo = backup(tmp_path, built.path)
    out = tmp_path / "out" / "cz"
    out.parent.mkdir()
    done = blockvault(
        "-r",
        repo,
        "export",
        "latest",
        out,
        "--format",
        "clonezilla",
        env={"BLOCKVAULT_FAULTS": "signal=INT,every=20,operations=read,under=data/"},
    )
    assert done.returncode == 130, done.stderr
    assert "nothing was written" in done.stderr and "Traceback" not in done.stderr
    assert list(out.parent.iterdir()) == []


def test_swap_label_from_a_snapshot_cannot_run_in_clonezilla(tmp_path: Path) -> None:
    """Clonezilla sources swappt-*.info in its shell: a hostile label such as
    ``$(touch pwned)`` must arrive as inert text."""
    need_tools("mkfs.ext4", "mkswap", "parted")
    spec = DiskSpec(
        "gpt",
        48 * MiB,
        [PartitionSpec("ext4", 24 * MiB), PartitionSpec("swap", 0, "$(touch pwned)")],
    )
    built = build_disk(spec, tmp_path / "d.img")
    repo = backup(tmp_path, built.path)
    out = tmp_path / "cz"
    assert export(repo, out).returncode == 0
    shell = tmp_path / "shell"
    shell.mkdir()
    label = subprocess.run(
        ["bash", "-c", f'. "{out / "swappt-sda2.info"}"; printf %s "$LABEL"'],
        cwd=shell,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert label == "touch pwned"
    assert list(shell.iterdir()) == []


def test_progress_events_add_up(tmp_path: Path) -> None:
    """The library reports through events: the bytes advanced add up to the total it
    announced (a dd payload reads its whole partition, a partclone one its used bytes)."""
    need_tools("mkfs.ext4", "mkfs.vfat", "mkntfs", "parted")
    disk = mbr_disk(tmp_path)
    repo = Repository.open(str(backup(tmp_path, disk.path)))
    events: list[Event] = []
    result = export_clonezilla(
        repo, repo.resolve("latest"), tmp_path / "cz", reporter=events.append
    )
    started = [e for e in events if isinstance(e, TaskStarted)]
    advanced = sum(e.done_bytes for e in events if isinstance(e, TaskAdvanced))
    assert len(started) == 1 and started[0].total_bytes == advanced > 8 * MiB
    assert isinstance(events[-1], TaskFinished)
    assert result.parts == ("sda1", "sda2", "sda3", "sda5")
    pieces = [p for p in (tmp_path / "cz").iterdir() if "-ptcl-img" in p.name]
    assert result.payload_bytes == sum(p.stat().st_size for p in pieces)


@pytest.mark.root
@needs_root
def test_export_matches_what_ocs_sr_savedisk_writes(
    tmp_path: Path, loop: Callable[..., str]
) -> None:
    """The oracle is Clonezilla itself: ``ocs-sr savedisk`` of the demo disk (zstd, no
    split) and our export of its snapshot hold the same table files, lists and boot
    sectors, and the same partclone images once decompressed (NTFS: ours keeps one
    more block, the backup boot sector)."""
    need_tools("ocs-sr", "unshare", "partclone.extfs", "zstd", "parted", "sgdisk")
    disk = demo_disk(tmp_path / "demo.img")
    saved = tmp_path / "saved"
    saved.mkdir()
    options = ("-batch", "-nogui", "-q2", "-j2", "-z9", "-i", "0", "-sfsck", "-scs", "-senc")
    layout = partition_numbers(disk.path)
    ocs_sr(tmp_path, disk.path, layout, loop, *options, "-p", "true", "-or", saved, "savedisk")
    theirs = saved / "img"
    repo = backup(tmp_path, disk.path)
    ours = tmp_path / "cz"
    assert export(repo, ours).returncode == 0
    # Clonezilla writes a few more notes about the machine it ran on
    machine_notes = {"Info-OS-prober.txt", "Info-dmi.txt", "Info-packages.txt", "blkid.list"}
    assert {p.name for p in ours.iterdir()} == {p.name for p in theirs.iterdir()} - machine_notes
    for name in (
        "disk",
        "parts",
        "dev-fs.list",
        "sda-pt.sf",
        "sda-chs.sf",
        "swappt-sda3.info",
        "sda-mbr",
        "sda-gpt-1st",
        "sda-gpt-2nd",
        "sda-gpt.gdisk",
    ):
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    for name in ("sda-pt.parted", "sda-pt.parted.compact"):  # but for the Model: line
        assert (ours / name).read_text().splitlines()[1:] == (
            theirs / name
        ).read_text().splitlines()[1:]
    for name in ("sda1.vfat", "sda2.ext4", "sda4.ntfs"):
        mine, clonezillas = (
            sh_bytes("zstd", "-dc", d / f"{name}-ptcl-img.zst") for d in (ours, theirs)
        )
        if name == "sda4.ntfs":
            assert len(mine) == len(clonezillas) + 4096
        else:
            assert mine == clonezillas, name


def sh_bytes(*args: str | Path) -> bytes:
    return subprocess.run([str(a) for a in args], capture_output=True, check=True).stdout


@pytest.mark.parametrize("layout", ["gpt", "mbr"])
def test_our_export_imports_back_byte_identical(tmp_path: Path, layout: str) -> None:
    """The two halves check each other: a snapshot exported as a Clonezilla directory
    and imported again restores to the source disk byte for byte (GPT: FAT32, ext4,
    swap, NTFS; MBR: boot code, hidden sectors, a raw partclone.dd payload, logical
    partitions)."""
    disk = demo_disk(tmp_path / "demo.img") if layout == "gpt" else mbr_disk(tmp_path)
    repo = backup(tmp_path, disk.path)
    out = tmp_path / "cz"
    done = export(repo, out, "--split", "2M")
    assert done.returncode == 0, done.stderr
    again = tmp_path / "again"
    assert blockvault("-r", again, "init", "--encryption", "none").returncode == 0
    imported = blockvault("-r", again, "import", out)
    assert imported.returncode == 0, imported.stderr
    restored = tmp_path / "restored.img"
    done = blockvault("-r", again, "restore", "latest", restored, "--yes")
    assert done.returncode == 0, done.stderr
    assert_restored(disk.path, restored, tmp_path, _filesystems(disk))


def _filesystems(disk: BuiltDisk) -> dict[int, str]:
    return {p.number: p.fs for p in disk.partitions if p.fs not in ("swap", "raw")}
