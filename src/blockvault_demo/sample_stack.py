"""Sample LVM2 physical volumes and LUKS containers, built by the real tools.

The host kernel may have no device-mapper, so nothing here is ever activated:
``pvcreate``/``vgcreate``/``lvcreate --driverloaded n`` write LVM metadata only, and
each LV's filesystem is made by ``mkfs`` in a temporary file and written at the
physical extents that LVM itself reports (``lvs -o seg_pe_ranges``, ``pvs -o
pe_start``), never at places computed here. ``cryptsetup luksFormat`` works on a
loop device without dm; the content of a LUKS container is encrypted here with the
volume key ``cryptsetup luksDump --dump-volume-key`` gives (AES-XTS-plain64).

LVM runs with its own empty ``LVM_SYSTEM_DIR`` and ``--devices`` naming our loop
device only, so tests running at once never see each other's volume groups and no
``/etc/lvm`` backup is written. Needs root (loop devices).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from blockvault.errors import UsageError

__all__ = [
    "LogicalVolumeSpec",
    "LuksContainer",
    "aes_xts_encrypt",
    "luks_format",
    "make_pv",
    "write_encrypted",
]

MiB = 1024 * 1024


@dataclass(frozen=True)
class LogicalVolumeSpec:
    name: str
    size: int  # bytes, a multiple of the extent size
    content: Path | None = None  # a tree for mkfs.ext4 -d; None: no filesystem
    fs: str = "ext4"


def _run(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise UsageError(f"{args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


@contextlib.contextmanager
def loop_device(image: Path, offset: int = 0, size: int | None = None) -> Iterator[str]:
    args = ["losetup", "--find", "--show", "--offset", str(offset)]
    if size:
        args += ["--sizelimit", str(size)]
    dev = _run(*args, image).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def make_pv(
    image: Path,
    offset: int,
    size: int,
    vg: str,
    lvs: Sequence[LogicalVolumeSpec],
    extent_size: int = MiB,
) -> dict[str, list[tuple[int, int]]]:
    """Make ``[offset, offset + size)`` of ``image`` a PV of VG ``vg`` holding ``lvs``,
    each with its filesystem written at its extents. Returns, per LV, the runs
    ``(PV-relative byte offset, length)`` of its segments as LVM reports them."""
    with (
        tempfile.TemporaryDirectory(prefix="bv-lvm-") as scratch,
        loop_device(image, offset, size) as dev,
    ):
        env = {"LVM_SYSTEM_DIR": scratch, "LVM_SUPPRESS_FD_WARNINGS": "1"}
        common = ("--devices", dev)
        _run("pvcreate", "-q", *common, dev, env=env)
        _run("vgcreate", "-q", *common, "-s", f"{extent_size // 1024}k", vg, dev, env=env)
        for lv in lvs:
            _run(
                "lvcreate", "--driverloaded", "n", "-q", "-y", *common, "-L",
                f"{lv.size // 1024}k", "-n", lv.name, vg, env=env,
            )  # fmt: skip
        pe_start = int(
            _run("pvs", *common, "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start",
                 dev, env=env).strip()
        )  # fmt: skip
        report = _run(
            "lvs", *common, "--noheadings", "--separator", "|", "-o",
            "lv_name,seg_start_pe,seg_pe_ranges", vg, env=env,
        )  # fmt: skip
    places: dict[str, list[tuple[int, int]]] = {lv.name: [] for lv in lvs}
    for line in report.splitlines():
        name, _, ranges = (field.strip() for field in line.split("|"))
        for first, last in re.findall(r":(\d+)-(\d+)", ranges):
            start = pe_start + int(first) * extent_size
            places[name].append((start, (int(last) - int(first) + 1) * extent_size))
    for lv in lvs:
        if lv.content is not None or lv.fs != "ext4":
            _write_fs(image, offset, lv, places[lv.name])
    return places


def _write_fs(image: Path, offset: int, lv: LogicalVolumeSpec, runs: list[tuple[int, int]]) -> None:
    """mkfs in a temporary file of the LV's size, then copied run by run."""
    with tempfile.NamedTemporaryFile(dir=image.parent, prefix="lv-") as tmp:
        os.truncate(tmp.name, lv.size)
        args = ["-q", "-F", "-d", str(lv.content)] if lv.content else ["-q", "-F"]
        _run(f"mkfs.{lv.fs}", *args, tmp.name)
        with open(tmp.name, "rb") as src, open(image, "r+b") as dst:
            at = 0
            for start, length in runs:
                src.seek(at)
                dst.seek(offset + start)
                dst.write(src.read(length))
                at += length


@dataclass(frozen=True)
class LuksContainer:
    """What ``cryptsetup luksDump`` says about a container made by ``luks_format``."""

    key: bytes  # the volume key
    payload_offset: int  # bytes, container-relative
    sector_size: int


def luks_format(
    image: Path, offset: int, size: int, key_file: Path, luks_type: str = "luks2", *extra: str
) -> LuksContainer:
    """``cryptsetup luksFormat`` on ``[offset, offset + size)`` of ``image`` with fast key
    derivation (PBKDF2, 1000 iterations, unless ``extra`` says otherwise)."""
    fast = () if "--pbkdf" in extra else ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
    with loop_device(image, offset, size) as dev:
        _run(
            "cryptsetup", "luksFormat", "-q", "--type", luks_type, *fast,
            "--key-file", key_file, *extra, dev,
        )  # fmt: skip
        dump = _run(
            "cryptsetup", "luksDump", "--dump-volume-key", "-q", "--key-file", key_file, dev
        )
        info = _run("cryptsetup", "luksDump", dev)
    hexkey = re.search(r"(?:MK|Volume key) dump:\s*((?:[0-9a-f]{2}\s*)+)", dump)
    payload = re.search(r"Payload offset:\s*(\d+)", dump)
    sector = re.search(r"sector: (\d+) \[bytes\]", info)
    if hexkey is None or payload is None:
        raise UsageError("cryptsetup luksDump printed no volume key or payload offset")
    return LuksContainer(
        bytes.fromhex(re.sub(r"\s", "", hexkey.group(1))),
        int(payload.group(1)) * 512,
        int(sector.group(1)) if sector else 512,
    )


def write_encrypted(image: Path, offset: int, container: LuksContainer, plain: Path) -> None:
    """Encrypt the file ``plain`` as the content of ``container`` (at ``offset`` of
    ``image``), as dm-crypt would have written it."""
    with open(plain, "rb") as src, open(image, "r+b") as dst:
        at = 0
        while block := src.read(4 * MiB):
            data = aes_xts_encrypt(
                container.key, block, at // container.sector_size, container.sector_size
            )
            dst.seek(offset + container.payload_offset + at)
            dst.write(data)
            at += len(block)


def aes_xts_encrypt(
    key: bytes, plaintext: bytes, first_sector: int, sector_size: int = 512
) -> bytes:
    """AES-XTS-plain64 of whole sectors numbered from ``first_sector``, in units of
    ``sector_size`` (LUKS2 with larger sectors sets dm-crypt's iv_large_sectors)."""
    out = bytearray()
    for i in range(0, len(plaintext), sector_size):
        iv = (first_sector + i // sector_size).to_bytes(16, "little")
        enc = Cipher(algorithms.AES(key), modes.XTS(iv)).encryptor()
        out += enc.update(plaintext[i : i + sector_size]) + enc.finalize()
    return bytes(out)
