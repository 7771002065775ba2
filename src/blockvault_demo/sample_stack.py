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
    "add_thin_pool",
    "aes_xts_encrypt",
    "luks_format",
    "lvm_places",
    "make_pv",
    "pv_size",
    "striped_vg",
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


@contextlib.contextmanager
def _lvm(image: Path, offset: int, size: int) -> Iterator[tuple[str, dict[str, str]]]:
    """A loop device over the PV's bytes and the environment LVM runs in: a private
    ``LVM_SYSTEM_DIR`` (no /etc/lvm backups, no other test's volume groups)."""
    with (
        tempfile.TemporaryDirectory(prefix="bv-lvm-") as scratch,
        loop_device(image, offset, size) as dev,
    ):
        yield dev, {"LVM_SYSTEM_DIR": scratch, "LVM_SUPPRESS_FD_WARNINGS": "1"}


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
    with _lvm(image, offset, size) as (dev, env):
        common = ("--devices", dev)
        _run("pvcreate", "-q", *common, dev, env=env)
        _run("vgcreate", "-q", *common, "-s", f"{extent_size // 1024}k", vg, dev, env=env)
        for lv in lvs:
            _run(
                "lvcreate", "--driverloaded", "n", "-q", "-y", *common, "-L",
                f"{lv.size // 1024}k", "-n", lv.name, vg, env=env,
            )  # fmt: skip
    places = lvm_places(image, offset, size, extent_size)
    for lv in lvs:
        if lv.content is not None or lv.fs != "ext4":
            _write_fs(image, offset, lv, places[lv.name])
    return places


_THIN = """
\t\t{name} {{
\t\t\tid = "{id}"
\t\t\tstatus = [{status}]
\t\t\tflags = []
\t\t\tsegment_count = 1
\t\t\tsegment1 {{
\t\t\t\tstart_extent = 0
\t\t\t\textent_count = {count}
{body}\t\t\t}}
\t\t}}
"""


_ID_PARTS = ((0, 6), (6, 10), (10, 14), (14, 18), (18, 22), (22, 26), (26, 32))


def add_thin_pool(image: Path, offset: int, size: int, vg: str, first: int) -> None:
    """Add a thin pool (8 extents of data, 1 of metadata, 1 spare, from extent ``first``)
    and a 16-extent thin volume to VG ``vg``. ``lvcreate`` cannot make them without
    device-mapper, so they are written into the metadata text as LVM 2.03 writes them
    and restored with ``vgcfgrestore --force`` (LVM's own parser checks them)."""

    def lv(name: str, count: int, body: str, visible: bool = False) -> str:
        status = '"READ", "WRITE"' + (', "VISIBLE"' if visible else "")
        chars = os.urandom(16).hex()  # 32 characters of LVM's id alphabet
        ident = "-".join(chars[a:b] for a, b in _ID_PARTS)
        return _THIN.format(name=name, id=ident, status=status, count=count, body=body)

    def linear(at: int) -> str:
        return (
            f'\t\t\t\ttype = "striped"\n\t\t\t\tstripe_count = 1\n\t\t\t\tstripes = ["pv0", {at}]\n'
        )

    pool = (
        '\t\t\t\ttype = "thin-pool"\n\t\t\t\tmetadata = "pool_tmeta"\n\t\t\t\tpool = "pool_tdata"\n'
        "\t\t\t\ttransaction_id = 1\n\t\t\t\tchunk_size = 128\n"
        '\t\t\t\tdiscards = "passdown"\n\t\t\t\tzero_new_blocks = 1\n'
    )
    thin = (
        '\t\t\t\ttype = "thin"\n\t\t\t\tthin_pool = "pool"\n'
        "\t\t\t\ttransaction_id = 0\n\t\t\t\tdevice_id = 1\n"
    )
    lvs = (lv("pool", 8, pool, visible=True) + lv("thin", 16, thin, visible=True)
           + lv("lvol0_pmspare", 1, linear(first)) + lv("pool_tmeta", 1, linear(first + 1))
           + lv("pool_tdata", 8, linear(first + 2)))  # fmt: skip
    with _lvm(image, offset, size) as (dev, env), tempfile.TemporaryDirectory() as tmp:
        backup = Path(tmp) / "vg"
        _run("vgcfgbackup", "-q", "--devices", dev, "-f", backup, vg, env=env)
        text = backup.read_text()
        end = text.rindex("\t}\n")  # the end of logical_volumes
        backup.write_text(text[:end] + lvs + text[end:])
        _run("vgcfgrestore", "--force", "--devices", dev, "-f", backup, vg, env=env)


