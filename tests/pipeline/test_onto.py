"""The one path onto targets (pipeline/onto.py): a restore or clone that fails half
way leaves a target that no tool takes for a disk, and says so.

Faults are deterministic: a reporter that raises after N chunks (any exception, as
an interruption would be), the storage ``faulty`` wrapper, a damaged chunk. The oracle
is util-linux: ``sfdisk --dump`` and ``blkid -p`` on the target must find no table.
"""

from __future__ import annotations

import filecmp
import os
import pty
import re
import select
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault.errors import Interrupted, StorageError
from blockvault.events import Event, TaskAdvanced
from blockvault.pipeline.backup import backup
from blockvault.pipeline.clone import clone
from blockvault.pipeline.restore import restore
from blockvault.pipeline.verify import verify
from blockvault.repo import Repository
from blockvault.repo import format as fmt
from blockvault.storage.faulty import FaultyBackend
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import blockvault, need_tools, needs_root, sh
from tests.disk.test_sectors import sample

MiB = 1024 * 1024


class Stopped(Exception):
    """Raised by the fault hook, standing for any failure or interruption."""


def stop_after(
    chunks: int, error: Callable[[], BaseException] = Stopped
) -> Callable[[Event], None]:
    """A reporter that raises ``error()`` once ``chunks`` pieces have been written."""
    seen = 0

    def reporter(event: Event) -> None:
        nonlocal seen
        if isinstance(event, TaskAdvanced):
            seen += 1
            if seen > chunks:
                raise error()

    return reporter


def has_table(path: Path) -> bool:
    dump = subprocess.run(["sfdisk", "--dump", str(path)], capture_output=True, check=False)
    probe = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "PTTYPE", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (dump.returncode == 0) == bool(probe.stdout.strip()), (dump, probe)
    return dump.returncode == 0


def finds_anything(path: Path) -> bool:
    """blkid finds a filesystem or table signature on ``path``."""
    probe = subprocess.run(["blkid", "-p", str(path)], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltDisk]:
    need_tools("sfdisk", "blkid", "mkfs.ext4", "mkfs.fat")
    work = tmp_path_factory.mktemp("onto")
    make_tree(work / "tree", 3 * MiB, seed=11)
    built = {}
    for table in ("gpt", "mbr"):
        spec = DiskSpec(
            table,
            40 * MiB,
            [
                PartitionSpec("fat16", 16 * MiB, label="data", content=work / "tree"),
                PartitionSpec("ext4", 0, label="root", content=work / "tree"),
            ],
        )
        built[table] = build_disk(spec, work / f"{table}.img")
    return built


@pytest.fixture(scope="module")
def repo(disks: dict[str, BuiltDisk], tmp_path_factory: pytest.TempPathFactory) -> Repository:
    repository = Repository.init(str(tmp_path_factory.mktemp("onto-repo") / "repo"))
    for disk in disks.values():
        backup(repository, str(disk.path))
    return repository


def _snapshot(repo: Repository, disk: BuiltDisk):  # type: ignore[no-untyped-def]
    return next(s for s in repo.snapshots() if s.source == str(disk.path))


def _whole_copy(disk: BuiltDisk, path: Path) -> Path:
    """A target that already holds a complete copy: it has a table to lose."""
    clone(str(disk.path), str(path))
    assert has_table(path)
    return path


@pytest.mark.parametrize("table", ["gpt", "mbr"])
@pytest.mark.parametrize("how", ["restore", "clone"])
def test_failure_half_way_leaves_no_table(
    how: str, table: str, disks: dict[str, BuiltDisk], repo: Repository, tmp_path: Path
) -> None:
    disk = disks[table]
    target = _whole_copy(disk, tmp_path / "target.img")
    with pytest.raises(Stopped):
        if how == "restore":
            snap = _snapshot(repo, disk)
            restore(repo, snap, str(target), confirm=lambda _: True, reporter=stop_after(3))
        else:
            clone(str(disk.path), str(target), confirm=lambda _: True, reporter=stop_after(3))
    assert not has_table(target)
    assert not finds_anything(target)
    # the same job without the fault makes it whole again, byte for byte
    if how == "restore":
        restore(repo, _snapshot(repo, disk), str(target), confirm=lambda _: True)
    else:
        clone(str(disk.path), str(target), confirm=lambda _: True)
    assert has_table(target)
    assert filecmp.cmp(disk.path, target, shallow=False)


