"""One-file images end to end, on disks built by sfdisk and mkfs: export, restore and
browse without a repository, encryption, pieces on a real FAT32 filesystem, broken
pieces named, import with deduplication.

The sample disks are sparse files whose unused bytes are zero, so a restore into a
fresh file must equal the source image byte for byte; fsck is the other oracle.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import resource
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault.browse.volume import open_volume
from blockvault.errors import (
    ChunkCorrupt,
    ImageReadOnly,
    Interrupted,
    PassphraseRequired,
    PieceError,
    UsageError,
)
from blockvault.events import Event, TaskAdvanced
from blockvault.pipeline.backup import backup
from blockvault.pipeline.copy import export_bundle
from blockvault.repo import Repository
from blockvault.repo.keys import ScryptParams
from blockvault.storage.bundle import BundleBackend, BundleWriter
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import blockvault, need_tools, needs_root, sh
from tests.fstree import extract, fsck

MiB = 1024 * 1024
PASSWORD = "correct horse"
FAST_KDF = ScryptParams(n=2**12)


class Source:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.trees = {1: work / "fat", 2: work / "ext"}
        make_tree(self.trees[1], 4 * MiB, seed=21, kinds={"text", "binary"})
        make_tree(self.trees[2], 12 * MiB, seed=22)
        self.disk: BuiltDisk = build_disk(
            DiskSpec(
                "gpt",
                96 * MiB,
                [
                    PartitionSpec("fat32", 40 * MiB, "ESP", self.trees[1]),
                    PartitionSpec("ext4", 0, "root", self.trees[2]),
                ],
            ),
            work / "disk.img",
        )
        # uncompressed, so that file content would show in the image unless encrypted
        self.plain = work / "plain"
        repo = Repository.init(str(self.plain), chunk_size=64 * 1024, compression="none")
        backup(repo, str(self.disk.path))
        self.sealed = work / "sealed"
        repo = Repository.init(
            str(self.sealed),
            chunk_size=64 * 1024,
            compression="none",
            encryption="repokey",
            passphrase=PASSWORD,
            kdf=FAST_KDF,
        )
        backup(repo, str(self.disk.path))
        self.image = work / "disk.bvi"
        done = blockvault("-r", self.plain, "export", "latest", self.image)
        assert done.returncode == 0, done.stderr

    def known_file(self) -> Path:
        """The largest file of the ext4 tree: content the image must hold (or hide)."""
        files = [p for p in self.trees[2].rglob("*") if p.is_file() and not p.is_symlink()]
        return max(files, key=lambda p: p.stat().st_size)

    def check_restored(self, target: Path, tmp: Path) -> None:
        assert filecmp.cmp(self.disk.path, target, shallow=False)
        for part in self.disk.partitions:
            fsck(extract(target, part.offset, part.size, tmp / f"p{part.number}"), part.fs)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    return Source(tmp_path_factory.mktemp("bundle"))


def one_line_error(done: object, *words: str) -> str:
    err: str = done.stderr.strip()  # type: ignore[attr-defined]
    assert len(err.splitlines()) == 1, err
    assert all(w in err for w in words), err
    return err


def test_restore_from_the_image_without_a_repository(source: Source, tmp_path: Path) -> None:
    target = tmp_path / "out.img"
    done = blockvault("restore", source.image, target)
    assert done.returncode == 0, done.stderr
    source.check_restored(target, tmp_path)
    verified = blockvault("verify", source.image)
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stderr


def test_recompressed_image_is_smaller_and_restores(source: Source, tmp_path: Path) -> None:
    smaller = tmp_path / "small.bvi"
    done = blockvault("-r", source.plain, "export", "latest", smaller, "--recompress", "zstd:9")
    assert done.returncode == 0, done.stderr
    assert smaller.stat().st_size < 0.9 * source.image.stat().st_size  # stored uncompressed
    target = tmp_path / "out.img"
    done = blockvault("restore", smaller, target)
    assert done.returncode == 0, done.stderr
    source.check_restored(target, tmp_path)


def test_image_as_repository_location_too(source: Source) -> None:
    listed = blockvault("-r", source.image, "ls", "latest:2/")
    direct = blockvault("ls", f"{source.image}:2/")
    assert listed.returncode == direct.returncode == 0, listed.stderr + direct.stderr
    assert listed.stdout == direct.stdout
    assert set(direct.stdout.split()) >= {p.name for p in source.trees[2].iterdir()}


def test_cat_prints_the_file_and_browsing_reads_little(source: Source) -> None:
    known = source.known_file()
    inner = "/" + known.relative_to(source.trees[2]).as_posix()
    done = subprocess.run(
        ["blockvault", "cat", f"{source.image}:2{inner}"], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == known.read_bytes()
    repo = Repository.open(str(source.image))
    backend = repo.backend
    assert isinstance(backend, BundleBackend)
    snap = repo.resolve("latest")
    volume = open_volume(repo, snap, 2)
    stream = volume.open(inner)
    assert volume.read_all(stream, inner, known.stat().st_size) == known.read_bytes()
    size = source.image.stat().st_size
    # the table, the index, the superblock, inode and directory blocks, and the file
    assert backend.bytes_read < known.stat().st_size + size // 10, (backend.bytes_read, size)


def test_encrypted_repository_gives_an_encrypted_image(source: Source, tmp_path: Path) -> None:
    known = source.known_file().read_bytes()
    probe = known[len(known) // 2 : len(known) // 2 + 256]
    assert probe in source.image.read_bytes()  # the control: plaintext shows unencrypted
    sealed = tmp_path / "sealed.bvi"
    env = {"BLOCKVAULT_PASSWORD": PASSWORD}
    done = blockvault("-r", source.sealed, "export", "latest", sealed, env=env)
    assert done.returncode == 0, done.stderr
    assert probe not in sealed.read_bytes()
    refused = blockvault("restore", sealed, tmp_path / "x.img")
    assert refused.returncode == PassphraseRequired.exit_code
    one_line_error(refused, "encrypted", str(sealed))
    target = tmp_path / "out.img"
    done = blockvault("restore", sealed, target, env=env)
    assert done.returncode == 0, done.stderr
    source.check_restored(target, tmp_path)


@contextlib.contextmanager
def fat_mounted(stick: Path, mountpoint: Path) -> Iterator[Path]:
    """The FAT32 filesystem in ``stick`` mounted read-write at ``mountpoint``: by the
    kernel's vfat where it has one, else by fusefat (a FUSE FAT driver)."""
    mountpoint.mkdir(exist_ok=True)
    if "vfat" in Path("/proc/filesystems").read_text():
        sh("mount", "-o", "loop", stick, mountpoint)
        unmount = ["umount", str(mountpoint)]
    else:
        need_tools("fusefat")
        sh("fusefat", "-o", "rw+", stick, mountpoint)
        unmount = ["fusermount", "-u", str(mountpoint)]
    try:
        yield mountpoint
    finally:
        sh(*unmount)


