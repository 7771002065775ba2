"""``pxe serve`` and ``pxe wake`` without booting anything: MACs, the magic packet as a
real UDP socket receives it, the dnsmasq configuration as dnsmasq reads it, the
scripts as iPXE and the rescue system will read them, and the servers answering a
client in another network namespace (the QEMU boot is in test_pxe_qemu.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault.errors import PxeOptionError
from blockvault.rescue.build import KERNEL_OPTIONS
from blockvault.rescue.cmdline import Job, job_from_cmdline, kernel_params
from blockvault.rescue.netif import Interface
from blockvault.rescue.pxe import (
    BootAction,
    BootActions,
    _HttpServer,
    _Served,
    boot_script,
    chain_script,
    dnsmasq_config,
    kernel_options,
    parse_action,
)
from blockvault.rescue.wol import magic_packet, parse_mac
from blockvault_demo.netns import Bridge, bridge
from tests.conftest import IS_ROOT, blockvault, need_tools, sh

CODE = "AAAAABBBBBCCCCCDDDDD"
MAC = "52:54:00:12:34:56"
IPXE_DIR = Path("/usr/lib/ipxe")

needs_netns = pytest.mark.skipif(not IS_ROOT, reason="network namespaces need root")


@pytest.mark.parametrize(
    "text", ["52:54:00:12:34:56", "52-54-00-12-34-56", "525400123456", " 52:54:00:12:34:56 "]
)
def test_a_mac_in_any_usual_spelling_reads_as_one(text: str) -> None:
    assert parse_mac(text) == MAC
    assert parse_mac(text.upper()) == MAC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52:54:00:12:34:5g",
        "5254001234567",
        "1:2:3:4:5:6",
    ],
)
def test_a_malformed_mac_is_refused(text: str) -> None:
    with pytest.raises(PxeOptionError, match="not a MAC address"):
        parse_mac(text)


def test_a_multicast_mac_is_refused() -> None:
    with pytest.raises(PxeOptionError, match="multicast"):
        parse_mac("01:00:5e:00:00:01")


def test_the_magic_packet_is_six_ff_then_the_mac_sixteen_times() -> None:
    assert magic_packet("52-54-00-12-34-56") == bytes.fromhex("ff" * 6 + "525400123456" * 16)


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("menu", BootAction("menu")),
        ("cast", BootAction("cast")),
        ("cast:lab1", BootAction("cast", "lab1")),
        (
            "restore:sftp://backup@nas/repo:latest",
            BootAction("restore", "sftp://backup@nas/repo:latest"),
        ),
    ],
)
def test_actions_are_read(text: str, action: BootAction) -> None:
    assert parse_action(text) == action
    assert str(action) == text


@pytest.mark.parametrize(
    "text",
    ["", "reboot", "restore", "menu:x", 'restore:a"b', "restore:a b", "cast:${x}", "restore:a\\b"],
)
def test_a_wrong_action_is_refused(text: str) -> None:
    with pytest.raises(PxeOptionError):
        parse_action(text)


def test_a_cast_action_needs_the_session_code() -> None:
    with pytest.raises(PxeOptionError, match="--cast-key-file"):
        kernel_options(BootAction("cast"), cast_code=None, target="/dev/sda")


@pytest.mark.parametrize(
    ("action", "job"),
    [
        (BootAction("menu"), None),
        (
            BootAction("cast", "lab1"),
            Job(
                ("cast", "receive", "--yes", "--code", CODE, "--session", "lab1", "auto"), "reboot"
            ),
        ),
        (BootAction("cast"), Job(("cast", "receive", "--yes", "--code", CODE, "auto"), "reboot")),
        (
            BootAction("restore", "sftp://backup@nas/repo:latest"),
            Job(("restore", "sftp://backup@nas/repo:latest", "/dev/sda", "--yes"), "reboot"),
        ),
    ],
)
def test_the_boot_script_gives_the_rescue_system_the_action_as_its_job(
    action: BootAction, job: Job | None
) -> None:
    """The kernel line iPXE passes on is read back as the rescue system reads
    /proc/cmdline: the same job, the ISO's URL for live-boot and the booting card."""
    base = "http://10.1.2.3:9521"
    script = boot_script(base, MAC, kernel_options(action, cast_code=CODE, target=None))
    assert script.startswith("#!ipxe\n")
    (kernel,) = [line for line in script.splitlines() if line.startswith("kernel ")]
    url, cmdline = kernel.split()[1], kernel.split(maxsplit=2)[2]
    assert url == f"{base}/vmlinuz"
    assert f"initrd {base}/initrd.img" in script.splitlines()
    params = dict(kernel_params(cmdline))
    assert params["fetch"] == f"{base}/rescue.iso"
    assert params["BOOTIF"] == "01-52-54-00-12-34-56"
    assert params["initrd"] == "initrd.img"
    assert KERNEL_OPTIONS in cmdline
    assert job_from_cmdline(cmdline) == job


