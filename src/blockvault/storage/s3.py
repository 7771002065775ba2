"""Objects in an S3-compatible bucket (AWS, MinIO, Ceph, ...), with boto3.

Location: ``s3://bucket/prefix`` (the prefix may be empty). Endpoint, region and
credentials follow the AWS conventions: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) or the ``endpoint`` argument (``--s3-endpoint``),
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY`` or a profile
of ``~/.aws``. With an explicit endpoint, requests use path-style addressing
(``http://host/bucket/key``), which every S3-compatible server understands.

A PUT is atomic by nature: a reader sees the old object or the whole new one. One
client serves every thread (boto3 clients are thread-safe, sessions are not), with a
connection pool as large as ``parallel_io``. boto3's own retries are off: the retry
wrapper is the single place that retries, so that a failure ends in one message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions as bce

from blockvault.errors import ObjectNotFound, StorageError, TransientStorageError, UsageError
from blockvault.storage.backend import Backend, Capabilities, check_name, check_size
from blockvault.text import command_word

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Backend"]

_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
    }
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED_CODES = frozenset(
    {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)
_TRANSIENT_BOTO = (
    bce.ConnectionError,  # endpoint unreachable, connect timeout
    bce.HTTPClientError,  # connection closed or reset, read timeout, streaming cut off
    bce.IncompleteReadError,
)


class S3Backend(Backend):
    """A bucket and key prefix; see the module docstring for configuration."""

    page_size = 1000  # keys per listing request (the S3 maximum)

    def __init__(
        self, location: str, *, endpoint: str | None = None, connections: int = 16
    ) -> None:
        parts = urlsplit(location)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise UsageError(f"repository location {location!r}: use s3://bucket/prefix")
        self.location = location
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.capabilities = Capabilities(local_path=None, parallel_io=connections)
        endpoint = (
            endpoint
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        session = boto3.session.Session()
        self.region = session.region_name or "us-east-1"
        config = botocore.config.Config(
            max_pool_connections=connections,
            retries={"total_max_attempts": 1},
            connect_timeout=20,
            read_timeout=120,
            s3={"addressing_style": "path" if endpoint else "auto"},
            # objects carry their own BLAKE3 check; some S3-compatible servers
            # refuse the newer streaming checksums
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            self.client: S3Client = session.client(
                "s3", endpoint_url=endpoint, region_name=self.region, config=config
            )
        except ValueError as exc:
            raise UsageError(f"S3 endpoint {endpoint!r}: {exc}") from None

    def _key(self, name: str) -> str:
        check_name(name, self.location)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _error(self, what: str, exc: Exception) -> StorageError:
        """The storage error for a boto3 failure: transient, denied, or final."""
        if isinstance(exc, bce.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            detail = f"{code or status} {error.get('Message', '')}".strip()
            if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
                return TransientStorageError(f"{what}: {detail}", location=self.location)
            if code in _DENIED_CODES:
                return StorageError(
                    f"{what}: access denied ({detail}); check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY and the bucket's permissions",
                    location=self.location,
                )
            if code == "NoSuchBucket":
                return StorageError(
                    f"bucket {self.bucket} does not exist; "
                    f"'blockvault -r {command_word(self.location)} init' creates it",
                    location=self.location,
                )
            return StorageError(f"{what}: {detail}", location=self.location)
        if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
            return StorageError(
                f"{what}: no usable S3 credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
                location=self.location,
            )
        if isinstance(exc, (*_TRANSIENT_BOTO, ConnectionError, TimeoutError)):
            return TransientStorageError(f"{what}: {exc}", location=self.location)
        return StorageError(f"{what}: {exc}", location=self.location)

    @staticmethod
    def _missing(exc: Exception) -> bool:
        if not isinstance(exc, bce.ClientError):
            return False
        code = str(exc.response.get("Error", {}).get("Code", ""))
        # a missing bucket holds no repository either: "no repository at ..." fits
        return code in _NOT_FOUND_CODES or code == "NoSuchBucket"

    def read(self, name: str, limit: int | None = None) -> bytes:
        key = self._key(name)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:  # the size from the response headers, before a byte of the body
                check_size(name, response.get("ContentLength", 0), limit, self.location)
                data = body.read() if limit is None else body.read(limit + 1)
            finally:
                body.close()  # a refused body is dropped with its connection
            check_size(name, len(data), limit, self.location)  # the header lied
            return data
        except (bce.BotoCoreError, bce.ClientError, OSError) as exc:
            if self._missing(exc):
                raise ObjectNotFound(name=name, location=self.location) from None
            raise self._error(f"reading {name}", exc) from None

    def write(self, name: str, data: bytes | memoryview) -> None:
        key = self._key(name)
        payload = data if isinstance(data, bytes) else bytes(data)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=payload)
        except (bce.BotoCoreError, bce.ClientError, OSError) as exc:
            raise self._error(f"writing {name}", exc) from None

    def _head(self, name: str) -> dict[str, Any] | None:
        key = self._key(name)
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except (bce.BotoCoreError, bce.ClientError, OSError) as exc:
            if self._missing(exc):
                return None
            raise self._error(f"looking up {name}", exc) from None

    def exists(self, name: str) -> bool:
        return self._head(name) is not None

    def size(self, name: str) -> int:
        head = self._head(name)
        if head is None:
            raise ObjectNotFound(name=name, location=self.location)
        return int(head["ContentLength"])

    def modified(self, name: str) -> float:
        """The server's LastModified time of the object (whole seconds)."""
        head = self._head(name)
        if head is None:
            raise ObjectNotFound(name=name, location=self.location)
        return float(head["LastModified"].timestamp())

    def list(self, prefix: str = "") -> Iterator[str]:
        for name, _ in self.list_modified(prefix):
            yield name

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        for name, item in self._objects(prefix):
            yield name, item["LastModified"].timestamp()

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name, item in self._objects(prefix):
            yield name, int(item["Size"])

    def _objects(self, prefix: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """Each object under ``prefix`` with its listing entry (size, time), a page
        of ``page_size`` per request."""
        base = f"{self.prefix}/" if self.prefix else ""
        found: list[tuple[str, Mapping[str, Any]]] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=base + prefix,
                PaginationConfig={"PageSize": self.page_size},
            )
            for page in pages:
                found.extend((item["Key"][len(base) :], item) for item in page.get("Contents", []))
        except (bce.BotoCoreError, bce.ClientError, OSError) as exc:
            raise self._error(f"listing {prefix or '/'}", exc) from None
        yield from found  # whole: a listing cut off half way cannot be resumed

    def is_empty(self) -> bool:
        base = f"{self.prefix}/" if self.prefix else ""
        try:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=base, MaxKeys=1)
        except (bce.BotoCoreError, bce.ClientError, OSError) as exc:
            raise self._error("listing /", exc) from None
        return not page.get("Contents")

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (bce.BotoCoreError, bce.ClientError, OSError) as exc:
            if not self._missing(exc):
                raise self._error(f"deleting {name}", exc) from None

    def create(self) -> None:
        """Make the bucket unless it exists (the prefix needs nothing)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except (bce.BotoCoreError, bce.ClientError, OSError) as exc:
            if not self._missing(exc):
                raise self._error(f"looking up bucket {self.bucket}", exc) from None
        try:
            if self.region == "us-east-1":
                self.client.create_bucket(Bucket=self.bucket)
            else:
                self.client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": self.region},  # type: ignore[typeddict-item]
                )
        except bce.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code != "BucketAlreadyOwnedByYou":
                raise self._error(f"creating bucket {self.bucket}", exc) from None
        except (bce.BotoCoreError, OSError) as exc:
            raise self._error(f"creating bucket {self.bucket}", exc) from None

    def close(self) -> None:
        self.client.close()
