"""Every foreign on-disk structure, declared once (disk/fs/c_*.py, table/mbr.py, table/gpt.py).

Three kinds of evidence, none taken from our own output:
  offsets    a field set by name lands where the specification prints it (fatgen103,
             ntfs-3g layout.h, fs/ext4/ext4.h, UEFI 2.10, linux/swap.h).
  round trip ``parse(dumps(x)) == x`` for any bytes (hypothesis): parse and build are
             one declaration read both ways.
  oracles    volumes made by mkfs.*/mkswap/sfdisk, read by name, agree with minfo and
             mshowfat (mtools), ntfsinfo and blkid, dumpe2fs, sfdisk --json.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockvault.disk.fs.c_ext import EXT4_SUPER_MAGIC, SUPERBLOCK_OFFSET, c_ext
from blockvault.disk.fs.c_fat import FSINFO_LEAD_SIG, FSINFO_STRUC_SIG, c_fat
from blockvault.disk.fs.c_ntfs import (
    FILE_MAGIC,
    NTFS_OEM_ID,
    c_ntfs,
    cluster_sectors,
    cluster_sectors_field,
)
from blockvault.disk.fs.c_swap import c_swap_be, c_swap_le
from blockvault.disk.table.gpt import c_gpt
from blockvault.disk.table.mbr import MBR_SIGNATURE, c_mbr
from tests.conftest import need_tools, sh

MiB = 1 << 20

# (structure, its size in bytes as the specification gives it)
SIZES: list[tuple[Any, int]] = [
    (c_fat.fat_bpb, 36),
    (c_fat.fat16_ebpb, 26),
    (c_fat.fat32_ebpb, 54),
    (c_fat.fat_boot_sector, 512),
    (c_fat.fat_fsinfo, 512),
    (c_fat.fat_dir_entry, 32),
    (c_ntfs.NTFS_BOOT_SECTOR, 512),
    (c_ntfs.MFT_RECORD, 48),
    (c_ntfs.ATTR_RECORD, 64),
    (c_ext.ext4_super_block, 1024),
    (c_ext.ext4_group_desc, 64),
    (c_mbr.mbr, 512),
    (c_mbr.mbr_partition, 16),
    (c_gpt.gpt_header, 92),
    (c_gpt.gpt_entry, 128),
    (c_swap_le.swap_info, 1540),
    (c_swap_be.swap_info, 1540),
]

# (structure, field path, byte offset and width the specification prints)
OFFSETS: list[tuple[Any, str, int, int]] = [
    # fatgen103 section 3.1-3.3
    (c_fat.fat_boot_sector, "bpb.BPB_BytsPerSec", 11, 2),
    (c_fat.fat_boot_sector, "bpb.BPB_SecPerClus", 13, 1),
    (c_fat.fat_boot_sector, "bpb.BPB_RsvdSecCnt", 14, 2),
    (c_fat.fat_boot_sector, "bpb.BPB_NumFATs", 16, 1),
    (c_fat.fat_boot_sector, "bpb.BPB_RootEntCnt", 17, 2),
    (c_fat.fat_boot_sector, "bpb.BPB_TotSec16", 19, 2),
    (c_fat.fat_boot_sector, "bpb.BPB_FATSz16", 22, 2),
    (c_fat.fat_boot_sector, "bpb.BPB_HiddSec", 28, 4),
    (c_fat.fat_boot_sector, "bpb.BPB_TotSec32", 32, 4),
    (c_fat.fat_boot_sector, "fat16.BS_BootSig", 38, 1),
    (c_fat.fat_boot_sector, "fat16.BS_VolID", 39, 4),
    (c_fat.fat_boot_sector, "fat32.BPB_FATSz32", 36, 4),
    (c_fat.fat_boot_sector, "fat32.BPB_ExtFlags", 40, 2),
    (c_fat.fat_boot_sector, "fat32.BPB_RootClus", 44, 4),
    (c_fat.fat_boot_sector, "fat32.BPB_FSInfo", 48, 2),
    (c_fat.fat_boot_sector, "fat32.BPB_BkBootSec", 50, 2),
    (c_fat.fat_boot_sector, "fat32.BS_BootSig", 66, 1),
    (c_fat.fat_boot_sector, "fat32.BS_VolID", 67, 4),
    (c_fat.fat_boot_sector, "BS_Signature", 510, 2),
    # fatgen103 section 5 (FSInfo) and 6 (directory entry)
    (c_fat.fat_fsinfo, "FSI_StrucSig", 484, 4),
    (c_fat.fat_fsinfo, "FSI_Free_Count", 488, 4),
    (c_fat.fat_fsinfo, "FSI_Nxt_Free", 492, 4),
    (c_fat.fat_fsinfo, "FSI_TrailSig", 508, 4),
    (c_fat.fat_dir_entry, "DIR_Attr", 11, 1),
    (c_fat.fat_dir_entry, "DIR_NTRes", 12, 1),
    (c_fat.fat_dir_entry, "DIR_FstClusHI", 20, 2),
    (c_fat.fat_dir_entry, "DIR_FstClusLO", 26, 2),
    (c_fat.fat_dir_entry, "DIR_FileSize", 28, 4),
    # ntfs-3g layout.h (NTFS_BOOT_SECTOR, MFT_RECORD, ATTR_RECORD)
    (c_ntfs.NTFS_BOOT_SECTOR, "bpb.bytes_per_sector", 0x0B, 2),
    (c_ntfs.NTFS_BOOT_SECTOR, "bpb.sectors_per_cluster", 0x0D, 1),
    (c_ntfs.NTFS_BOOT_SECTOR, "bpb.hidden_sectors", 0x1C, 4),
    (c_ntfs.NTFS_BOOT_SECTOR, "number_of_sectors", 0x28, 8),
    (c_ntfs.NTFS_BOOT_SECTOR, "mft_lcn", 0x30, 8),
    (c_ntfs.NTFS_BOOT_SECTOR, "mftmirr_lcn", 0x38, 8),
    (c_ntfs.NTFS_BOOT_SECTOR, "volume_serial_number", 0x48, 8),
    (c_ntfs.NTFS_BOOT_SECTOR, "end_of_sector_marker", 0x1FE, 2),
    (c_ntfs.MFT_RECORD, "attrs_offset", 0x14, 2),
    (c_ntfs.MFT_RECORD, "mft_record_number", 0x2C, 4),
    (c_ntfs.ATTR_RECORD, "resident.value_offset", 0x14, 2),
    (c_ntfs.ATTR_RECORD, "non_resident_part.mapping_pairs_offset", 0x20, 2),
    (c_ntfs.ATTR_RECORD, "non_resident_part.initialized_size", 0x38, 8),
    # fs/ext4/ext4.h (the offsets in its comments)
    (c_ext.ext4_super_block, "s_blocks_per_group", 0x20, 4),
    (c_ext.ext4_super_block, "s_magic", 0x38, 2),
    (c_ext.ext4_super_block, "s_feature_incompat", 0x60, 4),
    (c_ext.ext4_super_block, "s_desc_size", 0xFE, 2),
    (c_ext.ext4_super_block, "s_blocks_count_hi", 0x150, 4),
    (c_ext.ext4_super_block, "s_checksum", 0x3FC, 4),
    (c_ext.ext4_group_desc, "bg_flags", 0x12, 2),
    (c_ext.ext4_group_desc, "bg_block_bitmap_hi", 0x20, 4),
    # UEFI 2.10 tables 5-5 and 5-6; the MBR of every PC
    (c_gpt.gpt_header, "my_lba", 24, 8),
    (c_gpt.gpt_header, "partition_entry_lba", 72, 8),
    (c_gpt.gpt_header, "partition_entry_array_crc32", 88, 4),
    (c_gpt.gpt_entry, "starting_lba", 32, 8),
    (c_gpt.gpt_entry, "attributes", 48, 8),
    (c_mbr.mbr, "disk_signature", 0x1B8, 4),
    (c_mbr.mbr, "signature", 0x1FE, 2),
    # linux/swap.h union swap_header
    (c_swap_le.swap_info, "last_page", 1028, 4),
]


def _get(record: Any, path: str) -> Any:
    for name in path.split("."):
        record = getattr(record, name)
    return record


def _plain(record: Any) -> Any:
    """A parsed record as nested dicts and lists (cstruct compares unions by identity)."""
    if isinstance(record, list):
        return [_plain(item) for item in record]
    record = getattr(record, "__target__", record)  # a union member is seen through a proxy
    fields = getattr(type(record), "fields", None)
    if fields is None:
        return record
    return {name: _plain(getattr(record, name)) for name in fields}


def _set(record: Any, path: str, value: int) -> None:
    *parents, name = path.split(".")
    setattr(_get(record, ".".join(parents)) if parents else record, name, value)


@pytest.mark.parametrize(("struct", "size"), SIZES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_sizes_are_the_specifications(struct: Any, size: int) -> None:
    assert len(struct) == size


@pytest.mark.parametrize(
    ("struct", "path", "offset", "width"),
    OFFSETS,
    ids=[f"{s.__name__}.{p}" for s, p, _, _ in OFFSETS],
)
def test_a_field_set_by_name_lands_at_its_documented_offset(
    struct: Any, path: str, offset: int, width: int
) -> None:
    value = int.from_bytes(bytes(range(1, 1 + width)), "little")  # no byte repeats
    record = struct(bytes(len(struct)))
    _set(record, path, value)
    raw = record.dumps()
    assert raw[offset : offset + width] == value.to_bytes(width, "little")
    assert raw.count(0) == len(raw) - width  # nothing else was written
    assert _get(struct(raw), path) == value


@settings(max_examples=60, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize(("struct", "size"), SIZES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_parse_and_build_are_inverse(struct: Any, size: int, data: st.DataObject) -> None:
    raw = data.draw(st.binary(min_size=size, max_size=size))
    record = struct(raw)
    assert record.dumps() == raw
    assert _plain(struct(record.dumps())) == _plain(record)


@given(st.integers(min_value=0, max_value=24))
def test_ntfs_cluster_field_round_trips(power: int) -> None:
    field = cluster_sectors_field(1 << power)
    assert 0 < field <= 0xFF
    assert cluster_sectors(field) == 1 << power
    # layout.h: up to 128 sectors as they are, then 2^(256 - n): 0xF8 is 256 sectors
    assert (field > 0x80) == (power > 7)
    assert cluster_sectors(0xF8) == 256


def _image(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def _minfo(image: Path) -> dict[str, str]:
    """mtools' reading of the boot sector and FSInfo, ``name: value`` and ``name=value``."""
    fields = {}
    for line in sh("minfo", "-i", image, "::").splitlines():
        found = re.match(r"\s*([^:=]+?)\s*(?:: |=)(.*)", line)
        if found:
            fields[found[1]] = found[2].strip().strip('"')
    return fields


