"""``blockvault cast send|receive``: deploy one snapshot to many computers by multicast."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option, open_snapshot
from blockvault.deploy import auth
from blockvault.deploy.receiver import receive
from blockvault.deploy.sender import send
from blockvault.errors import CastInterrupted, UsageError

CODE_ENV = "BLOCKVAULT_CAST_CODE"

interface_option = click.option(
    "--interface", metavar="IF", help="Network interface to use (default: the routing table's)."
)
session_option = click.option(
    "--session",
    default="default",
    show_default=True,
    help="Session name sender and receivers share.",
)
key_file_option = click.option(
    "--key-file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Read the session code from the first line of FILE (as 'cast code' prints it).",
)


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[list[int]]:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt inside a cast (in place of
    the CLI's blockvault.interrupts handlers), so the library tells its peers, stops
    cleanly and says what the target holds; yields the signals received. A second
    signal during that cleanup is ignored."""
    received: list[int] = []
    stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def on_signal(number: int, _frame: FrameType | None) -> None:
        received.append(number)
        for s in stopping:
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in stopping}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def interrupted(ctx: click.Context, exc: CastInterrupted, received: list[int]) -> None:
    """One line on stderr, and exit 128 + the signal (130 SIGINT, 143 SIGTERM, 129 SIGHUP)."""
    click.echo(f"blockvault: {exc}", err=True)
    ctx.exit(128 + (received[0] if received else signal.SIGINT))


def register(group: click.Group) -> None:
    @group.group("cast")
    def cast() -> None:
        """Deploy one snapshot to many computers at once over UDP multicast."""

    @cast.command("code")
    def code_command() -> None:
        """Print a new session code (100 bits), for a key file shared by script."""
        click.echo(auth.new_code())

    @cast.command("send")
    @click.argument("snapshot")
    @click.option("-p", "--partition", type=int, metavar="N", help="Send only partition N.")
    @interface_option
    @session_option
    @key_file_option
    @click.option(
        "--port",
        type=click.IntRange(0, 65535),
        default=9520,
        show_default=True,
        help="TCP control port (0: any free one; receivers learn it from the announcement).",
    )
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
        key_file: str | None,
        port: int,
        min_receivers: int,
        max_wait: float,
        max_rate: float,
        timeout: float,
        as_json: bool,
    ) -> None:
        """Announce SESSION, wait for receivers, stream SNAPSHOT to all of them, repair
        what they lost and print a per-receiver report.

        Only receivers given the session code take part, and they take only what this
        sender sent: the code is printed at the start (or read from --key-file)."""
        repo, snap = open_snapshot(ctx, snapshot)
        snap.require_disk("casting")
        code = auth.read_key_file(key_file) if key_file else auth.new_code()
        if not key_file:
            click.echo(f"session code: {code} (cast receive --code {code})", err=True)
        with render.progress(as_json) as reporter, stopped_by_signals() as received:
            try:
                result = send(
                    repo,
                    snap,
                    code=code,
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
            except CastInterrupted as exc:
                interrupted(ctx, exc, received)
                return
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
        "--code",
        envvar=CODE_ENV,
        metavar="CODE",
        help=f"The session code 'cast send' printed. Also from ${CODE_ENV}.",
    )
    @key_file_option
    @click.option(
        "--max-wait",
        type=click.FloatRange(0),
        default=600.0,
        show_default=True,
        help="Seconds to wait for a sender announcing the session.",
    )
    @click.option("-y", "--yes", is_flag=True, help="Overwrite a target that holds data.")
    @json_option
    @click.pass_context
    def receive_command(
        ctx: click.Context,
        target: str,
        interface: str | None,
        session: str,
        code: str | None,
        key_file: str | None,
        max_wait: float,
        yes: bool,
        as_json: bool,
    ) -> None:
        """Wait for a sender announcing SESSION and write its snapshot onto TARGET (a
        block device or an image file). Refuses a mounted or too small target before
        writing; only datagrams and messages authenticated with the session code are
        used, and every chunk's hash is checked before it is written."""
        if key_file:
            code = auth.read_key_file(key_file)
        elif code:
            code = auth.parse_code(code)
        else:
            raise UsageError(
                f"cast receive needs the session code: --code, ${CODE_ENV} or --key-file"
            )
        with render.progress(as_json) as reporter, stopped_by_signals() as received:
            try:
                result = receive(
                    target,
                    code=code,
                    interface=interface,
                    session=session,
                    max_wait=max_wait,
                    confirm=render.confirmer(yes),
                    reporter=reporter,
                )
            except CastInterrupted as exc:
                interrupted(ctx, exc, received)
                return
        if as_json:
            render.emit_json(result)
            return
        click.echo(
            f"received snapshot {result.snapshot[:12]} onto {target}: "
            f"{render.size(result.written_bytes)} written and verified in {result.seconds:.1f}s"
        )
