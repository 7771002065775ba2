"""Who may take part in a cast: the session code and the keys derived from it.

The sender makes a **code** of 20 base32 characters (100 bits, typed as four groups
of five) or reads one from a key file. Each session draws a random **salt**, carried
in its announcement; HKDF-SHA256 turns code + salt into three 256-bit keys, one per
channel (announce, control, data), so a key never serves two kinds of message and a
new session never reuses an old session's keys. Every announcement and control line
carries a 16-byte keyed-BLAKE3 **tag** of its bytes; every data datagram an
AES-256-GMAC tag (``DataTags``: a quarter of BLAKE3's cost on a 1.5 KiB datagram,
where a million of them make a GiB). docs/CAST.md has the threat model.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from blockvault.errors import KeyFileInvalid, UsageError

__all__ = [
    "CODE_CHARS",
    "TAG",
    "DataTags",
    "InvalidTag",
    "Keys",
    "new_code",
    "parse_code",
    "read_key_file",
    "tag",
    "verify",
]

CODE_CHARS = 20  # base32 characters of a code: 100 bits
GROUP = 5  # characters per group as printed
TAG = 16  # bytes of every message and datagram tag
SALT = 16
_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
_INFO = b"blockvault cast 3"
KEY_FILE_LIMIT = 4096  # bytes read from a key file


def new_code() -> str:
    """A fresh code, grouped for reading aloud: ``ABCDE-FGHIJ-KLMNO-PQRST``."""
    text = base64.b32encode(secrets.token_bytes(15)).decode()[:CODE_CHARS]
    return "-".join(text[i : i + GROUP] for i in range(0, CODE_CHARS, GROUP))


def parse_code(text: str) -> str:
    """The code in canonical form (upper case, no separators), or UsageError."""
    code = "".join(c for c in text.upper() if c not in "- \t\r\n")
    bad = sorted(set(code) - _ALPHABET)
    if bad:
        raise UsageError(f"cast code: {''.join(bad)!r} is not a base32 letter (A-Z, 2-7)")
    if len(code) != CODE_CHARS:
        raise UsageError(f"cast code: {len(code)} characters, a code has {CODE_CHARS}")
    return code


def read_key_file(path: str) -> str:
    """The code held in the first line of ``path`` (as ``blockvault cast code`` prints it)."""
    try:
        with Path(path).open("rb") as f:
            first = f.read(KEY_FILE_LIMIT).split(b"\n", 1)[0]
    except OSError as exc:
        raise KeyFileInvalid(exc.strerror or str(exc), path=path) from None
    try:
        return parse_code(first.decode("ascii"))
    except (UnicodeDecodeError, UsageError) as exc:
        raise KeyFileInvalid(f"no cast code in its first line ({exc})", path=path) from None


def new_salt() -> bytes:
    return secrets.token_bytes(SALT)


@dataclass(frozen=True)
class Keys:
    """The three keys of one session (from its code and salt)."""

    announce: bytes
    control: bytes
    data: bytes

    @classmethod
    def derive(cls, code: str, salt: bytes) -> Keys:
        kdf = HKDF(algorithm=hashes.SHA256(), length=96, salt=salt, info=_INFO)
        key = kdf.derive(parse_code(code).encode())
        return cls(key[:32], key[32:64], key[64:])


def tag(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """The 16-byte keyed-BLAKE3 tag of ``data``."""
    digest: bytes = blake3.blake3(data, key=key).digest(TAG)
    return digest


def verify(key: bytes, data: bytes | bytearray | memoryview, mac: bytes | memoryview) -> bool:
    """True when ``mac`` is the tag of ``data`` (compared in constant time)."""
    return hmac.compare_digest(tag(key, data), mac)


class DataTags:
    """AES-256-GMAC tags of data datagrams (AES-GCM with nothing to encrypt).

    GMAC's nonce must never repeat under one key with other data. The nonce is the
    datagram's own pass, chunk, fragment index and fragment count (12 header bytes):
    a pass sends each fragment of a chunk once, every pass has a new number and every
    session its own key, so it never does; the same fragment sent again in one pass
    would carry the same bytes and so the same tag.
    """

    def __init__(self, key: bytes) -> None:
        # the per-datagram loops call aead.encrypt(nonce, b"", datagram) and
        # aead.decrypt(nonce, tag, datagram) themselves: a Python call per datagram costs
        self.aead = AESGCM(key)

    def seal(self, nonce: bytes | memoryview, data: bytes | memoryview) -> bytes:
        return self.aead.encrypt(nonce, b"", data)

    def check(self, nonce: memoryview, data: memoryview, mac: memoryview) -> bool:
        try:
            self.aead.decrypt(nonce, mac, data)
        except InvalidTag:
            return False
        return True
