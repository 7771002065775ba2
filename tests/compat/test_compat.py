"""The frozen format-1 repositories (made once by make-v1.sh) must be read, listed,
checked and restored byte-identically by every later version; and named broken
copies of them (chunk missing, chunk corrupt, index missing, manifest corrupt) must
be diagnosed by snapshot and partition while every intact snapshot keeps working."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockvault.repo import Repository
from blockvault.repo import format as fmt
from tests.conftest import blockvault

FROZEN = Path(__file__).parent / "v1"
PASSPHRASE = (FROZEN / "passphrase").read_text().strip()
KINDS = ("plain", "encrypted")


@dataclass(frozen=True)
class Expected:
    snapshot: str
    sha256: str  # of the restored disk image


def expected(kind: str) -> dict[str, Expected]:
    """EXPECTED by tag ("first", "second") for one kind of repository."""
    rows = [line.split() for line in (FROZEN / "EXPECTED").read_text().splitlines()]
    return {tag: Expected(sid, digest) for k, tag, sid, digest in rows if k == kind}


def run(repo: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return blockvault("-r", repo, *args, env={"BLOCKVAULT_PASSWORD": PASSPHRASE})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def restored(repo: Path, snapshot: str, work: Path) -> str:
    """Restore ``snapshot`` into a new image file; its sha256."""
    target = work / f"restored-{snapshot[:12]}.img"
    proc = run(repo, "restore", snapshot, target)
    assert proc.returncode == 0, proc.stderr
    digest = sha256(target)
    target.unlink()
    return digest


@pytest.fixture(params=KINDS)
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A private copy of one frozen repository (tests may damage it)."""
    copy = tmp_path / request.param
    shutil.copytree(FROZEN / request.param, copy)
    return copy


def kind_of(repo: Path) -> str:
    return repo.name


def test_fixture_is_small() -> None:
    stored = sum(p.stat().st_size for p in FROZEN.rglob("*") if p.is_file())
    assert stored < 300 * 1024


def test_frozen_repository_lists_checks_and_restores(repo: Path, tmp_path: Path) -> None:
    want = expected(kind_of(repo))
    listed = run(repo, "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    snaps = json.loads(listed.stdout)
    assert [s["id"] for s in snaps] == [want["first"].snapshot, want["second"].snapshot]
    assert [s["tags"] for s in snaps] == [["first"], ["second"]]

    checked = run(repo, "check", "--read-data", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = json.loads(checked.stdout)
    assert result["ok"] and result["snapshots"] == 2 and result["chunks_read"] == result["chunks"]

    for tag in ("first", "second"):
        assert restored(repo, want[tag].snapshot, tmp_path) == want[tag].sha256
    assert restored(repo, "latest", tmp_path) == want["second"].sha256


def test_frozen_snapshots_restore_like_their_source() -> None:
    """The recorded restores equal the recorded source disks (nothing lost in v1)."""
    rows = [line.split() for line in (FROZEN / "EXPECTED").read_text().splitlines()]
    source = {tag: digest for k, tag, _, digest in rows if k == "source"}
    for kind in KINDS:
        for tag, row in expected(kind).items():
            assert row.sha256 == source[tag]


# --- named broken repositories ------------------------------------------------------


def open_repo(repo: Path) -> Repository:
    return Repository.open(str(repo), passphrase=PASSPHRASE)


def chunks_only_in(repo: Path, snapshot: str, partition: int) -> list[str]:
    """Chunks of ``partition`` in ``snapshot`` that the other snapshot does not use."""
    r = open_repo(repo)
    wanted = r.load_index(r.load_snapshot(snapshot))
    others: set[str] = set()
    for other in r.snapshot_ids():
        if other != snapshot:
            others |= r.load_index(r.load_snapshot(other)).chunk_ids()
    region = wanted.region(fmt.REGION_PARTITION, partition)
    assert region is not None
    ids = [c.hex() for c in region.chunk_ids if c != fmt.HOLE]
    return [c for c in ids if c not in others]


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


def chunk_missing(repo: Path, snapshot: str) -> str:
    chunk = chunks_only_in(repo, snapshot, 1)[0]
    (repo / fmt.chunk_name(chunk)).unlink()
    return "partition 1"


def chunk_corrupt(repo: Path, snapshot: str) -> str:
    chunk = chunks_only_in(repo, snapshot, 2)[0]
    flip_byte(repo / fmt.chunk_name(chunk))
    return "partition 2"


def index_missing(repo: Path, snapshot: str) -> str:
    (repo / fmt.index_name(open_repo(repo).load_snapshot(snapshot).index)).unlink()
    return "index"


def manifest_corrupt(repo: Path, snapshot: str) -> str:
    flip_byte(repo / fmt.snapshot_name(snapshot), 40)
    return "manifest"


BREAKAGES: dict[str, Callable[[Path, str], str]] = {
    "chunk-missing": chunk_missing,
    "chunk-corrupt": chunk_corrupt,
    "index-missing": index_missing,
    "manifest-corrupt": manifest_corrupt,
}


@pytest.mark.parametrize("damaged_tag", ["first", "second"])
@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_repository_names_the_damage_and_serves_the_rest(
    repo: Path, tmp_path: Path, breakage: str, damaged_tag: str
) -> None:
    want = expected(kind_of(repo))
    intact_tag = "second" if damaged_tag == "first" else "first"
    damaged, intact = want[damaged_tag].snapshot, want[intact_tag]
    region = BREAKAGES[breakage](repo, damaged)

    checked = run(repo, "check", "--read-data", "--json")
    assert checked.returncode == 4, checked.stdout + checked.stderr
    result = json.loads(checked.stdout)
    assert result["damaged_snapshots"] == [damaged]
    assert {p["region"] for p in result["problems"]} == {region}
    text = run(repo, "check", "--read-data")
    assert text.returncode == 4 and "Traceback" not in text.stderr
    assert damaged[:12] in text.stderr and region in text.stderr

    listed = run(repo, "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {s["id"]: s for s in json.loads(listed.stdout)}
    assert set(rows) == {damaged, intact.snapshot}
    assert not rows[intact.snapshot].get("damaged")
    if region in ("manifest", "index"):  # chunk damage shows only when chunks are read
        assert rows[damaged]["damaged"]
    human = run(repo, "snapshots")
    assert human.returncode == 0, human.stderr
    if region in ("manifest", "index"):
        assert "damaged" in human.stdout and damaged[:12] in human.stderr

    assert restored(repo, intact.snapshot, tmp_path) == intact.sha256
    info = run(repo, "info", intact.snapshot)
    assert info.returncode == 0, info.stderr

    refused = run(repo, "restore", damaged, tmp_path / "refused.img")
    assert refused.returncode == 4, refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    # latest is the newest snapshot whose manifest and index read, never a broken one
    newest_usable = damaged_tag == "first" or region not in ("manifest", "index")
    latest = run(repo, "info", "latest", "--json")
    assert latest.returncode == 0, latest.stderr
    assert json.loads(latest.stdout)["snapshot"]["id"] == (
        want["second"].snapshot if newest_usable else intact.snapshot
    )
