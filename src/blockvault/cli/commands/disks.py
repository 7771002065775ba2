"""``blockvault disks``: the block devices of this machine."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option
from blockvault.disk.inventory import DiskInfo, list_disks
from blockvault.disk.tree import stack_tree


def disk_documents(found: list[DiskInfo] | None = None) -> list[Any]:
    """The disks as ``disks --json`` prints them (also what an agent tells its center)."""
    found = list_disks() if found is None else found
    trees = [stack_tree(d.layout) if d.layout else None for d in found]
    documents: list[Any] = render.jsonable(
        [{**dataclasses.asdict(d), "tree": t} for d, t in zip(found, trees, strict=True)]
    )
    return documents


def register(group: click.Group) -> None:
    @group.command()
    @json_option
    def disks(as_json: bool) -> None:
        """List block devices: model, size, sector sizes, partition table, used bytes,
        then each one's stack as a tree: partitions, LUKS, LVM, RAID members,
        filesystems, labels, used bytes and mounts (reading partitions needs root)."""
        found = list_disks()
        if as_json:
            render.emit_json(disk_documents(found))
            return
        trees = [stack_tree(d.layout) if d.layout else None for d in found]
        render.table(
            None,
            ["Device", "Model", "Size", "Sector", "Table", "Used"],
            [
                (
                    d.path,
                    d.model,
                    render.size(d.size),
                    f"{d.logical_sector_size}/{d.physical_sector_size}",
                    d.layout.table_kind if d.layout else "?",
                    render.size(d.layout.used_bytes) if d.layout else "unreadable",
                )
                for d in found
            ],
        )
        warnings: dict[str, None] = {}  # in order, each once
        unreadable: dict[str, list[str]] = {}  # one line for the devices with one reason
        for d, tree in zip(found, trees, strict=True):
            if tree is not None:
                render.stack(tree)
            if d.error:
                unreadable.setdefault(d.error, []).append(d.path)
            for warning in d.layout.warnings if d.layout else ():
                warnings[f"{d.path} {warning}"] = None
        for error, paths in unreadable.items():
            warnings[f"{', '.join(paths)}: {error}"] = None
        for warning in warnings:
            render.warn(warning)