@pytest.mark.root
@needs_root
def test_pieces_on_a_real_fat32_filesystem(source: Source, tmp_path: Path) -> None:
    need_tools("mkfs.vfat", "fsck.vfat")
    stick = tmp_path / "stick.img"
    with open(stick, "wb") as f:
        f.truncate(128 * MiB)
    sh("mkfs.vfat", "-F", "32", stick)
    with fat_mounted(stick, tmp_path / "mnt") as mountpoint:
        dest = mountpoint / "disk.bvi"
        done = blockvault("-r", source.plain, "export", "latest", dest, "--split", "1M")
        assert done.returncode == 0, done.stderr
    sh("fsck.vfat", "-n", stick)  # what was written is a clean FAT32 filesystem
    with fat_mounted(stick, tmp_path / "mnt") as mountpoint:  # read back from it
        pieces = sorted(mountpoint.iterdir())
        assert len(pieces) > 3 and pieces[0].name == "disk.bvi.001"
        assert all(p.stat().st_size <= MiB for p in pieces)
        target = tmp_path / "out.img"
        done = blockvault("restore", mountpoint / "disk.bvi", target)
        assert done.returncode == 0, done.stderr
    source.check_restored(target, tmp_path)


def _truncate(pieces: list[Path], _other: list[Path]) -> Path:
    os.truncate(pieces[2], pieces[2].stat().st_size - 4096)
    return pieces[2]


