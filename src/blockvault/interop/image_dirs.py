"""Image directories of other imaging tools, read into ``ForeignDisk`` records.

Clonezilla (and Rescuezilla, which writes the same layout, always split) marks its
directory with ``parts``; ``disk`` names the disks (absent for ``saveparts``), each
with ``<disk>-pt.sf`` (``sfdisk -d``), ``<disk>-mbr``, ``<disk>-hidden-data-after-mbr``,
``<disk>-gpt-1st``/``-2nd``; ``dev-fs.list`` the filesystems, ``swappt-<part>.info``
the swap areas (no data), ``*SUMS`` checksums of every file, ``Info-img-id.txt`` the
image's identity; payloads are ``<part>.<fs>-ptcl-img.<comp>[.aa…]`` (partclone) or
``<part>.dd-img[.aa…]`` (raw). FOG marks its directory with ``d1.partitions``
(``sfdisk -d``), with ``d1.mbr`` and ``d1p<N>.img`` partclone payloads.

Every name read from these files is hostile until checked: device names must be
plain (no ``/``, no ``..``) and every file read is bounded in size.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Final

from blockvault.errors import ImageDamaged, SourceError
from blockvault.interop.importer import ForeignDisk, ForeignPartition
from blockvault.interop.payload import HASHES, new_hash, pieces_of

__all__ = [
    "is_clonezilla",
    "is_fog",
    "is_redo",
    "read_clonezilla",
    "read_fog",
    "read_redo",
    "read_table_dump",
]

MAX_TEXT: Final = 1024 * 1024  # a list or dump longer than this is not one
PLAIN_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:-]{0,127}")
DUMP_ENTRY: Final = re.compile(r"^(?:/dev/)?(\S+)\s*:\s*(.*)$")
UNSUPPORTED: Final = {
    "lvm_vg_dev.list": "LVM volume groups",
    "lvm_logv.list": "LVM logical volumes",
    "luks-dev.list": "LUKS-encrypted partitions",
    "ecryptfs.info": "an image encrypted by Clonezilla (eCryptfs): decrypt it first",
    "gocryptfs.info": "an image encrypted by Clonezilla (gocryptfs): decrypt it first",
    "mdstat.txt": "software RAID",
}


def is_clonezilla(path: str | Path) -> bool:
    """A Clonezilla or Rescuezilla image directory (it holds ``parts``)."""
    return Path(path).is_dir() and (Path(path) / "parts").is_file()


def is_fog(path: str | Path) -> bool:
    """A FOG image directory (it holds ``d1.partitions``)."""
    return Path(path).is_dir() and (Path(path) / "d1.partitions").is_file()


def _text(path: Path) -> str:
    size = path.stat().st_size
    if size > MAX_TEXT:
        raise ImageDamaged(
            f"{path.name} is {size} bytes, too long for what it holds", image=str(path.parent)
        )
    return path.read_bytes().decode("utf-8", "replace")


def _plain(name: str, image: Path, what: str) -> str:
    if not PLAIN_NAME.fullmatch(name) or ".." in name:
        raise ImageDamaged(f"{what} {name!r} is not a plain device name", image=str(image))
    return name


def read_table_dump(text: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """An ``sfdisk -d`` dump: its header (``label``, ``sector-size``, ...) and each
    entry's fields by device name (``sda1`` -> {"start": "2048", "size": ..., ...})."""
    header: dict[str, str] = {}
    entries: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        line = line.strip()
        entry = DUMP_ENTRY.match(line) if "=" in line and " : " in line else None
        if entry:
            fields = {}
            for item in entry.group(2).split(","):
                key, _, value = item.partition("=")
                fields[key.strip()] = value.strip()
            entries[entry.group(1)] = fields
        elif ":" in line:
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    return header, entries


def _number(value: str, what: str, image: Path) -> int:
    if not value.isdigit() or len(value) > 20:
        raise ImageDamaged(f"{what} {value!r} is not a number", image=str(image))
    return int(value)


def _checksums(image: Path) -> dict[str, tuple[str, str]]:
    """The ``*SUMS`` lists of the directory: file name -> (algorithm, hex digest)."""
    sums: dict[str, tuple[str, str]] = {}
    for list_name, algorithm in HASHES.items():
        path = image / list_name
        if not path.is_file():
            continue
        for line in _text(path).splitlines():
            digest, _, name = line.strip().partition(" ")
            name = name.strip().lstrip("*").removeprefix("./")
            if digest and name and "/" not in name:
                sums[name] = (algorithm, digest)
    return sums


