"""Open a restore or clone target only after every refusal has been checked.

Order matters: nothing is written until the target is known not to be mounted,
not to hold the repository, large enough, and (if it holds data) confirmed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from blockvault.disk.device import Device, open_device
from blockvault.disk.usage import mounts_using, repository_on
from blockvault.errors import (
    DeviceError,
    SourceError,
    TargetError,
    TargetHoldsRepository,
    TargetInUse,
    TargetNotEmpty,
    TargetTooSmall,
)
from blockvault.pipeline.stages import is_zero

__all__ = ["Confirm", "OpenedTarget", "open_target"]

Confirm = Callable[[str], bool]  # asked "overwrite?" with a description; True to go on
PROBE = 1024 * 1024


@dataclass
class OpenedTarget:
    device: Device
    fresh: bool  # created (or grown from empty) by us: every byte is already zero
    created: bool = False  # the file did not exist before open_target

    @contextlib.contextmanager
    def refusals(self) -> Iterator[None]:
        """For checks made after opening, before the first write: a refusal closes the
        target and removes the file if we created it, so a refused copy leaves nothing."""
        try:
            yield
        except BaseException:
            self.device.close()
            if self.created:
                with contextlib.suppress(OSError):
                    os.unlink(self.device.path)
            raise


def _holds_data(device: Device) -> bool:
    """True when the first or last MiB of the target holds a non-zero byte."""
    head = min(PROBE, device.size)
    if head and not is_zero(device.read_at(0, head)):
        return True
    tail = min(PROBE, device.size)
    return bool(tail) and not is_zero(device.read_at(device.size - tail, tail))


def open_target(
    path: str,
    need: int,
    *,
    repository_path: str | None,
    confirm: Confirm,
    what: str,
) -> OpenedTarget:
    """Open ``path`` for writing ``need`` bytes of ``what`` after every safety check."""
    p = Path(path)
    if repository_on(p, repository_path):
        raise TargetHoldsRepository(path=p, repo=repository_path)
    try:
        if not p.exists():
            created = open_device(p, write=True, create_size=need)
            return OpenedTarget(created, fresh=True, created=True)
        mounts = mounts_using(p)
        if mounts:
            m = mounts[0]
            raise TargetInUse(f"{m.mountpoint} is mounted from it ({m.via})", path=p)
        device = open_device(p, write=True, exclusive=True)
    except DeviceError as exc:
        raise TargetInUse(str(exc.fields.get("detail")), path=p) from None
    except SourceError as exc:  # open_device speaks of sources: this one is the target
        raise TargetError(str(exc.fields.get("detail")), path=p) from None
    try:
        if not device.is_block and device.size == 0:
            os.ftruncate(device.fd, need)
            device.size = need
            return OpenedTarget(device, fresh=True)
        if device.size < need:
            raise TargetTooSmall(path=p, have=device.size, need=need, missing=need - device.size)
        if _holds_data(device) and not confirm(f"{what} will overwrite {p}, which holds data"):
            kind = "block device" if stat.S_ISBLK(p.stat().st_mode) else "file"
            raise TargetNotEmpty(f"the {kind} holds data", path=p)
        return OpenedTarget(device, fresh=False)
    except BaseException:
        device.close()
        raise