def _damage(pieces: list[Path], _other: list[Path]) -> Path:
    with open(pieces[-2], "r+b") as f:  # chunks, not the table
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0x55]))
    return pieces[-2]


def _remove(pieces: list[Path], _other: list[Path]) -> Path:
    pieces[1].unlink()
    return pieces[1]


def _foreign(pieces: list[Path], other: list[Path]) -> Path:
    shutil.copy(other[1], pieces[1])
    return pieces[1]


@pytest.mark.parametrize(
    ("breaking", "words"),
    [
        (_truncate, "is truncated"),
        (_damage, "is damaged at bytes"),
        (_remove, "is missing"),
        (_foreign, "belongs to another image"),
    ],
)
def test_a_broken_piece_is_named(
    source: Source, tmp_path: Path, breaking: object, words: str
) -> None:
    pieces, other = [], []
    for name, into in (("disk.bvi", pieces), ("other.bvi", other)):
        (tmp_path / name).mkdir()
        dest = tmp_path / name / "disk.bvi"
        done = blockvault("-r", source.plain, "export", "latest", dest, "--split", "2M")
        assert done.returncode == 0, done.stderr
        into.extend(sorted((tmp_path / name).iterdir()))
    broken = breaking(pieces, other)  # type: ignore[operator]
    done = blockvault("restore", tmp_path / "disk.bvi" / "disk.bvi", tmp_path / "out.img")
    assert done.returncode == PieceError.exit_code == 4
    one_line_error(done, str(broken), words)


def test_import_twice_stores_almost_nothing(source: Source, tmp_path: Path) -> None:
    """Into a repository naming chunks alike (stored chunks copied as they are) and
    into one with another chunk size and encryption (re-cut and sealed anew)."""
    env = {"BLOCKVAULT_PASSWORD": "another"}
    alike = tmp_path / "alike"
    Repository.init(str(alike), chunk_size=64 * 1024)
    other = tmp_path / "other"
    Repository.init(str(other), encryption="repokey", passphrase="another", kdf=FAST_KDF)
    for repo in (alike, other):
        sizes = []
        for _ in range(2):
            done = blockvault("-r", repo, "import", source.image, env=env)
            assert done.returncode == 0, done.stderr
            sizes.append(sum(p.stat().st_size for p in repo.rglob("*") if p.is_file()))
        assert sizes[0] > 4 * MiB
        assert sizes[1] - sizes[0] < 64 * 1024, sizes  # a manifest; the index is the same
        target = tmp_path / f"{repo.name}.img"
        done = blockvault("-r", repo, "restore", "latest", target, env=env)
        assert done.returncode == 0, done.stderr
        source.check_restored(target, tmp_path)
        checked = blockvault("-r", repo, "check", "--read-data", env=env)
        assert checked.returncode == 0, checked.stdout + checked.stderr

    def chunks(repo: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (repo / "data").rglob("*") if p.is_file()}

    assert chunks(alike) == chunks(source.plain)  # copied as stored, none re-encoded


