"""``blockvault restore SNAPSHOT TARGET``: write a snapshot back to a disk or partition,
or a file snapshot (``SNAPSHOT[:/PATH]``) into a directory."""

from __future__ import annotations

import dataclasses
import os
from typing import cast

import click

from blockvault.browse.linux_root import linux_root
from blockvault.browse.volume import parse_address
from blockvault.cli import render
from blockvault.cli.commands import (
    grow_partition_option,
    json_option,
    new_ids_option,
    open_snapshot,
    scratch_option,
)
from blockvault.errors import TreeDamaged, TreeIncomplete, UsageError
from blockvault.files.restore import (
    OVERWRITE_MODES,
    FilesRestoreResult,
    RestoreOptions,
    restore_files,
)
from blockvault.pipeline.adapt_system import (
    AdaptResult,
    FirmwareMode,
    adapt_system,
    check_can_adapt,
)
from blockvault.pipeline.restore import restore
from blockvault.storage.bundle import is_bundle
from blockvault.text import shown

_SIGNS = {"add": "+", "replace": "~", "update": "=", "delete": "-"}


def register(group: click.Group) -> None:
    @group.command("restore")
    @click.argument("snapshot")
    @click.argument("target", type=click.Path())
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
    @click.option(
        "--adapt",
        is_flag=True,
        help="After a disk restore, make the restored Linux system boot on this machine: "
        "fstab/crypttab device names to UUIDs, an initramfs with every disk controller's "
        "drivers, GRUB reinstalled for this firmware (UEFI: removable path and a boot "
        "entry). Needs root; prints what it changed.",
    )
    @click.option(
        "--adapt-firmware",
        type=click.Choice(["bios", "uefi"]),
        help="With --adapt: set up for a machine booting this way instead of this one "
        "(a disk to move elsewhere); writes no boot entry into this machine's NVRAM.",
    )
    @scratch_option
    @click.option(
        "--include",
        multiple=True,
        metavar="PATTERN",
        help="File snapshots: restore only paths matching PATTERN (gitignore style, "
        "matched against the path in the snapshot); repeatable.",
    )
    @click.option(
        "--exclude",
        multiple=True,
        metavar="PATTERN",
        help="File snapshots: leave out paths matching PATTERN; repeatable.",
    )
    @click.option(
        "--overwrite",
        type=click.Choice(OVERWRITE_MODES),
        default="if-changed",
        show_default=True,
        help="File snapshots: what to do with an entry TARGET already has (if-changed: "
        "replace a file whose type, size or mtime differ; a rerun skips what is done).",
    )
    @click.option(
        "--delete",
        is_flag=True,
        help="File snapshots: remove what TARGET has and the snapshot has not, below TARGET.",
    )
    @click.option(
        "--numeric-owner", is_flag=True, help="File snapshots: owners by id, not by name."
    )
    @click.option(
        "--dry-run", is_flag=True, help="File snapshots: list what would change; change nothing."
    )
    @click.option(
        "--verify",
        is_flag=True,
        help="File snapshots: read each file back once written and compare its hash.",
    )
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
        adapt: bool,
        adapt_firmware: str | None,
        scratch: str | None,
        include: tuple[str, ...],
        exclude: tuple[str, ...],
        overwrite: str,
        delete: bool,
        numeric_owner: bool,
        dry_run: bool,
        verify: bool,
        as_json: bool,
    ) -> None:
        """Restore SNAPSHOT (id, unique prefix or 'latest') onto TARGET: a block device,
        or an image file (created, sized to the source disk, if missing). Refuses a
        mounted target, the disk holding the repository and a target too small; asks
        before overwriting one that holds data.

        A file snapshot (or SNAPSHOT:/PATH of one) is restored into the directory
        TARGET (made if missing): a directory's contents go into TARGET, a file into
        TARGET under its name. Modes, owners (by name, as root), times, xattrs and ACLs,
        hard links, devices and FIFOs are restored, sparse files stay sparse; names
        that cannot be written here are skipped and named (exit 1; 4 when data was
        missing or damaged). Nothing outside TARGET is ever written."""
        ref, path = snapshot, None
        if not is_bundle(snapshot) and (":" in snapshot or "/" in snapshot):
            address = parse_address(snapshot)
            if address.partition is not None:
                raise UsageError(
                    f"{snapshot!r}: a partition is restored with -p {address.partition}"
                )
            ref, path = address.snapshot, address.path
        repo, snap = open_snapshot(ctx, ref)
        if snap.kind == "files":
            options = RestoreOptions(
                include, exclude, overwrite, delete, numeric_owner, dry_run, verify
            )
            with render.progress(as_json) as reporter:
                done = restore_files(repo, snap, path or "/", target, options, reporter)
            _report(done, as_json)
            return
        files_only = [include, exclude, delete, numeric_owner, dry_run, verify, path]
        if any(files_only) or overwrite != "if-changed":
            raise UsageError(
                f"snapshot {snap.id[:12]} is a disk image: PATH, --include, --exclude, "
                "--overwrite, --delete, --numeric-owner, --dry-run and --verify are for "
                "file snapshots ('blockvault extract' copies files out of a disk image)"
            )
        if os.path.isdir(target):
            raise UsageError(f"{target} is a directory; a disk image is restored onto a disk")
        if adapt_firmware and not adapt:
            raise UsageError("--adapt-firmware goes with --adapt")
        if adapt:
            if partition:
                raise UsageError("--adapt adapts a whole disk: leave out -p")
            check_can_adapt()
            linux_root(repo, snap)  # refuses a snapshot without a Linux root, before writing
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
            adapted = (
                adapt_system(target, firmware=cast(FirmwareMode, adapt_firmware), reporter=reporter)
                if adapt
                else None
            )
        if as_json:
            render.emit_json({**dataclasses.asdict(result), "adapt": adapted} if adapt else result)
            return
        click.echo(
            f"restored snapshot {snap.id[:12]} to {target}: {render.size(result.written_bytes)} "
            f"written in {result.seconds:.1f}s" + render.adapted(result.gpt_moved, result.grown)
        )
        if adapted is not None:
            _report_adapt(adapted)


def _report_adapt(adapted: AdaptResult) -> None:
    click.echo(
        f"adapted the system on {adapted.root} for {adapted.firmware.upper()}: "
        f"{render.plural(len(adapted.changes), 'change')}"
    )
    for line in adapted.changes:
        click.echo(f"  ~ {shown(line)}")
    for line in adapted.skipped:
        click.echo(f"  - {shown(line)}")


def _report(result: FilesRestoreResult, as_json: bool) -> None:
    if as_json:
        render.emit_json(result)
    else:
        for change in result.changes:
            click.echo(f"{_SIGNS[change.action]} {shown(change.path)}")
        verb = "would restore" if result.dry_run else "restored"
        click.echo(
            f"{verb} {shown(result.source)} of snapshot {result.snapshot[:12]} to "
            f"{shown(result.target)}: {render.plural(result.files, 'file')}, "
            f"{render.plural(result.directories, 'directory')}, "
            f"{render.plural(result.symlinks, 'symlink')}, "
            f"{render.size(result.bytes_written)} of content, {result.unchanged} unchanged, "
            f"{result.deleted} deleted"
            + (f", {result.verified} verified" if result.verified else "")
            + f" in {result.seconds:.1f}s"
        )
    if result.skipped:
        damaged = any(s.damaged for s in result.skipped)
        raise (TreeDamaged if damaged else TreeIncomplete)(
            target=result.target, entries=render.plural(len(result.skipped), "entry")
        )
