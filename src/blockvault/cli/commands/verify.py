"""``blockvault verify [SNAPSHOT]``: re-read and re-hash what snapshots reference."""

from __future__ import annotations

import sys
from typing import Any

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo, open_snapshot
from blockvault.cli.commands.boot import machine_options, verify_boot_command
from blockvault.errors import IntegrityError, UsageError
from blockvault.pipeline.verify import verify


def register(group: click.Group) -> None:
    @group.command("verify")
    @click.argument("snapshot", required=False)
    @click.option(
        "--against",
        metavar="SOURCE",
        type=click.Path(dir_okay=False),
        help="Also compare the snapshot's used blocks with this device or image.",
    )
    @click.option(
        "--boot",
        is_flag=True,
        help="Instead, boot SNAPSHOT headless in QEMU (on an overlay: nothing is written) "
        "and pass when its serial console shows 'login:' or a --marker in time; exit 5 if not.",
    )
    @click.option(
        "--marker",
        "markers",
        multiple=True,
        metavar="TEXT",
        help="With --boot: console text that also counts as booted (repeatable).",
    )
    @click.option(
        "--timeout",
        type=float,
        default=300.0,
        show_default=True,
        metavar="SECONDS",
        help="With --boot: how long to wait for the marker.",
    )
    @machine_options
    @json_option
    @click.pass_context
    def verify_command(
        ctx: click.Context,
        /,
        snapshot: str | None,
        against: str | None,
        boot: bool,
        markers: tuple[str, ...],
        timeout: float,
        as_json: bool,
        **machine: Any,
    ) -> None:
        """Re-read and re-hash every chunk SNAPSHOT references (all snapshots when none
        is given); with --against, also compare its used blocks with SOURCE.
        Exits 4 when anything is missing, damaged or different. With --boot, boot
        SNAPSHOT's system instead (see 'blockvault boot'); exits 5 if it does not boot."""
        if boot:
            if against:
                raise UsageError("--boot and --against are separate checks: give one")
            verify_boot_command(ctx, snapshot, markers, timeout, as_json, machine)
            return
        if snapshot:
            repo, snap = open_snapshot(ctx, snapshot)
            snaps = [snap]
        else:
            repo = open_repo(ctx)
            snaps = repo.snapshots()
        with render.progress(as_json) as reporter:
            result = verify(repo, snaps, against=against, reporter=reporter)
        if as_json:
            render.emit_json(result)
        else:
            for p in result.problems:
                click.echo(f"{p.snapshot[:12]} {p.region} @ {p.offset}: {p.detail}", err=True)
            verdict = (
                "OK" if result.ok else f"FAILED ({render.plural(len(result.problems), 'problem')})"
            )
            click.echo(
                f"verified {render.plural(len(result.snapshots), 'snapshot')}, "
                f"{render.plural(result.chunks, 'chunk')}, "
                f"{render.size(result.bytes)}"
                + (f", compared with {against}" if against else "")
                + f" in {result.seconds:.1f}s: {verdict}"
            )
        if not result.ok:
            sys.exit(IntegrityError.exit_code)
