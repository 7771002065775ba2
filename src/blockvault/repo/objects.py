"""Turn plaintext into stored objects and back: id, envelope, compression, encryption.

Every object is named by the BLAKE3-256 of its plaintext (keyed in an encrypted
repository), so reading one back re-hashes it and a damaged or swapped object is
always detected. Data is compressed first, then sealed (see ``crypto.py``).
"""

from __future__ import annotations

import threading

import blake3
import zstandard

from blockvault.repo import format as fmt
from blockvault.repo.crypto import SealBroken, Sealer

__all__ = ["Codec", "DecodeError", "object_id"]


class DecodeError(Exception):
    """An object's bytes are not what its name promises (the caller adds context)."""


def object_id(plaintext: bytes | bytearray | memoryview) -> str:
    return blake3.blake3(plaintext).hexdigest()


class Codec:
    """Encodes and decodes envelopes; safe to share between threads.

    With a ``sealer`` every object is encrypted and ids are keyed; without one, no
    object may be encrypted. A repository never mixes the two.
    """

    def __init__(self, level: int = 3, sealer: Sealer | None = None) -> None:
        self.level = level
        self.sealer = sealer
        self._local = threading.local()

    def id_of(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        """The 32-byte id that names ``plaintext`` in this repository."""
        if self.sealer is not None:
            return self.sealer.object_id(plaintext)
        return blake3.blake3(plaintext).digest()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def encode(
        self, magic: bytes, plaintext: bytes | bytearray | memoryview, oid: str | None = None
    ) -> bytes:
        """Envelope + payload; stored uncompressed when zstd does not make it smaller.

        ``oid`` is the object's hex id (computed when not given); an encrypted
        object's seal is bound to it.
        """
        compression = fmt.Compression.NONE
        payload: bytes | bytearray | memoryview = plaintext
        if self.level > 0:
            packed = self._compressor().compress(plaintext)
            if len(packed) < len(plaintext):
                compression, payload = fmt.Compression.ZSTD, packed
        if self.sealer is None:
            header = fmt.EnvelopeHeader(
                magic, fmt.VERSION, compression, fmt.Encryption.NONE, len(plaintext)
            )
            return header.pack() + bytes(payload)
        sealed_header = fmt.EnvelopeHeader(
            magic, fmt.VERSION, compression, fmt.Encryption.AES_256_GCM, len(plaintext)
        ).pack()
        raw_id = bytes.fromhex(oid) if oid is not None else self.id_of(plaintext)
        # bytes, as every backend accepts; the one copy costs little beside zstd
        return bytes(self.sealer.seal(sealed_header, raw_id, payload))

    def decode(
        self, magic: bytes, data: bytes, expected_id: str | None = None, limit: int | None = None
    ) -> bytes:
        """The plaintext, after checking magic, length and (if given) the id.

        The declared length must be at most ``limit`` and the format's bound for the
        kind of object, and a zstd frame must declare that same length (or none):
        a hostile header or frame never makes us allocate more than the bound.
        """
        if len(data) < fmt.ENVELOPE.size:
            raise DecodeError(f"truncated: {len(data)} bytes")
        header = fmt.EnvelopeHeader.unpack(data)
        if header.magic != magic:
            raise DecodeError(f"wrong magic {header.magic!r}, expected {magic!r}")
        bound = min(
            fmt.MAX_PLAINTEXT[magic], limit if limit is not None else fmt.MAX_PLAINTEXT[magic]
        )
        if header.length > bound:
            raise DecodeError(f"length {header.length} exceeds the bound of {bound} bytes")
        if data[fmt.ENVELOPE_RESERVED]:
            raise DecodeError("reserved header byte is not zero")
        if header.version != fmt.VERSION or header.encryption not in (
            fmt.Encryption.NONE,
            fmt.Encryption.AES_256_GCM,
        ):
            raise DecodeError(f"unsupported version {header.version}/{header.encryption}")
        payload: bytes | memoryview = memoryview(data)[fmt.ENVELOPE.size :]
        if self.sealer is None:
            if header.encryption != fmt.Encryption.NONE:
                raise DecodeError("encrypted object in an unencrypted repository")
        elif header.encryption != fmt.Encryption.AES_256_GCM:
            # never accept plaintext objects where everything must be sealed
            raise DecodeError("unencrypted object in an encrypted repository")
        elif expected_id is None:
            raise ValueError("decoding an encrypted object needs its id")
        else:
            try:
                payload = self.sealer.unseal(
                    bytes(data[: fmt.ENVELOPE.size]), bytes.fromhex(expected_id), payload
                )
            except SealBroken as exc:
                raise DecodeError(str(exc)) from None
            except ValueError:
                raise DecodeError(f"{expected_id!r} is not an object id") from None
        if header.compression == fmt.Compression.ZSTD:
            try:
                # zstd allocates what the frame declares, whatever max_output_size says
                declared = zstandard.frame_content_size(payload)
                if declared not in (-1, header.length):
                    raise DecodeError(
                        f"zstd frame declares {declared} bytes, header {header.length}"
                    )
                plaintext = self._decompressor().decompress(payload, max_output_size=header.length)
            except zstandard.ZstdError as exc:
                raise DecodeError(f"zstd: {exc}") from None
        elif header.compression == fmt.Compression.NONE:
            plaintext = bytes(payload)
        else:
            raise DecodeError(f"unknown compression {header.compression}")
        if len(plaintext) != header.length:
            raise DecodeError(f"length {len(plaintext)}, header says {header.length}")
        if expected_id is not None and self.id_of(plaintext).hex() != expected_id:
            raise DecodeError("content does not match its id")
        return plaintext