def test_dnsmasq_reads_the_configuration(tmp_path: Path) -> None:
    need_tools("dnsmasq")
    interface = Interface("eth7", "192.168.40.10", 24, "192.168.40.255")
    text = dnsmasq_config(interface, tmp_path)
    assert "dhcp-range=192.168.40.0,proxy,255.255.255.0" in text.splitlines()
    assert "port=0" in text.splitlines()  # no DNS server beside the network's own
    config = tmp_path / "dnsmasq.conf"
    config.write_text(text)
    checked = subprocess.run(
        ["dnsmasq", "--test", "-C", str(config)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
    assert "syntax check OK" in checked.stderr


def test_the_chain_script_asks_for_the_machines_own_script() -> None:
    text = chain_script("http://10.1.2.3:9521")
    assert text.startswith("#!ipxe\n")
    assert "chain http://10.1.2.3:9521/boot.ipxe?mac=${netX/mac}" in text


@pytest.fixture
def lan() -> Iterator[Bridge]:
    """Two namespaces on one bridge: the server's ``cast0`` is 10.77.0.1, a client's
    ``cast0`` 10.77.0.2."""
    need_tools("ip")
    with bridge(Bridge, [1500, 1500]) as net:
        yield net


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


@needs_netns
def test_wake_sends_the_magic_packet_a_listener_receives(lan: Bridge) -> None:
    listener = subprocess.Popen(
        in_ns(
            lan.receivers[0],
            "python3",
            "-c",
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 9)); s.settimeout(60)\n"
            "print('ready', flush=True)\n"
            "for _ in range(2):\n"
            "    data, peer = s.recvfrom(4096); print(data.hex(), peer[0], flush=True)\n",
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listener.stdout is not None
    try:
        assert listener.stdout.readline().strip() == "ready"
        other = "52:54:00:ab:cd:ef"
        sent = subprocess.run(
            in_ns(
                lan.sender,
                "blockvault",
                "pxe",
                "wake",
                "52-54-00-12-34-56",
                other,
                "--iface",
                "cast0",
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        assert "sent to 10.77.0.255:9" in sent.stderr
        got = [listener.stdout.readline().split() for _ in range(2)]
    finally:
        listener.kill()
        listener.wait()
    assert got == [
        ["ff" * 6 + "525400123456" * 16, "10.77.0.1"],
        ["ff" * 6 + "525400abcdef" * 16, "10.77.0.1"],
    ]


def test_wake_refuses_a_bad_mac_in_one_line_before_sending_any() -> None:
    done = blockvault("pxe", "wake", "52:54:00:12:34:56", "nonsense")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "blockvault: error: pxe MAC: 'nonsense' is not a MAC address like 52:54:00:12:34:56 "
        "(see 'Network boot (PXE)' in the user guide)"
    ]


@pytest.fixture
def fake_iso(tmp_path: Path) -> Path:
    """An ISO with the rescue ISO's /live/vmlinuz and /live/initrd.img (random bytes:
    nothing boots it here)."""
    need_tools("xorriso")
    tree = tmp_path / "tree" / "live"
    tree.mkdir(parents=True)
    (tree / "vmlinuz").write_bytes(os.urandom(3000))
    (tree / "initrd.img").write_bytes(os.urandom(5000))
    iso = tmp_path / "rescue.iso"
    sh("xorriso", "-as", "mkisofs", "-quiet", "-o", iso, tmp_path / "tree")
    return iso


def start_serve(ns: str, *args: str | Path) -> tuple[subprocess.Popen[str], list[str]]:
    """``pxe serve`` in ``ns``, once dnsmasq's TFTP server is up; its stderr lines so far."""
    proc = subprocess.Popen(
        in_ns(ns, "blockvault", "pxe", "serve", *map(str, args)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line.strip())
        if "TFTP root is" in line:
            return proc, lines
    proc.wait()
    raise AssertionError(f"pxe serve did not start: {lines}")


@needs_netns
def test_serve_answers_tftp_and_http_per_mac_and_stops_cleanly_on_sigterm(
    lan: Bridge, fake_iso: Path, tmp_path: Path
) -> None:
    need_tools("dnsmasq", "curl")
    key = tmp_path / "code"
    key.write_text("AAAAA-BBBBB-CCCCC-DDDDD\n")
    proc, lines = start_serve(
        lan.sender,
        "--iface", "cast0", "--iso", fake_iso, "--action", "menu",
        "--mac", f"{MAC}=cast:lab1", "--cast-key-file", key,
    )  # fmt: skip
    client = lan.receivers[0]
    base = "http://10.77.0.1:9521"

    def fetch(url: str) -> bytes:
        return subprocess.run(
            in_ns(client, "curl", "-sf", url), capture_output=True, check=True
        ).stdout

    def status(url: str) -> str:
        out = in_ns(client, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url)
        return subprocess.run(out, capture_output=True, text=True, check=True).stdout

    try:
        tftp_root = next(Path(w.split("TFTP root is ", 1)[1]) for w in lines if "TFTP root is" in w)
        assert fetch("tftp://10.77.0.1/undionly.kpxe") == (IPXE_DIR / "undionly.kpxe").read_bytes()
        assert fetch("tftp://10.77.0.1/snponly.efi") == (IPXE_DIR / "snponly.efi").read_bytes()
        assert f"chain {base}/boot.ipxe?mac=" in fetch("tftp://10.77.0.1/chain.ipxe").decode()
        own = fetch(f"{base}/boot.ipxe?mac=52-54-00-12-34-56").decode()
        assert f"blockvault.code={CODE} blockvault.session=lab1 blockvault.after=reboot" in own
        other = fetch(f"{base}/boot.ipxe?mac=52:54:00:00:00:01").decode()
        assert "blockvault.cast" not in other and f"fetch={base}/rescue.iso" in other
        assert fetch(f"{base}/rescue.iso") == fake_iso.read_bytes()
        assert len(fetch(f"{base}/initrd.img")) == 5000
        assert status(f"{base}/../../etc/passwd") == "404"
        assert status(f"{base}/dnsmasq.conf") == "404"
        assert status(f"{base}/boot.ipxe?mac=zz") == "400"
        assert tftp_root.is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == "blockvault: interrupted by SIGTERM"
    assert not tftp_root.parent.exists()  # the runtime folder
    time.sleep(0.2)
    assert subprocess.run(["pgrep", "-f", str(tftp_root.parent)], check=False).returncode == 1


@needs_netns
def test_serve_refuses_an_interface_without_ipv4(lan: Bridge, fake_iso: Path) -> None:
    hub = f"{lan.prefix}b"  # the bridge's own namespace: br0 has no address
    done = subprocess.run(
        in_ns(hub, "blockvault", "pxe", "serve", "--iface", "br0", "--iso", str(fake_iso)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "blockvault: error: pxe --iface: br0 has no IPv4 address: give it one "
        "(ip address add ... dev br0) (see 'Network boot (PXE)' in the user guide)"
    ]


def test_serve_refuses_a_wrong_action_in_one_line(fake_iso: Path) -> None:
    done = blockvault("pxe", "serve", "--iface", "lo", "--iso", fake_iso, "--action", "format")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "use menu, restore:SNAPSHOT-SPEC or cast[:SESSION]" in done.stderr


@pytest.mark.skipif(not IS_ROOT, reason="runs as root seen from a user namespace as uid 1000")
def test_serve_refuses_without_root() -> None:
    need_tools("unshare")
    done = subprocess.run(
        ["unshare", "--user", "--map-user=1000", "--map-group=1000",
         "blockvault", "pxe", "serve", "--iface", "lo", "--iso", "/dev/null"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "blockvault: error: pxe serve needs root: DHCP and TFTP listen on ports 67 and 69"
    ]


def test_a_machines_own_action_can_be_set_and_dropped_while_serving() -> None:
    actions = BootActions(BootAction("menu"), {"52-54-00-12-34-56": BootAction("cast")})
    assert actions.for_mac(MAC) == BootAction("cast")
    assert actions.for_mac("52:54:00:00:00:01") == BootAction("menu")
    assert actions.for_mac(None) == BootAction("menu")
    actions.set("52:54:00:00:00:01", BootAction("restore", "latest"))
    assert actions.for_mac("52:54:00:00:00:01") == BootAction("restore", "latest")
    actions.set(MAC.upper(), None)
    assert actions.for_mac(MAC) == BootAction("menu")
    with pytest.raises(PxeOptionError):
        actions.set("52:54:00", BootAction("menu"))


def test_a_target_goes_to_a_cast_as_blockvault_target_and_a_bad_one_is_refused() -> None:
    options = kernel_options(BootAction("cast"), cast_code=CODE, target="/dev/nvme0n1")
    assert job_from_cmdline(options) == Job(
        ("cast", "receive", "--yes", "--code", CODE, "/dev/nvme0n1"), "reboot"
    )
    for bad in ("sda", "/dev/sda --yes", '/dev/"x', "/dev/${x}"):
        with pytest.raises(PxeOptionError, match="not a device name"):
            kernel_options(BootAction("restore", "latest"), cast_code=None, target=bad)


def test_the_http_server_closes_clients_beyond_its_limit_and_serves_again_when_one_leaves(
    tmp_path: Path,
) -> None:
    iso = tmp_path / "rescue.iso"
    iso.write_bytes(b"iso bytes")
    events: list[str] = []
    server = _HttpServer(("127.0.0.1", 0), limit=2)
    server.served = _Served(
        Interface("lo", "127.0.0.1", 8, "127.255.255.255"),
        "http://127.0.0.1",
        {"rescue.iso": iso},
        BootActions(BootAction("menu")),
        None,
        None,
        lambda event: events.append(str(getattr(event, "message", event))),
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = server.server_address[:2]

    def get() -> bytes:
        with socket.create_connection(address, timeout=10) as s:
            s.sendall(b"GET /rescue.iso HTTP/1.0\r\n\r\n")
            return b"".join(iter(lambda: s.recv(65536), b""))

    try:
        idle = [socket.create_connection(address, timeout=10) for _ in range(2)]
        assert get() == b""  # closed at once: both slots are held by silent clients
        assert any("too many clients" in e for e in events)
        idle.pop().close()  # its handler reads end-of-file and frees its slot
        deadline = time.monotonic() + 10
        while (answer := get()) == b"" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"\r\n\r\niso bytes")
        for s in idle:
            s.close()
    finally:
        server.shutdown()
        server.server_close()
