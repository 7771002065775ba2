"""``blockvault ls SNAPSHOT[:PART][/PATH]``: list files inside a snapshot, no root needed."""

from __future__ import annotations

import posixpath
import stat
from datetime import UTC, datetime
from typing import Any

import click

from blockvault.browse.filesystem import Entry
from blockvault.browse.volume import Volume, locate, open_volume
from blockvault.cli import render
from blockvault.cli.commands import json_option, luks_key_for, luks_key_option, open_address
from blockvault.text import shown


def entry_json(entry: Entry, base: str | None = None) -> dict[str, Any]:
    return {
        "path": entry.path if base is None else _relative(entry, base),
        "kind": entry.kind,
        "size": entry.size,
        "mode": stat.filemode(entry.mode),
        "uid": entry.uid,
        "gid": entry.gid,
        "mtime": timestamp(entry.mtime_ns),
        "mtime_ns": entry.mtime_ns,
        "target": entry.target,
    }


def timestamp(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds")


def _relative(entry: Entry, base: str) -> str:
    return posixpath.relpath(entry.path, base) if entry.path != base else entry.name


def long_line(entry: Entry, name: str) -> str:
    owner = "-" if entry.uid is None else str(entry.uid)
    group = "-" if entry.gid is None else str(entry.gid)
    when = datetime.fromtimestamp(entry.mtime_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
    link = f" -> {shown(entry.target)}" if entry.target is not None else ""
    return f"{stat.filemode(entry.mode)} {owner:>5} {group:>5} {entry.size:>12} {when} {name}{link}"


def _entries(volume: Volume, path: str, recursive: bool) -> tuple[str, list[tuple[str, Entry]]]:
    """The base of relative paths, and each entry with the name to show: the stored
    name (which may hold a ``/``), or with ``recursive`` the stored names below."""
    top = volume.entry(path, follow=True)
    if top.kind != "dir":
        return posixpath.dirname(top.path), [(top.name, top)]
    if recursive:
        return top.path, [("/".join(names), e) for names, e in volume.walk_names(top.path) if names]
    return top.path, volume.children(top.path)


def register(group: click.Group) -> None:
    @group.command("ls")
    @click.argument("address", metavar="SNAPSHOT[:PART][/PATH]")
    @click.option("-l", "--long", "long_", is_flag=True, help="Mode, owner, size, time, name.")
    @click.option("-R", "--recursive", is_flag=True, help="Everything below PATH.")
    @json_option
    @luks_key_option
    @click.pass_context
    def ls(
        ctx: click.Context,
        address: str,
        long_: bool,
        recursive: bool,
        luks_key_files: tuple[str, ...],
        as_json: bool,
    ) -> None:
        """List PATH in partition PART of SNAPSHOT (id, unique prefix or 'latest'), read
        straight from the repository: ext2/3/4, FAT and NTFS, no root or FUSE needed.
        Without PART (on a disk with a partition table), list the partitions.
        Times are UTC."""
        repo, address = open_address(ctx, address)
        snap, addr, number = locate(repo, address)
        if number is None:
            parts = snap.partitions
            if as_json:
                render.emit_json({"snapshot": snap.id, "partitions": parts})
                return
            render.table(
                f"snapshot {snap.id[:12]}",
                ["#", "Filesystem", "Size", "Label", "Imaged"],
                [
                    (
                        p.number,
                        p.filesystem,
                        render.size(p.size),
                        p.label,
                        "yes" if p.imaged else "no",
                    )
                    for p in parts
                ]
                + [  # logical volumes, addressed as SNAPSHOT:VG/LV:/PATH
                    (f"{p.number}: {v.name}", v.filesystem, render.size(v.size), v.label, "yes")
                    for p in parts
                    if p.imaged
                    for v in p.volumes
                    if v.kind == "lvm2-lv"
                ],
            )
            return
        volume = open_volume(
            repo, snap, number, volume=addr.volume, luks_key=luks_key_for(luks_key_files, number)
        )
        base, entries = _entries(volume, addr.path, recursive)
        if as_json:
            render.emit_json(
                {
                    "snapshot": snap.id,
                    "partition": number,
                    "path": addr.path,
                    "entries": [entry_json(e, base) for _name, e in entries],
                }
            )
            return
        for name, entry in entries:
            click.echo(long_line(entry, shown(name)) if long_ else shown(name))