def test_a_new_file_never_gets_a_table_before_its_data(
    disks: dict[str, BuiltDisk], repo: Repository, tmp_path: Path
) -> None:
    disk = disks["gpt"]
    target = tmp_path / "new.img"
    with pytest.raises(Stopped):
        restore(repo, _snapshot(repo, disk), str(target), reporter=stop_after(2))
    assert target.stat().st_size == disk.size
    assert not has_table(target) and not finds_anything(target)


def test_storage_failure_says_the_target_is_incomplete(
    disks: dict[str, BuiltDisk], repo: Repository, tmp_path: Path
) -> None:
    disk = disks["gpt"]
    target = _whole_copy(disk, tmp_path / "target.img")
    faulty = FaultyBackend(repo.backend, every=12, operations=frozenset({"read"}), transient=False)
    broken = Repository(faulty, repo.config)
    with pytest.raises(StorageError, match="injected fault") as failed:
        restore(broken, _snapshot(repo, disk), str(target), confirm=lambda _: True)
    assert f"target {target} is left incomplete" in str(failed.value)
    assert faulty.failures >= 1
    assert not has_table(target)


def test_partition_restore_failure_leaves_no_filesystem(
    disks: dict[str, BuiltDisk], repo: Repository, tmp_path: Path
) -> None:
    disk = disks["gpt"]
    root = disk.by_label("root")
    target = tmp_path / "root.img"
    restore(repo, _snapshot(repo, disk), str(target), partition=root.number)
    assert finds_anything(target)  # an ext4 superblock
    with pytest.raises(Stopped):
        restore(
            repo,
            _snapshot(repo, disk),
            str(target),
            partition=root.number,
            confirm=lambda _: True,
            reporter=stop_after(2),
        )
    assert not finds_anything(target)


def test_damaged_chunk_through_the_cli(disks: dict[str, BuiltDisk], tmp_path: Path) -> None:
    """One line, the damaged chunk's exit code (4), the word "incomplete", no table."""
    disk = disks["mbr"]
    location = tmp_path / "repo"
    repository = Repository.init(str(location))
    snap = backup(repository, str(disk.path))
    region = repository.load_index(snap).region(fmt.REGION_PARTITION, 2)
    assert region is not None
    chunk = next(c for c in region.chunk_ids if c != fmt.HOLE).hex()
    path = location / fmt.DATA_DIR / chunk[:2] / chunk
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    target = _whole_copy(disk, tmp_path / "target.img")
    proc = blockvault("-r", location, "restore", "latest", target, "--yes")
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert chunk[:12] in lines[0] and "incomplete" in lines[0], lines[0]
    assert not has_table(target)


def test_target_messages(disks: dict[str, BuiltDisk], repo: Repository, tmp_path: Path) -> None:
    location = repo.location
    # the repository holds two disks: --source picks one for 'latest'
    one = ("-r", location, "--source", disks["gpt"].path)
    proc = blockvault(*one, "restore", "latest", "/dev/full", "--yes")
    assert proc.returncode == 2 and "target /dev/full" in proc.stderr, proc.stderr
    assert "source" not in proc.stderr
    short = tmp_path / "short.img"
    short.write_bytes(b"\0" * MiB)
    proc = blockvault(*one, "verify", "latest", "--against", short)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert re.search(r"has \d+ bytes, fewer than the \d+ bytes of the disk", line), line
    assert line.endswith("cannot be compared with the snapshot"), line