def _check_small_files(image: Path, sums: dict[str, tuple[str, str]], payloads: set[str]) -> None:
    """Check the listed files that are not payload pieces (those are checked as they
    are streamed): tables, boot areas, lists."""
    for name, (algorithm, digest) in sums.items():
        if name in payloads:
            continue
        path = image / name
        if not path.is_file():
            raise ImageDamaged(f"{name} is listed in the checksums but missing", image=str(image))
        running = new_hash(algorithm)
        with path.open("rb") as src:
            while block := src.read(1 << 20):
                running.update(block)
        if running.hexdigest() != digest.lower():
            raise ImageDamaged(f"{name} does not match its {algorithm} checksum", image=str(image))


def _refuse_unsupported(image: Path) -> None:
    for marker, what in UNSUPPORTED.items():
        if (image / marker).exists():
            raise SourceError(
                f"holds {what} ({marker}), which blockvault cannot import yet; restore it "
                "with Clonezilla, then back up the disk",
                path=str(image),
            )


def _placements(
    entries: dict[str, dict[str, str]], ss: int, image: Path
) -> tuple[list[tuple[str, int]], int]:
    """Each sfdisk-dump entry's checked name and start sector, and the byte where the
    last partition ends (the disk is at least that large)."""
    placements, ends = [], 0
    for raw_name, fields in entries.items():
        name = _plain(raw_name, image, "partition")
        start = _number(fields.get("start", ""), f"start of {name}", image)
        size = _number(fields.get("size", "0"), f"size of {name}", image)
        ends = max(ends, (start + size) * ss)
        placements.append((name, start))
    return placements, ends


def _payload(image: Path, part: str) -> tuple[Path, str] | None:
    """The first piece of a partition's payload and its kind, if one was saved."""
    pattern = re.compile(
        rf"{re.escape(part)}\.(?:([A-Za-z0-9]+)-ptcl-img|(dd-img)|(ntfs-img))(?:\.[a-z0-9]+)*"
    )
    found = sorted(p for p in image.iterdir() if pattern.fullmatch(p.name))
    if not found:
        return None
    first = found[0]
    match = pattern.fullmatch(first.name)
    assert match is not None
    if match.group(3):
        raise SourceError(
            f"{first.name} is an ntfsclone image, which blockvault does not read", path=str(image)
        )
    # <part>.dd-img is a plain stream; <part>.dd-ptcl-img is what partclone.dd wrote:
    # a plain stream from partclone 0.3 (checked with 0.3.23), an image from some others
    if match.group(2):
        return first, "raw"
    return first, "dd" if match.group(1) == "dd" else "partclone"


def _swap_info(path: Path) -> tuple[str | None, str | None]:
    values = dict(re.findall(r'^(UUID|LABEL)="?([^"\n]*)"?', _text(path), re.M))
    uuid_text = values.get("UUID") or None
    if uuid_text and not re.fullmatch(r"[0-9a-fA-F-]{32,36}", uuid_text):
        uuid_text = None
    return uuid_text, values.get("LABEL") or None


def _disk_size(image: Path, disk: str, header: dict[str, str], ss: int, ends: int) -> int:
    """The disk's size: what parted printed, else where the primary GPT puts its backup,
    else the end of the last partition (a dos table does not say)."""
    parted = image / f"{disk}-pt.parted"
    if parted.is_file():
        found = re.search(r"^Disk \S+: (\d+)s$", _text(parted), re.M)
        if found:
            return int(found.group(1)) * ss
    gpt = image / f"{disk}-gpt-1st"
    if gpt.is_file() and gpt.stat().st_size >= 2 * ss:
        with gpt.open("rb") as src:
            src.seek(ss)
            head = src.read(92)
        if head[:8] == b"EFI PART":
            return (int.from_bytes(head[32:40], "little") + 1) * ss
    if header.get("label") == "gpt" and "last-lba" in header:
        return (_number(header["last-lba"], "last-lba", image) + 34) * ss
    return ends


