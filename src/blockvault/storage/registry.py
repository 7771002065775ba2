"""Pick a backend from a repository location (path or URL).

Remote backends are imported only when a location names them, so that a machine
without paramiko or boto3 still works with local repositories, and is told what to
install when it asks for more. They come wrapped in ``RetryingBackend``.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from blockvault.errors import UsageError
from blockvault.storage.backend import Backend
from blockvault.storage.faulty import FAULTS_ENV, FaultyBackend
from blockvault.storage.retry import RetryingBackend

__all__ = ["REMOTE_SCHEMES", "open_backend"]

# scheme -> (module, class, the PyPI package it needs, the pip extra that brings it)
REMOTE_SCHEMES: dict[str, tuple[str, str, str, str]] = {
    "sftp": ("blockvault.storage.sftp", "SFTPBackend", "paramiko", "sftp"),
    "s3": ("blockvault.storage.s3", "S3Backend", "boto3", "s3"),
}


def open_backend(location: str, *, s3_endpoint: str | None = None) -> Backend:
    """A backend for ``location``: a plain path (or ``file://``) means a local directory,
    or a one-file image when it is a file starting with the ``.bvi`` magic (or the
    first piece ``location.001`` of a split one) whatever its name;
    ``sftp://[user@]host[:port]/path`` an SSH server, ``s3://bucket/prefix`` a bucket
    (``s3_endpoint`` overrides ``AWS_ENDPOINT_URL``). ``$BLOCKVAULT_FAULTS`` (tests
    only) wraps it in ``FaultyBackend.from_spec``."""
    backend = _open(location, s3_endpoint)
    spec = os.environ.get(FAULTS_ENV)
    return FaultyBackend.from_spec(backend, spec) if spec else backend


def _open(location: str, s3_endpoint: str | None) -> Backend:
    scheme, sep, rest = location.partition("://")
    if not sep:
        from blockvault.storage.bundle import BundleBackend, is_bundle

        if is_bundle(location):
            return BundleBackend(location)
        from blockvault.storage.local import LocalBackend

        return LocalBackend(location)
    if scheme == "file":
        from blockvault.storage.local import LocalBackend

        return LocalBackend(rest)
    if scheme not in REMOTE_SCHEMES:
        known = ", ".join(f"{s}://" for s in REMOTE_SCHEMES)
        raise UsageError(
            f"repository location {location!r}: unknown scheme {scheme!r} (use a path, {known})"
        )
    module_name, class_name, package, extra = REMOTE_SCHEMES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is None or exc.name.startswith("blockvault"):
            raise  # our own bug, not a missing library
        raise UsageError(
            f"repository location {location!r} needs the Python package {package}: "
            f"pip install {package}  (or: pip install 'blockvault[{extra}]')"
        ) from None
    options: dict[str, Any] = {"endpoint": s3_endpoint} if scheme == "s3" else {}
    backend: Backend = getattr(module, class_name)(location, **options)
    return RetryingBackend(backend)
