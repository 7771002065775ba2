"""Running the kernel command line's job with nobody at the keyboard.

Every line blockvault prints is copied to this process's output (the console:
screen and serial port) and to the log file (bounded), and the run ends with one
line a person or a test can wait for: ``BLOCKVAULT-RESCUE-OK`` or
``BLOCKVAULT-RESCUE-FAIL <why>``. A job that wrote a disk successfully leaves its
log on the restored system too (:mod:`~blockvault.rescue.joblog`). Then what
``blockvault.after`` asks: reboot, power off, or stay (the menu is on the consoles).
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

from blockvault.rescue.cmdline import AUTO_TARGET, Job
from blockvault.rescue.joblog import BoundedLog, keep_on_target
from blockvault.rescue.runtime import RescueConfig, blockvault_argv, env_for

__all__ = ["AFTER_COMMANDS", "FAIL_LINE", "OK_LINE", "START_LINE", "Consoles", "run_job"]

START_LINE: Final = "BLOCKVAULT-RESCUE-START"
OK_LINE: Final = "BLOCKVAULT-RESCUE-OK"
FAIL_LINE: Final = "BLOCKVAULT-RESCUE-FAIL"
WHY_MAX: Final = 200  # characters of the failing line quoted
NO_ROOT_LINE: Final = "log not kept on the target: no Linux root (etc/ and var/log/) on it\n"
AFTER_COMMANDS: Final = {
    "reboot": ["systemctl", "reboot"],
    "poweroff": ["systemctl", "poweroff"],
}
NETWORK_WAIT: Final = [
    "/lib/systemd/systemd-networkd-wait-online",
    "--any",
    "--timeout=120",
]


class Writer(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


class Consoles:
    """Every console the kernel command line names (``console=ttyS0,115200`` ->
    ``/dev/ttyS0``; ``tty0`` is the screen), written to directly: a person at the
    screen and a test on the serial line see the same report. Each line opens the
    device anew: agetty hangs a terminal up when it starts the menu there, and a
    hung-up file only fails (EIO). A device that cannot be written is skipped; with
    none at all, ``fallback`` (the service's output) gets the line."""

    def __init__(self, devices: list[str], fallback: Writer) -> None:
        self.devices = devices
        self.fallback = fallback

    def write(self, text: str, /) -> int:
        written = False
        for device in self.devices:
            try:
                with open(device, "w", encoding="utf-8", errors="replace") as console:
                    console.write(text)
                written = True
            except OSError:
                continue
        if not written:
            self.fallback.write(text)
        return len(text)

    def flush(self) -> None:
        self.fallback.flush()


def run_job(
    job: Job,
    config: RescueConfig,
    *,
    out: Writer,
    log: Path,
    disks: Callable[[], list[str]],
) -> bool:
    """Run ``job`` (without its ``after``), reporting to ``out`` and ``log``; whether
    it succeeded. ``disks`` lists the machine's disks, for ``cast receive`` onto
    the first one."""
    with open(log, "a", encoding="utf-8", errors="replace") as logfile:
        bounded = BoundedLog(logfile)

        def say(line: str, *, final: bool = False) -> None:
            out.write(line + "\n")
            out.flush()
            bounded.line(line, final=final)

        args = list(job.args)
        if args[-1] == AUTO_TARGET and args[:2] == ["cast", "receive"]:
            found = disks()
            if not found:
                say(f"{FAIL_LINE} no disk to receive onto")
                return False
            args[-1] = found[0]
        argv = blockvault_argv(config, args)
        env = env_for(config)
        say(f"{START_LINE} blockvault {shlex.join(args)}")
        remote = config.remote(env.get("BLOCKVAULT_REPO")) or any(config.remote(a) for a in args)
        if remote or args[0] == "cast":  # a cast is over the network, always
            say("waiting for the network (DHCP)")
            subprocess.run(NETWORK_WAIT, check=False)
        last = ""
        with subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            errors="replace",
        ) as proc:
            assert proc.stdout is not None  # stdout=PIPE
            for line in proc.stdout:
                line = line.rstrip("\r\n")
                say(line)
                if line.strip():
                    last = line.strip()
        if proc.returncode != 0:
            why = last[:WHY_MAX] or "no message"
            say(f"{FAIL_LINE} exit status {proc.returncode}: {why}", final=True)
            return False
        say(OK_LINE, final=True)
    target = next((a for a in reversed(args) if a.startswith("/dev/")), None)
    if target is not None:
        kept = keep_on_target(log, target)
        out.write(f"log kept on the restored system: {kept}\n" if kept else NO_ROOT_LINE)
        out.flush()
    return True
