"""The NBD server, read by outside clients (qemu-img, nbdinfo, nbdcopy) and by hostile ones.

The export is a sparse file (tests/nbd/conftest.py): ``qemu-img compare`` checks the
bytes served against the file itself, ``nbdinfo --map`` the holes against the kernel's.
Hostile peers speak raw bytes on a socket; each must lose its own connection only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from blockvault.errors import NbdError
from blockvault.nbd import wire
from blockvault.nbd.client import Client
from blockvault.nbd.server import serving
from tests.conftest import blockvault, need_tools, sh
from tests.nbd.conftest import FileExport, MiB


def kernel_map(path: Path) -> list[tuple[int, int, bool]]:
    """(offset, length, is_hole) runs of ``path`` as the kernel keeps them."""
    exported = FileExport(path)
    try:
        return list(exported.extents(0, exported.size))
    finally:
        exported.close()


def merged(runs: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
    out: list[tuple[int, int, bool]] = []
    for offset, length, hole in runs:
        if out and out[-1][2] == hole and out[-1][0] + out[-1][1] == offset:
            out[-1] = (out[-1][0], out[-1][1] + length, hole)
        else:
            out.append((offset, length, hole))
    return out


def test_qemu_img_reads_the_same_bytes(export: FileExport, sparse_image: Path) -> None:
    need_tools("qemu-img")
    with serving(export) as uri:
        assert uri.startswith("nbd+unix:///?socket=")
        info = json.loads(sh("qemu-img", "info", "--output=json", "-f", "raw", uri))
        assert info["virtual-size"] == sparse_image.stat().st_size
        assert "identical" in sh("qemu-img", "compare", "-f", "raw", "-F", "raw", sparse_image, uri)
    assert not os.path.exists(uri.split("socket=")[1])  # the private socket is removed


def test_nbdinfo_sees_the_holes_of_the_file(export: FileExport, sparse_image: Path) -> None:
    need_tools("nbdinfo")
    with serving(export) as uri:
        about = json.loads(sh("nbdinfo", "--json", uri))
        mapped = json.loads(sh("nbdinfo", "--json", "--map", uri))
        listed = json.loads(sh("nbdinfo", "--json", "--list", uri))
    assert [e["export-name"] for e in listed["exports"]] == [""]
    (shown,) = about["exports"]
    assert shown["export-size"] == sparse_image.stat().st_size
    assert shown["is_read_only"] is True
    assert shown["can_multi_conn"] is True
    assert "base:allocation" in shown["contexts"]
    runs = merged([(m["offset"], m["length"], m["type"] == 3) for m in mapped])
    assert runs == merged(kernel_map(sparse_image))
    assert any(hole for *_, hole in runs) and any(not hole for *_, hole in runs)


def test_holes_are_never_read_by_qemu_img_convert(export: FileExport, tmp_path: Path) -> None:
    need_tools("qemu-img")
    with serving(export) as uri:
        sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", uri, tmp_path / "copy.qcow2")
    holes = [(o, n) for o, n, hole in kernel_map(export.path) if hole]
    assert export.reads
    for offset, length in export.reads:
        for start, size in holes:
            assert offset + length <= start or start + size <= offset, "a hole was read"
    assert "identical" in sh(
        "qemu-img", "compare", "-F", "qcow2", export.path, tmp_path / "copy.qcow2"
    )


def test_tcp_address_and_two_clients_at_once(export: FileExport, sparse_image: Path) -> None:
    expected = sparse_image.read_bytes()
    with serving(export, address=("127.0.0.1", 0)) as uri:
        assert uri.startswith("nbd://127.0.0.1:")
        results: dict[int, bytes] = {}

        def read_all(k: int) -> None:
            with Client.connect(uri) as client:
                results[k] = client.read_at(0, client.size)

        threads = [threading.Thread(target=read_all, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {k: expected for k in range(3)}


def test_our_client_reads_what_nbdcopy_reads(export: FileExport, tmp_path: Path) -> None:
    need_tools("nbdcopy")
    with serving(export) as uri:
        sh("nbdcopy", uri, tmp_path / "copy.img")
        with Client.connect(uri) as client:
            assert client.structured and client.allocation
            ours = client.read_at(0, client.size)
            runs = list(client.extents(0, client.size))
    assert ours == (tmp_path / "copy.img").read_bytes()
    assert merged(runs) == merged(kernel_map(export.path))


# ---- hostile peers -----------------------------------------------------------------------


def raw_connection(uri: str) -> socket.socket:
    """A socket past the greeting, flags sent (fixed newstyle, no zeroes)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(uri.split("socket=")[1])
    magic, opt, _ = wire.GREETING.unpack(wire.recv_exact(sock, wire.GREETING.size))
    assert (magic, opt) == (wire.NBDMAGIC, wire.IHAVEOPT)
    sock.sendall(wire.CLIENT_FLAGS.pack(wire.FLAG_C_FIXED_NEWSTYLE | wire.FLAG_C_NO_ZEROES))
    return sock