def striped_vg(
    image: Path, parts: Sequence[tuple[int, int]], vg: str, size: int
) -> list[list[tuple[int, int]]]:
    """Make each ``(offset, size)`` of ``image`` a PV of one VG ``vg`` and create an LV
    ``striped`` of ``size`` bytes striped across all of them (``lvcreate -i``; 64 KiB
    stripes), its bytes left as they are: a layout no single PV can be read by.
    Returns, per PV, the runs (PV-relative offset, length) of its extents, from ``lvs``."""
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="bv-lvm-"))
        devs = [stack.enter_context(loop_device(image, o, n)) for o, n in parts]
        env = {"LVM_SYSTEM_DIR": scratch, "LVM_SUPPRESS_FD_WARNINGS": "1"}
        common = [arg for dev in devs for arg in ("--devices", dev)]
        _run("pvcreate", "-q", *common, *devs, env=env)
        _run("vgcreate", "-q", *common, "-s", "1m", vg, *devs, env=env)
        _run(
            "lvcreate", "--driverloaded", "n", "-q", "-y", *common, "-i", str(len(devs)),
            "-I", "64k", "-L", f"{size // 1024}k", "-n", "striped", vg, env=env,
        )  # fmt: skip
        report = _run("lvs", *common, "--noheadings", "-o", "seg_pe_ranges", vg, env=env)
        starts = [
            int(_run("pvs", *common, "--noheadings", "--units", "b", "--nosuffix", "-o",
                     "pe_start", dev, env=env).strip())
            for dev in devs
        ]  # fmt: skip
    runs: list[list[tuple[int, int]]] = [[] for _ in devs]
    for dev, first, last in re.findall(r"(/dev/\S+):(\d+)-(\d+)", report):
        i = devs.index(dev)
        runs[i].append((starts[i] + int(first) * MiB, (int(last) - int(first) + 1) * MiB))
    return runs


def lvm_places(
    image: Path, offset: int, size: int, extent_size: int = MiB
) -> dict[str, list[tuple[int, int]]]:
    """Per LV of the PV at ``[offset, offset + size)`` of ``image`` (hidden ones as
    ``[name]``, as ``lvs -a`` shows them), the runs (PV-relative
    byte offset, length) of its segments, as ``lvs`` and ``pvs`` report them; ``vgck``
    must find the metadata consistent first."""
    with _lvm(image, offset, size) as (dev, env):
        common = ("--devices", dev)
        _run("vgck", *common, env=env)
        pe_start = int(
            _run("pvs", *common, "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start",
                 dev, env=env).strip()
        )  # fmt: skip
        report = _run(
            "lvs", "-a", *common, "--noheadings", "--separator", "|", "-o",
            "lv_name,seg_start_pe,seg_pe_ranges", env=env,
        )  # fmt: skip
    places: dict[str, list[tuple[int, int]]] = {}
    for line in report.splitlines():
        name, _, ranges = (field.strip() for field in line.split("|"))
        for first, last in re.findall(r":(\d+)-(\d+)", ranges):
            start = pe_start + int(first) * extent_size
            places.setdefault(name, []).append((start, (int(last) - int(first) + 1) * extent_size))
    return places


def pv_size(image: Path, offset: int, size: int) -> tuple[int, int]:
    """(PV size in bytes, extent count) as ``pvs`` reports them."""
    with _lvm(image, offset, size) as (dev, env):
        out = _run("pvs", "--devices", dev, "--noheadings", "--units", "b", "--nosuffix",
                   "-o", "pv_size,pv_pe_count", dev, env=env).split()  # fmt: skip
    return int(out[0]), int(out[1])


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
