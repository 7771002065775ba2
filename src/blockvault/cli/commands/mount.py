"""``blockvault mount SNAPSHOT MOUNTPOINT``: a snapshot as read-only image files (FUSE)."""

from __future__ import annotations

import signal
import sys

import click

from blockvault.browse.mount import mount, wait
from blockvault.cli import render
from blockvault.cli.commands import (
    json_option,
    passphrase_source,
    repo_location,
    snapshot_location,
)
from blockvault.repo import Repository


def register(group: click.Group) -> None:
    @group.command("mount")
    @click.argument("snapshot", metavar="[SNAPSHOT]")
    @click.argument("mountpoint", type=click.Path(file_okay=False), required=False)
    @click.option(
        "--filesystems",
        is_flag=True,
        help="Also show each partition's files under MOUNTPOINT/pN/ (kernel mounts of "
        "ext and NTFS as root; blockvault's own reader for FAT, and for all without root).",
    )
    @click.option(
        "-f",
        "--foreground",
        is_flag=True,
        help="Stay in the foreground; Ctrl-C or SIGTERM unmounts everything.",
    )
    @json_option
    @click.pass_context
    def mount_command(
        ctx: click.Context,
        snapshot: str,
        mountpoint: str | None,
        filesystems: bool,
        foreground: bool,
        as_json: bool,
    ) -> None:
        """Mount SNAPSHOT (id, unique prefix or 'latest') read-only at MOUNTPOINT (an
        empty directory): MOUNTPOINT/disk.img is the whole disk, pN.img each imaged
        partition, readable at any offset; only the chunks read are fetched, holes
        read as zeros. Returns once mounted, the server staying in the background,
        unless --foreground. 'blockvault umount MOUNTPOINT' takes everything down,
        loop devices included.

        A file snapshot shows its files at MOUNTPOINT. Without SNAPSHOT, the whole
        repository: MOUNTPOINT/ids/ID/, snapshots/TIME/ and hosts/HOST/TIME/, each
        a file snapshot's files or a disk snapshot's partitions as pN/ (as at mount
        time; mount again to see newer snapshots)."""
        whole = mountpoint is None
        if mountpoint is None:
            snapshot, mountpoint = "", snapshot
            location = repo_location(ctx)
        else:
            location, snapshot = snapshot_location(ctx, snapshot)
        ask = passphrase_source(ctx, location=location)
        remembered: list[str] = []

        def passphrase() -> str:
            if not remembered:
                remembered.append(ask())
            return remembered[0]

        def open_repository() -> Repository:
            return Repository.open(location, passphrase=passphrase)

        repo = open_repository()
        snap = None if whole else repo.resolve(snapshot)
        state = mount(open_repository, snap, mountpoint, filesystems=filesystems)
        if as_json:
            render.emit_json(state)
        else:
            what = f"snapshot {snap.id[:12]}" if snap else f"repository {repo.location}"
            click.echo(f"mounted {what} at {state.mountpoint}")
            for inner in state.inner:
                note = f" ({inner.note})" if inner.note else ""
                click.echo(f"  p{inner.partition}/: {inner.how}{note}")
        sys.stdout.flush()
        if foreground:
            number = wait(state)
            if number:
                click.echo(f"unmounted {state.mountpoint}", err=True)
                sys.exit(128 + number if number != signal.SIGINT else 130)
