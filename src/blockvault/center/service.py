"""The center as a systemd service: the unit ``blockvault center install`` writes.

The center needs far less than the agent: it reads no disks, so it runs with no
capabilities at all, may write only its state directory, and binds its port (8443 by
default, above 1024: no ``CAP_NET_BIND_SERVICE``). SIGTERM stops it gracefully and
it exits 143, a clean stop (``SuccessExitStatus``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from blockvault.plans.service import SANDBOX, unit_word

__all__ = ["CENTER_UNIT", "center_unit"]

CENTER_UNIT: Final = "blockvault-center.service"


def center_unit(state: Path, command: Sequence[str] | None = None) -> str:
    """The text of the center's unit for the state directory ``state``."""
    state = state.absolute()
    start = command or (sys.executable, "-m", "blockvault")
    argv = [*start, "center", "serve", "--state", str(state)]
    exec_start = " ".join(unit_word(word, "command word") for word in argv)
    lines = [
        "# written by 'blockvault center install'",
        "[Unit]",
        f"Description=blockvault Backup Center of {unit_word(str(state), 'path')}",
        "After=network-online.target local-fs.target postgresql.service",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        "Restart=on-failure",
        "RestartSec=10",
        "SuccessExitStatus=143",
        "TimeoutStopSec=30",
        "Environment=PYTHONUNBUFFERED=1",
        "ProtectSystem=strict",
        f"ReadWritePaths={unit_word(str(state), 'path')}",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "ProtectHome=read-only",  # a --cert may live in a home directory
        *SANDBOX,
        "CapabilityBoundingSet=",
        "UMask=0077",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
