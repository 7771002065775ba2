"""Where bytes live: a small backend interface and its implementations.

Glossary:
  backend   stores opaque objects under slash-separated names ("data/ab/ab12…",
            "snapshots/…"). It knows nothing of chunks or snapshots.
  location  the URL or path a user names; ``open_backend`` picks the backend by
            its scheme, importing it only when used.

Contract of every backend (checked by one conformance suite):
  * ``write`` is atomic: a reader sees the old object, or none, or the whole new one,
    never a part, even if the process is killed.
  * ``read`` of a missing name raises ``ObjectNotFound``; other failures raise
    ``StorageError``.
  * ``read(name, limit)`` of an object larger than ``limit`` raises ``ObjectTooLarge``
    from its size, before its body is read, and holds at most ``limit + 1`` bytes.
  * ``list`` yields names under a prefix in no particular order; ``list_modified``
    and ``list_sizes`` the same names with their times or sizes, from one listing
    where the store gives them (never one request per object on local, SFTP, S3).
"""

from __future__ import annotations

from blockvault.storage.backend import Backend, Capabilities
from blockvault.storage.registry import open_backend

__all__ = ["Backend", "Capabilities", "open_backend"]
