"""``blockvault cast send|receive``: deploy one snapshot to many computers by multicast."""

from __future__ import annotations

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_repo
from blockvault.deploy.receiver import receive
from blockvault.deploy.sender import send

interface_option = click.option(
    "--interface", metavar="IF", help="Network interface to use (default: the routing table's)."
)
session_option = click.option(
    "--session",
    default="default",
    show_default=True,
    help="Session name sender and receivers share.",
)


def register(group: click.Group) -> None:
    @group.group("cast")
    def cast() -> None:
        """Deploy one snapshot to many computers at once over UDP multicast."""

    @cast.command("send")
    @click.argument("snapshot")
    @click.option("-p", "--partition", type=int, metavar="N", help="Send only partition N.")
    @interface_option
    @session_option
    @click.option("--port", type=int, default=9520, show_default=True, help="TCP control port.")
    @click.option(
        "--min-receivers",
        type=click.IntRange(1),
        default=1,
        show_default=True,
        help="Start streaming once this many receivers are ready.",
    )
    @click.option(
        "--max-wait",
        type=click.FloatRange(0),
        default=60.0,
        show_default=True,
        help="Seconds to wait for --min-receivers before starting anyway.",
    )
    @click.option(
        "--max-rate",
        type=click.FloatRange(1),
        default=1000.0,
        show_default=True,
        help="Upper bound of the sending rate in Mbit/s.",
    )
    @click.option(
        "--timeout",
        type=click.FloatRange(1),
        default=3600.0,
        show_default=True,
        help="Seconds after which receivers still unfinished are dropped.",
    )
    @json_option
    @click.pass_context
    def send_command(
        ctx: click.Context,
        snapshot: str,
        partition: int | None,
        interface: str | None,
        session: str,
        port: int,
        min_receivers: int,
        max_wait: float,
        max_rate: float,
        timeout: float,
        as_json: bool,
    ) -> None:
        """Announce SESSION, wait for receivers, stream SNAPSHOT to all of them, repair
        what they lost and print a per-receiver report."""
        repo = open_repo(ctx)
        snap = repo.resolve(snapshot)
        with render.progress(as_json) as reporter:
            result = send(
                repo,
                snap,
                partition=partition,
                interface=interface,
                session=session,
                port=port,
                min_receivers=min_receivers,
                max_wait=max_wait,
                max_rate=max_rate,
                timeout=timeout,
                reporter=reporter,
            )
        if as_json:
            render.emit_json(result)
        else:
            render.table(
                f"cast {snap.id[:12]}: {render.plural(result.passes, 'pass')} "
                f"in {result.seconds:.1f}s",
                ["receiver", "host", "status", "written", "seconds", "NAKed", "reason"],
                [
                    [
                        r.address,
                        r.host,
                        r.status,
                        render.size(r.bytes),
                        f"{r.seconds:.1f}",
                        r.naks,
                        r.reason,
                    ]
                    for r in result.receivers
                ],
            )
        if not result.receivers or any(r.status != "verified" for r in result.receivers):
            ctx.exit(1)

    @cast.command("receive")
    @click.argument("target", type=click.Path(dir_okay=False))
    @interface_option
    @session_option
    @click.option(
        "--max-wait",
        type=click.FloatRange(0),
        default=600.0,
        show_default=True,
        help="Seconds to wait for a sender announcing the session.",
    )
    @click.option("-y", "--yes", is_flag=True, help="Overwrite a target that holds data.")
    @json_option
    def receive_command(
        target: str, interface: str | None, session: str, max_wait: float, yes: bool, as_json: bool
    ) -> None:
        """Wait for a sender announcing SESSION and write its snapshot onto TARGET (a
        block device or an image file). Refuses a mounted or too small target before
        writing; every chunk's hash is checked before it is written."""
        with render.progress(as_json) as reporter:
            result = receive(
                target,
                interface=interface,
                session=session,
                max_wait=max_wait,
                confirm=render.confirmer(yes),
                reporter=reporter,
            )
        if as_json:
            render.emit_json(result)
            return
        click.echo(
            f"received snapshot {result.snapshot[:12]} onto {target}: "
            f"{render.size(result.written_bytes)} written and verified in {result.seconds:.1f}s"
        )