def test_a_plain_file_is_no_disk_without_raw(tmp_path: Path) -> None:
    text = tmp_path / "passwd"
    text.write_bytes(Path("/etc/passwd").read_bytes())
    location = tmp_path / "repo"
    assert blockvault("-r", location, "init").returncode == 0
    for args in (("-r", location, "backup", text), ("clone", text, tmp_path / "copy")):
        proc = blockvault(*args)
        assert proc.returncode == 2 and "--raw" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "copy").exists()
    assert blockvault("-r", location, "backup", text, "--raw").returncode == 0
    proc = blockvault("clone", text, tmp_path / "copy", "--raw")
    assert proc.returncode == 0, proc.stderr
    assert filecmp.cmp(text, tmp_path / "copy", shallow=False)


def test_overwrite_prompt_shows_the_choices(disks: dict[str, BuiltDisk], tmp_path: Path) -> None:
    """On a terminal (progress bars live) the question ends in [y/N]; "n" refuses."""
    target = _whole_copy(disks["gpt"], tmp_path / "target.img")
    before = target.read_bytes()
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        ["blockvault", "clone", str(disks["gpt"].path), str(target)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
    )
    os.close(follower)
    seen = b""
    while b"[y/N]" not in re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", seen):
        ready, _, _ = select.select([leader], [], [], 30)
        assert ready, seen
        seen += os.read(leader, 4096)
    os.write(leader, b"n\n")
    assert proc.wait(timeout=60) == 2
    os.close(leader)
    assert target.read_bytes() == before
    assert sh("sfdisk", "--dump", target)


@pytest.mark.parametrize("how", ["restore", "clone"])
def test_failure_while_laying_out_anew_leaves_no_table(
    how: str, disks: dict[str, BuiltDisk], repo: Repository, tmp_path: Path
) -> None:
    """A smaller target: partitions are laid out anew (ext4 shrunk in a scratch file)."""
    need_tools("resize2fs", "e2fsck")
    disk = disks["gpt"]
    target = tmp_path / "small.img"
    with open(target, "wb") as f:
        f.truncate(32 * MiB)
    clone(str(disk.path), str(target), scratch=str(tmp_path))
    assert has_table(target)
    with pytest.raises(Stopped):
        if how == "restore":
            snap = _snapshot(repo, disk)
            restore(repo, snap, str(target), confirm=lambda _: True, reporter=stop_after(1))
        else:
            clone(str(disk.path), str(target), confirm=lambda _: True, reporter=stop_after(1))
    assert not has_table(target) and not finds_anything(target)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("blockvault-")] == []


def test_interrupted_restore_leaves_no_table(
    disks: dict[str, BuiltDisk], repo: Repository, tmp_path: Path
) -> None:
    """KeyboardInterrupt (what Ctrl-C raises) is no exception to the rule."""
    disk = disks["mbr"]
    target = _whole_copy(disk, tmp_path / "target.img")
    with pytest.raises(KeyboardInterrupt):
        restore(
            repo,
            _snapshot(repo, disk),
            str(target),
            confirm=lambda _: True,
            reporter=stop_after(3, KeyboardInterrupt),
        )
    assert not has_table(target) and not finds_anything(target)


@needs_root
def test_failed_conversion_to_4096_byte_sectors_leaves_no_table(
    tmp_path: Path, loop: Callable[..., str]
) -> None:
    """A copy converted to other sectors writes its table after the data too."""
    need_tools("sgdisk", "mkfs.fat", "mkntfs", "mcopy")
    content = tmp_path / "tree"
    make_tree(content, 2 * MiB, seed=13)
    disk = sample("gpt", content, tmp_path)
    image = tmp_path / "4k.img"
    with open(image, "wb") as f:
        f.truncate(disk.size)
    dev = loop(image, sector_size=4096)
    clone(str(disk.path), dev, confirm=lambda _: True)
    assert has_table(Path(dev))
    with pytest.raises(Stopped):
        clone(str(disk.path), dev, confirm=lambda _: True, reporter=stop_after(2))
    assert not has_table(Path(dev)) and not finds_anything(Path(dev))
    clone(str(disk.path), dev, confirm=lambda _: True)
    assert "No problems found" in sh("sgdisk", "-v", dev)


