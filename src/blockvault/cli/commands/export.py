"""``blockvault export SNAPSHOT DEST``: a snapshot leaves the repository in another format.

One command for every format: the format comes from ``--format`` or from DEST's suffix,
and each format's writer lives in the library (``FORMATS`` names it). Formats are added
by adding a row.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

import click

from blockvault.cli.commands import export_bvi
from blockvault.errors import UsageError

__all__ = ["FORMATS", "Format", "format_for", "register"]


class Format(NamedTuple):
    suffixes: tuple[str, ...]  # DEST names ending so imply this format
    writer: str  # "module:function" run as writer(ctx, snapshot, dest, **options)
    help: str  # one phrase for --help


_VM = "blockvault.cli.commands.export_vm"
FORMATS: dict[str, Format] = {
    "bvi": Format((".bvi",), "blockvault.cli.commands.export_bvi:run", "one-file image"),
    "qcow2": Format((".qcow2",), f"{_VM}:write_qcow2", "QEMU/KVM disk (qcow2, sparse)"),
    "vhdx": Format((".vhdx",), f"{_VM}:write_vhdx", "Hyper-V disk (VHDX, dynamic)"),
    "vmdk": Format((".vmdk",), f"{_VM}:write_vmdk", "VMware disk (VMDK, sparse)"),
    "vhd": Format((".vhd",), f"{_VM}:write_vhd", "fixed VHD, whole MiB (Azure)"),
    "raw": Format((".raw",), f"{_VM}:write_raw", "raw disk image (sparse file)"),
    "clonezilla": Format(
        (), "blockvault.cli.commands.export_clonezilla:run", "a Clonezilla image directory"
    ),
}
"""Format name -> how it is written."""


def format_for(dest: str, given: str | None) -> str:
    """The format of ``dest``: ``given`` if any, else the one its suffix names."""
    if given:
        return given
    lowered = dest.lower()
    for name, fmt in FORMATS.items():
        if any(lowered.endswith(suffix) for suffix in fmt.suffixes):
            return name
    raise UsageError(
        f"cannot tell the format of {dest!r} from its name: give --format "
        f"({', '.join(FORMATS) or 'none available'})"
    )


def writer(name: str) -> Callable[..., Any]:
    module, _, function = FORMATS[name].writer.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return found


def register(group: click.Group) -> None:
    @group.command("export")
    @click.argument("snapshot")
    @click.argument("dest", type=click.Path())
    @click.option(
        "--format",
        "format_name",
        type=click.Choice(sorted(FORMATS)),
        help="What to write; default: from DEST's suffix. "
        + "; ".join(f"{n}: {f.help}" for n, f in FORMATS.items()),
    )
    # each format's own options go here; every writer is given all of them (by name)
    @export_bvi.split_option
    @export_bvi.recompress_option
    @click.option(
        "--disk-name",
        metavar="NAME",
        help="clonezilla: the disk's name in the image (sda, nvme0n1); "
        "default: the snapshot's source device, else sda.",
    )
    @click.pass_context
    def export_command(
        ctx: click.Context, /, snapshot: str, dest: str, format_name: str | None, **options: Any
    ) -> None:
        """Write SNAPSHOT (id, unique prefix or 'latest') to DEST in another format."""
        writer(format_for(dest, format_name))(ctx, snapshot, dest, **options)
