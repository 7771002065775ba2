"""``blockvault import disk.qcow2``: the VM disk rows of ``import``'s SOURCES.

A row names a probe and a runner, neither told which row chose it: each VM format
gets its own pair, made here from its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands import open_repo
from blockvault.interop.vm_import import import_vm_disk, probe_vm_disk

__all__ = [
    "import_qcow2",
    "import_vdi",
    "import_vhd",
    "import_vhdx",
    "import_vmdk",
    "is_qcow2",
    "is_vdi",
    "is_vhd",
    "is_vhdx",
    "is_vmdk",
]


def _probe(format_name: str) -> Callable[[str], bool]:
    def probe(source: str) -> bool:
        return probe_vm_disk(source) == format_name

    return probe


def _runner(format_name: str) -> Callable[..., None]:
    def run(ctx: click.Context, source: str, **options: Any) -> None:
        repo = open_repo(ctx)
        with render.progress(False) as reporter:
            snap = import_vm_disk(repo, source, format_name=format_name, reporter=reporter)
        s = snap.stats
        click.echo(
            f"snapshot {snap.id[:12]} imported from {source} ({format_name}): "
            f"{render.size(s.used_bytes)} used of {render.size(snap.disk_size)}, "
            f"{render.size(s.stored_bytes)} added to the repository",
            err=True,
        )
        click.echo(snap.id)

    return run


is_qcow2, import_qcow2 = _probe("qcow2"), _runner("qcow2")
is_vhdx, import_vhdx = _probe("vhdx"), _runner("vhdx")
is_vhd, import_vhd = _probe("vhd"), _runner("vhd")
is_vmdk, import_vmdk = _probe("vmdk"), _runner("vmdk")
is_vdi, import_vdi = _probe("vdi"), _runner("vdi")