@pytest.mark.parametrize(("name", "code"), [("INT", 130), ("TERM", 143), ("HUP", 129)])
def test_signal_during_restore_says_the_target_is_incomplete(
    disks: dict[str, BuiltDisk], name: str, code: int, tmp_path: Path
) -> None:
    """A signal at the third chunk read (storage/faulty.py's deterministic hook): exit
    128 + N, one line that names the signal and the incomplete target, no table."""
    disk = disks["gpt"]
    location = tmp_path / "repo"
    backup(Repository.init(str(location)), str(disk.path))
    target = _whole_copy(disk, tmp_path / "target.img")
    proc = blockvault(
        "-r",
        location,
        "restore",
        "latest",
        target,
        "--yes",
        env={"BLOCKVAULT_FAULTS": f"signal={name},every=3,operations=read,under=data/"},
    )
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"interrupted by SIG{name}" in lines[0], lines[0]
    assert f"target {target} is left incomplete" in lines[0], lines[0]
    assert not has_table(target) and not finds_anything(target)
    again = blockvault("-r", location, "restore", "latest", target, "--yes")
    assert again.returncode == 0, again.stderr
    assert has_table(target)


def pipeline_workers() -> list[str]:
    """The pipeline's worker threads still alive (stages.ordered_map names them)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("blockvault")]


@pytest.mark.parametrize("how", ["restore", "clone", "verify"])
def test_an_interruption_stops_the_workers_at_once(
    how: str, disks: dict[str, BuiltDisk], repo: Repository, tmp_path: Path
) -> None:
    """An interruption raised in the loop that collects the workers' results (here
    from the reporter, where a signal may land too) stops every worker before the
    call returns: not one is left to write to a target already closed and called
    incomplete. The exception, and so its traceback and every frame, is still alive
    while this is checked: nothing waits for the garbage collector."""
    disk = disks["gpt"]
    snap = _snapshot(repo, disk)
    target = _whole_copy(disk, tmp_path / "target.img")
    assert pipeline_workers() == []
    stop = stop_after(3, lambda: Interrupted("SIGTERM", 15))
    with pytest.raises(Interrupted) as caught:
        if how == "restore":
            restore(repo, snap, str(target), confirm=lambda _: True, reporter=stop)
        elif how == "clone":
            clone(str(disk.path), str(target), confirm=lambda _: True, reporter=stop)
        else:
            verify(repo, [snap], against=str(disk.path), reporter=stop)
    assert pipeline_workers() == [], caught.value
    if how == "verify":
        assert caught.value.outcome == (
            f"verify only reads; the repository and {disk.path} are unchanged"
        )
        assert has_table(target)
    else:
        assert caught.value.outcome.startswith(f"target {target} is left incomplete")
        assert not has_table(target) and not finds_anything(target)


def test_signal_during_verify_says_it_changed_nothing(
    disks: dict[str, BuiltDisk], tmp_path: Path
) -> None:
    """SIGTERM at the fifth chunk read (storage/faulty.py): exit 143 and one line
    saying that verify, which only reads, left everything as it was."""
    disk = disks["gpt"]
    location = tmp_path / "repo"
    backup(Repository.init(str(location)), str(disk.path))
    for against in ([], ["--against", str(disk.path)]):
        proc = blockvault(
            "-r",
            location,
            "verify",
            "latest",
            *against,
            env={"BLOCKVAULT_FAULTS": "signal=TERM,every=5,operations=read,under=data/"},
        )
        assert proc.returncode == 143, proc.stderr
        unchanged = f"the repository and {disk.path} are" if against else "the repository is"
        assert proc.stderr == (
            f"blockvault: interrupted by SIGTERM: verify only reads; {unchanged} unchanged\n"
        )
