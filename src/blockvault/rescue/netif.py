"""A network interface's IPv4 address, as ``ip -json address`` reports it.

``pxe serve`` needs the address its own HTTP and TFTP servers answer on and the
subnet its proxy-DHCP serves; ``pxe wake`` the interface's broadcast address.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Final

from blockvault.errors import PxeOptionError, UsageError

__all__ = ["Interface", "interface_ipv4"]

OUTPUT_MAX: Final = 1 << 20  # ip's JSON for one interface is a few hundred bytes


@dataclass(frozen=True)
class Interface:
    name: str
    address: str  # the first IPv4 address: 192.168.1.10
    prefix: int  # 24
    broadcast: str  # 192.168.1.255

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Interface(f"{self.address}/{self.prefix}").network


def interface_ipv4(name: str) -> Interface:
    """``name``'s first IPv4 address, or :class:`PxeOptionError` when it has none (or
    does not exist)."""
    if not name or "/" in name or len(name) > 15 or name in (".", ".."):
        raise PxeOptionError(f"{name!r} is not an interface name", option="--iface")
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    if ip is None:
        raise UsageError("ip is not installed (apt-get install iproute2)")
    proc = subprocess.run(
        [ip, "-json", "-4", "address", "show", "dev", name],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise PxeOptionError(f"no interface {name!r} (see 'ip link')", option="--iface")
    try:
        links = json.loads(proc.stdout[:OUTPUT_MAX])
        addresses = [a for link in links for a in link.get("addr_info", [])]
        first = next(a for a in addresses if a.get("family") == "inet")
        inet = ipaddress.IPv4Interface(f"{first['local']}/{int(first['prefixlen'])}")
    except (ValueError, KeyError, TypeError, StopIteration):
        raise PxeOptionError(
            f"{name} has no IPv4 address: give it one (ip address add ... dev {name})",
            option="--iface",
        ) from None
    broadcast = str(first.get("broadcast") or inet.network.broadcast_address)
    return Interface(name, str(inet.ip), inet.network.prefixlen, broadcast)
