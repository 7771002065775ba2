"""``info``'s sizes and ratios on disks built by the real tools.

Oracles: the disk's content as written here (random bytes no chunk repeats, or the
same bytes copied into two partitions), and ``dumpe2fs`` for a fresh ext4's journal,
used blocks that are all zeros.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from blockvault_demo.sample import BuiltDisk, DiskSpec, PartitionSpec, build_disk
from tests.cli.runner import ok, run
from tests.conftest import need_tools, sh

MiB = 1024 * 1024


def cli(*args: str | Path) -> str:
    return ok(run(*args))


def backed_up(image: Path, repo: Path) -> dict[str, object]:
    cli("-r", repo, "init")
    cli("-r", repo, "backup", image)
    info: dict[str, object] = json.loads(cli("-r", repo, "info", "latest", "--json"))
    return info


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    need_tools("sfdisk", "mkfs.ext4", "dumpe2fs")
    spec = DiskSpec(
        "gpt",
        48 * MiB,
        [PartitionSpec("ext4", 24 * MiB, "root"), PartitionSpec("raw", 8 * MiB, "a"),
         PartitionSpec("raw", 8 * MiB, "b")],
    )  # fmt: skip
    return build_disk(spec, tmp_path_factory.mktemp("info") / "disk.img")


def journal_bytes(disk: BuiltDisk) -> int:
    """Bytes of the ext4 journal (used blocks mkfs leaves all zero), from dumpe2fs."""
    part = disk.partitions[0]
    image = Path(str(disk.path) + ".p1")
    sh("dd", f"if={disk.path}", f"of={image}", "bs=1M", "iflag=skip_bytes,count_bytes",
       f"skip={part.offset}", f"count={part.size}", "status=none")  # fmt: skip
    out = sh("dumpe2fs", "-h", image)
    image.unlink()
    size = re.search(r"^Total journal size:\s+(\d+)k", out, re.M)
    assert size, out
    return int(size.group(1)) * 1024


def test_first_backup_without_repeats_has_dedup_one(disk: BuiltDisk, tmp_path: Path) -> None:
    info = backed_up(disk.path, tmp_path / "repo")
    # nothing repeats: random partitions, an ext4 whose zeros are holes, boot areas
    assert info["dedup_ratio"] == 1.0
    assert info["chunk_bytes"] == info["plaintext_bytes"]
    # the journal's zeros are used bytes stored as nothing (they once counted as "dedup")
    assert info["hole_bytes"] >= journal_bytes(disk)  # type: ignore[operator]
    assert info["used_bytes"] > info["plaintext_bytes"]  # type: ignore[operator]
    text = cli("-r", tmp_path / "repo", "info", "latest")
    assert "dedup within the snapshot 1.00x" in text, text


def test_a_partition_copied_onto_another_dedups(disk: BuiltDisk, tmp_path: Path) -> None:
    copy = tmp_path / "copy.img"
    sh("cp", "--sparse=always", disk.path, copy)
    a, b = disk.partitions[1], disk.partitions[2]
    with open(disk.path, "rb") as src, open(copy, "r+b") as dst:
        src.seek(a.offset)
        dst.seek(b.offset)
        dst.write(src.read(a.size))
    info = backed_up(copy, tmp_path / "repo")
    chunk_bytes, plain = info["chunk_bytes"], info["plaintext_bytes"]
    assert isinstance(chunk_bytes, int) and isinstance(plain, int)
    # 8 MiB of partition b are the chunks of partition a: referenced once more, not stored
    assert chunk_bytes - plain == 8 * MiB
    assert info["dedup_ratio"] == round(chunk_bytes / plain, 2) > 1


def test_names_from_the_manifest_are_shown_escaped(tmp_path: Path) -> None:
    """A source path and a tag may hold escape sequences (and a repository may be
    forged): info writes them escaped; --json keeps them exact."""
    need_tools("sfdisk", "mkfs.ext4")
    image = tmp_path / "disk\x1b[2J.img"
    build_disk(DiskSpec("gpt", 8 * MiB, [PartitionSpec("ext4", 0, "root")]), image)
    repo = tmp_path / "repo"
    cli("-r", repo, "init")
    cli("-r", repo, "backup", "--tag", "red\x1b[31m", image)
    shown = cli("-r", repo, "info", "latest")
    assert "\x1b" not in shown, shown
    assert "disk\\x1b[2J.img" in shown and "tags red\\x1b[31m" in shown, shown
    exact = json.loads(cli("-r", repo, "info", "latest", "--json"))
    assert exact["snapshot"]["source"] == str(image), exact["snapshot"]
    assert exact["snapshot"]["tags"] == ["red\x1b[31m"]
