"""``blockvault restore SNAPSHOT TARGET``: write a snapshot back to a disk or partition."""

from __future__ import annotations

import click

from blockvault.cli import render
from blockvault.cli.commands import (
    grow_partition_option,
    json_option,
    new_ids_option,
    open_snapshot,
    scratch_option,
)
from blockvault.pipeline.restore import restore


def register(group: click.Group) -> None:
    @group.command("restore")
    @click.argument("snapshot")
    @click.argument("target", type=click.Path(dir_okay=False))
    @click.option(
        "-p",
        "--partition",
        metavar="N|VG/LV",
        help="Restore only partition N, or only logical volume VG/LV's filesystem; TARGET "
        "is then a partition device or file.",
    )
    @click.option("-y", "--yes", is_flag=True, help="Overwrite a target that holds data.")
    @click.option(
        "--zero-unused",
        is_flag=True,
        help="Also write zeros over the unused space the snapshot covers (default: leave it).",
    )
    @new_ids_option
    @click.option(
        "--grow",
        is_flag=True,
        help="On a larger target, grow the last partition and its filesystem (ext2/3/4, "
        "NTFS, FAT) to fill the free space after it (with -p: the filesystem fills TARGET).",
    )
    @grow_partition_option
    @scratch_option
    @json_option
    @click.pass_context
    def restore_command(
        ctx: click.Context,
        snapshot: str,
        target: str,
        partition: str | None,
        yes: bool,
        zero_unused: bool,
        new_ids: bool,
        grow: bool,
        grow_partition: int | None,
        scratch: str | None,
        as_json: bool,
    ) -> None:
        """Restore SNAPSHOT (id, unique prefix or 'latest') onto TARGET: a block device,
        or an image file (created, sized to the source disk, if missing). Refuses a
        mounted target, the disk holding the repository and a target too small; asks
        before overwriting one that holds data."""
        repo, snap = open_snapshot(ctx, snapshot)
        with render.progress(as_json) as reporter:
            result = restore(
                repo,
                snap,
                target,
                partition=int(partition) if partition and partition.isdigit() else partition,
                confirm=render.confirmer(yes),
                zero_unused=zero_unused,
                new_ids=new_ids,
                grow=grow,
                grow_partition=grow_partition,
                scratch=scratch,
                reporter=reporter,
            )
        if as_json:
            render.emit_json(result)
            return
        click.echo(
            f"restored snapshot {snap.id[:12]} to {target}: {render.size(result.written_bytes)} "
            f"written in {result.seconds:.1f}s" + render.adapted(result.gpt_moved, result.grown)
        )
