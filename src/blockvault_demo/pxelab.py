"""A lab of machines that boot from the network, in network namespaces: for the PXE
test and bench.

The lab is one bridge (see :mod:`blockvault_demo.netns`) joining the *server*
namespace (``cast0`` 10.77.0.1: ``blockvault pxe serve`` and ``cast send``), the
*router* namespace (10.77.0.2: a plain dnsmasq handing out addresses 10.77.0.100-150,
as the office router would; ``pxe serve`` only adds proxy-DHCP) and one tap device
per machine. Machines are QEMU VMs under TCG, disk first and network second, as lab
machines are set up: a blank disk does not boot, so the firmware goes on to PXE, and
once restored the disk boots. Their serial consoles go to files, read for markers.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from blockvault.interop.boot import OVMF_PAIRS, ConsoleWatch, Firmware
from blockvault_demo.netns import Bridge, bridge

__all__ = ["BOOTED", "OK", "START", "Lab", "Machine", "pxe_lab"]

START = "BLOCKVAULT-RESCUE-START"  # the rescue job began: the restore starts
OK = "BLOCKVAULT-RESCUE-OK"
BOOTED = "BLOCKVAULT-BOOT-OK"  # + the sample's token: the restored system is up
MEMORY = "1536"  # MiB: the rescue system fetches its ISO (about 230 MB) into memory
READY_SECONDS = 60.0


@dataclass
class Machine:
    """One lab VM; ``token`` is what the system it should end up running prints."""

    name: str
    firmware: Firmware
    mac: str
    disk: Path
    token: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    seen: dict[str, float] = field(default_factory=dict)  # marker -> seconds after power-on

    @property
    def console(self) -> Path:
        return self.disk.with_suffix(".console")

    @property
    def markers(self) -> tuple[str, str, str]:
        return (START, OK, f"{BOOTED} {self.token}")

    def poll(self) -> None:
        """Note when each marker first shows on the serial console."""
        text = self.console.read_bytes() if self.console.exists() else b""
        for marker in self.markers:
            if marker not in self.seen and ConsoleWatch((marker,)).feed(text):
                self.seen[marker] = time.monotonic() - self.started

    @property
    def done(self) -> bool:
        return self.markers[2] in self.seen

    @property
    def stopped(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def summary(self) -> str:
        times = ", ".join(f"{m.split()[0]} at {s:.0f} s" for m, s in self.seen.items())
        return f"{self.name} ({self.firmware}): {times or 'no marker'}"


@dataclass
class Lab:
    net: Bridge
    workdir: Path
    serve_log: Path
    dhcp_log: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"{self.net.prefix}b"

    @property
    def server(self) -> str:
        return self.net.sender

    def power_on(self, machine: Machine) -> None:
        """Plug ``machine`` into the bridge and start it."""
        tap = f"{self.net.prefix}t{len(self.procs)}"
        for args in (
            ("tuntap", "add", "dev", tap, "mode", "tap"),
            ("link", "set", tap, "master", "br0", "up"),
        ):
            subprocess.run(["ip", "-n", self.hub, *args], check=True, capture_output=True)
        machine.console.unlink(missing_ok=True)
        machine.proc = _run_in(
            self.hub, *_qemu(machine, tap), log=machine.disk.with_suffix(".qemu")
        )
        machine.started = time.monotonic()
        self.procs.append(machine.proc)

    def cast_send(
        self, repo: Path, snapshot: str, code: Path, *, session: str = "default", receivers: int = 1
    ) -> subprocess.CompletedProcess[str]:
        """``cast send`` from the server namespace, once ``receivers`` joined."""
        return subprocess.run(
            ["ip", "netns", "exec", self.server, "blockvault", "-r", str(repo), "cast", "send",
             snapshot, "--interface", "cast0", "--session", session, "--key-file", str(code),
             "--min-receivers", str(receivers), "--max-wait", "1800"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    def watch(self, machines: list[Machine], timeout: float) -> None:
        """Until every machine booted its restored system (or stopped, or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for machine in machines:
                machine.poll()
            if all(m.done or m.stopped for m in machines):
                for machine in machines:
                    machine.poll()  # what a stopped one wrote last
                return
            time.sleep(1)


@contextlib.contextmanager
def pxe_lab(workdir: Path, iso: Path, serve_options: list[str]) -> Iterator[Lab]:
    """The lab with its router and ``blockvault pxe serve --iso iso *serve_options``
    running; everything started is stopped and the namespaces deleted afterwards."""
    with bridge(Bridge, [1500, 1500]) as net:
        lab = Lab(net, workdir, workdir / "pxe-serve.log", workdir / "router-dhcp.log")
        try:
            dhcp = _run_in(
                net.receivers[0], "dnsmasq", "--keep-in-foreground", "-C", "/dev/null",
                "--port=0", "--interface=cast0", "--bind-interfaces", "--log-facility=-",
                "--pid-file", "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
                f"--dhcp-leasefile={workdir / 'leases'}",
                log=lab.dhcp_log,
            )  # fmt: skip
            lab.procs.append(dhcp)
            _wait_for_line(lab.dhcp_log, "DHCP, IP range", dhcp)
            serve = _run_in(
                net.sender, "blockvault", "pxe", "serve", "--iface", "cast0", "--iso", str(iso),
                *serve_options, log=lab.serve_log,
            )  # fmt: skip
            lab.procs.append(serve)
            _wait_for_line(lab.serve_log, "TFTP root is", serve)
            yield lab
        finally:
            for proc in reversed(lab.procs):
                _stop(proc)


def _run_in(ns: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    """Until a server says it is up (``text`` in its log), else RuntimeError with the log."""
    deadline = time.monotonic() + READY_SECONDS
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r}: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # pxe serve: SIGTERM stops dnsmasq and removes its folder
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _qemu(machine: Machine, tap: str) -> list[str]:
    args = [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-m", MEMORY,
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{machine.console}",
        "-drive", f"if=none,id=disk,format=raw,file={machine.disk}",
        "-device", "virtio-blk-pci,drive=disk,bootindex=1",
        "-netdev", f"tap,id=lan,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=lan,mac={machine.mac},bootindex=2",
    ]  # fmt: skip
    if machine.firmware == "uefi":
        code, variables = next((c, v) for c, v in OVMF_PAIRS if c.exists() and v.exists())
        own = machine.disk.with_suffix(".vars")
        shutil.copyfile(variables, own)
        args += [
            "-drive", f"if=pflash,format=raw,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,file={own}",
        ]  # fmt: skip
    return args
