"""Key files: a repository's master key wrapped by a key derived from a passphrase.

A key file is UTF-8 JSON stored as ``keys/<id>`` in the repository ("repokey") and
written as is by ``key export``. The passphrase, NFC-normalised and UTF-8 encoded,
goes through scrypt (memory-hard; from ``cryptography``, which blockvault already
uses for AES-GCM, so no second crypto library) to a 256-bit key-encryption key; that
key seals the 64-byte master key with AES-256-GCM. The associated data binds the
seal to the repository id and to the KDF parameters and salt, so a key file cannot
be moved to another repository or have its parameters weakened unnoticed.

The id of a key file is the (unkeyed) BLAKE3 of its bytes: importing the same file
twice writes the same object.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from blockvault.repo import format as fmt
from blockvault.repo.crypto import MasterKey

__all__ = ["KEY_FORMAT", "KeyFile", "ScryptParams", "unwrap", "wrap"]

KEY_FORMAT: Final = "blockvault-key"
KEY_VERSION: Final = 1
SALT_BYTES: Final = 32


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost: memory is 128 × n × r bytes (128 MiB by default, about 0.4 s).

    Defaults follow the OWASP password storage recommendation (n = 2**17, r = 8, p = 1).
    A key file comes from the repository, which may be hostile, so its parameters are
    bounded before any work: memory at most MAX_MEMORY (8 × the default) and work
    n × r × p at most MAX_WORK (16 × the default, some seconds), as docs/FORMAT.md says.
    """

    n: int = 2**17
    r: int = 8
    p: int = 1

    MAX_MEMORY: ClassVar[int] = 1 << 30  # bytes: 128 × n × r
    MAX_WORK: ClassVar[int] = 1 << 24  # n × r × p

    def __post_init__(self) -> None:
        if not (2 <= self.n <= 2**20 and self.n & (self.n - 1) == 0):
            raise ValueError(f"scrypt n={self.n}: a power of two from 2 to 2**20")
        if not (1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise ValueError(f"scrypt r={self.r} p={self.p}: r 1-32, p 1-16")
        if 128 * self.n * self.r > self.MAX_MEMORY:
            raise ValueError(
                f"scrypt n={self.n} r={self.r} needs {128 * self.n * self.r >> 20} MiB "
                f"of memory; at most {self.MAX_MEMORY >> 20} MiB is allowed"
            )
        if self.n * self.r * self.p > self.MAX_WORK:
            raise ValueError(
                f"scrypt n={self.n} r={self.r} p={self.p} is {self.n * self.r * self.p} units "
                f"of work; at most {self.MAX_WORK} are allowed"
            )


@dataclass(frozen=True)
class KeyFile:
    repository: str  # id of the repository whose objects the key opens
    params: ScryptParams
    salt: bytes
    nonce: bytes
    wrapped: bytes  # AES-256-GCM of MasterKey.to_bytes() + tag
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    kdf: str = "scrypt"

    def to_json(self) -> bytes:
        def b64(raw: bytes) -> str:
            return base64.b64encode(raw).decode()

        document = {
            "format": KEY_FORMAT,
            "version": KEY_VERSION,
            "repository": self.repository,
            "created": self.created,
            "kdf": self.kdf,
            "params": {"n": self.params.n, "r": self.params.r, "p": self.params.p},
            "salt": b64(self.salt),
            "nonce": b64(self.nonce),
            "wrapped": b64(self.wrapped),
        }
        return json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> KeyFile:
        """Parse a key file; ``ValueError`` naming what is wrong."""
        try:
            data: Any = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("not a blockvault key file (not JSON)") from None
        if not isinstance(data, dict) or data.get("format") != KEY_FORMAT:
            raise ValueError("not a blockvault key file")
        if data.get("version") != KEY_VERSION:
            raise ValueError(f"key file version {data.get('version')} is not supported")
        if data.get("kdf") != "scrypt":
            raise ValueError(f"key derivation {data.get('kdf')!r} is not supported")
        try:
            params = data["params"]
            key = cls(
                repository=str(data["repository"]),
                params=ScryptParams(int(params["n"]), int(params["r"]), int(params["p"])),
                salt=base64.b64decode(data["salt"], validate=True),
                nonce=base64.b64decode(data["nonce"], validate=True),
                wrapped=base64.b64decode(data["wrapped"], validate=True),
                created=str(data.get("created", "")),
            )
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"key file field missing or malformed: {exc}") from None
        if len(key.nonce) != fmt.GCM_NONCE or not key.salt:
            raise ValueError("key file salt or nonce has the wrong size")
        return key

    @property
    def id(self) -> str:
        return blake3.blake3(self.to_json()).hexdigest()

    def associated_data(self) -> bytes:
        p = self.params
        text = f"{KEY_FORMAT}/{KEY_VERSION}/{self.repository}/{self.kdf}/{p.n}/{p.r}/{p.p}/"
        return text.encode() + self.salt


def _derive(passphrase: str, salt: bytes, params: ScryptParams) -> bytes:
    secret = unicodedata.normalize("NFC", passphrase).encode()
    return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(secret)


def wrap(
    master: MasterKey, passphrase: str, repository: str, params: ScryptParams | None = None
) -> KeyFile:
    """A new key file (fresh salt and nonce) that ``passphrase`` opens."""
    params = params or ScryptParams()
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(fmt.GCM_NONCE)
    unsealed = KeyFile(repository, params, salt, nonce, b"")
    kek = AESGCM(_derive(passphrase, salt, params))
    sealed = kek.encrypt(nonce, master.to_bytes(), unsealed.associated_data())
    return KeyFile(repository, params, salt, nonce, sealed, unsealed.created)


def unwrap(key: KeyFile, passphrase: str) -> MasterKey | None:
    """The master key, or None when the passphrase does not open this key file."""
    kek = AESGCM(_derive(passphrase, key.salt, key.params))
    try:
        raw = kek.decrypt(key.nonce, key.wrapped, key.associated_data())
    except InvalidTag:
        return None
    return MasterKey.from_bytes(raw)
