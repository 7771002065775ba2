"""Which partition of a disk snapshot holds a Linux root filesystem: ``restore
--adapt`` asks before it writes a byte, so a snapshot with nothing to adapt is
refused with the target untouched."""

from __future__ import annotations

from typing import Final

from blockvault.browse.volume import PARSERS, open_volume
from blockvault.errors import AdaptRefused, BlockvaultError
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository

__all__ = ["linux_root"]

# a root filesystem: its fstab, and programs (merged /usr or not, /usr/bin is a directory)
ROOT_MARKS: Final = (("/etc/fstab", "file"), ("/usr/bin", "dir"))


def linux_root(repo: Repository, snapshot: Snapshot) -> int:
    """The number of the imaged partition whose filesystem holds /etc/fstab and
    /usr/bin, read from the repository (only the chunks those paths need)."""
    if snapshot.kind == "files":
        raise AdaptRefused("is a file snapshot, not a disk", snapshot=snapshot.id[:12])
    index = repo.load_index(snapshot)
    inner = []
    for record in snapshot.imaged_partitions:
        if record.volumes:
            inner.append(record.number)
        if record.filesystem not in PARSERS:
            continue
        try:
            volume = open_volume(repo, snapshot, record.number, index)
            if all(volume.entry(path, follow=True).kind == kind for path, kind in ROOT_MARKS):
                return record.number
        except BlockvaultError:  # not there, or unreadable: not a root we can adapt
            continue
    lvm_luks = f"; partitions {inner} hold LVM or LUKS, which --adapt does not handle"
    found = ", ".join(f"{p.number}: {p.filesystem or 'unknown'}" for p in snapshot.partitions)
    raise AdaptRefused(
        f"no partition holds a Linux root filesystem (/etc/fstab and /usr/bin; partitions "
        f"{found or 'none'})" + (lvm_luks if inner else ""),
        snapshot=snapshot.id[:12],
    )
