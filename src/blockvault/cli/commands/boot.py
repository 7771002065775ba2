"""``blockvault boot SNAPSHOT``: start a snapshot's system in QEMU without restoring it;
and the ``verify --boot`` half of ``verify``, which boots it headless."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from blockvault.cli import render
from blockvault.cli.commands import open_snapshot
from blockvault.errors import UsageError

__all__ = ["machine_options", "register", "verify_boot_command"]

F = TypeVar("F", bound=Callable[..., Any])

ACCEL_WORDS = {"kvm": "KVM", "tcg": "TCG emulation (no usable /dev/kvm: slower)"}


def machine_options(command: F) -> F:
    """The options that shape the guest, shared by ``boot`` and ``verify --boot``."""
    for option in reversed(
        (
            click.option(
                "--firmware",
                type=click.Choice(["bios", "uefi"]),
                help="Default: from the disk (GPT with an EFI System Partition and no BIOS "
                "boot partition: uefi; else bios).",
            ),
            click.option(
                "--accel",
                type=click.Choice(["kvm", "tcg"]),
                help="Default: kvm when /dev/kvm can run guests, else tcg (emulation).",
            ),
            click.option(
                "--memory", type=int, default=1024, show_default=True, metavar="MIB", help="RAM."
            ),
            click.option(
                "--cpus", type=int, default=2, show_default=True, metavar="N", help="Virtual CPUs."
            ),
        )
    ):
        command = option(command)
    return command


def _machine(snap: Any, options: dict[str, Any], **extra: Any) -> Any:
    from blockvault.interop.boot import machine_for

    return machine_for(
        snap,
        firmware=options["firmware"],
        accel=options["accel"],
        memory=options["memory"],
        cpus=options["cpus"],
        **extra,
    )


def register(group: click.Group) -> None:
    @group.command("boot")
    @click.argument("snapshot")
    @machine_options
    @click.option(
        "--network",
        type=click.Choice(["none", "user"]),
        default="none",
        show_default=True,
        help="user: a NAT'd network card (QEMU user networking), so the guest reaches out.",
    )
    @click.option(
        "--vnc",
        metavar="DISPLAY",
        help="Also show the guest's screen on this VNC display, such as 127.0.0.1:0 "
        "(the serial console stays on the terminal).",
    )
    @click.option(
        "--keep-overlay",
        type=click.Path(dir_okay=False),
        metavar="PATH",
        help="Keep the guest's writes in this new qcow2 file (default: discarded).",
    )
    @click.pass_context
    def boot_command(
        ctx: click.Context,
        /,
        snapshot: str,
        network: str,
        vnc: str | None,
        keep_overlay: str | None,
        **options: Any,
    ) -> None:
        """Start SNAPSHOT's system in QEMU without restoring it: the disk is the snapshot,
        served read-only, under a copy-on-write overlay that takes the guest's writes
        (thrown away afterwards unless --keep-overlay). The guest's serial console is
        this terminal; it stops when the guest powers off, or at Ctrl-C. The guest's
        kernel must log to ttyS0 (console=ttyS0) for its messages to appear here."""
        from blockvault.interop.boot import boot_snapshot

        repo, snap = open_snapshot(ctx, snapshot)
        snap.require_disk("booting")
        machine = _machine(snap, options, network=network, vnc=vnc)
        click.echo(
            f"booting snapshot {snap.id[:12]} ({machine.firmware}, "
            f"{ACCEL_WORDS[machine.accel]}); the guest's serial console follows, "
            "Ctrl-C stops it",
            err=True,
        )
        boot_snapshot(
            repo, snap, machine, keep_overlay=Path(keep_overlay) if keep_overlay else None
        )
        kept = f"; its writes are in {keep_overlay}" if keep_overlay else ""
        click.echo(f"blockvault: the guest stopped{kept}", err=True)


def verify_boot_command(
    ctx: click.Context,
    snapshot: str | None,
    markers: tuple[str, ...],
    timeout: float,
    as_json: bool,
    options: dict[str, Any],
) -> None:
    """``verify SNAPSHOT --boot``: boot headless, pass on a marker, print the time."""
    from blockvault.interop.boot import DEFAULT_MARKERS, verify_boot

    if snapshot is None:
        raise UsageError("verify --boot needs a SNAPSHOT (an id, a prefix, or latest)")
    if timeout <= 0:
        raise UsageError(f"--timeout {timeout:g}: give a number of seconds above 0")
    repo, snap = open_snapshot(ctx, snapshot)
    snap.require_disk("booting")
    machine = _machine(snap, options)
    if not as_json:
        click.echo(
            f"booting snapshot {snap.id[:12]} headless ({machine.firmware}, "
            f"{ACCEL_WORDS[machine.accel]}), up to {timeout:g}s",
            err=True,
        )
    check = verify_boot(repo, snap, machine, markers=(*DEFAULT_MARKERS, *markers), timeout=timeout)
    if as_json:
        render.emit_json({"snapshot": snap.id, **dataclasses.asdict(check)})
    else:
        click.echo(
            f"snapshot {snap.id[:12]} booted in {check.seconds:.1f}s: the console showed "
            f"{check.marker!r} ({check.firmware}, {check.accel})"
        )
