"""extract of filesystems built to be hostile: nothing lands outside the destination.

Each disk is made by the real tools (mke2fs -d, mkfs.vfat + mcopy, mkntfs +
ntfs-3g) from a tree of harmless marker names, then its directory entries are
patched into hostile ones: an ext4 entry named ``..`` (debugfs lists it: the
oracle that it is really there), names holding ``/``, NUL or an absolute path, a
FAT long name with ``/`` and ``\\``, an NTFS name with ``\\``, a symlink to a
directory outside followed, in a second snapshot, by a file under the same name.
Every test asserts that nothing outside the destination changed, that each
offending entry is named once on stderr and skipped, and the exit code.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from blockvault.browse import extract, open_volume
from blockvault.events import Event, Warned
from blockvault.pipeline.backup import backup
from blockvault.repo import Repository
from blockvault.repo import format as fmt
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk
from tests.conftest import IS_ROOT, blockvault, need_tools

MiB = 1024 * 1024


def everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def marker(n: int, like: str) -> str:
    """A harmless name of ``like``'s length (at least 2), unique in the image."""
    return (f"m{n}" + "Q" * len(like))[: len(like)]


def patch(image: Path, old: bytes, new: bytes, name_len_at: int | None = None) -> None:
    """Replace the one occurrence of ``old`` in ``image``; ``name_len_at``: the offset
    (from the name) of an ext4 directory entry's name_len byte, for a shorter name."""
    data = image.read_bytes()
    assert data.count(old) == 1, old
    at = data.index(old)
    with open(image, "r+b") as f:
        if name_len_at is not None:
            f.seek(at + name_len_at)
            f.write(bytes([len(new)]))
        f.seek(at)
        f.write(new + old[len(new) :])


def disk(tmp_path: Path, name: str, fs: str, size: int, tree: Path) -> Path:
    return build_disk(
        DiskSpec("none", size, [PartitionSpec(fs, 0, None, tree)]), tmp_path / f"{name}.img"
    ).path


def test_ext4_hostile_entries_are_skipped_and_named(tmp_path: Path) -> None:
    need_tools("mke2fs", "debugfs")
    victim = tmp_path / "victim"
    victim.mkdir()
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "ok.txt").write_text("fine")
    (tree / "sub" / "ok.txt").write_text("fine too")
    (tree / "unit\\x2dname.mount").write_text("a backslash is a plain character on ext4")
    hostile = {  # the name on disk -> made from a marker of the same length, or shorter
        "..": "file",
        ".": "file",
        "../../escaped": "file",
        str(victim / "absolute"): "file",
        "nul\0byte": "file",
        "../up": "dir",
    }
    markers = {}
    for n, name in enumerate(hostile):
        mark = marker(n, name if len(name) > 3 else "xxxxxx")
        markers[name] = mark
        if hostile[name] == "dir":
            (tree / mark).mkdir()
            (tree / mark / "inside.txt").write_text("would land outside")
        else:
            (tree / mark).write_text(f"escape {n}")
    (tree / "m9QQQQQQQQ").write_text("an escape sequence in a name")
    image = disk(tmp_path, "ext", "ext4", 16 * MiB, tree)
    # without directory checksums, so that debugfs (the oracle) reads the patched entries
    subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, check=False)
    subprocess.run(["tune2fs", "-O", "^metadata_csum", str(image)], capture_output=True, check=True)
    for name, mark in markers.items():
        patch(image, mark.encode(), name.encode(), name_len_at=-2)
    # a legal name (written) that would drive a terminal: ls must show it escaped
    patch(image, b"m9QQQQQQQQ", b"red\x1b[31m", name_len_at=-2)
    listing = subprocess.run(
        ["debugfs", "-R", "ls -p /", str(image)], capture_output=True, text=True, check=True
    ).stdout
    for name, kind in hostile.items():  # "/inode/mode/uid/gid/name/size/" per entry
        if "\0" not in name:
            assert f"/0/0/{name}/{'8' if kind == 'file' else ''}/" in listing, name

    repo = Repository.init(str(tmp_path / "repo"))
    backup(repo, str(image))
    out = tmp_path / "out" / "a" / "dest"  # "../../escaped" would land in out/
    out.parent.mkdir(parents=True)
    before = everything(tmp_path)
    proc = blockvault("-r", repo.location, "extract", "latest:1/", out)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == len(hostile) + 1 and "Traceback" not in proc.stderr
    assert all("skipped" in line for line in lines[:-1]), lines
    assert "6 entries could not be written" in lines[-1]
    assert "inside.txt" not in proc.stderr  # a skipped directory is named once, not its files

    made = everything(tmp_path) - before
    assert made == {"out/a/dest"} | {f"out/a/dest/{p}" for p in everything(out)}
    assert everything(victim) == set()
    assert {p for p in everything(out) if not p.startswith("lost+found")} == {
        "ok.txt",
        "sub",
        "sub/ok.txt",
        "unit\\x2dname.mount",
        "red\x1b[31m",
    }
    assert (out / "sub" / "ok.txt").read_text() == "fine too"
    listing = blockvault("-r", repo.location, "ls", "latest:1/").stdout.splitlines()
    assert "\x1b" not in "".join(listing) and "red\\x1b[31m" in listing
    assert {"../../escaped", "../up", "nul\\x00byte", ".."} <= set(listing)  # as stored
    # find names it escaped too, and so does an error about it (the copy exists)
    found = blockvault("-r", repo.location, "find", "red*")
    assert found.returncode == 0, found.stderr
    latest = repo.resolve("latest").id[:12]
    assert "\x1b" not in found.stdout, found.stdout
    assert found.stdout.startswith(f"{latest}:1/red\\x1b[31m  "), found.stdout
    refused = blockvault("-r", repo.location, "extract", "latest:1/red\x1b[31m", out)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines() == [
        f"blockvault: error: target {out}/red\\x1b[31m is not empty (it exists); "
        "pass --yes to overwrite it"
    ]
    # for scripts: the same entries, by their stored names
    proc = blockvault("-r", repo.location, "extract", "--json", "latest:1/", tmp_path / "json")
    assert proc.returncode == 1
    skipped = json.loads(proc.stdout)["skipped"]
    assert sorted(s["path"] for s in skipped) == sorted("/" + name for name in hostile)
    assert not any(s["damaged"] for s in skipped)


