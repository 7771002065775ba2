"""``blockvault pxe serve|wake``: boot machines into the rescue system over the network."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from blockvault.cli import render
from blockvault.cli.commands import json_option


def register(group: click.Group) -> None:
    @group.group()
    def pxe() -> None:
        """Network boot: serve the rescue system to PXE clients, wake machines."""

    @pxe.command("serve")
    @click.option("--iface", required=True, metavar="IF", help="Serve PXE clients on this card.")
    @click.option(
        "--iso",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="The rescue ISO to serve (default: build one with the build cache).",
    )
    @click.option(
        "--cache",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Build cache when no --iso is given. Default: ~/.cache/blockvault/rescue.",
    )
    @click.option(
        "--action",
        default="menu",
        show_default=True,
        metavar="ACTION",
        help="What every machine does: menu, restore:SNAPSHOT-SPEC or cast[:SESSION].",
    )
    @click.option(
        "--mac",
        "per_mac",
        multiple=True,
        metavar="MAC=ACTION",
        help="This machine's own action (repeatable), e.g. 52:54:00:12:34:56=cast.",
    )
    @click.option(
        "--cast-key-file",
        type=click.Path(dir_okay=False, exists=True),
        help="Session code for cast actions (as 'cast code' prints it; give cast send the same).",
    )
    @click.option(
        "--target",
        metavar="DEV",
        help="The disk a restore or cast action writes "
        "(default: /dev/sda for a restore, the machine's first disk for a cast).",
    )
    @click.option(
        "--http-port",
        type=click.IntRange(0, 65535),
        default=9521,
        show_default=True,
        help="Port of the HTTP server for the kernel and the ISO (0: any free one).",
    )
    @json_option
    def serve_command(
        iface: str,
        iso: Path | None,
        cache: Path | None,
        action: str,
        per_mac: tuple[str, ...],
        cast_key_file: str | None,
        target: str | None,
        http_port: int,
        as_json: bool,
    ) -> None:
        """Serve the rescue system to machines booting from the network on IF:
        proxy-DHCP (the network's DHCP server keeps handing out addresses) and TFTP
        by dnsmasq, the kernel and the ISO over HTTP. Runs until Ctrl-C."""
        from blockvault.deploy.auth import read_key_file
        from blockvault.errors import PxeOptionError
        from blockvault.rescue.build import DEFAULT_CACHE, Preset, build_iso
        from blockvault.rescue.pxe import BootActions, PxeSettings, parse_action, serve

        pairs = {}
        for item in per_mac:
            mac, eq, text = item.partition("=")
            if not eq:
                raise PxeOptionError(f"{item!r}: write MAC=ACTION", option="--mac")
            pairs[mac] = parse_action(text)
        actions = BootActions(parse_action(action), pairs)
        code = read_key_file(cast_key_file) if cast_key_file else None
        with render.progress(as_json) as reporter, tempfile.TemporaryDirectory() as tmp:
            if iso is None:
                iso = Path(tmp) / "rescue.iso"
                build_iso(iso, Preset(), cache=cache or DEFAULT_CACHE, reporter=reporter)
            settings = PxeSettings(iface, iso, actions, code, target, http_port)
            serve(settings, reporter)

    @pxe.command("wake")
    @click.argument("macs", nargs=-1, required=True, metavar="MAC")
    @click.option("--iface", metavar="IF", help="Send on this card, to its broadcast address.")
    @click.option("--broadcast", metavar="ADDR", help="Send to this address (default: broadcast).")
    def wake_command(macs: tuple[str, ...], iface: str | None, broadcast: str | None) -> None:
        """Send a Wake-on-LAN magic packet to each MAC."""
        from blockvault.rescue.netif import interface_ipv4
        from blockvault.rescue.wol import BROADCAST, wake

        if broadcast is None:
            broadcast = interface_ipv4(iface).broadcast if iface else BROADCAST
        for mac in wake(macs, broadcast=broadcast, interface=iface):
            render.say(f"magic packet for {mac} sent to {broadcast}:9")
