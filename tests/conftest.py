"""Shared fixtures: loop devices (root only), the CLI runner, tool checks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root for loop devices and mounts")


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


def sh(*args: str | os.PathLike[str], input: str | None = None) -> str:
    """Run a command, fail the test with its stderr if it fails."""
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, input=input, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    return proc.stdout


def blockvault(
    *args: str | os.PathLike[str], env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``blockvault`` CLI as a user would (``env`` added to ours); never raises,
    so tests can assert on the exit code and the one-line error."""
    return subprocess.run(
        ["blockvault", *map(str, args)],
        capture_output=True,
        text=True,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        check=False,
    )


# Runs its arguments as a child and writes that child's peak RSS (KiB) to $PEAK_FILE.
# The go-between matters: Linux carries a process's peak RSS across fork and exec, so a
# child forked straight from pytest (which grows past a gigabyte over the suite) would
# report pytest's peak, not its own.
_PEAK_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
with open(os.environ["PEAK_FILE"], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def blockvault_peak(
    *args: str | os.PathLike[str],
) -> tuple[subprocess.CompletedProcess[str], int]:
    """``blockvault(*args)`` and that one process's peak RSS in KiB."""
    with tempfile.NamedTemporaryFile("r") as peak:
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_LAUNCHER, "blockvault", *map(str, args)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PEAK_FILE": peak.name},
            check=False,
        )
        return done, int(peak.read())


@pytest.fixture
def loop() -> Iterator[Callable[..., str]]:
    """``loop(path, sector_size=512, offset=0, size=None) -> /dev/loopN``, detached after."""
    if not IS_ROOT:
        pytest.skip("needs root for loop devices")
    attached: list[str] = []

    def attach(path: Path, sector_size: int = 512, offset: int = 0, size: int | None = None) -> str:
        args = ["losetup", "--find", "--show", "--sector-size", str(sector_size)]
        if offset:
            args += ["--offset", str(offset)]
        if size:
            args += ["--sizelimit", str(size)]
        dev = sh(*args, path).strip()
        attached.append(dev)
        return dev

    yield attach
    for dev in reversed(attached):
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.fixture
def mounted() -> Iterator[Callable[..., Path]]:
    """``mounted(device, mountpoint, *options)``: mount, unmounted after the test."""
    if not IS_ROOT:
        pytest.skip("needs root to mount")
    points: list[Path] = []

    def mount(device: str, mountpoint: Path, *options: str) -> Path:
        mountpoint.mkdir(parents=True, exist_ok=True)
        sh("mount", *options, device, mountpoint)
        points.append(mountpoint)
        return mountpoint

    yield mount
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], check=False)


def kill_when_stopped(command: list[str], faults: str) -> bool:
    """Run ``command`` until ``$BLOCKVAULT_FAULTS`` freezes it (or it ends), then SIGKILL
    it; whether it was frozen (not finished) when killed."""
    proc = subprocess.Popen(
        command,
        env={**os.environ, "BLOCKVAULT_FAULTS": faults},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and process_state(proc.pid) != "T":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        frozen = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return frozen


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"  # gone


# a webhook receiver on loopback, for the agent's notifications and the center's alerts
@dataclass
class Hook:
    url: str
    bodies: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # statuses to give first, then 204


@pytest.fixture
def hook() -> Iterator[Hook]:
    record = Hook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = int(self.headers["Content-Length"])
            record.bodies.append((dict(self.headers), self.rfile.read(size)))
            self.send_response(record.answers.pop(0) if record.answers else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield record
    server.shutdown()
    server.server_close()