def closed(sock: socket.socket) -> bool:
    """True when the server closed the connection (reads end)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def option_reply(sock: socket.socket) -> tuple[int, int, bytes]:
    magic, option, kind, length = wire.OPTION_REPLY.unpack(
        wire.recv_exact(sock, wire.OPTION_REPLY.size)
    )
    assert magic == wire.OPTION_REPLY_MAGIC
    return option, kind, wire.recv_exact(sock, length)


def go(sock: socket.socket, structured: bool) -> None:
    if structured:
        sock.sendall(wire.OPTION.pack(wire.IHAVEOPT, wire.OPT_STRUCTURED_REPLY, 0))
        assert option_reply(sock)[1] == wire.REP_ACK
    data = wire.U32.pack(0) + (0).to_bytes(2, "big")
    sock.sendall(wire.OPTION.pack(wire.IHAVEOPT, wire.OPT_GO, len(data)) + data)
    while (reply := option_reply(sock))[1] != wire.REP_ACK:
        assert reply[1] == wire.REP_INFO


def request(sock: socket.socket, command: int, offset: int, length: int, cookie: int = 7) -> None:
    sock.sendall(wire.REQUEST.pack(wire.REQUEST_MAGIC, 0, command, cookie, offset, length))


def error_chunk(sock: socket.socket) -> int:
    """The errno of a structured error reply (the one chunk, flagged done)."""
    magic, flags, kind, _, length = wire.CHUNK.unpack(wire.recv_exact(sock, wire.CHUNK.size))
    payload = wire.recv_exact(sock, length)
    assert magic == wire.STRUCTURED_REPLY_MAGIC and flags & wire.REPLY_FLAG_DONE
    assert kind == wire.REPLY_TYPE_ERROR
    return int.from_bytes(payload[:4], "big")


def still_serves(uri: str, expected: bytes) -> None:
    with Client.connect(uri) as client:
        assert client.read_at(0, 4096) == expected[:4096]


HOSTILE_HANDSHAKES = {
    "oversized option": wire.OPTION.pack(wire.IHAVEOPT, wire.OPT_GO, 0x7FFF_FFFF),
    "wrong option magic": b"GARBAGE!" + bytes(8),
    "export name unknown": wire.OPTION.pack(wire.IHAVEOPT, wire.OPT_EXPORT_NAME, 4) + b"nope",
}


@pytest.mark.parametrize("sent", HOSTILE_HANDSHAKES.values(), ids=HOSTILE_HANDSHAKES.keys())
def test_hostile_handshake_closes_that_connection_only(
    export: FileExport, sparse_image: Path, sent: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    expected = sparse_image.read_bytes()[:4096]
    with caplog.at_level(logging.WARNING, "blockvault.nbd"), serving(export) as uri:
        with Client.connect(uri) as bystander:  # connected before, reading after
            sock = raw_connection(uri)
            sock.sendall(sent)
            assert closed(sock)
            sock.close()
            assert bystander.read_at(0, 4096) == expected
        still_serves(uri, expected)
    assert any("connection closed" in r.getMessage() for r in caplog.records)


def test_client_without_fixed_newstyle_is_closed(export: FileExport) -> None:
    with serving(export) as uri:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(uri.split("socket=")[1])
        wire.recv_exact(sock, wire.GREETING.size)
        sock.sendall(wire.CLIENT_FLAGS.pack(0))
        assert closed(sock)
        sock.close()


def test_malformed_option_data_is_answered_and_the_handshake_goes_on(
    export: FileExport, sparse_image: Path
) -> None:
    with serving(export) as uri:
        sock = raw_connection(uri)
        # GO claiming a 1000-byte name in 6 bytes of data
        data = wire.U32.pack(1000) + b"ab"
        sock.sendall(wire.OPTION.pack(wire.IHAVEOPT, wire.OPT_GO, len(data)) + data)
        assert option_reply(sock)[1] == wire.REP_ERR_INVALID
        sock.sendall(wire.OPTION.pack(wire.IHAVEOPT, 99, 0))  # an option nobody knows
        assert option_reply(sock)[1] == wire.REP_ERR_UNSUP
        go(sock, structured=True)
        request(sock, wire.CMD_READ, 0, 512)
        _magic, flags, kind, cookie, length = wire.CHUNK.unpack(wire.recv_exact(sock, 20))
        assert (kind, cookie, flags & wire.REPLY_FLAG_DONE) == (wire.REPLY_TYPE_OFFSET_DATA, 7, 1)
        assert wire.recv_exact(sock, length)[8:] == sparse_image.read_bytes()[:512]
        sock.close()


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "simple"])
def test_bad_requests_get_errors_and_the_connection_goes_on(
    export: FileExport, sparse_image: Path, structured: bool
) -> None:
    size = sparse_image.stat().st_size
    bad = [
        (wire.CMD_READ, size - 512, 1024, wire.EINVAL),  # past the end
        (wire.CMD_READ, 2**64 - 512, 1024, wire.EINVAL),  # offset + length overflows 64 bits
        (wire.CMD_READ, 0, 64 * MiB, wire.EINVAL),  # over the 32 MiB request limit
        (wire.CMD_READ, 0, 0, wire.EINVAL),
        (wire.CMD_TRIM, 0, 4096, wire.EPERM),
        (wire.CMD_WRITE_ZEROES, 0, 4096, wire.EPERM),
        (wire.CMD_BLOCK_STATUS, 0, 4096, wire.EINVAL),  # no meta context was set
        (42, 0, 4096, wire.EINVAL),
    ]
    with serving(export) as uri:
        sock = raw_connection(uri)
        go(sock, structured)
        for command, offset, length, errno in bad:
            request(sock, command, offset, length)
            if structured:
                assert error_chunk(sock) == errno, command
            else:
                magic, error, cookie = wire.SIMPLE_REPLY.unpack(wire.recv_exact(sock, 16))
                assert (magic, error, cookie) == (wire.SIMPLE_REPLY_MAGIC, errno, 7)
        # a write is refused after its payload is read, so the stream stays in step
        sock.sendall(wire.REQUEST.pack(wire.REQUEST_MAGIC, 0, wire.CMD_WRITE, 8, 0, 4096))
        sock.sendall(bytes(4096))
        if structured:
            assert error_chunk(sock) == wire.EPERM
        else:
            assert wire.SIMPLE_REPLY.unpack(wire.recv_exact(sock, 16))[1] == wire.EPERM
        request(sock, wire.CMD_READ, size - 512, 512, cookie=9)
        if structured:
            header = wire.CHUNK.unpack(wire.recv_exact(sock, 20))
            assert header[3] == 9
            assert wire.recv_exact(sock, header[4])[8:] == sparse_image.read_bytes()[-512:]
        else:
            assert wire.SIMPLE_REPLY.unpack(wire.recv_exact(sock, 16))[1:] == (0, 9)
            assert wire.recv_exact(sock, 512) == sparse_image.read_bytes()[-512:]
        request(sock, wire.CMD_DISC, 0, 0)
        assert closed(sock)
        sock.close()


HOSTILE_REQUESTS = {
    "bad request magic": b"\xde\xad\xbe\xef" + bytes(24),
    "write larger than 32 MiB": wire.REQUEST.pack(
        wire.REQUEST_MAGIC, 0, wire.CMD_WRITE, 1, 0, 0xFFFF_FFFF
    ),
}


@pytest.mark.parametrize("sent", HOSTILE_REQUESTS.values(), ids=HOSTILE_REQUESTS.keys())
def test_hostile_request_closes_that_connection_only(
    export: FileExport, sparse_image: Path, sent: bytes
) -> None:
    with serving(export) as uri:
        sock = raw_connection(uri)
        go(sock, structured=True)
        sock.sendall(sent)
        assert closed(sock)
        sock.close()
        still_serves(uri, sparse_image.read_bytes())


def test_client_refuses_a_server_that_is_not_nbd(tmp_path: Path) -> None:
    path = tmp_path / "fake.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(64))
        conn.close()

    thread = threading.Thread(target=answer)
    thread.start()
    with pytest.raises(NbdError, match="not a newstyle NBD server"):
        Client.connect(f"nbd+unix:///?socket={path}")
    thread.join()
    listener.close()


@pytest.mark.parametrize("where", ["socket", "any address"])
def test_serve_nbd_command_until_ctrl_c(tmp_path: Path, where: str) -> None:
    """The CLI prints the URI first; SIGINT ends it with exit 130 and the socket gone.
    Listening beyond loopback is allowed, with a warning."""
    need_tools("qemu-img")
    repo = tmp_path / "repo"
    assert blockvault("-r", repo, "init").returncode == 0
    disk = tmp_path / "disk.img"
    sh("truncate", "-s", "8M", disk)
    sh("mkfs.ext4", "-q", "-F", disk)
    done = blockvault("-r", repo, "backup", disk)
    assert done.returncode == 0, done.stderr
    sock = tmp_path / "serve.sock"
    option = ["--socket", str(sock)] if where == "socket" else ["--listen", "0.0.0.0:0"]
    proc = subprocess.Popen(
        ["blockvault", "-r", str(repo), "serve-nbd", "latest", *option],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    uri = proc.stdout.readline().strip()  # printed once the socket listens
    if where == "socket":
        assert uri == f"nbd+unix:///?socket={sock}"
    else:
        assert uri.startswith("nbd://0.0.0.0:") and not uri.endswith(":0")
    assert "identical" in sh("qemu-img", "compare", "-F", "raw", disk, uri)
    proc.send_signal(2)
    assert proc.wait(timeout=30) == 130
    errors = proc.stderr.read()
    assert "interrupted by SIGINT: the server stopped" in errors
    assert ("beyond loopback" in errors) == (where == "any address")
    assert not sock.exists()