def read_clonezilla(image: Path) -> list[ForeignDisk]:
    """Each disk of a Clonezilla or Rescuezilla image directory."""
    _refuse_unsupported(image)
    tool = "rescuezilla" if (image / "rescuezilla.description.txt").exists() else "clonezilla"
    parts = [_plain(p, image, "partition") for p in _text(image / "parts").split()]
    if (image / "disk").is_file():
        disks = [_plain(d, image, "disk") for d in _text(image / "disk").split()]
    else:  # saveparts: the disks are those with a table dump
        disks = sorted(p.name[: -len("-pt.sf")] for p in image.glob("*-pt.sf"))
    filesystems: dict[str, str] = {}
    if (image / "dev-fs.list").is_file():
        for line in _text(image / "dev-fs.list").splitlines():
            words = line.split()
            if len(words) >= 2 and not line.startswith("#"):
                filesystems[words[0].removeprefix("/dev/")] = words[1]
    image_id = ""
    if (image / "Info-img-id.txt").is_file():
        said = re.search(r"^IMG_ID=([0-9a-f]+)", _text(image / "Info-img-id.txt"), re.M)
        image_id = said.group(1) if said else ""
    sums = _checksums(image)
    out: list[ForeignDisk] = []
    placed: set[str] = set()
    payload_files: set[str] = set()
    for disk in disks:
        dump_path = image / f"{disk}-pt.sf"
        if not dump_path.is_file():
            raise ImageDamaged(f"{dump_path.name} is missing", image=str(image))
        dump = _text(dump_path)
        header, entries = read_table_dump(dump)
        ss = _number(header.get("sector-size", "512"), "sector-size", image)
        if ss not in (512, 1024, 2048, 4096):
            raise ImageDamaged(f"sector size {ss} is not one disks have", image=str(image))
        partitions = []
        notes = []
        placements, ends = _placements(entries, ss, image)
        for name, start in placements:
            swap_file = image / f"swappt-{name}.info"
            if name in parts:
                found = _payload(image, name)
                if found is None:
                    raise ImageDamaged(
                        f"no payload file for {name}, which parts lists", image=str(image)
                    )
                first, kind = found
                partitions.append(
                    ForeignPartition(name, start, first, kind, filesystems.get(name, ""))
                )
                payload_files.update(p.name for p in pieces_of(first))
                placed.add(name)
            elif swap_file.is_file():
                uuid_text, label = _swap_info(swap_file)
                partitions.append(
                    ForeignPartition(name, start, None, "swap", "swap", uuid_text, label)
                )
                notes.append(
                    f"{name}: swap (not saved by {tool}) made anew with its UUID and label"
                )
        raw_areas: list[tuple[int, Path | bytes]] = [
            (offset, image / f"{disk}-{suffix}")
            for offset, suffix in ((0, "mbr"), (0, "gpt-1st"), (ss, "hidden-data-after-mbr"))
            if (image / f"{disk}-{suffix}").is_file()
        ]
        size = _disk_size(image, disk, header, ss, ends)
        second = image / f"{disk}-gpt-2nd"
        if second.is_file():
            raw_areas.append((size - second.stat().st_size, second))
        out.append(
            ForeignDisk(
                tool=tool,
                image=image,
                name=disk,
                table_dump=dump,
                size=size,
                sector_size=ss,
                raw_areas=tuple(raw_areas),
                partitions=tuple(partitions),
                image_id=image_id,
                checksums=sums,
                notes=tuple(notes),
            )
        )
    unplaced = [p for p in parts if p not in placed]
    if unplaced:
        raise SourceError(
            f"saved {', '.join(unplaced)}, which no partition table in the image holds "
            "(a logical volume or a partition of a disk not saved): blockvault cannot "
            "import them yet",
            path=str(image),
        )
    _check_small_files(image, sums, payload_files)
    return out


def read_fog(image: Path) -> list[ForeignDisk]:
    """The first disk of a FOG image directory (``d1``: FOG's multi-disk images keep
    one ``d<N>`` set each; only d1 is read)."""
    dump = _text(image / "d1.partitions")
    header, entries = read_table_dump(dump)
    ss = _number(header.get("sector-size", "512"), "sector-size", image)
    fstypes: dict[str, str] = {}
    if (image / "d1.original.fstypes").is_file():
        for line in _text(image / "d1.original.fstypes").splitlines():
            words = line.split()
            if len(words) >= 2:
                fstypes[words[0].removeprefix("/dev/")] = words[1]
    swaps: dict[str, str] = {}
    if (image / "d1.original.swapuuids").is_file():
        for line in _text(image / "d1.original.swapuuids").splitlines():
            words = line.split()
            if len(words) >= 2:
                swaps[words[0].removeprefix("/dev/")] = words[1]
    partitions = []
    notes = []
    placements, ends = _placements(entries, ss, image)
    for name, start in placements:
        number = re.search(r"(\d+)$", name)
        if number is None:
            continue
        found = sorted(image.glob(f"d1p{number.group(1)}.img*"))
        if found:
            partitions.append(
                ForeignPartition(name, start, found[0], "partclone", fstypes.get(name, ""))
            )
        elif name in swaps:
            partitions.append(
                ForeignPartition(name, start, None, "swap", "swap", swaps[name], None)
            )
            notes.append(f"{name}: a swap area (not saved by FOG) is recreated with its UUID")
    raw_areas: list[tuple[int, Path | bytes]] = []
    mbr = image / "d1.mbr"
    # on a dos disk d1.mbr is the disk's first bytes; on a GPT disk it is an sgdisk
    # backup file (not disk bytes), and sfdisk rebuilds the table from the dump
    if header.get("label") == "dos" and mbr.is_file():
        raw_areas.append((0, mbr))
    elif mbr.is_file():
        notes.append("the GPT is rebuilt from d1.partitions (d1.mbr is an sgdisk backup)")
    size = ends
    if header.get("label") == "gpt" and "last-lba" in header:
        size = (_number(header["last-lba"], "last-lba", image) + 34) * ss
    return [
        ForeignDisk(
            tool="fog",
            image=image,
            name="d1",
            table_dump=dump,
            size=size,
            sector_size=ss,
            raw_areas=tuple(raw_areas),
            partitions=tuple(partitions),
            image_id=image.name,
            notes=tuple(notes),
        )
    ]


