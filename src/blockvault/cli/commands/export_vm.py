"""``blockvault export SNAPSHOT disk.qcow2``: the VM disk rows of ``export``'s FORMATS.

A row names one function, and the function is not told which row chose it: each VM
format gets its own writer, made here from its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands import open_snapshot
from blockvault.interop.vm import export_vm_disk

__all__ = ["write_qcow2", "write_raw", "write_vhd", "write_vhdx", "write_vmdk"]


def _writer(format_name: str) -> Callable[..., None]:
    def write(ctx: click.Context, snapshot: str, dest: str, **options: Any) -> None:
        repo, snap = open_snapshot(ctx, snapshot)
        with render.progress(False) as reporter:
            export_vm_disk(repo, snap, dest, format_name, reporter=reporter)
        click.echo(f"snapshot {snap.id[:12]} written to {dest} ({format_name})", err=True)

    write.__name__ = f"write_{format_name}"
    return write


write_qcow2 = _writer("qcow2")
write_vhdx = _writer("vhdx")
write_vmdk = _writer("vmdk")
write_vhd = _writer("vhd")
write_raw = _writer("raw")