@pytest.mark.parametrize(("bits", "size"), [(12, 4 * MiB), (16, 32 * MiB), (32, 40 * MiB)])
def test_fat_boot_sector_fsinfo_and_entry_agree_with_mtools(
    tmp_path: Path, bits: int, size: int
) -> None:
    need_tools("mkfs.fat", "minfo", "mcopy", "mshowfat")
    image = _image(tmp_path / "fat.img", size)
    sh("mkfs.fat", "-F", str(bits), "-i", "1234ABCD", "-n", "STRUCTS", "-h", "63", image)
    payload = tmp_path / "hello.txt"
    payload.write_bytes(b"x" * 5000)
    sh("mcopy", "-i", image, payload, "::/HELLO.TXT")
    info = _minfo(image)
    raw = image.read_bytes()
    boot = c_fat.fat_boot_sector(raw[:512])
    bpb = boot.bpb
    ebpb = boot.fat32 if bits == 32 else boot.fat16
    assert bpb.BPB_BytsPerSec == int(info["sector size"].split()[0])
    assert bpb.BPB_SecPerClus == int(info["cluster size"].split()[0])
    assert bpb.BPB_RsvdSecCnt == int(info["reserved (boot) sectors"])
    assert bpb.BPB_NumFATs == int(info["fats"])
    assert bpb.BPB_RootEntCnt == int(info["max available root directory slots"])
    assert bpb.BPB_TotSec16 == int(info["small size"].split()[0])
    assert bpb.BPB_TotSec32 == int(info.get("big size", "0").split()[0])
    assert bpb.BPB_FATSz16 == int(info["sectors per fat"])
    assert bpb.BPB_HiddSec == int(info["hidden sectors"]) == 63
    assert ebpb.BS_BootSig == int(info["dos4"], 16)
    assert f"{ebpb.BS_VolID:08X}" == info["serial number"].upper() == "1234ABCD"
    assert bytes(ebpb.BS_VolLab).decode() == info["disk label"]
    assert bytes(ebpb.BS_FilSysType).decode() == info["disk type"] == f"FAT{bits}   "
    assert boot.BS_Signature == MBR_SIGNATURE

    if bits == 32:
        assert boot.fat32.BPB_FATSz32 == int(info["Big fatlen"])
        assert boot.fat32.BPB_RootClus == int(info["rootCluster"])
        assert boot.fat32.BPB_FSInfo == int(info["infoSector location"])
        assert boot.fat32.BPB_BkBootSec == int(info["backup boot sector"])
        at = boot.fat32.BPB_FSInfo * bpb.BPB_BytsPerSec
        fsinfo = c_fat.fat_fsinfo(raw[at : at + 512])
        assert fsinfo.FSI_LeadSig == int(info["signature"], 16) == FSINFO_LEAD_SIG
        assert fsinfo.FSI_StrucSig == FSINFO_STRUC_SIG
        assert fsinfo.FSI_Nxt_Free == int(info["last allocated cluster"])
        root = bpb.BPB_RsvdSecCnt + bpb.BPB_NumFATs * boot.fat32.BPB_FATSz32
        root += (boot.fat32.BPB_RootClus - 2) * bpb.BPB_SecPerClus
    else:
        root = bpb.BPB_RsvdSecCnt + bpb.BPB_NumFATs * bpb.BPB_FATSz16
    entries = raw[root * bpb.BPB_BytsPerSec :][: 16 * 32]
    found = [
        c_fat.fat_dir_entry(entries[at : at + 32])
        for at in range(0, len(entries), 32)
        if entries[at : at + 11] == b"HELLO   TXT"
    ]
    assert len(found) == 1
    entry = found[0]
    assert entry.DIR_FileSize == 5000
    chain = sh("mshowfat", "-i", image, "::/HELLO.TXT")
    first = int(re.search(r"<(\d+)", chain)[1])  # type: ignore[index]
    assert entry.DIR_FstClusHI << 16 | entry.DIR_FstClusLO == first


