"""Pick a backend from a repository location (path or URL)."""

from __future__ import annotations

from blockvault.errors import UsageError
from blockvault.storage.backend import Backend

__all__ = ["open_backend"]


def open_backend(location: str) -> Backend:
    """A backend for ``location``: a plain path (or ``file://``) means a local directory."""
    scheme, sep, rest = location.partition("://")
    if not sep:
        from blockvault.storage.local import LocalBackend

        return LocalBackend(location)
    if scheme == "file":
        from blockvault.storage.local import LocalBackend

        return LocalBackend(rest)
    raise UsageError(f"repository location {location!r}: unknown scheme {scheme!r} (use a path)")
