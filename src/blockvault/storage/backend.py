"""The storage interface every backend implements (see the package docstring)."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Backend", "Capabilities"]


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
    def read(self, name: str) -> bytes:
        """The whole object; ``ObjectNotFound`` when it does not exist."""

    @abc.abstractmethod
    def write(self, name: str, data: bytes | memoryview) -> None:
        """Store ``data`` under ``name`` atomically, replacing any old object."""

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

    def is_empty(self) -> bool:
        return next(iter(self.list()), None) is None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