def test_ntfs_boot_sector_and_mft_record_agree_with_ntfsinfo_and_blkid(tmp_path: Path) -> None:
    need_tools("mkntfs", "ntfsinfo", "blkid")
    image = _image(tmp_path / "ntfs.img", 16 * MiB)
    sh("mkntfs", "-q", "-F", "-Q", "-f", "-c", "4096", "-p", "2048", "-H", "16", "-S", "63", image)
    out = sh("ntfsinfo", "-m", image)

    def info(name: str) -> int:
        return int(re.search(rf"{re.escape(name)}: (\d+)", out)[1])  # type: ignore[index]

    raw = image.read_bytes()
    boot = c_ntfs.NTFS_BOOT_SECTOR(raw[:512])
    cluster = boot.bpb.bytes_per_sector * boot.bpb.sectors_per_cluster
    assert bytes(boot.oem_id) == NTFS_OEM_ID
    assert boot.bpb.bytes_per_sector == info("Sector Size")
    assert cluster == info("Cluster Size") == 4096
    assert boot.bpb.hidden_sectors == 2048
    assert boot.number_of_sectors * boot.bpb.bytes_per_sector // cluster == info(
        "Volume Size in Clusters"
    )
    assert boot.mft_lcn == info("LCN of Data Attribute for FILE_MFT")
    assert boot.mftmirr_lcn == info("LCN of Data Attribute for File_MFTMirr")
    record_size = info("MFT Record Size")
    assert 2**-boot.clusters_per_mft_record == record_size  # < 0: 2^-n bytes
    serial = sh("blkid", "-p", "-s", "UUID", "-o", "value", image).strip()
    assert f"{boot.volume_serial_number:016X}" == serial
    assert boot.end_of_sector_marker == MBR_SIGNATURE

    mft = boot.mft_lcn * cluster
    for number in (0, 6):  # $MFT, $Bitmap
        at = mft + number * record_size
        header = c_ntfs.MFT_RECORD(raw[at : at + len(c_ntfs.MFT_RECORD)])
        assert bytes(header.magic) == FILE_MAGIC
        assert header.bytes_allocated == record_size
        assert header.mft_record_number == number
        assert header.usa_count == 1 + record_size // 512


