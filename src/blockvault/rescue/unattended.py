"""Running the kernel command line's job with nobody at the keyboard.

Every line blockvault prints is copied to this process's output (the console:
screen and serial port) and to the log file, and the run ends with one line a
person or a test can wait for: ``BLOCKVAULT-RESCUE-OK`` or
``BLOCKVAULT-RESCUE-FAIL <why>``. Then what ``blockvault.after`` asks: reboot,
power off, or stay (the menu is on the consoles).
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

from blockvault.rescue.cmdline import AUTO_TARGET, Job
from blockvault.rescue.runtime import RescueConfig, blockvault_argv, env_for

__all__ = ["AFTER_COMMANDS", "FAIL_LINE", "OK_LINE", "START_LINE", "Consoles", "run_job"]

START_LINE: Final = "BLOCKVAULT-RESCUE-START"
OK_LINE: Final = "BLOCKVAULT-RESCUE-OK"
FAIL_LINE: Final = "BLOCKVAULT-RESCUE-FAIL"
WHY_MAX: Final = 200  # characters of the failing line quoted
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


class Consoles(contextlib.ExitStack):
    """Every console the kernel command line names (``console=ttyS0,115200`` ->
    ``/dev/ttyS0``; ``tty0`` is the screen), written to directly: a person at the
    screen and a test on the serial line see the same report. One that cannot be
    opened is skipped; with none, ``fallback`` (the service's output) is used."""

    def __init__(self, devices: list[str], fallback: Writer) -> None:
        super().__init__()
        self.streams: list[Writer] = []
        for device in devices:
            with contextlib.suppress(OSError):
                self.streams.append(
                    self.enter_context(open(device, "w", encoding="utf-8", errors="replace"))  # noqa: SIM115  # closed by the stack
                )
        if not self.streams:
            self.streams.append(fallback)

    def write(self, text: str, /) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


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
    with open(log, "a", encoding="utf-8") as logfile:

        def say(line: str) -> None:
            for stream in (out, logfile):
                stream.write(line + "\n")
                stream.flush()

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
        if config.remote(env.get("BLOCKVAULT_REPO")) or any(config.remote(a) for a in args):
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
        if proc.returncode == 0:
            say(OK_LINE)
            return True
        say(f"{FAIL_LINE} exit status {proc.returncode}: {last[:WHY_MAX] or 'no message'}")
        return False
