"""Encrypted repositories through the real command line, on a disk built by the real tools.

Oracles: the source image itself (restores compared byte for byte, `grep`-style
searches for a marker string the disk holds), BLAKE3 computed here, and a real
pseudo-terminal for the passphrase prompt.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

from blockvault.repo import Repository
from blockvault.repo import format as fmt
from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk, make_tree
from tests.cli import runner
from tests.cli.runner import converse, ok, one_line_error

MiB = 1024 * 1024
PASSWORD = "correct horse battery staple"
MARKER = b"BLOCKVAULT-ENCRYPTION-TEST-MARKER-7f3a9c"


def run(
    *args: str | Path, password: str | None = PASSWORD, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    given = {} if password is None else {"BLOCKVAULT_PASSWORD": password}
    return runner.run(*args, env={**given, **(env or {})})


@dataclass(frozen=True)
class Backed:
    repo: Path
    full: str  # snapshot of the whole disk
    part: str  # snapshot of partition 2 only (another index, shared chunks)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    tmp = tmp_path_factory.mktemp("encdisk")
    content = tmp / "content"
    make_tree(content, 6 * MiB, seed=11)
    (content / "marker.txt").write_bytes(MARKER * 2000)
    spec = DiskSpec(
        "gpt",
        64 * MiB,
        [
            PartitionSpec("fat32", 34 * MiB, "ESP", content),
            PartitionSpec("ext4", 0, "root", content),
        ],
    )
    built = build_disk(spec, tmp / "disk.img")
    assert MARKER in built.path.read_bytes()  # the oracle for "no plaintext" below
    return built


def backed_up(root: Path, disk: BuiltDisk, encrypted: bool) -> Backed:
    repo = root / "repo"
    ok(run("-r", repo, "init", "--encryption", "repokey" if encrypted else "none"))
    full = json.loads(ok(run("-r", repo, "backup", disk.path, "--json")))["id"]
    part = json.loads(ok(run("-r", repo, "backup", disk.path, "-p", "2", "--json")))["id"]
    return Backed(repo, full, part)


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory, disk: BuiltDisk) -> Backed:
    return backed_up(tmp_path_factory.mktemp("enc"), disk, True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, disk: BuiltDisk) -> Backed:
    return backed_up(tmp_path_factory.mktemp("plain"), disk, False)


def test_encrypted_round_trip(encrypted: Backed, disk: BuiltDisk, tmp_path: Path) -> None:
    repo = encrypted.repo
    target = tmp_path / "restored.img"
    ok(run("-r", repo, "restore", encrypted.full, target))
    assert filecmp.cmp(disk.path, target, shallow=False)
    ok(run("-r", repo, "verify", encrypted.full, "--against", disk.path))
    ok(run("-r", repo, "verify"))
    # nothing stored holds the plaintext: not the marker, not the source's name
    stored = [p for p in repo.rglob("*") if p.is_file()]
    assert len(stored) > 5
    for path in stored:
        blob = path.read_bytes()
        assert MARKER[:20] not in blob, path
        assert str(disk.path).encode() not in blob, path
    # chunk names are keyed: none is the plain BLAKE3 of its plaintext
    opened = Repository.open(str(repo), passphrase=PASSWORD)
    chunks = [p.name for p in (repo / "data").rglob("*") if p.is_file()]
    for chunk_id in chunks:
        plaintext = opened.get_chunk(chunk_id)
        assert blake3.blake3(plaintext).hexdigest() != chunk_id


def test_encrypted_ids_differ_from_an_unencrypted_repository(
    encrypted: Backed, plain: Backed
) -> None:
    """The same disk in both: no chunk name in common, same number of chunks."""
    enc = {p.name for p in (encrypted.repo / "data").rglob("*") if p.is_file()}
    unenc = {p.name for p in (plain.repo / "data").rglob("*") if p.is_file()}
    assert len(enc) == len(unenc) > 3
    assert not enc & unenc
    for chunk_id in list(unenc)[:3]:
        data = Repository.open(str(plain.repo)).get_chunk(chunk_id)
        assert blake3.blake3(data).hexdigest() == chunk_id


def test_passphrase_sources_and_errors(encrypted: Backed, tmp_path: Path) -> None:
    repo = encrypted.repo
    file = tmp_path / "pw"
    file.write_text(PASSWORD + "\n")
    ok(run("-r", repo, "--password-file", file, "snapshots", password=None))
    ok(run("-r", repo, "snapshots", password=None, env={"BLOCKVAULT_PASSWORD_FILE": str(file)}))
    one_line_error(run("-r", repo, "snapshots", password="wrong"), 3, "wrong passphrase")
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    one_line_error(run("-r", repo, "--password-file", wrong, "snapshots"), 3, "wrong passphrase")
    line = one_line_error(run("-r", repo, "snapshots", password=None), 2, "encrypted")
    assert "BLOCKVAULT_PASSWORD" in line and "--password-file" in line
    one_line_error(
        run("-r", repo, "--password-file", tmp_path / "missing", "snapshots"), 2, "password file"
    )
    # an unencrypted repository never needs one
    ok(run("-r", tmp_path / "p", "init", password=None))
    ok(run("-r", tmp_path / "p", "snapshots", password=None))


def test_prompt_asks_twice_on_init_and_never_echoes(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    secret = "typed-on-a-terminal-92b1"
    code, output = converse(["-r", repo, "init", "--encryption", "repokey"], [secret, secret])
    assert code == 0, output
    assert output.count("passphrase") >= 2 and secret not in output, output
    code, output = converse(["-r", repo, "snapshots"], [secret])
    assert code == 0 and secret not in output, output
    code, output = converse(["-r", repo, "snapshots"], ["not-it"])
    assert code == 3 and "wrong passphrase" in output, output


def test_key_export_import_and_change(encrypted: Backed, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(encrypted.repo, repo)
    exported = tmp_path / "key.json"
    info = json.loads(ok(run("-r", repo, "key", "export", exported, "--json")))
    assert exported.stat().st_mode & 0o777 == 0o600
    assert json.loads(exported.read_bytes())["repository"] == info["repository"]
    one_line_error(run("-r", repo, "key", "export", exported), 2, "exists")
    # the keys/ folder is lost: nothing opens, until the export comes back
    shutil.rmtree(repo / "keys")
    one_line_error(run("-r", repo, "snapshots"), 3, "holds no key", "key import")
    one_line_error(
        run("-r", repo, "key", "import", exported, password="bad"), 3, "wrong passphrase"
    )
    ok(run("-r", repo, "key", "import", exported))
    ok(run("-r", repo, "info", encrypted.full))
    # change the passphrase: the old one stops working, the new one works
    new = tmp_path / "new"
    new.write_text("a new passphrase\n")
    ok(run("-r", repo, "key", "change-passphrase", "--new-password-file", new, "--json"))
    assert len(list((repo / "keys").iterdir())) == 1
    one_line_error(run("-r", repo, "snapshots"), 3, "wrong passphrase")
    ok(run("-r", repo, "snapshots", password="a new passphrase"))
    ok(
        run(
            "-r",
            repo,
            "key",
            "change-passphrase",
            password="a new passphrase",
            env={"BLOCKVAULT_NEW_PASSWORD": "third"},
        )
    )
    ok(run("-r", repo, "restore", encrypted.full, tmp_path / "out.img", password="third"))
    # a key file of another repository is refused
    other = tmp_path / "other"
    ok(run("-r", other, "init", "--encryption", "repokey"))
    ok(run("-r", other, "key", "export", tmp_path / "other.json"))
    one_line_error(
        run("-r", repo, "key", "import", tmp_path / "other.json", password="third"),
        2,
        "belongs to repository",
    )
    for command in ("export", "import", "change-passphrase"):
        assert "--json" in ok(run("key", command, "--help"))


# --- tampering: detected, and nothing tampered reaches the restore target -------------


def _unique_chunk(repo: Path, snapshot: str, password: str | None) -> tuple[str, int, int, str]:
    """A chunk of partition 2 used once in the snapshot: (id, disk offset, length, other id)."""
    opened = Repository.open(str(repo), passphrase=password)
    index = opened.load_index(opened.resolve(snapshot))
    refs = [
        (region, ref)
        for region in index.regions
        for ref in region.chunks(index.chunk_size)
        if ref.chunk_id and ref.used
    ]
    counts: dict[str, int] = {}
    for _, ref in refs:
        assert ref.chunk_id is not None
        counts[ref.chunk_id] = counts.get(ref.chunk_id, 0) + 1
    for region, ref in refs:
        if region.kind == fmt.REGION_PARTITION and ref.chunk_id and counts[ref.chunk_id] == 1:
            other = next(r.chunk_id for _, r in refs if r.chunk_id and r.chunk_id != ref.chunk_id)
            assert other is not None
            return ref.chunk_id, region.start + ref.offset, ref.length, other
    raise AssertionError("no unique chunk")


@pytest.mark.parametrize("how", ["flip", "truncate", "swap"])
@pytest.mark.parametrize("kind", ["chunk", "index", "manifest"])
@pytest.mark.parametrize("mode", ["encrypted", "plain"])
def test_tampered_object_never_reaches_the_target(
    request: pytest.FixtureRequest,
    disk: BuiltDisk,
    tmp_path: Path,
    mode: str,
    kind: str,
    how: str,
) -> None:
    backed: Backed = request.getfixturevalue(mode)
    password = PASSWORD if mode == "encrypted" else None
    repo = tmp_path / "repo"
    shutil.copytree(backed.repo, repo)
    opened = Repository.open(str(repo), passphrase=password)
    full, part = opened.resolve(backed.full), opened.resolve(backed.part)
    chunk, offset, length, other_chunk = _unique_chunk(repo, backed.full, password)
    victim, other = {
        "chunk": (fmt.chunk_name(chunk), fmt.chunk_name(other_chunk)),
        "index": (fmt.index_name(full.index), fmt.index_name(part.index)),
        "manifest": (fmt.snapshot_name(full.id), fmt.snapshot_name(part.id)),
    }[kind]
    path = repo / victim
    raw = path.read_bytes()
    if how == "flip":
        damaged = bytearray(raw)
        damaged[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(damaged))
    elif how == "truncate":
        path.write_bytes(raw[: len(raw) - 100])
    else:
        path.write_bytes((repo / other).read_bytes())

    target = tmp_path / "target.img"
    proc = run("-r", repo, "restore", backed.full, target, password=password)
    name = {"chunk": chunk, "index": full.index, "manifest": full.id}[kind]
    line = one_line_error(proc, 4, "damaged", name[:12])
    assert kind in line or (kind == "manifest" and "snapshot" in line)
    if kind != "chunk":
        assert not target.exists()  # refused before the target was touched
    else:
        with target.open("rb") as restored, disk.path.open("rb") as source:
            restored.seek(offset)
            source.seek(offset)
            written, original = restored.read(length), source.read(length)
        assert original.strip(b"\0"), "the chunk's source range holds data"
        assert written == bytes(len(written)), "nothing of the damaged chunk was written"
    verify = run("-r", repo, "verify", password=password)
    assert verify.returncode == 4, verify
    assert name[:12] in verify.stdout + verify.stderr
