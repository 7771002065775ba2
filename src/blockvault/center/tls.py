"""The center's certificate as agents pin it.

A fingerprint is ``SHA256:`` and the unpadded base64 of the SHA-256 of the
certificate's DER bytes (the form OpenSSH prints for host keys): ``center init``
prints it, ``agent enrol --fingerprint`` takes it, and the agent trusts no other
certificate afterwards, whoever signed it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["fingerprint", "same_fingerprint"]


def fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def same_fingerprint(der: bytes, expected: str) -> bool:
    return hmac.compare_digest(fingerprint(der), expected.strip())
