"""The storage tests' S3 server, for file snapshots in a remote repository."""

from __future__ import annotations

from tests.storage.conftest import s3_server

__all__ = ["s3_server"]
