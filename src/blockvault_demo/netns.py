"""A multicast network made of network namespaces, for the cast tests and bench.

A bridge in its own namespace joins one sender namespace and some receiver
namespaces over veth pairs; each end in a host namespace is called ``cast0``,
with an address on ``subnet``, a broadcast address and a multicast route (udpcast
needs both). Loss is made with an nftables drop rule inside a receiver's
namespace: the CI kernel has no netem.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Bridge", "bridge"]


def _run(*args: str, input: str | None = None) -> None:
    proc = subprocess.run(args, input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")


@dataclass
class Bridge:
    prefix: str  # unique to this network: a session name for the tests
    sender: str  # namespace names
    receivers: list[str]

    def lose(self, ns: str, percent: int) -> None:
        """Drop ``percent`` % of the UDP datagrams arriving in ``ns``."""
        rules = (
            "add table inet cast\n"
            "add chain inet cast input { type filter hook input priority 0 ; }\n"
            f"add rule inet cast input meta l4proto udp numgen random mod 100 < {percent} drop\n"
        )
        _run("ip", "netns", "exec", ns, "nft", "-f", "-", input=rules)


B = TypeVar("B", bound=Bridge)


@contextlib.contextmanager
def bridge(kind: type[B], mtus: list[int], subnet: str = "10.77.0") -> Iterator[B]:
    """A ``kind`` (Bridge or a subclass) of one namespace per entry of ``mtus`` (the
    sender's first), each on a veth pair whose namespace end has that MTU; every
    namespace is deleted afterwards."""
    prefix = f"bv{os.getpid() % 100000}{int(time.monotonic() * 1000) % 1000}"
    hub = f"{prefix}b"
    names = [f"{prefix}s"] + [f"{prefix}r{i}" for i in range(len(mtus) - 1)]
    created: list[str] = []
    try:
        for ns in [hub, *names]:
            _run("ip", "netns", "add", ns)
            created.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        for i, (ns, mtu) in enumerate(zip(names, mtus, strict=True)):
            # veth names are global while being created: unique per network
            a, b = f"{prefix}a{i}", f"{prefix}c{i}"
            _run("ip", "link", "add", a, "netns", hub, "type", "veth", "peer", b, "netns", ns)
            _run("ip", "-n", hub, "link", "set", a, "mtu", str(max(mtus)), "master", "br0", "up")
            _run("ip", "-n", ns, "link", "set", b, "name", "cast0", "mtu", str(mtu))
            _run("ip", "-n", ns, "addr", "add", f"{subnet}.{i + 1}/24", "brd", "+", "dev", "cast0")
            _run("ip", "-n", ns, "link", "set", "cast0", "up")
            _run("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "cast0")
        _run("ip", "-n", hub, "link", "set", "br0", "mtu", str(max(mtus)), "up")
        yield kind(prefix, names[0], names[1:])
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
