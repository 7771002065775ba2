"""The storage interface every backend implements (see the package docstring)."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

from blockvault.errors import ObjectNotFound, ObjectTooLarge, StorageError

__all__ = ["Backend", "Capabilities", "check_name", "check_size"]


def check_name(name: str, location: str) -> str:
    """``name`` if it is a relative slash path that stays inside the location.

    Backends that are not a directory (S3 keys) check it too, so that every backend
    accepts and refuses the same names.
    """
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise StorageError(f"invalid object name {name!r}", location=location)
    return name


def check_size(name: str, size: int, limit: int | None, location: str) -> None:
    """Refuse an object of ``size`` bytes above ``limit``. Backends call it with the size
    the storage reports before reading the body, and again with the length read (at
    most ``limit + 1``), so that a server lying about the size is caught too."""
    if limit is not None and size > limit:
        raise ObjectTooLarge(name=name, size=size, limit=limit, location=location)


@dataclass(frozen=True)
class Capabilities:
    """What callers may rely on beyond the base contract."""

    local_path: str | None = None  # a filesystem path holding every object, if any
    parallel_io: int = 4  # useful number of requests in flight


class Backend(abc.ABC):
    """Objects by name; writes are atomic."""

    location: str
    capabilities: Capabilities

    @abc.abstractmethod
    def read(self, name: str, limit: int | None = None) -> bytes:
        """The whole object; ``ObjectNotFound`` when it does not exist. With ``limit``,
        an object larger than ``limit`` bytes raises ``ObjectTooLarge`` (final, never
        retried) found from its size *before* the body is read: at most ``limit + 1``
        bytes are ever held, whatever the storage claims."""

    @abc.abstractmethod
    def write(self, name: str, data: bytes | memoryview) -> None:
        """Store ``data`` under ``name`` atomically, replacing any old object."""

    def write_batched(self, name: str, data: bytes | memoryview) -> None:
        """Like ``write`` for one of many objects in a row (chunks): atomic, but durable
        (and on some backends visible to others) only once ``flush`` returns. Backends
        whose every write is durable at once simply write."""
        self.write(name, data)

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make every ``write_batched`` object durable and visible; on failure those not
        yet durable are dropped (never left half written under their names)."""

    def sweep_partial(self, before: float) -> int:
        """Remove the leftovers of writes interrupted before ``before`` (storage time),
        such as a killed process's temporary files; returns how many went."""
        return 0

    @abc.abstractmethod
    def exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def size(self, name: str) -> int:
        """Size in bytes; ``ObjectNotFound`` when it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Names starting with ``prefix`` (a folder such as ``"data/"``)."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name``; removing a missing object is not an error."""

    @abc.abstractmethod
    def create(self) -> None:
        """Prepare an empty location; ``RepositoryExists``-style checks are the caller's."""

    def modified(self, name: str) -> float:
        """When ``name`` was last written, in Unix seconds by the *storage's* clock
        (garbage collection compares these times with each other, never with a
        client's clock); ``ObjectNotFound`` when it does not exist. Backends that
        cannot tell raise ``StorageError``: backups still work, ``gc`` refuses."""
        raise StorageError(
            "this storage cannot tell when objects were written", location=self.location
        )

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """``(name, modified)`` for the names under ``prefix``; objects deleted while
        listing are left out. Override it where one listing returns the times."""
        for name in self.list(prefix):
            try:
                yield name, self.modified(name)
            except ObjectNotFound:
                continue

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """``(name, size in bytes)`` for the names under ``prefix``; objects deleted
        while listing are left out. Override it where one listing returns the sizes:
        asking each object's size is a round trip each on a remote store."""
        for name in self.list(prefix):
            try:
                yield name, self.size(name)
            except ObjectNotFound:
                continue

    def is_empty(self) -> bool:
        return next(iter(self.list()), None) is None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
