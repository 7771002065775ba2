"""Wake-on-LAN: the magic packet that powers on a machine whose network card listens.

Glossary:

MAC
    A network card's 48-bit address, written ``52:54:00:12:34:56`` (``-`` or no
    separator also read); :func:`parse_mac` gives the one spelling used everywhere
    else (lower case, colons), the key of per-machine PXE actions too.
magic packet
    Six ``0xff`` bytes, then the MAC sixteen times (102 bytes), sent as a UDP
    broadcast (port 9, "discard"): the card matches the pattern anywhere in a
    frame, so UDP is only the envelope.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Final

from blockvault.errors import PxeOptionError

__all__ = ["BROADCAST", "WOL_PORT", "magic_packet", "parse_mac", "wake"]

WOL_PORT: Final = 9
BROADCAST: Final = "255.255.255.255"
MAC_BYTES: Final = 6


def parse_mac(text: str) -> str:
    """``text`` as ``aa:bb:cc:dd:ee:ff``, or :class:`PxeOptionError`: six hex pairs
    separated by ``:`` or ``-`` (or none), not a multicast (group) address."""
    raw = text.strip().lower()
    pairs = raw.replace("-", ":").split(":") if (":" in raw or "-" in raw) else None
    if pairs is None:
        pairs = [raw[i : i + 2] for i in range(0, len(raw), 2)] if len(raw) == 12 else []
    hexdigits = set("0123456789abcdef")
    if len(pairs) != MAC_BYTES or any(len(p) != 2 or set(p) - hexdigits for p in pairs):
        raise PxeOptionError(f"{text!r} is not a MAC address like 52:54:00:12:34:56", option="MAC")
    if int(pairs[0], 16) & 1:
        raise PxeOptionError(f"{text!r} is a multicast address, not a card's", option="MAC")
    return ":".join(pairs)


def magic_packet(mac: str) -> bytes:
    """The 102-byte magic packet that wakes ``mac``."""
    address = bytes.fromhex(parse_mac(mac).replace(":", ""))
    return b"\xff" * MAC_BYTES + address * 16


def wake(
    macs: Iterable[str],
    *,
    broadcast: str = BROADCAST,
    interface: str | None = None,
    port: int = WOL_PORT,
) -> list[str]:
    """Send one magic packet to each of ``macs`` (all are checked before any is sent);
    ``interface`` pins the packets to that card (a broadcast to 255.255.255.255
    otherwise leaves by the default route's). Returns the MACs as sent."""
    wanted = [parse_mac(m) for m in macs]
    try:
        socket.inet_aton(broadcast)
    except OSError:
        raise PxeOptionError(
            f"{broadcast!r} is not an IPv4 address", option="--broadcast"
        ) from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if interface:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            except OSError as exc:
                raise PxeOptionError(f"{interface}: {exc.strerror}", option="--iface") from None
        for mac in wanted:
            try:
                sock.sendto(magic_packet(mac), (broadcast, port))
            except OSError as exc:
                raise PxeOptionError(
                    f"cannot send to {broadcast}: {exc.strerror}", option="--broadcast"
                ) from None
    return wanted
