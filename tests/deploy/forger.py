"""An attacker on the cast's LAN, without the session code: run in its own network
namespace while a session runs (``python -m tests.deploy.forger ADDRESS``).

It listens to the announce and data groups and, for what it hears, sends
forged announcements (its own salt and address, a made-up tag), data datagrams with
real headers and made-up fragments and tags, real datagrams with a flipped byte,
datagrams of a made-up session, and real datagrams of an earlier pass again once a
later pass is under way (replays). It also opens control connections to the
sender with a forged hello and with an endless line. On SIGTERM it prints what it
sent as JSON.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import threading
import time

from blockvault.deploy import auth, wire
from blockvault.deploy import messages as msg

LIMIT = 4000  # forged datagrams a second at most


def main() -> None:
    address = sys.argv[1]
    sent = {"announce": 0, "forged": 0, "tampered": 0, "foreign": 0, "replayed": 0, "control": 0}
    stopped = False

    def stop(_number: int, _frame: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, stop)
    announces = wire.multicast_listener(wire.ANNOUNCE_GROUP, wire.ANNOUNCE_PORT, address)
    data: socket.socket | None = None  # the session's data group, once announced
    target = ("", 0)
    out = wire.multicast_sender(address)
    out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    old: list[bytes] = []  # real datagrams of the first pass heard, to replay later
    first_pass = -1
    controlled: set[tuple[str, int]] = set()
    budget, second = LIMIT, int(time.monotonic())
    while not stopped:
        try:
            ready, _, _ = select.select([announces, *([data] if data else [])], [], [], 0.1)
        except InterruptedError:
            continue
        if int(time.monotonic()) != second:
            budget, second = LIMIT, int(time.monotonic())
        if announces in ready:
            datagram = announces.recv(4096)
            _mac, _, body = datagram.partition(b" ")
            real = msg.decode(body, "sender")
            assert isinstance(real, msg.Announce)
            if data is None:
                target = (wire.data_group(real.session_id), wire.DATA_PORT)
                data = wire.multicast_listener(*target, address)
            fake = msg.Announce(
                real.session, real.session_id, os.urandom(16), address, 9, real.payload, 1 << 30
            )
            forged = os.urandom(16).hex().encode() + b" " + fake.encode()
            out.sendto(forged, (wire.ANNOUNCE_GROUP, wire.ANNOUNCE_PORT))
            sent["announce"] += 1
            if (real.address, real.port) not in controlled:
                controlled.add((real.address, real.port))
                args = (real.address, real.port, real.session, sent)
                threading.Thread(target=attack_control, args=args, daemon=True).start()
        # read all (to notice a new pass at once), forge within budget
        if data is not None and data in ready:
            datagram = bytearray(data.recv(65536))
            if len(datagram) < wire.OVERHEAD:
                continue
            head = wire.HEADER.unpack_from(datagram)
            number = head[2]
            if first_pass < 0:
                first_pass = number
            if number == first_pass and len(old) < 2000:
                old.append(bytes(datagram))
            if number > first_pass and old:  # a later pass: the earlier one's, all at once
                for replay in old:
                    out.sendto(replay, target)
                sent["replayed"] += len(old)
                old.clear()
            if budget <= 0:
                continue
            made_up = datagram[: wire.HEADER.size] + os.urandom(len(datagram) - wire.HEADER.size)
            out.sendto(made_up, target)
            flipped = bytearray(datagram)
            flipped[wire.HEADER.size] ^= 1
            out.sendto(flipped, target)
            other = (
                wire.HEADER.pack(wire.MAGIC, head[1] ^ 1, *head[2:]) + datagram[wire.HEADER.size :]
            )
            out.sendto(other, target)
            sent["forged"] += 1
            sent["tampered"] += 1
            sent["foreign"] += 1
            budget -= 3
    print(json.dumps(sent), flush=True)


def attack_control(host: str, port: int, session: str, sent: dict[str, int]) -> None:
    """A forged hello, then a line that never ends: the sender must admit neither."""
    hello = msg.Hello(session, "forger", 1400, os.urandom(msg.NONCE)).encode()
    for line in (os.urandom(auth.TAG).hex().encode() + b" " + hello + b"\n", b"x" * (2 << 20)):
        try:
            with socket.create_connection((host, port), timeout=5) as conn:
                conn.recv(256)  # the challenge
                conn.sendall(line)
                conn.settimeout(5)
                conn.recv(256)  # the sender hangs up
        except OSError:
            pass  # reset while sending the endless line: refused too
        sent["control"] += 1


if __name__ == "__main__":
    main()