@pytest.mark.parametrize("name", ["etc", "etc-root"])
def test_a_symlink_out_then_a_file_under_its_name_in_another_snapshot(
    tmp_path: Path, name: str
) -> None:
    need_tools("mke2fs")
    victim = tmp_path / "victim"
    victim.mkdir()
    outside = "/etc" if name == "etc-root" else str(victim)
    probe = f"blockvault-hostile-{secrets.token_hex(8)}"  # never exists in /etc
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    os.symlink(outside, first / name)
    (second / name).mkdir(parents=True)
    (second / name / probe).write_text("must stay inside the destination")
    repo = Repository.init(str(tmp_path / "repo"))
    snaps = [
        backup(repo, str(disk(tmp_path, tree.name, "ext4", 8 * MiB, tree)))
        for tree in (first, second)
    ]
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "p1"  # both extracts go into out/ under the same name
    proc = blockvault("-r", repo.location, "extract", f"{snaps[0].id}:1/", out.parent)
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(out / name) == outside  # recreated as a symlink, as it was
    proc = blockvault("-r", repo.location, "extract", f"{snaps[1].id}:1/", out.parent)
    assert proc.returncode == 2 and "--yes" in proc.stderr  # a symlink is in the way
    proc = blockvault("-r", repo.location, "extract", "--yes", f"{snaps[1].id}:1/", out.parent)
    assert proc.returncode == 0, proc.stderr
    assert not (out / name).is_symlink()
    assert (out / name / probe).read_text() == "must stay inside the destination"
    assert not Path(outside, probe).exists() and everything(victim) == set()


def patch_fat_long_name(image: Path, old: str, new: str) -> None:
    """Rewrite the long name ``old`` (one LFN entry: at most 13 characters) to ``new``."""
    spans = ((1, 11), (14, 26), (28, 32))  # where an LFN entry keeps its 13 UTF-16 chars
    data = bytearray(image.read_bytes())
    hits = 0
    for slot in range(0, len(data), 32):
        if data[slot + 11] != 0x0F:  # not a long-name entry
            continue
        raw = b"".join(data[slot + a : slot + b] for a, b in spans)
        if not raw.startswith(old.encode("utf-16-le") + b"\0\0"):
            continue
        raw = new.encode("utf-16-le") + raw[2 * len(new) :]
        at = 0
        for a, b in spans:
            data[slot + a : slot + b] = raw[at : at + b - a]
            at += b - a
        hits += 1
    assert hits == 1, old
    image.write_bytes(data)


