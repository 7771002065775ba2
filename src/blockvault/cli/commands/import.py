"""``blockvault import SOURCE``: another tool's image (or a one-file image) becomes a snapshot.

One command for every kind of source: each row of ``SOURCES`` can tell whether SOURCE is
its kind (``probe``, cheap: a name, a magic number, a marker file) and import it
(``runner``); the first row whose probe says yes wins, so rows go from most to least
specific.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import click

from blockvault.cli.commands import import_bvi
from blockvault.errors import UsageError
from blockvault.storage.bundle import is_bundle

__all__ = ["SOURCES", "Source", "register"]


class Source(NamedTuple):
    probe: str  # "module:function", probe(path) -> bool
    runner: str  # "module:function", runner(ctx, source, **options)
    help: str  # one phrase for --help


_VM = "blockvault.cli.commands.import_vm"
SOURCES: dict[str, Source] = {
    "bvi": Source(
        "blockvault.storage.bundle:is_bundle",
        "blockvault.cli.commands.import_bvi:run",
        "a blockvault one-file image (.bvi, or its first piece)",
    ),
    "qcow2": Source(f"{_VM}:is_qcow2", f"{_VM}:import_qcow2", "QEMU/KVM disk (qcow2)"),
    "vhdx": Source(f"{_VM}:is_vhdx", f"{_VM}:import_vhdx", "Hyper-V disk (VHDX)"),
    "vhd": Source(f"{_VM}:is_vhd", f"{_VM}:import_vhd", "Virtual PC/Azure disk (VHD)"),
    "vmdk": Source(f"{_VM}:is_vmdk", f"{_VM}:import_vmdk", "VMware disk (VMDK, sparse)"),
    "vdi": Source(f"{_VM}:is_vdi", f"{_VM}:import_vdi", "VirtualBox disk (VDI)"),
}
"""Kind of source -> how it is recognised and imported, most specific first."""
_FOREIGN = "blockvault.cli.commands.import_foreign"
SOURCES["clonezilla"] = Source(
    f"{_FOREIGN}:probe_clonezilla",
    f"{_FOREIGN}:run_clonezilla",
    "a Clonezilla or Rescuezilla image directory",
)
SOURCES["fog"] = Source(f"{_FOREIGN}:probe_fog", f"{_FOREIGN}:run_fog", "a FOG image directory")
SOURCES["redo"] = Source(
    f"{_FOREIGN}:probe_redo",
    f"{_FOREIGN}:run_redo",
    "a Redo Rescue image (.redo file or directory)",
)
SOURCES["partclone"] = Source(
    f"{_FOREIGN}:probe_partclone",
    f"{_FOREIGN}:run_partclone",
    "a partclone image file (or its first piece), compressed or not",
)
# raw stays last: any disk image file is one


def _load(spec: str) -> Callable[..., Any]:
    module, _, function = spec.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return found


def kind_of(source: str, given: str | None) -> str:
    """The kind of ``source``: ``given`` if any, else the first whose probe knows it."""
    if given:
        return given
    if not os.path.exists(source) and not is_bundle(source):  # a split image: NAME.001
        raise UsageError(f"{source}: no such file or directory")
    for name, kind in SOURCES.items():
        if _load(kind.probe)(source):
            return name
    raise UsageError(
        f"{source!r} is no image blockvault can import "
        f"(it reads: {', '.join(SOURCES) or 'nothing yet'}); give --format if it is one"
    )


def register(group: click.Group) -> None:
    @group.command("import")
    @click.argument("source", type=click.Path())
    @click.option(
        "--format",
        "kind",
        type=click.Choice(sorted(SOURCES)),
        help="What SOURCE is; default: recognised from its name and content. "
        + "; ".join(f"{n}: {s.help}" for n, s in SOURCES.items()),
    )
    # each kind's own options go here; every runner is given all of them (by name)
    @import_bvi.image_password_option
    @click.option(
        "--tag", "tags", multiple=True, metavar="T", help="Tag the snapshots (repeatable)."
    )
    @click.option(
        "--json", "as_json", is_flag=True, help="Print the snapshots as JSON for scripts."
    )
    @click.pass_context
    def import_command(
        ctx: click.Context, /, source: str, kind: str | None, **options: Any
    ) -> None:
        """Store SOURCE as an ordinary snapshot of the repository (-r), deduplicated
        against everything already stored."""
        _load(SOURCES[kind_of(source, kind)].runner)(ctx, source, **options)


SOURCES["raw"] = Source(
    f"{_FOREIGN}:probe_raw",
    f"{_FOREIGN}:run_raw",
    "a raw disk image file (dd), imaged as a disk backup images it",
)
