"""``python3 -m blockvault.rescue menu|unattended``: the rescue system's two programs.

``menu`` runs on each console (agetty starts it instead of login); ``unattended``
runs once per boot (``blockvault-unattended.service``) when the kernel command
line asks for a job. Neither is a ``blockvault`` command: they exist only on the
rescue system, and drive blockvault through its CLI as subprocesses.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from blockvault.disk.inventory import SKIP_PREFIXES
from blockvault.errors import BlockvaultError
from blockvault.rescue.cmdline import console_devices, job_from_cmdline
from blockvault.rescue.menu import Menu
from blockvault.rescue.runtime import LOG_PATH, install_ssh, load_config
from blockvault.rescue.unattended import AFTER_COMMANDS, FAIL_LINE, Consoles, run_job

LIVE_MEDIUM_MOUNT = "/run/live/medium"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m blockvault.rescue")
    parser.add_argument("program", choices=["menu", "unattended"])
    parser.add_argument("--cmdline", help="the kernel command line (default: /proc/cmdline)")
    parser.add_argument("--log", type=Path, default=LOG_PATH)
    parser.add_argument(
        "--consoles",
        action="store_true",
        help="report on the command line's console= devices, not on standard output",
    )
    parser.add_argument("ignored", nargs="*", help=argparse.SUPPRESS)  # agetty's tty name
    options = parser.parse_args(argv)
    try:
        config = load_config()
        if config.ssh_key or config.known_hosts:
            install_ssh(config)
        if options.program == "menu":
            Menu(config, stdin=sys.stdin, stdout=sys.stdout).run()
            return 0
        cmdline = options.cmdline
        if cmdline is None:
            cmdline = Path("/proc/cmdline").read_text()
        job = job_from_cmdline(cmdline)
    except BlockvaultError as exc:
        print(f"{FAIL_LINE} {exc}", flush=True)
        return 1
    if job is None:
        return 0
    devices = console_devices(cmdline) if options.consoles else []
    ok = run_job(job, config, out=Consoles(devices, sys.stdout), log=options.log, disks=_disks)
    if job.after in AFTER_COMMANDS:
        subprocess.run(["sync"], check=False)
        subprocess.run(AFTER_COMMANDS[job.after], check=False)
    return 0 if ok else 1


def _disks() -> list[str]:
    """This machine's disks, in the kernel's order, less the one the rescue system
    booted from and those blockvault never lists (floppies, RAM disks)."""
    medium = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", LIVE_MEDIUM_MOUNT],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    parent = ""
    if medium:
        parent = subprocess.run(
            ["lsblk", "-n", "-d", "-o", "PKNAME", medium],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    listing = subprocess.run(
        ["lsblk", "-n", "-d", "-o", "NAME,TYPE"], capture_output=True, text=True, check=False
    ).stdout
    skip = {parent, medium.removeprefix("/dev/")}
    pairs = [line.split()[:2] for line in listing.splitlines() if len(line.split()) >= 2]
    return [
        f"/dev/{name}"
        for name, kind in pairs
        # a PC's floppy drive is a "disk" to lsblk, and sorts first: never a target
        if kind == "disk" and name not in skip and not name.startswith(SKIP_PREFIXES)
    ]


if __name__ == "__main__":
    sys.exit(main())