def test_ext_superblock_and_group_descriptors_agree_with_dumpe2fs(tmp_path: Path) -> None:
    need_tools("mke2fs", "dumpe2fs")
    image = _image(tmp_path / "ext.img", 64 * MiB)
    fs_uuid = "0b5d7e36-4e4c-4c1e-9d1e-3f2a7c9b1a55"
    sh("mke2fs", "-q", "-F", "-t", "ext4", "-O", "64bit", "-b", "1024", "-L", "structs",
       "-U", fs_uuid, image)  # fmt: skip
    header = dict(
        line.split(":", 1) for line in sh("dumpe2fs", "-h", image).splitlines() if ":" in line
    )

    def value(name: str) -> int:
        return int(header[name].split()[0])

    raw = image.read_bytes()
    sb = c_ext.ext4_super_block(raw[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + 1024])
    assert sb.s_magic == int(header["Filesystem magic number"], 16) == EXT4_SUPER_MAGIC
    assert sb.s_inodes_count == value("Inode count")
    assert sb.s_blocks_count_lo | sb.s_blocks_count_hi << 32 == value("Block count")
    assert sb.s_first_data_block == value("First block") == 1
    assert 1024 << sb.s_log_block_size == value("Block size")
    assert sb.s_blocks_per_group == value("Blocks per group")
    assert sb.s_inodes_per_group == value("Inodes per group")
    assert sb.s_inode_size == value("Inode size")
    assert sb.s_reserved_gdt_blocks == value("Reserved GDT blocks")
    assert sb.s_desc_size == value("Group descriptor size") == 64
    assert str(uuid.UUID(bytes=bytes(sb.s_uuid))) == header["Filesystem UUID"].strip() == fs_uuid
    assert (
        bytes(sb.s_volume_name).rstrip(b"\0").decode() == header["Filesystem volume name"].strip()
    )

    # group descriptors: the GDT is the block after the superblock's
    groups = re.findall(
        r"Block bitmap at (\d+).*?Inode bitmap at (\d+).*?Inode table at (\d+)-",
        sh("dumpe2fs", image),
        re.S,
    )
    assert len(groups) == 8
    gdt = (sb.s_first_data_block + 1) * 1024
    for number, expected in enumerate(groups):
        at = gdt + number * sb.s_desc_size
        desc = c_ext.ext4_group_desc(raw[at : at + sb.s_desc_size])
        seen = (
            desc.bg_block_bitmap_lo | desc.bg_block_bitmap_hi << 32,
            desc.bg_inode_bitmap_lo | desc.bg_inode_bitmap_hi << 32,
            desc.bg_inode_table_lo | desc.bg_inode_table_hi << 32,
        )
        assert seen == tuple(int(v) for v in expected), f"group {number}"


