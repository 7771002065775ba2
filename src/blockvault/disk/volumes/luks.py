"""LUKS1 and LUKS2 containers: the header, the key slots, the encrypted payload.

Layout in brief (the LUKS1 and LUKS2 on-disk format specifications):

  LUKS1    a 592-byte big-endian header (cipher, hash, payload offset, volume key
           digest, eight key slots), key material after it, the payload from
           ``payload_offset`` sectors on.
  LUKS2    a 4096-byte binary header and a JSON area (``hdr_size`` bytes together,
           sha256-checksummed), a second copy of both, the key slots area, then the
           data segment (``segments.0``: offset, size or "dynamic", sector size).
  key slot the volume key split into ``stripes`` anti-forensic stripes (AF split),
           encrypted with a key derived from the passphrase (PBKDF2, Argon2i/id).
  digest   PBKDF2 of the volume key, to tell the right key from a wrong one.

Without a key the whole container is used (the ciphertext is imaged as it is, with a
note). With one, the payload is decrypted (AES-XTS-plain64) only to read the inner
filesystem's allocation: the used map is the header and key slot area plus the inner
used map rounded out to encryption sectors, so a backup stores those sectors' ciphertext
at their own offsets and never a byte of plaintext. Every size and cost read from the
header is bounded before it is used: the header may be hostile.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from blockvault.disk.device import Reader
from blockvault.disk.fs import FilesystemInfo
from blockvault.disk.volumes import Volume, map_out, nest
from blockvault.disk.volumes.c_luks import (
    LUKS2_HDR_SIZES,
    LUKS_KEY_ENABLED,
    LUKS_MAGIC,
    LUKS_SECTOR,
    c_luks,
)
from blockvault.errors import FilesystemError, LuksKeyRejected
from blockvault.extents import ExtentMap

__all__ = ["DecryptingReader", "LuksHeader", "detect", "read", "read_header", "unlock"]

MAX_ITERATIONS = 50_000_000  # PBKDF2; cryptsetup benchmarks to about 2 s, a few million
MAX_ARGON2_MEMORY = 4 * 1024 * 1024  # KiB, cryptsetup's own maximum
MAX_ARGON2_TIME = 64
MAX_ARGON2_THREADS = 16
MAX_STRIPES = 65536  # cryptsetup writes 4000
KEY_SIZES = (32, 64)  # AES-XTS-128 and AES-XTS-256 (two AES keys each)
SECTOR_SIZES = (512, 1024, 2048, 4096)
HASHES = ("sha1", "sha256", "sha512", "ripemd160")
CIPHERS = ("aes-xts-plain64", "aes-xts-plain")

Probe = Callable[[Reader], FilesystemInfo]


def _error(detail: str, where: str = "header") -> FilesystemError:
    return FilesystemError(detail, fs="LUKS", where=where)


@dataclass(frozen=True)
class Keyslot:
    number: int
    kdf: dict[str, Any]  # {"type": "pbkdf2", "hash", "iterations", "salt"} or argon2
    material_offset: int  # bytes, container-relative
    key_size: int  # bytes of the volume key (and of the derived key)
    stripes: int
    af_hash: str
    cipher: str  # of the key material


@dataclass(frozen=True)
class LuksHeader:
    version: int  # 1 or 2
    cipher: str  # of the payload: "aes-xts-plain64"
    payload_offset: int  # bytes
    payload_size: int  # bytes
    sector_size: int  # encryption sector, bytes
    iv_tweak: int  # added to the sector number (LUKS2 ``iv_tweak``)
    key_size: int
    keyslots: tuple[Keyslot, ...]
    digest: dict[str, Any]  # {"hash", "iterations", "salt", "digest"} (bytes), over the key
    label: str | None
    uuid: str | None


def detect(reader: Reader) -> bool:
    return reader.size >= 4096 and reader.read_at(0, 8) in (
        LUKS_MAGIC + b"\0\1",
        LUKS_MAGIC + b"\0\2",
    )


def read_header(reader: Reader) -> LuksHeader:
    """The header, checked and bounded; ``FilesystemError`` when it cannot be trusted."""
    version = int.from_bytes(reader.read_at(6, 2), "big")
    header = _luks1(reader) if version == 1 else _luks2(reader)
    if header.cipher not in CIPHERS:
        raise _error(f"cipher {header.cipher} is not supported (only aes-xts-plain64)")
    if header.key_size not in KEY_SIZES:
        raise _error(f"volume key of {header.key_size} bytes (AES-XTS takes 32 or 64)")
    if header.sector_size not in SECTOR_SIZES or header.payload_offset % LUKS_SECTOR:
        raise _error(f"sector size {header.sector_size}, payload at {header.payload_offset}")
    end = header.payload_offset + header.payload_size
    if header.payload_size <= 0 or end > reader.size or header.payload_size % header.sector_size:
        raise _error(
            f"payload of {header.payload_size} bytes at {header.payload_offset} does not fit "
            f"the {reader.size}-byte partition"
        )
    for slot in header.keyslots:
        _check_slot(slot, header, reader.size)
    return header


def _text(raw: bytes) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("ascii", "replace")


def _luks1(reader: Reader) -> LuksHeader:
    phdr = c_luks.luks1_phdr(reader.read_at(0, len(c_luks.luks1_phdr)))
    hash_name = _text(phdr.hash_spec).lower()
    slots = tuple(
        Keyslot(
            number=i,
            kdf={
                "type": "pbkdf2",
                "hash": hash_name,
                "iterations": slot.iterations,
                "salt": bytes(slot.salt),
            },
            material_offset=slot.key_material_offset * LUKS_SECTOR,
            key_size=phdr.key_bytes,
            stripes=slot.stripes,
            af_hash=hash_name,
            cipher=f"{_text(phdr.cipher_name)}-{_text(phdr.cipher_mode)}",
        )
        for i, slot in enumerate(phdr.keyblock)
        if slot.active == LUKS_KEY_ENABLED
    )
    offset = phdr.payload_offset * LUKS_SECTOR
    return LuksHeader(
        version=1,
        cipher=f"{_text(phdr.cipher_name)}-{_text(phdr.cipher_mode)}",
        payload_offset=offset,
        payload_size=(reader.size - offset) // LUKS_SECTOR * LUKS_SECTOR,
        sector_size=LUKS_SECTOR,
        iv_tweak=0,
        key_size=phdr.key_bytes,
        keyslots=slots,
        digest={
            "hash": hash_name,
            "iterations": phdr.mk_digest_iter,
            "salt": bytes(phdr.mk_digest_salt),
            "digest": bytes(phdr.mk_digest),
        },
        label=None,
        uuid=_text(phdr.uuid) or None,
    )


def _luks2_json(reader: Reader) -> tuple[Any, dict[str, Any]]:
    """The binary header and JSON of the first copy whose checksum holds."""
    size = len(c_luks.luks2_hdr_disk)
    first = c_luks.luks2_hdr_disk(reader.read_at(0, size))
    problems = []
    for offset in (0, first.hdr_size):
        if offset not in (0, *LUKS2_HDR_SIZES) or offset + size > reader.size:
            problems.append(f"no header copy at {offset}")
            continue
        raw = reader.read_at(offset, size)
        hdr = c_luks.luks2_hdr_disk(raw)
        if hdr.hdr_size not in LUKS2_HDR_SIZES or offset + hdr.hdr_size > reader.size:
            problems.append(f"hdr_size {hdr.hdr_size} at {offset}")
            continue
        area = reader.read_at(offset + size, hdr.hdr_size - size)
        if _text(hdr.checksum_alg) != "sha256":
            problems.append(f"checksum {_text(hdr.checksum_alg)!r} at {offset}")
            continue
        blank = raw[:448] + b"\0" * 64 + raw[512:]
        digest = hashlib.sha256(blank + area).digest()
        if digest != bytes(hdr.csum)[:32]:
            problems.append(f"checksum mismatch at {offset}")
            continue
        try:
            data = json.loads(area.split(b"\0", 1)[0])
        except (ValueError, RecursionError):  # RecursionError: nested past Python's limit
            problems.append(f"JSON area at {offset + size} is not JSON")
            continue
        if isinstance(data, dict):
            return hdr, data
        problems.append(f"JSON area at {offset + size} is not an object")
    raise _error("; ".join(problems))


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            raise _error(f"JSON area lacks {'.'.join(path)}", "LUKS2 JSON area")
        data = data[key]
    return data


def _number(value: Any, what: str) -> int:
    """LUKS2 writes 64-bit numbers as decimal strings, smaller ones as JSON numbers."""
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _error(f"{what} = {value!r} is not a number", "LUKS2 JSON area")


def _b64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except binascii.Error:
        raise _error(f"{what} is not base64", "LUKS2 JSON area") from None


def _luks2(reader: Reader) -> LuksHeader:
    hdr, data = _luks2_json(reader)
    segments = _get(data, "segments")
    if not isinstance(segments, dict) or list(segments) != ["0"]:
        raise _error("one data segment expected (a reencryption in progress?)", "LUKS2 JSON area")
    seg = _get(segments, "0")
    if _get(seg, "type") != "crypt":
        raise _error(f"segment type {_get(seg, 'type')!r}", "LUKS2 JSON area")
    offset = _number(_get(seg, "offset"), "segment offset")
    size_field = _get(seg, "size")
    size = (
        (reader.size - offset) if size_field == "dynamic" else _number(size_field, "segment size")
    )
    sector = _number(_get(seg, "sector_size"), "sector_size")
    if size_field == "dynamic" and sector:
        size = size // sector * sector
    slots = []
    keyslots = _get(data, "keyslots")
    if not isinstance(keyslots, dict) or len(keyslots) > 32:
        raise _error("keyslots is not a table of at most 32", "LUKS2 JSON area")
    for number, slot in keyslots.items():
        if _get(slot, "type") != "luks2" or _get(slot, "area", "type") != "raw":
            continue
        kdf = dict(_get(slot, "kdf"))
        kdf["salt"] = _b64(kdf.get("salt"), f"keyslot {number} salt")
        slots.append(
            Keyslot(
                number=_number(number, "keyslot number"),
                kdf=kdf,
                material_offset=_number(_get(slot, "area", "offset"), "keyslot offset"),
                key_size=_number(_get(slot, "key_size"), "keyslot key_size"),
                stripes=_number(_get(slot, "af", "stripes"), "stripes"),
                af_hash=str(_get(slot, "af", "hash")),
                cipher=str(_get(slot, "area", "encryption")),
            )
        )
    digests = _get(data, "digests")
    digest = (
        next(
            (d for d in digests.values() if isinstance(d, dict) and "0" in d.get("segments", [])),
            None,
        )
        if isinstance(digests, dict)
        else None
    )
    if digest is None or _get(digest, "type") != "pbkdf2":
        raise _error("no pbkdf2 digest for segment 0", "LUKS2 JSON area")
    return LuksHeader(
        version=2,
        cipher=str(_get(seg, "encryption")),
        payload_offset=offset,
        payload_size=size,
        sector_size=sector,
        iv_tweak=_number(_get(seg, "iv_tweak"), "iv_tweak"),
        key_size=slots[0].key_size if slots else 64,
        keyslots=tuple(slots),
        digest={
            "hash": str(_get(digest, "hash")),
            "iterations": _number(_get(digest, "iterations"), "digest iterations"),
            "salt": _b64(_get(digest, "salt"), "digest salt"),
            "digest": _b64(_get(digest, "digest"), "digest"),
        },
        label=_text(hdr.label) or None,
        uuid=_text(hdr.uuid) or None,
    )


def _check_slot(slot: Keyslot, header: LuksHeader, size: int) -> None:
    where = f"key slot {slot.number}"
    kdf = slot.kdf
    if slot.key_size != header.key_size or not 1 <= slot.stripes <= MAX_STRIPES:
        raise _error(f"key of {slot.key_size} bytes in {slot.stripes} stripes", where)
    if slot.af_hash not in HASHES or slot.cipher not in CIPHERS:
        raise _error(f"hash {slot.af_hash!r}, cipher {slot.cipher!r}", where)
    if slot.material_offset + slot.key_size * slot.stripes > min(size, header.payload_offset):
        raise _error("key material lies past the header area", where)
    kind = kdf.get("type")
    if kind == "pbkdf2":
        iterations = kdf.get("iterations")
        if kdf.get("hash") not in HASHES or not isinstance(iterations, int):
            raise _error(f"pbkdf2 {kdf.get('hash')!r} {iterations!r}", where)
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise _error(f"{iterations} PBKDF2 iterations (at most {MAX_ITERATIONS})", where)
    elif kind in ("argon2i", "argon2id"):
        time, memory, cpus = kdf.get("time"), kdf.get("memory"), kdf.get("cpus")
        if not (
            isinstance(time, int)
            and isinstance(memory, int)
            and isinstance(cpus, int)
            and 1 <= time <= MAX_ARGON2_TIME
            and 8 <= memory <= MAX_ARGON2_MEMORY
            and 1 <= cpus <= MAX_ARGON2_THREADS
        ):
            raise _error(f"argon2 time {time!r}, memory {memory!r} KiB, cpus {cpus!r}", where)
    else:
        raise _error(f"key derivation {kind!r} is not supported", where)


def _derive(kdf: dict[str, Any], secret: bytes, length: int) -> bytes:
    if kdf["type"] == "pbkdf2":
        return hashlib.pbkdf2_hmac(kdf["hash"], secret, kdf["salt"], kdf["iterations"], length)
    from argon2.low_level import Type, hash_secret_raw  # only LUKS2 argon2 slots need it

    kind = Type.ID if kdf["type"] == "argon2id" else Type.I
    return hash_secret_raw(
        secret, kdf["salt"], kdf["time"], kdf["memory"], kdf["cpus"], length, kind
    )


def _xts(key: bytes, data: bytes, first_sector: int, sector_size: int, decrypt: bool) -> bytes:
    """AES-XTS-plain64 over whole sectors; the IV is the little-endian sector number."""
    out = bytearray(len(data))
    aes = algorithms.AES(key)
    for pos in range(0, len(data), sector_size):
        iv = (first_sector + pos // sector_size).to_bytes(16, "little")
        cipher = Cipher(aes, modes.XTS(iv))
        ctx = cipher.decryptor() if decrypt else cipher.encryptor()
        out[pos : pos + sector_size] = ctx.update(data[pos : pos + sector_size]) + ctx.finalize()
    return bytes(out)


def _af_merge(material: bytes, key_size: int, stripes: int, hash_name: str) -> bytes:
    """Undo the anti-forensic split: fold every stripe but the last through the diffuser."""
    digest_size = hashlib.new(hash_name).digest_size
    buf = bytes(key_size)
    for i in range(stripes - 1):
        stripe = material[i * key_size : (i + 1) * key_size]
        mixed = bytes(a ^ b for a, b in zip(buf, stripe, strict=True))
        out = bytearray()
        for j in range(0, key_size, digest_size):
            block = mixed[j : j + digest_size]
            h = hashlib.new(hash_name, (j // digest_size).to_bytes(4, "big") + block).digest()
            out += h[: len(block)]
        buf = bytes(out)
    last = material[(stripes - 1) * key_size : stripes * key_size]
    return bytes(a ^ b for a, b in zip(buf, last, strict=True))


def unlock(reader: Reader, header: LuksHeader, passphrase: bytes, where: str) -> bytes:
    """The volume key that ``passphrase`` opens; ``LuksKeyRejected`` when no slot opens."""
    digest = header.digest
    for slot in header.keyslots:
        derived = _derive(slot.kdf, passphrase, slot.key_size)
        length = -(-slot.key_size * slot.stripes // LUKS_SECTOR) * LUKS_SECTOR
        material = _xts(
            derived, reader.read_at(slot.material_offset, length), 0, LUKS_SECTOR, decrypt=True
        )
        key = _af_merge(material, slot.key_size, slot.stripes, slot.af_hash)
        check = hashlib.pbkdf2_hmac(
            digest["hash"], key, digest["salt"], digest["iterations"], len(digest["digest"])
        )
        if hmac.compare_digest(check, digest["digest"]):
            return key
    raise LuksKeyRejected(
        where=where, detail=f"the key opens none of the {len(header.keyslots)} LUKS key slots"
    )


class DecryptingReader:
    """The plaintext of a LUKS payload, read by offset (whole sectors decrypted)."""

    def __init__(self, outer: Reader, header: LuksHeader, key: bytes) -> None:
        self._outer = outer
        self._header = header
        self._key = key

    @property
    def size(self) -> int:
        return self._header.payload_size

    def read_at(self, offset: int, length: int) -> bytes:
        h = self._header
        if offset < 0 or length < 0 or offset + length > h.payload_size:
            raise _error(f"read of {length} bytes at {offset} leaves the payload", "payload")
        start = offset // h.sector_size * h.sector_size
        end = -(-(offset + length) // h.sector_size) * h.sector_size
        data = self._outer.read_at(h.payload_offset + start, end - start)
        # dm-crypt counts IVs in 512-byte sectors for LUKS1; LUKS2 with larger sectors
        # counts in those (iv_large_sectors)
        first = h.iv_tweak + start // h.sector_size
        plain = _xts(self._key, data, first, h.sector_size, decrypt=True)
        return plain[offset - start : offset - start + length]


def read(reader: Reader, passphrase: bytes | None, probe: Probe, where: str) -> FilesystemInfo:
    """The container's used map: everything without a key; with one, the header area
    and the sectors that hold the inner filesystem's used blocks."""
    header = read_header(reader)
    kind = f"luks{header.version}"
    mapping = ((0, header.payload_offset, header.payload_size),)
    if passphrase is None:
        note = (
            f"{kind.upper()} container, no key given: its encrypted area imaged whole "
            "(give --luks-key-file to store only the used sectors, still encrypted)"
        )
        volume = Volume(
            "luks", "", kind, "raw", header.payload_size, mapping, header.payload_size,
            header.label, header.uuid, encrypted=True, note=note,
        )  # fmt: skip
        return FilesystemInfo(
            kind, reader.size, header.sector_size, ExtentMap.span(0, reader.size),
            header.label, header.uuid, note, (volume,),
        )  # fmt: skip
    key = unlock(reader, header, passphrase, where)
    inner = probe(DecryptingReader(reader, header, key))
    inner_used = inner.used.align_out(header.sector_size)
    used = ExtentMap.span(0, header.payload_offset) | map_out(inner_used, mapping)
    volume = Volume(
        "luks", "", kind, inner.type, header.payload_size, mapping, inner.used_bytes,
        header.label, header.uuid, encrypted=True, note=inner.note,
    )  # fmt: skip
    below = [replace(v, encrypted=True) for v in nest(inner.volumes, "luks")]
    return FilesystemInfo(
        kind, reader.size, header.sector_size, used, header.label, header.uuid,
        volumes=(volume, *below),
    )  # fmt: skip
