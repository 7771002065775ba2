"""Every size, count and parameter read from a repository is bounded before use: a
hostile repository cannot make blockvault allocate gigabytes, derive keys for hours
or loop for ever, and each refusal says what is wrong."""

from __future__ import annotations

import json
import re
import shutil
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import blake3
import pytest
import zstandard

from blockvault.errors import ChunkCorrupt, ObjectCorrupt, RepositoryError
from blockvault.repo import Repository
from blockvault.repo import format as fmt
from blockvault.repo.crypto import MasterKey
from blockvault.repo.index import Index
from blockvault.repo.keys import KeyFile, ScryptParams, wrap
from blockvault.repo.objects import Codec, DecodeError
from tests.compat.test_compat import FROZEN, PASSPHRASE
from tests.conftest import blockvault

MiB = 1 << 20


def envelope(magic: bytes, length: int, payload: bytes, compression: int = 1) -> bytes:
    return fmt.EnvelopeHeader(magic, fmt.VERSION, compression, 0, length).pack() + payload


def test_zstd_bomb_declaring_its_size_is_refused_before_allocating() -> None:
    """A small header length with a frame that declares 512 MiB: zstd would allocate
    what the frame declares, so the frame's size is checked first."""
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(512 * MiB))
    assert len(bomb) < 64 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="frame declares 536870912 bytes"):
            Codec().decode(fmt.CHUNK_MAGIC, envelope(fmt.CHUNK_MAGIC, 16384, bomb), limit=16384)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB


def test_zstd_bomb_without_a_declared_size_stops_at_the_header_length() -> None:
    silent = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 * MiB))
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="zstd"):
            Codec().decode(fmt.CHUNK_MAGIC, envelope(fmt.CHUNK_MAGIC, 16384, silent))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB


@pytest.mark.parametrize(
    ("magic", "length", "limit"),
    [
        (fmt.CHUNK_MAGIC, fmt.MAX_CHUNK_SIZE + 1, None),
        (fmt.CHUNK_MAGIC, 16385, 16384),  # over the repository's chunk size
        (fmt.SNAPSHOT_MAGIC, fmt.MAX_MANIFEST_BYTES + 1, None),
        (fmt.INDEX_MAGIC, fmt.MAX_INDEX_BYTES + 1, None),
        (fmt.CHUNK_MAGIC, 1 << 62, None),
    ],
)
def test_declared_lengths_beyond_the_bound_are_refused(
    magic: bytes, length: int, limit: int | None
) -> None:
    with pytest.raises(DecodeError, match=f"length {length} exceeds the bound"):
        Codec().decode(magic, envelope(magic, length, b"x" * 16), limit=limit)


