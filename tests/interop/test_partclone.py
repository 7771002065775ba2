"""The partclone reader against images written by the real partclone (0.3.23), and
against variants re-encoded from them (forge.py) for what that partclone cannot write.

Expected bytes come from the filesystem image partclone read, never from our reader:
every used block must equal the source's bytes at its offset, and the set of used
blocks must be partclone's own bitmap as ``partclone.info``-style parsing in forge.py
reads it.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from blockvault.errors import ImageDamaged
from blockvault.interop.partclone import PartcloneImage
from blockvault.interop.payload import Payload, pieces_of
from tests.conftest import need_tools, sh
from tests.interop.forge import Parsed, crc32, encode_v1, encode_v2

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def ext4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 48 MiB ext4 filesystem holding files (written by mke2fs -d, no mount needed)
    and partclone's CRC32 image of it, strips of 64 blocks."""
    need_tools("partclone.ext4", "mkfs.ext4")
    work = tmp_path_factory.mktemp("pc")
    content = work / "content"
    content.mkdir()
    for n in range(6):
        (content / f"f{n}").write_bytes(bytes(range(256)) * (n * 2000 + 7) + b"%d" % n)
    (content / "noise").write_bytes(random.Random(19).randbytes(300_000))  # incompressible
    fs = work / "fs.img"
    with fs.open("wb") as f:
        f.truncate(48 * MiB)
    sh("mkfs.ext4", "-q", "-b", "4096", "-d", content, fs)
    image = work / "crc32.pcl"
    sh("partclone.ext4", "-q", "-c", "-a1", "-k", "64", "-s", fs, "-O", image)
    return fs, image


def read_all(
    first: Path, limit: int | None = None
) -> tuple[PartcloneImage, list[tuple[int, bytes]]]:
    with Payload(pieces_of(first)) as payload:
        image = PartcloneImage(payload, limit=limit)
        return image, [(offset, bytes(data)) for offset, data in image.runs()]