def test_a_split_image_imports_by_its_name(source: Source, tmp_path: Path) -> None:
    """As restore does, import takes a split image by the name it was exported to (only
    NAME.001, NAME.002... exist); a name that is nothing gives one line."""
    dest = tmp_path / "disk.bvi"
    done = blockvault("-r", source.plain, "export", "latest", dest, "--split", "2M")
    assert done.returncode == 0, done.stderr
    assert not dest.exists() and (tmp_path / "disk.bvi.001").exists()
    repo = tmp_path / "repo"
    Repository.init(str(repo), chunk_size=64 * 1024)
    done = blockvault("-r", repo, "import", dest)
    assert done.returncode == 0, done.stderr
    target = tmp_path / "out.img"
    assert blockvault("-r", repo, "restore", "latest", target).returncode == 0
    source.check_restored(target, tmp_path)
    missing = blockvault("-r", repo, "import", tmp_path / "nothing.bvi")
    assert missing.returncode == 2
    assert missing.stderr.strip().endswith("nothing.bvi: no such file or directory")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_an_interrupted_export_leaves_no_file(source: Source, tmp_path: Path) -> None:
    repo = Repository.open(str(source.plain))
    seen = []

    def reporter(event: Event) -> None:
        if isinstance(event, TaskAdvanced):
            seen.append(event)
            if len(seen) == 20:
                raise Interrupted("SIGTERM", 15)

    with pytest.raises(Interrupted):
        export_bundle(
            repo, repo.resolve("latest"), str(tmp_path / "x.bvi"), split=MiB, reporter=reporter
        )
    assert list(tmp_path.iterdir()) == []


def test_writing_to_an_image_is_refused(source: Source) -> None:
    done = blockvault("-r", source.image, "backup", source.disk.path)
    assert done.returncode == ImageReadOnly.exit_code == 2
    one_line_error(done, "read-only", "import it into a repository")


def test_a_forged_chunk_never_enters_a_repository(source: Source, tmp_path: Path) -> None:
    """An image rewritten with valid checksums but a chunk whose content is not what
    its id says (forged, not damaged): import refuses it and stores nothing under that
    id, which later backups would otherwise deduplicate against."""
    original = BundleBackend(str(source.image))
    names = list(original.list())
    victim = next(n for n in names if n.startswith("data/"))
    forged = tmp_path / "forged.bvi"
    with BundleWriter(str(forged)) as out:
        for name in names:
            data = bytearray(original.read(name))
            if name == victim:
                data[-1] ^= 0xFF  # the payload's last byte (stored uncompressed)
            out.add(name, bytes(data))
        out.finish()
    target = tmp_path / "repo"
    Repository.init(str(target), chunk_size=64 * 1024)
    done = blockvault("-r", target, "import", forged)
    assert done.returncode == ChunkCorrupt.exit_code
    one_line_error(done, victim.rsplit("/", 1)[1], "damaged")
    assert not (target / victim).exists()
    assert not list(target.glob("snapshots/*"))


def test_a_filesystem_limit_on_file_size_says_to_split(source: Source, tmp_path: Path) -> None:
    """Like FAT32's 4 GiB, here a 2 MiB limit (RLIMIT_FSIZE: writes past it fail with
    EFBIG, as on FAT32): one line saying to use --split, and no file left behind."""

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * MiB, 2 * MiB))

    done = subprocess.run(
        ["blockvault", "-r", str(source.plain), "export", "latest", str(tmp_path / "x.bvi")],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        check=False,
    )
    assert done.returncode == UsageError.exit_code
    one_line_error(done, "x.bvi", "--split fat32")
    assert list(tmp_path.iterdir()) == []


def test_verify_names_the_damaged_piece(source: Source, tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    dest = tmp_path / "img" / "disk.bvi"
    done = blockvault("-r", source.plain, "export", "latest", dest, "--split", "2M")
    assert done.returncode == 0, done.stderr
    broken = _damage(sorted((tmp_path / "img").iterdir()), [])
    done = blockvault("verify", dest)
    assert done.returncode == ChunkCorrupt.exit_code
    assert str(broken) in done.stderr and "FAILED" in done.stdout, done.stdout + done.stderr


@pytest.mark.root
@needs_root
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
@pytest.mark.skipif(shutil.which("fusermount3") is None, reason="fuse3 is not installed")
def test_mount_an_image(source: Source, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    done = blockvault("mount", source.image, mountpoint)
    assert done.returncode == 0, done.stderr
    try:
        assert filecmp.cmp(mountpoint / "disk.img", source.disk.path, shallow=False)
    finally:
        gone = blockvault("umount", mountpoint)
    assert gone.returncode == 0, gone.stderr
