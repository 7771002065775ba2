"""``blockvault umount MOUNTPOINT``: take a snapshot mount down, loop devices included."""

from __future__ import annotations

import click

from blockvault.browse.mount import unmount
from blockvault.cli import render
from blockvault.cli.commands import json_option


def register(group: click.Group) -> None:
    @group.command("umount")
    @click.argument("mountpoint", type=click.Path(file_okay=False))
    @json_option
    def umount_command(mountpoint: str, as_json: bool) -> None:
        """Unmount a 'blockvault mount' at MOUNTPOINT: the filesystems mounted under it,
        their loop devices, the FUSE mount and its server, also after a crash."""
        state = unmount(mountpoint)
        if as_json:
            render.emit_json({"mountpoint": mountpoint, "state": state})
            return
        click.echo(f"unmounted {mountpoint}")