def test_swap_header_agrees_with_blkid(tmp_path: Path) -> None:
    need_tools("mkswap", "blkid")
    image = _image(tmp_path / "swap.img", 8 * MiB)
    sh("mkswap", "-L", "structs", "-U", "6f1c3f9e-2b1d-4c55-8f0e-0c1e2d3f4a5b", image)
    tags = dict(
        line.split("=", 1) for line in sh("blkid", "-p", "-o", "export", image).splitlines()
    )
    header = c_swap_le.swap_info(image.read_bytes()[: len(c_swap_le.swap_info)])
    assert header.version == 1
    assert (header.last_page + 1) * 4096 == 8 * MiB
    assert str(uuid.UUID(bytes=bytes(header.sws_uuid))) == tags["UUID"]
    assert bytes(header.sws_volume).rstrip(b"\0").decode() == tags["LABEL"]


@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_partition_table_entries_agree_with_sfdisk(tmp_path: Path, label: str) -> None:
    need_tools("sfdisk")
    image = _image(tmp_path / "disk.img", 32 * MiB)
    sh("sfdisk", "-q", image, input=f"label: {label}\n2048,8192,L\n,4096,L\n,,L\n")
    table = json.loads(sh("sfdisk", "--json", image))["partitiontable"]
    raw = image.read_bytes()
    mbr = c_mbr.mbr(raw[:512])
    assert mbr.signature == MBR_SIGNATURE
    if label == "dos":
        assert f"0x{mbr.disk_signature:08x}" == table["id"]
        seen = [(e.start_sect, e.nr_sects, f"{e.sys_ind:x}") for e in mbr.partitions[:3]]
        expected = [(p["start"], p["size"], p["type"]) for p in table["partitions"]]
        assert seen == expected
        return
    header = c_gpt.gpt_header(raw[512 : 512 + len(c_gpt.gpt_header)])
    assert bytes(header.signature) == b"EFI PART"
    assert str(uuid.UUID(bytes_le=bytes(header.disk_guid))).upper() == table["id"]
    assert header.first_usable_lba == table["firstlba"]
    assert header.last_usable_lba == table["lastlba"]
    array = header.partition_entry_lba * 512
    entries = [c_gpt.gpt_entry(raw[array + n * 128 : array + (n + 1) * 128]) for n in range(3)]
    seen_gpt = [
        (
            e.starting_lba,
            e.ending_lba - e.starting_lba + 1,
            str(uuid.UUID(bytes_le=bytes(e.partition_type_guid))).upper(),
            str(uuid.UUID(bytes_le=bytes(e.unique_partition_guid))).upper(),
        )
        for e in entries
    ]
    assert seen_gpt == [(p["start"], p["size"], p["type"], p["uuid"]) for p in table["partitions"]]
