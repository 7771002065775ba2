"""Hostile LUKS headers and LVM metadata: every size, count and cost read from them is
bounded, and damage is a ``FilesystemError`` (the layout then images the partition raw
with a note), never a hang, a huge allocation or a traceback.

Each case starts from a real header (cryptsetup luksFormat, pvcreate/vgcreate/lvcreate)
and changes one field, recomputing the checksums the format has, so that the bound
itself and not a checksum is what refuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blockvault.disk.device import open_device
from blockvault.disk.fs.probe import probe
from blockvault.disk.layout import read_layout
from blockvault.disk.volumes import luks, lvm
from blockvault.disk.volumes.c_lvm import calc_crc
from blockvault.errors import FilesystemError
from blockvault_demo.sample_stack import LogicalVolumeSpec, luks_format, make_pv
from tests.conftest import need_tools, needs_root

MiB = 1024 * 1024

pytestmark = needs_root


@pytest.fixture(scope="module")
def luks2_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("cryptsetup")
    work = tmp_path_factory.mktemp("hostile-luks")
    image = work / "luks2.img"
    image.touch()
    os.truncate(image, 20 * MiB)
    key = work / "key"
    key.write_bytes(b"k")
    luks_format(image, 0, 20 * MiB, key, "luks2")
    return image


@pytest.fixture(scope="module")
def luks1_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("cryptsetup")
    work = tmp_path_factory.mktemp("hostile-luks1")
    image = work / "luks1.img"
    image.touch()
    os.truncate(image, 8 * MiB)
    key = work / "key"
    key.write_bytes(b"k")
    luks_format(image, 0, 8 * MiB, key, "luks1")
    return image


def _copy(source: Path, tmp_path: Path) -> Path:
    out = tmp_path / source.name
    out.write_bytes(source.read_bytes())
    return out


def _rewrite_luks2(image: Path, change: Callable[[dict[str, Any]], None] | None,
                   raw_json: bytes | None = None, hdr_size: int | None = None) -> None:  # fmt: skip
    """Change the JSON area of both header copies and re-checksum them."""
    with open(image, "r+b") as f:
        size = int.from_bytes(f.read(16)[8:16], "big")
        for offset in (0, size):
            f.seek(offset)
            header = bytearray(f.read(4096))
            area = f.read(size - 4096)
            data = json.loads(area.split(b"\0", 1)[0])
            if change:
                change(data)
            text = raw_json if raw_json is not None else json.dumps(data).encode()
            area = text.ljust(size - 4096, b"\0")[: size - 4096]
            if hdr_size is not None:
                header[8:16] = hdr_size.to_bytes(8, "big")
            header[448:512] = bytes(64)
            header[448:480] = hashlib.sha256(bytes(header) + area).digest()
            f.seek(offset)
            f.write(bytes(header) + area)


def _refused(image: Path, match: str) -> None:
    started = time.monotonic()
    with open_device(str(image)) as device, pytest.raises(FilesystemError, match=match):
        probe(device, b"k")
    assert time.monotonic() - started < 5  # refused before any costly work
    with open_device(str(image)) as device, pytest.raises(FilesystemError):
        luks.read_header(device)  # without a key too


def _slot(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda data: change(data["keyslots"]["0"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (_slot(lambda s: s["kdf"].update(iterations=10**12)), "PBKDF2 iterations"),
        (
            _slot(lambda s: s["kdf"].update(type="argon2id", time=4, memory=1 << 40, cpus=1)),
            "argon2",
        ),
        (_slot(lambda s: s.update(key_size=1 << 20)), "key of"),
        (_slot(lambda s: s["af"].update(stripes=1 << 40)), "stripes"),
        (_slot(lambda s: s["area"].update(offset=str(1 << 50))), "key material"),
        (lambda d: d["segments"]["0"].update(offset=str(1 << 50)), "payload"),
        (lambda d: d["segments"]["0"].update(sector_size=3), "sector size"),
        (lambda d: d["segments"]["0"].update(offset="-5"), "not a number"),
        (lambda d: d.update(segments={"0": {}, "1": {}}), "one data segment"),
        (lambda d: d.pop("digests"), "digests"),
    ],
    ids=[
        "iterations", "argon2-memory", "key-size", "stripes", "slot-offset",
        "payload-offset", "sector-size", "negative", "segments", "no-digest",
    ],
)  # fmt: skip
def test_hostile_luks2_json_is_refused(
    luks2_image: Path,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    match: str,
) -> None:
    image = _copy(luks2_image, tmp_path)
    _rewrite_luks2(image, change)
    _refused(image, match)


def test_luks2_json_area_not_json_or_oversized(luks2_image: Path, tmp_path: Path) -> None:
    image = _copy(luks2_image, tmp_path)
    _rewrite_luks2(image, None, raw_json=b'{"keyslots": {"0": ' * 2000)
    _refused(image, "not JSON")
    image = _copy(luks2_image, tmp_path)
    _rewrite_luks2(image, None, hdr_size=1 << 40)  # a JSON area past any allowed size
    _refused(image, "hdr_size|no header copy")


def test_truncated_luks2_is_refused(luks2_image: Path, tmp_path: Path) -> None:
    image = tmp_path / "short.img"
    image.write_bytes(luks2_image.read_bytes()[: 8 * 1024])
    _refused(image, "hdr_size|no header copy")


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (108, 1 << 30, "volume key of"),  # key_bytes
        (208 + 4, 0xFFFFFFFF, "PBKDF2 iterations"),  # keyblock[0].iterations
        (208 + 44, 0xFFFFFFFF, "stripes"),  # keyblock[0].stripes
        (104, 0xFFFFFFFF, "payload"),  # payload_offset (sectors)
    ],
    ids=["key-bytes", "iterations", "stripes", "payload"],
)
def test_hostile_luks1_header_is_refused(
    luks1_image: Path, tmp_path: Path, offset: int, value: int, match: str
) -> None:
    image = _copy(luks1_image, tmp_path)
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(">I", value))
    _refused(image, match)


def test_damaged_luks_is_imaged_raw_with_a_note(luks2_image: Path, tmp_path: Path) -> None:
    image = _copy(luks2_image, tmp_path)
    _rewrite_luks2(image, lambda d: d["segments"]["0"].update(offset=str(1 << 50)))
    with open_device(str(image)) as device:
        layout = read_layout(device, {None: b"k"})
    (part,) = layout.partitions
    assert part.fs.type == "raw" and "payload" in (part.fs.note or "")
    assert layout.warnings


# ---- LVM ----


@pytest.fixture(scope="module")
def pv_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("pvcreate", "mkfs.ext4")
    image = tmp_path_factory.mktemp("hostile-lvm") / "pv.img"
    image.touch()
    os.truncate(image, 24 * MiB)
    make_pv(image, 0, 24 * MiB, f"bv{os.urandom(5).hex()}", [LogicalVolumeSpec("lv", 8 * MiB)])
    return image


def _rewrite_lvm(image: Path, change: Callable[[str], str]) -> None:
    """Replace the committed metadata text and fix both of its checksums."""
    with open(image, "r+b") as f:
        f.seek(4096)
        header = bytearray(f.read(512))
        locn_offset, locn_size = struct.unpack_from("<QQ", header, 40)
        f.seek(4096 + locn_offset)
        text = f.read(locn_size).decode()
        new = change(text).encode()
        assert len(new) < 1 * MiB - locn_offset
        f.seek(4096 + locn_offset)
        f.write(new)
        struct.pack_into("<QQI", header, 40, locn_offset, len(new), calc_crc(new))
        struct.pack_into("<I", header, 0, calc_crc(bytes(header[4:])))
        f.seek(4096)
        f.write(header)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: re.sub(r"extent_count = \d+", f"extent_count = {1 << 40}", t), "extent_count"),
        (lambda t: re.sub(r"segment_count = \d+", "segment_count = 10000000", t), "segment_count"),
        (lambda t: re.sub(r'"pv0", \d+', f'"pv0", {1 << 40}', t), "extents"),
        (lambda t: re.sub(r"pe_count = \d+", f"pe_count = {1 << 50}", t), "leave"),
        (lambda t: re.sub(r"extent_size = \d+", "extent_size = 0", t), "extent_size"),
        (lambda t: t.replace("logical_volumes {", "logical_volumes {" + "a {" * 5000), "deeper"),
        (lambda t: t.replace("stripes = [", "stripes = [" + "0, " * 70000), "more than"),
        (lambda t: t[: len(t) // 2], "ends"),
    ],
    ids=["extent-count", "segment-count", "stripe-start", "pe-count", "extent-size", "nesting",
         "long-list", "truncated"],
)  # fmt: skip
def test_hostile_lvm_metadata_is_refused(
    pv_image: Path, tmp_path: Path, change: Callable[[str], str], match: str
) -> None:
    image = _copy(pv_image, tmp_path)
    _rewrite_lvm(image, change)
    started = time.monotonic()
    with open_device(str(image)) as device, pytest.raises(FilesystemError, match=match):
        lvm.read(device, probe)
    assert time.monotonic() - started < 5


def test_lvm_checksums_are_checked(pv_image: Path, tmp_path: Path) -> None:
    image = _copy(pv_image, tmp_path)
    with open(image, "r+b") as f:
        f.seek(4096 + 40)
        (locn_offset,) = struct.unpack("<Q", f.read(8))
        f.seek(4096 + locn_offset + 100)  # inside the committed text
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    with open_device(str(image)) as device:
        layout = read_layout(device)
    assert layout.partitions[0].fs.type == "raw"
    assert any("checksum" in w for w in layout.warnings)
