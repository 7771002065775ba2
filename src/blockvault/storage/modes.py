"""Permissions of new objects and folders in file-based backends (local, SFTP).

A repository is private by default, as restic and borg make theirs: files 0600,
folders 0700. A repository whose ``config`` was made readable to a group (for a
backup operator, say) keeps that: new files copy the config's read and write bits
for owner and group, and folders add the search bit wherever a file is readable.
The config is named here, though storage knows no other repository object, because
it is the one object every repository has from its first write to its last.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PRIVATE_FILE", "REFERENCE", "file_mode", "folder_mode"]

REFERENCE: Final = "config"
PRIVATE_FILE: Final = 0o600


def file_mode(reference: int | None) -> int:
    """Mode for a new file, given the reference object's mode (None: not there yet)."""
    if reference is None:
        return PRIVATE_FILE
    return (reference & 0o660) | PRIVATE_FILE  # never world-accessible, always ours


def folder_mode(file: int) -> int:
    """Mode for a new folder holding files of mode ``file``: searchable where readable."""
    return file | (file & 0o444) >> 2
