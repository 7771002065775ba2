"""The parent's chunks by position: what an incremental backup reuses or builds on."""

from __future__ import annotations

from pathlib import Path

from blockvault.pipeline.backup import backup
from blockvault.pipeline.parent import NO_PARENT, ParentChunks
from blockvault.repo import Repository
from blockvault.repo import format as fmt
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree

MiB = 1024 * 1024


def test_parent_chunks_are_found_where_they_lay(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", size=3 * MiB, seed=1)
    tree = tmp_path / "tree"
    disk = build_disk(
        DiskSpec("gpt", 24 * MiB, [PartitionSpec("ext4", 0, content=tree)]), tmp_path / "d.img"
    )
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)
    first = backup(repo, str(disk.path))
    index = repo.load_index(first)
    parent = ParentChunks.load(repo, first)
    assert parent and parent.snapshot == first
    for region in index.regions:
        for ref in region.chunks(index.chunk_size):
            found = parent.chunk(region, index.chunk_size, ref.number)
            assert found is not None
            raw, used = found
            assert (None if raw == fmt.HOLE else raw.hex()) == ref.chunk_id
            assert used == ref.used
        # another chunk size, or a chunk past the end, has no parent chunk
        assert parent.chunk(region, index.chunk_size * 2, 0) is None
        assert parent.chunk(region, index.chunk_size, len(region.chunk_ids)) is None
    assert not ParentChunks.load(repo, None)
    assert ParentChunks.load(repo, None) is NO_PARENT


def test_a_damaged_parent_index_makes_a_full_backup_not_a_failure(tmp_path: Path) -> None:
    make_tree(tmp_path / "tree", size=1 * MiB, seed=2)
    tree = tmp_path / "tree"
    disk = build_disk(
        DiskSpec("gpt", 16 * MiB, [PartitionSpec("ext4", 0, content=tree)]), tmp_path / "d.img"
    )
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)
    first = backup(repo, str(disk.path))
    (tmp_path / "repo" / fmt.index_name(first.index)).write_bytes(b"not an index")
    assert not ParentChunks.load(repo, first)
    second = backup(repo, str(disk.path))
    assert second.parent == first.id
