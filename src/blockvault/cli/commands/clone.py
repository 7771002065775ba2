"""``blockvault clone SOURCE TARGET``: copy a disk or partition straight onto another."""

from __future__ import annotations

import click

from blockvault.cli import render
from blockvault.cli.commands import (
    grow_partition_option,
    json_option,
    new_ids_option,
    raw_option,
    scratch_option,
)
from blockvault.errors import UsageError
from blockvault.pipeline.clone import clone


def register(group: click.Group) -> None:
    @group.command("clone")
    @click.argument("source", type=click.Path(dir_okay=False))
    @click.argument("target", type=click.Path(dir_okay=False))
    @click.option("-y", "--yes", is_flag=True, help="Overwrite a target that holds data.")
    @click.option(
        "--verify",
        is_flag=True,
        help="Afterwards re-read the used bytes of both sides and compare their hashes.",
    )
    @click.option(
        "--allow-mounted",
        is_flag=True,
        help="Clone a source that is mounted read-write (it may change during the copy).",
    )
    @new_ids_option
    @click.option(
        "--grow",
        is_flag=True,
        help="On a larger target, grow the last partition and its filesystem (ext2/3/4, "
        "NTFS, FAT) to fill the free space after it.",
    )
    @grow_partition_option
    @scratch_option
    @click.option(
        "--into-free",
        is_flag=True,
        help="Add a new partition for SOURCE (a partition) in the first free space on the "
        "disk TARGET large enough for it (GPT or MBR, 1 MiB aligned) and copy into it; "
        "with --grow it fills that free space.",
    )
    @click.option(
        "--partition",
        type=click.IntRange(min=1),
        metavar="N",
        help="With --into-free: copy partition N of the disk or image SOURCE.",
    )
    @raw_option
    @json_option
    def clone_command(
        source: str,
        target: str,
        yes: bool,
        verify: bool,
        allow_mounted: bool,
        new_ids: bool,
        grow: bool,
        grow_partition: int | None,
        scratch: str | None,
        into_free: bool,
        partition: int | None,
        raw: bool,
        as_json: bool,
    ) -> None:
        """Copy SOURCE (a disk, partition or image file) onto TARGET, reading only used
        blocks. TARGET is a block device or an image file (created at the source's size
        if missing); on a larger GPT disk the backup table moves to the end. Refuses the
        source itself or an overlapping range, a mounted target and one too small; asks
        before overwriting one that holds data."""
        if into_free or partition is not None:
            _into_free(
                source,
                target,
                allow_mounted,
                verify,
                new_ids,
                grow,
                grow_partition,
                into_free,
                partition,
                as_json,
            )
            return
        with render.progress(as_json) as reporter:
            result = clone(
                source,
                target,
                confirm=render.confirmer(yes),
                allow_mounted=allow_mounted,
                verify=verify,
                new_ids=new_ids,
                grow=grow,
                grow_partition=grow_partition,
                scratch=scratch,
                raw=raw,
                reporter=reporter,
            )
        if as_json:
            render.emit_json(result)
            return
        click.echo(
            f"cloned {source} to {target}: {render.size(result.written_bytes)} written in "
            f"{result.seconds:.1f}s"
            + render.adapted(result.gpt_moved, result.grown)
            + ("; verified" if result.verified else "")
        )


def _into_free(
    source: str,
    target: str,
    allow_mounted: bool,
    verify: bool,
    new_ids: bool,
    grow: bool,
    grow_partition: int | None,
    into_free: bool,
    partition: int | None,
    as_json: bool,
) -> None:
    from blockvault.pipeline.into_free import clone_into_free

    if not into_free:
        raise UsageError("--partition N goes with --into-free (copy one partition of a disk)")
    if new_ids or grow_partition is not None:
        raise UsageError("--into-free does not take --new-ids or --grow-partition; use --grow")
    with render.progress(as_json) as reporter:
        result = clone_into_free(
            source,
            target,
            partition=partition,
            allow_mounted=allow_mounted,
            verify=verify,
            grow=grow,
            reporter=reporter,
        )
    if as_json:
        render.emit_json(result)
        return
    click.echo(
        f"cloned {source} into {target}, new {result.added}: "
        f"{render.size(result.written_bytes)} written in {result.seconds:.1f}s"
        + render.adapted(False, result.grown)
        + ("; verified" if result.verified else "")
    )