def assert_matches(
    fs: Path, image: PartcloneImage, runs: list[tuple[int, bytes]], parsed: Parsed
) -> None:
    raw = fs.read_bytes()
    bs = parsed.block_size
    got_blocks = []
    for offset, data in runs:
        assert data == raw[offset : offset + len(data)]
        got_blocks += range(offset // bs, (offset + len(data)) // bs)
    assert got_blocks == parsed.used
    assert image.used.total == len(parsed.used) * bs


@pytest.mark.parametrize(
    "options", [["-a0"], ["-a1"], ["-a1", "-K", "-k", "7"], ["-a1", "-k", "1"]]
)
def test_real_partclone_images_read_back(
    ext4: tuple[Path, Path], options: list[str], tmp_path: Path
) -> None:
    fs, _ = ext4
    out = tmp_path / "img"
    sh("partclone.ext4", "-q", "-c", *options, "-s", fs, "-O", out)
    image, runs = read_all(out, limit=fs.stat().st_size)
    assert image.header.fs_tag == "EXTFS" and image.header.writer == "0.3.23"
    assert_matches(fs, image, runs, Parsed(out.read_bytes()))


@pytest.mark.parametrize(
    ("mode", "per", "reseed"),
    [("xxh64", 64, True), ("xxh64", 5, False), ("xxh128", 64, True), ("xxh128", 3, False),
     ("crc32", 1000, False), ("none", 1, True)],
)  # fmt: skip
def test_re_encoded_checksum_modes(
    ext4: tuple[Path, Path], tmp_path: Path, mode: str, per: int, reseed: bool
) -> None:
    fs, real = ext4
    parsed = Parsed(real.read_bytes())
    forged = tmp_path / f"{mode}.pcl"
    forged.write_bytes(encode_v2(parsed, mode, per, reseed))
    image, runs = read_all(forged)
    assert (
        image.header.checksum_mode
        == {"none": 0, "crc32": 0x20, "xxh64": 0x30, "xxh128": 0x31}[mode]
    )
    assert_matches(fs, image, runs, parsed)
    if mode == "none":
        return
    # one byte of the 10th used block changed: its strip's checksum fails, and the
    # position named is that checksum's byte in the file
    data = bytearray(forged.read_bytes())
    header_and_bitmap = 110 + len(parsed.bitmap) + 4
    data[header_and_bitmap + 9 * parsed.block_size + 100] ^= 0x40
    forged.write_bytes(bytes(data))
    with pytest.raises(
        ImageDamaged, match=rf"{mode.upper()} checksum is wrong at {forged.name} byte \d+"
    ):
        read_all(forged)


@pytest.mark.parametrize("crc_size", [4, 8])
def test_version_1_images(ext4: tuple[Path, Path], tmp_path: Path, crc_size: int) -> None:
    fs, real = ext4
    parsed = Parsed(real.read_bytes())
    forged = tmp_path / "v1.pcl"
    forged.write_bytes(encode_v1(parsed, crc_size))
    image, runs = read_all(forged)
    assert image.header.version == 1
    assert_matches(fs, image, runs, parsed)
    # a cut image is refused with where it ends
    forged.write_bytes(forged.read_bytes()[: -(parsed.block_size)])
    with pytest.raises(ImageDamaged, match=r"ends early|follow"):
        read_all(forged)


def test_version_1_bitmap_magic_checked(ext4: tuple[Path, Path], tmp_path: Path) -> None:
    _, real = ext4
    parsed = Parsed(real.read_bytes())
    data = bytearray(encode_v1(parsed, 4))
    data[4160 + parsed.total] ^= 1  # the B of BiTmAgIc
    forged = tmp_path / "v1.pcl"
    forged.write_bytes(bytes(data))
    with pytest.raises(
        ImageDamaged, match=rf"no BiTmAgIc after the bitmap at v1.pcl byte {4160 + parsed.total}"
    ):
        read_all(forged)


def test_damage_is_refused_with_its_position(ext4: tuple[Path, Path], tmp_path: Path) -> None:
    _, real = ext4
    raw = real.read_bytes()
    parsed = Parsed(raw)
    bitmap_end = 110 + len(parsed.bitmap)

    def damaged(at: int) -> Path:
        data = bytearray(raw)
        data[at] ^= 1
        out = tmp_path / f"at{at}.pcl"
        out.write_bytes(bytes(data))
        return out

    with pytest.raises(ImageDamaged, match=r"header checksum is wrong at at40\.pcl byte 106"):
        read_all(damaged(40))
    with pytest.raises(ImageDamaged, match=rf"bitmap checksum is wrong at .* byte {bitmap_end}"):
        read_all(damaged(111))
    with pytest.raises(ImageDamaged, match="CRC32 checksum is wrong"):
        read_all(damaged(bitmap_end + 4 + 5000))
    # truncated: the stream ends inside a block
    cut = tmp_path / "cut.pcl"
    cut.write_bytes(raw[: len(raw) - 5000])
    with pytest.raises(
        ImageDamaged, match=rf"the image ends early .* at cut.pcl byte {len(raw) - 5000}"
    ):
        read_all(cut)
    # trailing bytes after the last checksum
    extra = tmp_path / "extra.pcl"
    extra.write_bytes(raw + b"x")
    with pytest.raises(
        ImageDamaged, match=rf"bytes follow the last block at extra.pcl byte {len(raw)}"
    ):
        read_all(extra)
    # an image of a device larger than the partition it is put in
    with pytest.raises(ImageDamaged, match="larger than the"):
        read_all(real, limit=parsed.total * parsed.block_size - 1)


def forge_header(parsed: Parsed, **changes: int) -> bytes:
    """A v2 header with fields changed and its CRC made right again: only the bounds
    checks stand between it and the reader."""
    from tests.interop.forge import V2_HEAD

    index = {"device_size": 5, "total": 6, "used": 8, "block_size": 9, "per": 15}
    fields = list(parsed.fields)
    for name, value in changes.items():
        fields[index[name]] = value
    head = V2_HEAD.pack(*fields)
    return head + crc32(head).to_bytes(4, "little")


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"block_size": 0}, "block size 0 is out of range"),
     ({"block_size": 1 << 31}, "out of range"),
     ({"total": 1 << 40}, "blocks is out of range"),
     ({"total": 3}, "used of 3 blocks"),
     ({"device_size": 1 << 62}, "larger than the"),
     ({"per": 0}, "blocks per checksum is out of range"),
     ({"used": 5}, "the bitmap marks")],
)  # fmt: skip
def test_hostile_headers_are_bounded(
    ext4: tuple[Path, Path], tmp_path: Path, changes: dict[str, int], message: str
) -> None:
    _, real = ext4
    raw = real.read_bytes()
    parsed = Parsed(raw)
    forged = tmp_path / "hostile.pcl"
    forged.write_bytes(forge_header(parsed, **changes) + raw[110:])
    with pytest.raises(ImageDamaged, match=message):
        read_all(forged, limit=1 << 40)  # as imported into a 1 TiB partition


@pytest.mark.parametrize(
    ("tool", "args"),
    [("gzip", ["-c"]), ("zstd", ["-c", "-q"]), ("xz", ["-c", "-T2"]), ("bzip2", ["-c"]),
     ("lz4", ["-c", "-q"]), ("pigz", ["-c"])],
)  # fmt: skip
def test_compressed_and_split_payloads(
    ext4: tuple[Path, Path], tmp_path: Path, tool: str, args: list[str]
) -> None:
    need_tools(tool, "split")
    fs, real = ext4
    packed = tmp_path / "packed"
    with packed.open("wb") as out:
        subprocess.run([tool, *args, str(real)], stdout=out, check=True)
    sh("split", "-b", "100000", "-a", "2", packed, tmp_path / "sda1.ext4-ptcl-img.x.")
    pieces = pieces_of(tmp_path / "sda1.ext4-ptcl-img.x.aa")
    assert len(pieces) > 2
    image, runs = read_all(pieces[0])
    assert_matches(fs, image, runs, Parsed(real.read_bytes()))
    # the last piece cut short: refused, naming the stream position reached
    last = pieces[-1].read_bytes()
    pieces[-1].write_bytes(last[: len(last) // 2])
    with pytest.raises(ImageDamaged, match=r"at .*byte \d+"):
        read_all(pieces[0])
    # a piece missing in the middle is named, not joined around
    pieces[1].unlink()
    with pytest.raises(ImageDamaged, match=r"piece sda1\.ext4-ptcl-img\.x\.ab is missing"):
        read_all(pieces[0])
