"""Client-side encryption of stored objects: AES-256-GCM seals and keyed ids.

Glossary:
  master key  two random 256-bit keys made once per encrypted repository:
              ``encryption`` (AES-256-GCM of every object) and ``id`` (the key of the
              BLAKE3 that names objects). Kept only wrapped, see ``keys.py``.
  seal        ``nonce || ciphertext || tag`` of an object's (compressed) payload.
              The associated data is the object's 16 envelope header bytes and its
              32-byte id, so a changed header or an object stored under another
              object's name fails authentication before anything is decompressed.

Invariants:
  * Every seal uses a fresh random 96-bit nonce. Objects are never rewritten, and a
    key seals far fewer than 2**32 objects (16 PiB of 4 MiB chunks), the bound NIST
    SP 800-38D sets for random nonces.
  * Ids of an encrypted repository are keyed: without the id key, a name says
    nothing about the content (not even whether it is a known file's block).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blockvault.repo import format as fmt

__all__ = ["KEY_BYTES", "MasterKey", "SealBroken", "Sealer"]

KEY_BYTES = 32


class SealBroken(Exception):
    """The seal does not authenticate: wrong key, damaged, or swapped."""


@dataclass(frozen=True, repr=False)
class MasterKey:
    """The secret keys of one repository (``repr`` never shows them)."""

    encryption: bytes
    id: bytes

    def __post_init__(self) -> None:
        if len(self.encryption) != KEY_BYTES or len(self.id) != KEY_BYTES:
            raise ValueError("a master key is two 32-byte keys")

    def __repr__(self) -> str:
        return "MasterKey(<secret>)"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_BYTES), os.urandom(KEY_BYTES))

    def to_bytes(self) -> bytes:
        return self.encryption + self.id

    @classmethod
    def from_bytes(cls, raw: bytes) -> MasterKey:
        if len(raw) != 2 * KEY_BYTES:
            raise ValueError(f"a master key has {2 * KEY_BYTES} bytes, not {len(raw)}")
        return cls(raw[:KEY_BYTES], raw[KEY_BYTES:])


class Sealer:
    """Keyed ids and AES-256-GCM seals for one master key; safe to share between threads."""

    def __init__(self, master: MasterKey) -> None:
        self._aead = AESGCM(master.encryption)
        self._id_key = master.id

    def object_id(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        return blake3.blake3(plaintext, key=self._id_key).digest()

    def seal(
        self, header: bytes, object_id: bytes, payload: bytes | bytearray | memoryview
    ) -> bytearray:
        """``header || nonce || ciphertext || tag`` in one buffer (no copies of the data)."""
        nonce = os.urandom(fmt.GCM_NONCE)
        start = len(header) + fmt.GCM_NONCE
        out = bytearray(start + len(payload) + fmt.GCM_TAG)
        out[: len(header)] = header
        out[len(header) : start] = nonce
        self._aead.encrypt_into(nonce, payload, header + object_id, memoryview(out)[start:])
        return out

    def unseal(self, header: bytes, object_id: bytes, sealed: bytes | memoryview) -> bytes:
        if len(sealed) < fmt.GCM_NONCE + fmt.GCM_TAG:
            raise SealBroken(f"truncated: {len(sealed)} bytes of sealed payload")
        nonce, body = sealed[: fmt.GCM_NONCE], sealed[fmt.GCM_NONCE :]
        try:
            return self._aead.decrypt(bytes(nonce), body, header + object_id)
        except InvalidTag:
            raise SealBroken(
                "authentication failed (damaged, swapped with another object, or another key)"
            ) from None
