"""``blockvault serve-nbd SNAPSHOT``: a snapshot's disk, read-only, to any NBD client."""

from __future__ import annotations

import ipaddress
import os
import signal

import click

from blockvault.cli.commands import open_snapshot
from blockvault.errors import Interrupted, UsageError
from blockvault.interop.vm import snapshot_export
from blockvault.nbd.server import serving


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) as a socket address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise UsageError(f"--listen {text!r}: give HOST:PORT, such as 127.0.0.1:10809")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(group: click.Group) -> None:
    @group.command("serve-nbd")
    @click.argument("snapshot")
    @click.option(
        "--socket",
        "socket_path",
        type=click.Path(dir_okay=False),
        help="Serve on this UNIX socket (the default: a private one in a new directory).",
    )
    @click.option(
        "--listen",
        metavar="HOST:PORT",
        help="Serve on TCP instead, such as 127.0.0.1:10809 (port 0: any free port). NBD "
        "has no authentication here: beyond loopback, anyone who can connect reads the disk.",
    )
    @click.pass_context
    def serve_nbd_command(
        ctx: click.Context, snapshot: str, socket_path: str | None, listen: str | None
    ) -> None:
        """Serve SNAPSHOT's whole disk read-only over NBD until Ctrl-C, with its unused
        blocks as holes: qemu-img, qemu-system-x86_64, nbdcopy and nbd-client read it."""
        if socket_path and listen:
            raise UsageError("give --socket or --listen, not both")
        address = parse_listen(listen) if listen else None
        if socket_path and os.path.lexists(socket_path):
            raise UsageError(f"--socket {socket_path}: exists already; remove it or choose another")
        repo, snap = open_snapshot(ctx, snapshot)
        export = snapshot_export(repo, snap)
        if address is not None and not is_loopback(address[0]):
            click.echo(
                f"blockvault: warning: serving on {address[0]}, beyond loopback: NBD has "
                "no authentication, anyone who can reach it reads the whole disk",
                err=True,
            )
        with serving(export, socket_path=socket_path, address=address) as uri:
            click.echo(uri)
            click.echo(
                f"serving snapshot {snap.id[:12]} read-only until Ctrl-C; for example:\n"
                f"  qemu-img info '{uri}'\n"
                f"  qemu-img convert -O qcow2 '{uri}' disk.qcow2\n"
                "  qemu-system-x86_64 -m 2G -snapshot "
                f"-drive file='{uri}',format=raw,if=virtio",
                err=True,
            )
            try:
                while True:  # Ctrl-C raises Interrupted (cli installs the handlers)
                    signal.pause()
            except Interrupted as exc:
                exc.outcome = "the server stopped; the repository was only read"
                raise
