"""What an enrolled agent keeps: its own key pair and what it knows of its center.

Beside the plans file, as the history is (``plans.toml`` -> ``plans.db``):
``plans.center.key`` holds the agent's Ed25519 private key (raw 32 bytes, owner-only),
``plans.center.json`` the center's URL, its pinned certificate, the host's name and
what the center has acknowledged. The key never leaves the machine: the center holds
only the public half, and the agent proves itself by signing the center's nonces.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from blockvault.errors import CenterStateError

__all__ = ["HOST_NAME", "AgentKey", "Enrolment", "enrolment_file", "key_file", "write_private"]

HOST_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"  # a host's name at its center
MAX_STATE: Final = 64 * 1024  # bytes of plans.center.json: a URL, a certificate, a few ids


def enrolment_file(plans_file: Path) -> Path:
    return plans_file.with_suffix(".center.json")


def key_file(plans_file: Path) -> Path:
    return plans_file.with_suffix(".center.key")


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class AgentKey:
    """The agent's Ed25519 key pair."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private

    @classmethod
    def generate(cls) -> AgentKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> AgentKey:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CenterStateError(exc.strerror or str(exc), path=path) from None
        if len(raw) != 32:
            raise CenterStateError("not an agent key (32 bytes): enrol again", path=path)
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def save(self, path: Path) -> None:
        write_private(path, self._private.private_bytes_raw())

    @property
    def public(self) -> str:
        """The public key as the center takes it: raw bytes, base64."""
        raw = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def sign(self, message: str) -> str:
        return base64.b64encode(self._private.sign(message.encode())).decode()


@dataclass(frozen=True)
class Enrolment:
    """The agent's record of its center (``plans.center.json``)."""

    url: str  # https://center:8443
    fingerprint: str  # SHA256:... of the certificate below
    certificate: str  # PEM: the one certificate this agent trusts for the center
    host: str  # this machine's name at the center
    host_id: int
    group: str | None = None
    reported_through: int = 0  # every history run up to this id is acknowledged

    def save(self, path: Path) -> None:
        write_private(path, json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> Enrolment | None:
        """The enrolment recorded at ``path``; None when the agent never enrolled."""
        try:
            with open(path, "rb") as file:
                data = file.read(MAX_STATE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CenterStateError(exc.strerror or str(exc), path=path) from None
        try:
            if len(data) > MAX_STATE:
                raise ValueError(f"larger than {MAX_STATE} bytes")
            fields: dict[str, Any] = json.loads(data)
            return cls(**fields)
        except (ValueError, TypeError) as exc:
            raise CenterStateError(
                f"not an agent's enrolment ({exc}): enrol again", path=path
            ) from None
