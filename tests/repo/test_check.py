"""check and verify on damaged repositories, through the command line: every kind of
damage is found and named by snapshot and partition; exit 4."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from blockvault.repo import Repository
from blockvault.repo import format as fmt
from blockvault.repo.check import Subset, check_repository, parse_subset
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import blockvault

MiB = 1024 * 1024


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return blockvault(*args, env={"BLOCKVAULT_PASSWORD": "check-test"})


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Repositories (plain and encrypted) with two snapshots of a
    disk (FAT + ext4) that share every chunk."""
    work = tmp_path_factory.mktemp("check")
    make_tree(work / "tree", 6 * MiB, seed=21)
    spec = DiskSpec(
        "gpt",
        48 * MiB,
        [
            PartitionSpec("fat32", 34 * MiB, "ESP", work / "tree"),
            PartitionSpec("ext4", 0, "root", work / "tree"),
        ],
    )
    disk = build_disk(spec, work / "disk.img")
    made = {}
    for kind, options in (("plain", ()), ("encrypted", ("--encryption", "repokey"))):
        repo = work / kind
        proc = run("-r", repo, "init", "--chunk-size", "256KiB", *options)
        assert proc.returncode == 0, proc.stderr
        for _ in range(2):
            assert run("-r", repo, "backup", disk.path).returncode == 0
        made[kind] = repo
    return made


@pytest.fixture
def repo(request: pytest.FixtureRequest, made: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the repository of the kind the test's ``kind`` parameter names."""
    kind = request.node.callspec.params["kind"]
    copy = tmp_path / "repo"
    shutil.copytree(made[kind], copy)
    return copy


def snapshot_ids(repo: Path) -> set[str]:
    return set(Repository.open(str(repo), passphrase="check-test").snapshot_ids())


def chunks_of_partition(repo: Path, number: int) -> list[str]:
    r = Repository.open(str(repo), passphrase="check-test")
    index = r.load_index(r.snapshots()[0])
    region = next(x for x in index.regions if x.number == number and x.kind == fmt.REGION_PARTITION)
    return [c.hex() for c in region.chunk_ids if c != fmt.HOLE]


@pytest.mark.parametrize("kind", ["plain", "encrypted"])
def test_clean_repository_passes(kind: str, repo: Path) -> None:
    proc = run("-r", repo, "check", "--read-data", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and result["snapshots"] == 2
    assert result["chunks_read"] == result["chunks"] > 10
    assert run("-r", repo, "check").returncode == 0


@pytest.mark.parametrize(
    ("kind", "damage"),
    [
        ("plain", "flip"),
        ("plain", "truncate"),
        ("plain", "swap"),
        ("plain", "delete"),
        ("encrypted", "flip"),
        ("encrypted", "swap"),
    ],
)
def test_damaged_chunk_is_named_by_snapshot_and_partition(
    kind: str, damage: str, repo: Path
) -> None:
    ext4 = chunks_of_partition(repo, 2)
    victim, other = repo / fmt.chunk_name(ext4[3]), repo / fmt.chunk_name(ext4[4])
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
        victim.write_bytes(data)
    elif damage == "truncate":
        victim.write_bytes(data[: len(data) - 7])
    elif damage == "swap":
        victim.write_bytes(other.read_bytes())
    else:
        victim.unlink()
    structure = run("-r", repo, "check", "--json")
    if damage == "delete":
        assert structure.returncode == 4
    else:
        assert structure.returncode == 0  # only reading the data finds it
    proc = run("-r", repo, "check", "--read-data", "--json")
    assert proc.returncode == 4, proc.stderr
    result = json.loads(proc.stdout)
    snaps = snapshot_ids(repo)
    assert set(result["damaged_snapshots"]) == snaps  # both share the chunk
    assert {p["region"] for p in result["problems"]} == {"partition 2"}
    assert {p["object"] for p in result["problems"]} == {ext4[3]}
    if damage == "flip":
        text = run("-r", repo, "check", "--read-data")
        assert text.returncode == 4
        assert "partition 2" in text.stderr and "Traceback" not in text.stderr
    # verify names both snapshots too
    verify = run("-r", repo, "verify", "--json")
    assert verify.returncode == 4
    named = {p["snapshot"] for p in json.loads(verify.stdout)["problems"]}
    assert named == snaps


@pytest.mark.parametrize(("kind", "size"), [("plain", 5), ("encrypted", 0), ("plain", "huge")])
def test_check_without_reading_finds_chunks_of_impossible_size(
    kind: str, size: int | str, repo: Path
) -> None:
    """Sizes come with the listing: a chunk too short for its header, or longer than any
    chunk of the repository may be stored, is damage found without reading data."""
    victim = repo / fmt.chunk_name(chunks_of_partition(repo, 2)[1])
    if size == "huge":
        with open(victim, "ab") as f:
            f.truncate(fmt.MAX_FILE_OBJECT + 4096 + 1)  # sparse: costs nothing
    else:
        victim.write_bytes(victim.read_bytes()[: int(size)])
    proc = run("-r", repo, "check", "--json")
    assert proc.returncode == 4, proc.stderr
    problems = json.loads(proc.stdout)["problems"]
    assert {p["object"] for p in problems} == {victim.name}
    assert {p["region"] for p in problems} == {"partition 2"}
    assert all("stored size" in p["detail"] for p in problems)


@pytest.mark.parametrize(
    ("kind", "damage"),
    [
        ("plain", "index-missing"),
        ("plain", "index-flip"),
        ("plain", "manifest-flip"),
        ("encrypted", "manifest-flip"),
    ],
)
def test_damaged_index_or_manifest(kind: str, damage: str, repo: Path) -> None:
    r = Repository.open(str(repo), passphrase="check-test")
    snap = r.snapshots()[0]
    if damage.startswith("index"):
        path = repo / fmt.index_name(snap.index)
    else:
        path = repo / fmt.snapshot_name(snap.id)
    if damage == "index-missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[-5] ^= 1
        path.write_bytes(data)
    proc = run("-r", repo, "check", "--json")
    assert proc.returncode == 4
    problems = json.loads(proc.stdout)["problems"]
    # both snapshots of the same disk share one index: identical content, one object
    assert {p["region"] for p in problems} == {"manifest" if damage == "manifest-flip" else "index"}
    assert snap.id in {p["snapshot"] for p in problems}


def test_subsets(made: dict[str, Path]) -> None:
    repo = Repository.open(str(made["plain"]))
    everything = check_repository(repo, read_data=True)
    parts = [
        check_repository(repo, subset=parse_subset(f"{n}/3"), read_data=True) for n in (1, 2, 3)
    ]
    assert sum(p.chunks_read for p in parts) == everything.chunks_read
    tenth = check_repository(repo, read_data=True, subset=Subset(fraction=0.1, seed=1))
    assert 1 <= tenth.chunks_read <= everything.chunks_read // 5
    assert parse_subset("10%").fraction == pytest.approx(0.1)
    for bad in ("0%", "101%", "4/3", "x"):
        proc = run("-r", made["plain"], "check", "--subset", bad)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
