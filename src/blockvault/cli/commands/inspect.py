"""``blockvault inspect SOURCE``: what a backup of this disk or image would hold."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, system_root_option
from blockvault.disk.device import open_device
from blockvault.disk.layout import DiskLayout, read_layout
from blockvault.disk.system import choose_system
from blockvault.disk.tree import stack_tree
from blockvault.errors import UsageError


def show_layout(layout: DiskLayout, *, boot_areas: bool = True, warnings: bool = True) -> None:
    render.table(
        f"{layout.path}: {render.size(layout.size)}, {layout.table_kind} table, "
        f"{layout.sector_size}-byte sectors",
        ["#", "Start", "Size", "Type", "Filesystem", "Label", "Used"],
        [
            (
                p.number,
                p.partition.start,
                render.size(p.partition.size),
                p.partition.name or p.partition.type,
                p.fs.type,
                p.fs.label,
                render.size(p.fs.used_bytes),
            )
            for p in layout.partitions
        ],
    )
    if boot_areas and layout.boot_areas:
        render.table(
            "Boot areas (outside partitions, imaged raw, all-zero blocks skipped)",
            ["Start", "Bytes"],
            [(e.offset, e.length) for e in layout.boot_areas],
        )
    for warning in layout.warnings if warnings else ():
        render.warn(warning)


def register(group: click.Group) -> None:
    @group.command()
    @click.argument("source", type=click.Path(dir_okay=False), required=False)
    @click.option(
        "--system", is_flag=True, help="Show what 'backup --system' would image, and why."
    )
    @system_root_option
    @json_option
    def inspect(source: str | None, system: bool, root: str, as_json: bool) -> None:
        """Show the layout of SOURCE (a block device or disk image file): partition
        table, partitions, filesystems, used bytes and the boot areas imaged raw; then
        its stack as a tree (partitions, LUKS, LVM, RAID members, filesystems, mounts)."""
        if system == (source is not None):
            raise UsageError("give either SOURCE or --system, not both or neither")
        if system:
            choice = choose_system(Path(root))
            if as_json:
                render.emit_json(choice)
                return
            render.table(
                f"backup --system would image {choice.disk}",
                ["#", "Why"],
                list(zip(choice.partitions, choice.reasons, strict=True)),
            )
            return
        with open_device(str(source)) as device:
            layout = read_layout(device)
        tree = stack_tree(layout)
        if as_json:
            render.emit_json({**dataclasses.asdict(layout), "tree": tree})
        else:
            show_layout(layout)
            render.stack(tree)