def test_fat_long_names_with_separators_are_skipped(tmp_path: Path) -> None:
    need_tools("mkfs.vfat", "mcopy")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.txt").write_text("fine")
    hostile = ["../../x1.txt", "..\\..\\x2.txt", "a/b.txt"]
    for n, name in enumerate(hostile):
        (tree / marker(n, name).lower().replace("q", "Q")).write_text(f"escape {n}")
    image = disk(tmp_path, "fat", "fat16", 24 * MiB, tree)
    for n, name in enumerate(hostile):
        patch_fat_long_name(image, marker(n, name).lower().replace("q", "Q"), name)
    # a valid FAT long name (mtools keeps 128 of these characters), but 256 bytes of
    # UTF-8: one too many for Linux
    long_name = "é" * 128
    subprocess.run(
        ["mcopy", "-i", str(image), str(tree / "ok.txt"), f"::{long_name}"],
        env={**os.environ, "LC_ALL": "C.UTF-8"},
        check=True,
    )
    hostile.append(long_name)
    repo = Repository.init(str(tmp_path / "repo"))
    backup(repo, str(image))
    volume = open_volume(repo, repo.resolve("latest"), 1)
    assert len(volume.listdir("/")) == 5  # ok.txt and the four hostile names
    events: list[Event] = []
    before = everything(tmp_path)
    result = extract(volume, "/", tmp_path / "out", reporter=events.append)
    assert sorted(s.path for s in result.skipped) == sorted("/" + n for n in hostile)
    assert all(isinstance(e, Warned) for e in events) and len(events) == 4
    assert "longer than 255 bytes" in next(s.reason for s in result.skipped if "é" in s.path)
    assert everything(tmp_path) - before == {"out", "out/ok.txt"}
    assert result.files == 1 and (tmp_path / "out" / "ok.txt").read_text() == "fine"


@pytest.mark.skipif(not IS_ROOT, reason="names with \\ are put on NTFS through ntfs-3g (root)")
def test_ntfs_name_with_a_backslash_is_skipped(tmp_path: Path) -> None:
    need_tools("mkntfs", "ntfs-3g")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.txt").write_text("fine")
    (tree / "..\\..\\x3.txt").write_text("a path on Windows")
    image = disk(tmp_path, "ntfs", "ntfs", 16 * MiB, tree)
    repo = Repository.init(str(tmp_path / "repo"))
    backup(repo, str(image))
    before = everything(tmp_path)
    proc = blockvault("-r", repo.location, "extract", "latest:1/", tmp_path / "out")
    assert proc.returncode == 1 and "x3.txt" in proc.stderr, proc.stderr
    assert "path separator" in proc.stderr
    assert everything(tmp_path) - before == {"out", "out/ok.txt"}


def test_a_damaged_chunk_names_the_file_and_the_rest_is_written(tmp_path: Path) -> None:
    need_tools("mke2fs", "debugfs")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "good.txt").write_text("fine")
    (tree / "big.bin").write_bytes(os.urandom(MiB))
    image = disk(tmp_path, "ext", "ext4", 16 * MiB, tree)
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)
    snap = backup(repo, str(image))
    # debugfs, not our parser, says where the file's 100th block lies (4 KiB blocks)
    block = subprocess.run(
        ["debugfs", "-R", "bmap /big.bin 100", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    region = repo.load_index(snap).region(fmt.REGION_PARTITION, 1)
    assert region is not None
    chunk = region.chunk_ids[int(block) * 4096 // (64 * 1024)].hex()
    stored = tmp_path / "repo" / fmt.chunk_name(chunk)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(data)
    out = tmp_path / "out"
    proc = blockvault("-r", repo.location, "extract", "latest:1/", out)
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and "/big.bin" in lines[0] and chunk[:12] in lines[0], lines
    assert "1 entry could not be written" in lines[1]
    assert (out / "good.txt").read_text() == "fine"
    assert not (out / "big.bin").exists()  # not half a file under its name
    assert not [p for p in everything(out) if "tmp" in p]  # nor a temporary one


def test_a_symlink_and_a_directory_of_the_same_name_in_one_snapshot(tmp_path: Path) -> None:
    """The directory's files must not be written through the symlink, whichever of the
    two comes first in the directory."""
    need_tools("mke2fs")
    victim = tmp_path / "victim"
    victim.mkdir()
    tree = tmp_path / "tree"
    (tree / "lnQ").mkdir(parents=True)
    (tree / "lnQ" / "passwd").write_text("would be written into the victim")
    os.symlink(victim, tree / "lnk")
    image = disk(tmp_path, "ext", "ext4", 8 * MiB, tree)
    subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, check=False)
    subprocess.run(["tune2fs", "-O", "^metadata_csum", str(image)], capture_output=True, check=True)
    patch(image, b"lnQ", b"lnk")
    repo = Repository.init(str(tmp_path / "repo"))
    backup(repo, str(image))
    out = tmp_path / "out"
    proc = blockvault("-r", repo.location, "extract", "--yes", "latest:1/", out)
    assert proc.returncode == 1 and "twice" in proc.stderr, proc.stderr
    assert everything(victim) == set()
    kept = out / "lnk"
    assert kept.is_symlink() or (kept / "passwd").read_text().startswith("would be")