MAX_REDO_JSON: Final = 8 * 1024 * 1024  # the MBR area and the dump, base64-encoded


def _redo_file(path: Path) -> Path | None:
    """The Redo Rescue metadata of ``path`` (the ``.redo`` file, or the one in a directory)."""
    found = [path] if path.is_file() else sorted(path.glob("*.redo")) if path.is_dir() else []
    for candidate in found:
        if candidate.suffix == ".redo" and candidate.stat().st_size <= MAX_REDO_JSON:
            try:
                data = json.loads(candidate.read_bytes())
            except (ValueError, UnicodeDecodeError):
                continue  # Redo Backup 0.9.2 also wrote *.redo, not JSON
            if isinstance(data, dict) and isinstance(data.get("parts"), dict):
                return candidate
    return None


def is_redo(path: str | Path) -> bool:
    """A Redo Rescue image: a ``.redo`` JSON file (or a directory holding one)."""
    return _redo_file(Path(path)) is not None


def read_redo(path: Path) -> list[ForeignDisk]:
    """A Redo Rescue image. Its ``.redo`` JSON holds the disk's size (``drive_bytes``),
    the ``sfdisk -d`` dump (``sfd_bin``) and the disk's first bytes (``mbr_bin``), both
    base64; each partition in ``parts`` is ``<id>_<part>_NNN.img``, a partclone image
    split into numbered pieces. Read as Rescuezilla's parser reads it (Redo Rescue
    itself is not packaged here)."""
    meta = _redo_file(path)
    if meta is None:
        raise SourceError("holds no Redo Rescue .redo file", path=str(path))
    image = meta.parent
    data = json.loads(meta.read_bytes())
    try:
        dump = base64.b64decode(str(data.get("sfd_bin", "")), validate=True).decode()
        mbr = base64.b64decode(str(data.get("mbr_bin", "")), validate=True)
    except (binascii.Error, UnicodeDecodeError):
        raise ImageDamaged(
            f"{meta.name}: sfd_bin or mbr_bin is not base64", image=str(image)
        ) from None
    size = data.get("drive_bytes")
    ident = str(data.get("id", ""))
    if not isinstance(size, int) or not PLAIN_NAME.fullmatch(ident):
        raise ImageDamaged(f"{meta.name}: drive_bytes or id is missing or wrong", image=str(image))
    header, entries = read_table_dump(dump)
    ss = _number(header.get("sector-size", "512"), "sector-size", image)
    partitions = []
    for name, fields in entries.items():
        name = _plain(name, image, "partition")
        if name not in data["parts"]:
            continue
        start = _number(fields.get("start", ""), f"start of {name}", image)
        pieces = sorted(image.glob(f"{ident}_{name}_[0-9][0-9][0-9].img"))
        if not pieces:
            raise ImageDamaged(f"no {ident}_{name}_000.img for {name}", image=str(image))
        expected = [f"{ident}_{name}_{n:03d}.img" for n in range(len(pieces))]
        if [p.name for p in pieces] != expected:
            missing = next(e for e, p in zip(expected, pieces, strict=True) if e != p.name)
            raise ImageDamaged(f"piece {missing} is missing", image=str(image))
        part = data["parts"][name]
        fs = str(part.get("fs") or "") if isinstance(part, dict) else ""
        partitions.append(
            ForeignPartition(name, start, pieces[0], "partclone", fs, pieces=tuple(pieces))
        )
    return [
        ForeignDisk(
            tool="redo",
            image=image,
            name=meta.stem,
            table_dump=dump,
            size=size,
            sector_size=ss,
            raw_areas=((0, mbr),) if mbr else (),
            partitions=tuple(partitions),
            image_id=ident,
        )
    ]