def test_repository_refuses_a_chunk_larger_than_any_chunk_may_be(tmp_path: Path) -> None:
    """A chunk is at most the disk chunk size or a file snapshot's largest object."""
    repo = Repository.init(str(tmp_path / "r"), chunk_size=4096)
    assert repo.chunk_bound == fmt.MAX_FILE_OBJECT
    plain = bytes(range(256)) * (fmt.MAX_FILE_OBJECT // 256 + 16)  # a valid object, too large
    chunk_id = blake3.blake3(plain).hexdigest()
    stored = tmp_path / "r" / fmt.chunk_name(chunk_id)
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(Codec(3).encode(fmt.CHUNK_MAGIC, plain))
    with pytest.raises(ChunkCorrupt, match=f"exceeds the bound of {fmt.MAX_FILE_OBJECT} bytes"):
        repo.get_chunk(chunk_id)


def index_bytes(n_ext: int, n_chunks: int, size: int, chunk_size: int = 4096) -> bytes:
    header = fmt.INDEX_HEADER.pack(fmt.INDEX_MAGIC, fmt.VERSION, 1, chunk_size, 0)
    return header + fmt.INDEX_REGION.pack(fmt.REGION_DISK, 0, 0, 0, size, n_ext, n_chunks)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"BVIX", "truncated header: 4 bytes"),
        (index_bytes(0, 1, 4096, chunk_size=3), "chunk size 3: use a power of two"),
        (index_bytes(0, 1, 4096, chunk_size=1 << 31), "chunk size 2147483648"),
        # 2**50 chunk ids would be a loop for ever, or petabytes: refused from the count
        (index_bytes(0, 2**50, 2**62), r"region 1 of 1: 1125899906842624 chunk ids need"),
        (index_bytes(2**60, 1, 4096), r"region 1 of 1: 1152921504606846976 extents need"),
        (index_bytes(0, 5, 4096), "region 1 of 1: 5 chunks for 4096 bytes"),
        (
            fmt.INDEX_HEADER.pack(fmt.INDEX_MAGIC, fmt.VERSION, 60000, 4096, 0),
            "region 1 of 60000: header need 40 bytes at 16, 0 left",
        ),
        (
            index_bytes(2, 1, 4096) + fmt.INDEX_EXTENT.pack(512, 512) + fmt.INDEX_EXTENT.pack(0, 8),
            "used map is not sorted and disjoint",
        ),
        (index_bytes(0, 1, 4096) + bytes(32) + b"x", "1 trailing bytes"),
    ],
)
def test_index_parse_errors_say_what_is_wrong(data: bytes, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(ValueError, match=message):
        Index.from_bytes(data)
    assert time.monotonic() - started < 1


def test_a_damaged_index_is_named_with_its_reason(tmp_path: Path) -> None:
    copy = tmp_path / "plain"
    shutil.copytree(FROZEN / "plain", copy)
    repo = Repository.open(str(copy))
    snap = repo.snapshots()[0]
    bad = index_bytes(0, 2**48, 2**60)  # well sealed and named, but nonsense inside
    index_id = blake3.blake3(bad).hexdigest()
    (copy / fmt.index_name(index_id)).write_bytes(envelope(fmt.INDEX_MAGIC, len(bad), bad, 0))
    with pytest.raises(ObjectCorrupt, match=f"index {index_id} .* region 1 of 1: .* chunk ids"):
        repo.load_index(replace(snap, index=index_id))


@pytest.mark.parametrize(
    ("n", "r", "p", "refusal"),
    [
        (2**20, 32, 1, "needs 4096 MiB of memory; at most 1024 MiB"),
        (2**17, 16, 16, "33554432 units of work; at most 16777216"),
        (2**21, 1, 1, "a power of two from 2 to 2\\*\\*20"),
        (2**20, 8, 1, None),  # 1 GiB: exactly the memory bound
        (2**17, 8, 16, None),  # exactly the work bound
    ],
)
def test_key_derivation_parameters_are_bounded(n: int, r: int, p: int, refusal: str | None) -> None:
    if refusal is None:
        assert ScryptParams(n, r, p) == ScryptParams(n=n, r=r, p=p)
        return
    with pytest.raises(ValueError, match=refusal):
        ScryptParams(n, r, p)


def test_a_key_file_asking_for_gigabytes_is_refused_quickly(tmp_path: Path) -> None:
    """The only key of the encrypted fixture, rewritten to ask for 4 GiB: opening
    refuses it at once and says why, through the CLI as one line and exit 4."""
    copy = tmp_path / "encrypted"
    shutil.copytree(FROZEN / "encrypted", copy)
    (key_path,) = (copy / fmt.KEY_DIR).iterdir()
    document = json.loads(key_path.read_bytes())
    document["params"] = {"n": 2**20, "r": 32, "p": 1}
    key_path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="4096 MiB"):
        KeyFile.from_json(key_path.read_bytes())
    started = time.monotonic()
    proc = blockvault("-r", copy, "snapshots", env={"BLOCKVAULT_PASSWORD": PASSPHRASE})
    assert time.monotonic() - started < 10
    assert proc.returncode == 4, proc.stderr
    assert "4096 MiB of memory" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_config_with_an_absurd_chunk_size_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "plain"
    shutil.copytree(FROZEN / "plain", copy)
    config = json.loads((copy / fmt.CONFIG_NAME).read_bytes())
    config["chunk_size"] = 1 << 40
    (copy / fmt.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(RepositoryError, match="config is unreadable: chunk size 1099511627776"):
        Repository.open(str(copy))


def test_manifest_fields_from_a_newer_writer_are_ignored(tmp_path: Path) -> None:
    copy = tmp_path / "plain"
    shutil.copytree(FROZEN / "plain", copy)
    repo = Repository.open(str(copy))
    snap = repo.snapshots()[0]
    document = json.loads(snap.to_json())
    document["a_future_field"] = {"anything": 1}
    document["partitions"][0]["another"] = 2
    raw = json.dumps(document).encode()
    parsed = type(snap).from_json(raw, "x")
    assert parsed.partitions == snap.partitions and parsed.time == snap.time


def test_only_the_first_keys_are_tried(tmp_path: Path) -> None:
    """Each key costs a key derivation: a repository stuffed with key files cannot make
    opening it take minutes. 25 foreign keys that sort first hide the real one."""
    copy = tmp_path / "encrypted"
    shutil.copytree(FROZEN / "encrypted", copy)
    (real,) = (copy / fmt.KEY_DIR).iterdir()
    assert not real.name.startswith("00")
    config = json.loads((copy / fmt.CONFIG_NAME).read_bytes())
    foreign = wrap(MasterKey.generate(), "not ours", config["id"], ScryptParams(n=2**10))
    for i in range(25):
        (copy / fmt.KEY_DIR / f"00{i:062x}").write_bytes(foreign.to_json())
    proc = blockvault("-r", copy, "snapshots", env={"BLOCKVAULT_PASSWORD": PASSPHRASE})
    assert proc.returncode == 3, proc.stderr
    assert "wrong passphrase" in proc.stderr and "6 of 26 keys not tried" in proc.stderr
    for i in range(6, 25):  # 6 foreign keys and the real one: within the bound
        (copy / fmt.KEY_DIR / f"00{i:062x}").unlink()
    assert Repository.open(str(copy), passphrase=PASSPHRASE).snapshot_ids()


def test_an_oversized_config_is_refused_before_it_is_read(tmp_path: Path) -> None:
    copy = tmp_path / "plain"
    shutil.copytree(FROZEN / "plain", copy)
    config = copy / fmt.CONFIG_NAME
    config.write_bytes(config.read_bytes() + b" " * (100 << 10))
    proc = blockvault("-r", copy, "snapshots")
    assert proc.returncode == 3
    assert f"config is unreadable: {config.stat().st_size} bytes, more than the 65536" in (
        proc.stderr
    )


# --- a manifest and index that parse but lie --------------------------------------


def forge(repo_dir: Path, edit_index: int, edit_manifest: int) -> str:
    """A copy of the first frozen snapshot whose partition 2 starts ``edit_index`` bytes
    later in the index and ``edit_manifest`` bytes later in the manifest, stored as a
    well-formed new snapshot; its id."""
    repo = Repository.open(str(repo_dir))
    snap = repo.snapshots()[0]
    index = repo.load_index(snap)
    regions = tuple(
        replace(r, start=r.start + edit_index) if r.number == 2 else r for r in index.regions
    )
    partitions = tuple(
        replace(p, start=p.start + edit_manifest) if p.number == 2 else p for p in snap.partitions
    )
    forged = repo.write_snapshot(
        replace(snap, partitions=partitions), replace(index, regions=regions)
    )
    return forged.id


@pytest.mark.parametrize(
    ("edit_index", "edit_manifest", "message"),
    [
        (4096, 0, "do not match the manifest's"),  # index and manifest disagree
        (MiB, MiB, r"partitions \[2\] end past the disk"),  # both agree, past the disk
    ],
)
def test_regions_that_lie_are_refused_before_a_byte_is_written(
    tmp_path: Path, edit_index: int, edit_manifest: int, message: str
) -> None:
    copy = tmp_path / "plain"
    shutil.copytree(FROZEN / "plain", copy)
    forged = forge(copy, edit_index, edit_manifest)
    target = tmp_path / "target.img"  # as large as the disk: only the check refuses
    with target.open("wb") as file:
        file.truncate(8 * MiB)
    proc = blockvault("-r", copy, "restore", "--yes", forged, target)
    assert proc.returncode == 4, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "index " in line and "is damaged" in line
    assert target.read_bytes() == bytes(8 * MiB)
    checked = blockvault("-r", copy, "check", "--json")
    assert checked.returncode == 4
    problems = json.loads(checked.stdout)["problems"]
    assert [(p["snapshot"], p["region"]) for p in problems] == [(forged, "index")]
    assert re.search(message, problems[0]["detail"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("disk_size", "8388608"),
        ("disk_size", -1),
        ("host", 7),
        ("tags", [1]),
        ("sector_size", True),
    ],
)
def test_manifest_fields_of_the_wrong_type_are_damage(
    tmp_path: Path, field: str, value: object
) -> None:
    copy = tmp_path / "plain"
    shutil.copytree(FROZEN / "plain", copy)
    snap = Repository.open(str(copy)).snapshots()[0]
    document = json.loads(snap.to_json())
    document[field] = value
    with pytest.raises(ValueError, match=field):
        type(snap).from_json(json.dumps(document).encode(), "x")


def test_a_snapshot_name_that_is_not_an_id_is_never_printed_as_one(tmp_path: Path) -> None:
    """A hostile file under snapshots/ whose name holds a terminal escape."""
    copy = tmp_path / "plain"
    shutil.copytree(FROZEN / "plain", copy)
    evil = "\x1b]0;owned\x07\x1b[2J" + "0" * 40
    manifest = next((copy / "snapshots").iterdir())
    (copy / "snapshots" / evil).write_bytes(manifest.read_bytes())
    listed = blockvault("-r", copy, "snapshots")
    assert listed.returncode == 0 and "\x1b" not in listed.stdout + listed.stderr
    assert len(json.loads(blockvault("-r", copy, "snapshots", "--json").stdout)) == 2
    checked = blockvault("-r", copy, "check")
    assert checked.returncode == 4 and "\x1b" not in checked.stdout + checked.stderr
    assert "\\x1b]0;owned" in checked.stderr and "not a snapshot id" in checked.stderr
    assert "checked 2 snapshots" in checked.stdout


def test_hostile_manifest_strings_reach_the_terminal_escaped(tmp_path: Path) -> None:
    """A manifest's host and tags are shown as written: no terminal escape, no markup."""
    copy = tmp_path / "plain"
    shutil.copytree(FROZEN / "plain", copy)
    repo = Repository.open(str(copy))
    snap = repo.snapshots()[0]
    repo.write_snapshot(
        replace(snap, host="\x1b[2J[bold]h", tags=("[red]t",)), repo.load_index(snap)
    )
    listed = blockvault("-r", copy, "snapshots", env={"COLUMNS": "400"})  # no wrapping
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "\\x1b[2J[bold]h" in listed.stdout
    assert "[red]t" in listed.stdout
