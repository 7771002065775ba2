"""LUKS1 and LUKS2 on-disk headers, declared once: read and built by name everywhere.

LUKS1: "LUKS On-Disk Format Specification" version 1.2.3, section 2.4 (the phdr and
its eight key slots). LUKS2: "LUKS2 On-Disk Format Specification" version 1.1.x,
section 2.1 (the binary header; a JSON area follows it). Both big-endian.
"""

from __future__ import annotations

from typing import Any

from dissect.cstruct import cstruct  # type: ignore[import-untyped]

__all__ = [
    "LUKS2_HDR_SIZES",
    "LUKS_KEY_ENABLED",
    "LUKS_MAGIC",
    "LUKS_NUMKEYS",
    "LUKS_SECTOR",
    "c_luks",
]

LUKS_MAGIC = b"LUKS\xba\xbe"
LUKS2_MAGIC_2 = b"SKUL\xba\xbe"  # the secondary LUKS2 header
LUKS_NUMKEYS = 8
LUKS_KEY_ENABLED = 0x00AC71F3
LUKS_SECTOR = 512
# hdr_size (binary header + JSON area) allowed by the LUKS2 specification
LUKS2_HDR_SIZES = frozenset(16384 << n for n in range(9))  # 16 KiB .. 4 MiB

c_luks: Any = cstruct(endian=">").load("""
struct luks1_keyslot {
    uint32  active;             /* state of keyslot, enabled/disabled */
    uint32  iterations;         /* iteration parameter for PBKDF2 */
    char    salt[32];           /* salt parameter for PBKDF2 */
    uint32  key_material_offset;/* start sector of key material */
    uint32  stripes;            /* number of anti-forensic stripes */
};

struct luks1_phdr {
    char    magic[6];           /* LUKS_MAGIC */
    uint16  version;            /* LUKS version (1) */
    char    cipher_name[32];    /* cipher name specification */
    char    cipher_mode[32];    /* cipher mode specification */
    char    hash_spec[32];      /* hash specification */
    uint32  payload_offset;     /* start offset of the bulk data (in sectors) */
    uint32  key_bytes;          /* number of key bytes */
    char    mk_digest[20];      /* master key checksum from PBKDF2 */
    char    mk_digest_salt[32]; /* salt parameter for master key PBKDF2 */
    uint32  mk_digest_iter;     /* iterations parameter for master key PBKDF2 */
    char    uuid[40];           /* UUID of the partition */
    luks1_keyslot keyblock[8];  /* key slots */
};

struct luks2_hdr_disk {
    char    magic[6];           /* "LUKS\\xba\\xbe" or "SKUL\\xba\\xbe" */
    uint16  version;            /* Version 2 */
    uint64  hdr_size;           /* size including JSON area [bytes] */
    uint64  seqid;              /* sequence ID, increased on update */
    char    label[48];          /* ASCII label or empty */
    char    checksum_alg[32];   /* checksum algorithm, "sha256" */
    char    salt[64];           /* salt, unique for every header */
    char    uuid[40];           /* UUID of device */
    char    subsystem[48];      /* owner subsystem label or empty */
    uint64  hdr_offset;         /* offset from device start [bytes] */
    char    _padding[184];      /* must be zeroed */
    char    csum[64];           /* header checksum */
    char    _padding4096[3584]; /* padding, must be zeroed */
};
""")
