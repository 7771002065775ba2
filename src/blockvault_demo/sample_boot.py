"""Small bootable Linux system disks, and booting them under QEMU.

The boot acceptance checks (``bench/boot_acceptance.py`` and one root-only test)
need disks that really boot: firmware -> GRUB -> Linux kernel -> initramfs ->
the root filesystem, found by UUID. This module builds two of them as image
files and boots an image, reporting whether the system came up.

Glossary:

boot disk
    A GPT image file: a BIOS boot partition (``bios``) or an EFI System
    Partition, FAT32 (``uefi``), then an ext4 root holding ``/boot/vmlinuz``,
    ``/boot/initrd.img`` and a marker file with a random token.
initramfs
    busybox (static) plus the kernel modules needed to reach an ext4 root on a
    virtio disk. Its ``/init`` finds the root by the filesystem UUID given as
    ``bv_root=UUID=...`` on the kernel command line, mounts it read-only, prints
    ``BLOCKVAULT-BOOT-OK <marker token>`` on the serial console and powers off.
    Any failure prints ``BLOCKVAULT-BOOT-FAIL <why>`` instead.
root on LVM
    With ``lvm_root="VG/LV"`` the disk is laid out as installers lay out LVM
    systems: the firmware's partition, a small ext4 ``/boot`` (kernel, initramfs)
    and an empty ``Linux LVM`` partition for the caller to make the PV, the volume
    group and the root LV in (holding the marker file with the disk's token). The
    initramfs then carries the host's ``lvm`` with its shared libraries (``ldd``)
    and dm-mod; ``bv_root=/dev/VG/LV`` makes ``/init`` activate the volume groups
    before it mounts the root.
booted
    The console showed the OK line with this disk's token: the firmware found
    the boot loader, GRUB found the root partition and loaded the kernel, and
    the kernel found the root filesystem, all through the restored bytes.

Invariants:

* Nothing here needs root, loop devices or partition scanning: filesystems are
  made in temporary files (``mkfs.ext4 -d``, ``mkfs.fat`` + ``mcopy``) and
  copied to the offsets ``sfdisk --json`` reports; GRUB is installed without
  ``grub-install`` (the EFI image as the removable-media path
  ``\\EFI\\BOOT\\BOOTX64.EFI``; for BIOS ``boot.img`` in the MBR and ``core.img``
  in the BIOS boot partition, patched as ``grub-bios-setup`` patches them).
* The kernel and its modules come from a directory tree (``/`` by default, or a
  ``linux-image`` package unpacked with ``dpkg-deb -x``).
* The library never prints; a missing tool is a :class:`UsageError`.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import re
import secrets
import shutil
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from blockvault.disk.table.mbr import c_mbr
from blockvault.errors import UsageError
from blockvault.interop.boot import Firmware, Machine, watch_guest

__all__ = [
    "FIRMWARES",
    "BootDisk",
    "BootResult",
    "Firmware",
    "Kernel",
    "boot",
    "build_boot_disk",
    "build_initramfs",
    "find_kernel",
]

FIRMWARES: Final[tuple[Firmware, ...]] = ("bios", "uefi")

MIB: Final = 1024 * 1024
OK_LINE: Final = "BLOCKVAULT-BOOT-OK"
FAIL_LINE: Final = "BLOCKVAULT-BOOT-FAIL"
MARKER_PATH: Final = "blockvault-marker"

# Sizes: the root holds about 20 MiB (kernel + initramfs), so a restore onto a
# smaller disk has room to shrink it. The ESP is FAT32 with 4 KiB clusters, so a
# 4096-byte-sector copy keeps its clusters; FAT32 needs 65525 clusters, hence
# 260 MiB (the size Microsoft gives ESPs on 4Kn disks). Images stay sparse.
DISK_SIZE: Final[dict[Firmware, int]] = {"bios": 128 * MIB, "uefi": 384 * MIB}
ESP_SIZE: Final = 260 * MIB
BALLAST_FILE: Final = 64 * MIB

# Modules an initramfs needs to mount ext4 from a virtio disk (their
# dependencies are added from modinfo). crc32c: ext4 checksums ask for it.
INITRAMFS_MODULES: Final = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
LVM_BOOT_SIZE: Final = 48 * MIB  # /boot beside the PV: kernel + an initramfs with lvm
# lvm in an initramfs without udev: it makes the /dev nodes itself, keeps no backups
LVM_CONF: Final = """activation { udev_sync = 0 udev_rules = 0 }
backup { backup = 0 archive = 0 }
devices { obtain_device_list_from_udev = 0 }
"""

_GRUB_COMMON = ("part_gpt", "ext2", "search", "search_fs_uuid", "linux", "echo", "serial")
GRUB_MODULES: Final[dict[Firmware, tuple[str, ...]]] = {
    "bios": ("biosdisk", *_GRUB_COMMON, "terminal", "halt"),
    "uefi": (*_GRUB_COMMON, "terminal", "halt"),
}
GRUB_FORMAT: Final[dict[Firmware, str]] = {"bios": "i386-pc", "uefi": "x86_64-efi"}
GRUB_DIR: Final = Path("/usr/lib/grub")

# Offsets inside GRUB's i386-pc boot.img and diskboot.img (include/grub/i386/pc/boot.h).
BPB_START, BPB_END = 0x03, 0x5A
KERNEL_SECTOR = 0x5C  # u64: first sector of core.img
DRIVE_CHECK = 0x66  # a 2-byte jmp; nop'd for hard disks
# disk signature to the end of the partition table (0x1B8-0x1FE): kept from the disk
NT_MAGIC = c_mbr.mbr.fields["disk_signature"].offset
PART_END = c_mbr.mbr.fields["signature"].offset
BLOCKLIST = 0x200 - 12  # in diskboot.img: u64 start, u16 sectors, u16 segment


INIT_SCRIPT: Final = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "BLOCKVAULT-BOOT-FAIL $*"; poweroff -f; }
for m in $(cat /modules.order); do insmod "/modules/$m" || fail "insmod $m"; done
spec=""
for word in $(cat /proc/cmdline); do
    case "$word" in bv_root=*) spec="${word#bv_root=}" ;; esac
done
[ -n "$spec" ] || fail "no bv_root= on the kernel command line"
dev=""
i=0
while [ -z "$dev" ] && [ $i -lt 100 ]; do
    case "$spec" in
    /dev/*) # a logical volume: activate the volume groups, then it appears
        [ -x /bin/lvm ] && DM_DISABLE_UDEV=1 lvm vgchange -ay --sysinit >/lvm.log 2>&1
        [ -b "$spec" ] && dev="$spec" ;;
    *) dev=$(findfs "$spec" 2>/dev/null) ;;
    esac
    [ -n "$dev" ] || sleep 0.1
    i=$((i + 1))
done
[ -n "$dev" ] || fail "root $spec not found" $(tail -n 1 /lvm.log 2>/dev/null)
mkdir -p /root
mount -t ext4 -o ro "$dev" /root || fail "cannot mount $dev"
echo "BLOCKVAULT-BOOT-OK $(cat /root/blockvault-marker) $dev"
case " $(cat /proc/cmdline) " in
*" bv_login "*) hostname "$(cat /root/etc/hostname)"; umount /root; exec getty 115200 ttyS0 ;;
esac
umount /root
poweroff -f
"""


@dataclass(frozen=True)
class Kernel:
    """A kernel image and the module tree built with it."""

    version: str
    vmlinuz: Path
    modules: Path


@dataclass(frozen=True)
class BootDisk:
    """A built boot disk: where it is and what a successful boot prints."""

    path: Path
    firmware: Firmware
    token: str
    root_uuid: str
    size: int
    kernel: str


@dataclass(frozen=True)
class BootResult:
    """What one QEMU boot showed on the serial console."""

    booted: bool
    token: str | None
    seconds: float
    console: str

    @property
    def reason(self) -> str:
        """One line saying why the boot did not succeed (or ``booted``)."""
        if self.booted:
            return "booted"
        fail = re.search(rf"{FAIL_LINE} (.*)", self.console)
        if fail:
            return f"{FAIL_LINE} {fail.group(1).strip()}"
        tail = [line for line in self.console.splitlines() if line.strip()]
        return f"no OK line; last console line: {tail[-1].strip()[:120] if tail else '(none)'}"


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise UsageError(f"{name} is not installed (see bench/README.md, boot acceptance)")
    return found


def _run(name: str, *args: str | os.PathLike[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [_tool(name), *map(str, args)], capture_output=True, text=True, check=False, cwd=cwd
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise UsageError(f"{name} failed: {last}")
    return proc.stdout


def find_kernel(root: Path = Path("/")) -> Kernel:
    """The newest kernel under ``root``/boot whose modules are under ``root``/lib/modules."""
    candidates = []
    for vmlinuz in (root / "boot").glob("vmlinuz-*"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        modules = root / "lib" / "modules" / version
        if modules.is_dir():
            candidates.append(Kernel(version, vmlinuz, modules))
    if not candidates:
        raise UsageError(
            f"no kernel with modules under {root} (apt-get install linux-image-amd64, "
            "or unpack the package with dpkg-deb -x and pass its directory)"
        )
    return max(candidates, key=lambda k: k.vmlinuz.stat().st_mtime)


def build_boot_disk(
    firmware: Firmware,
    path: Path,
    *,
    kernel: Kernel | None = None,
    size: int | None = None,
    ballast: int = 0,
    login: bool = False,
    lvm_root: str | None = None,
) -> BootDisk:
    """Build a bootable GPT disk image for ``firmware`` at ``path`` (overwritten).

    ``ballast`` bytes of random (incompressible) files under ``/ballast`` make the root
    as full as a real system's, for benchmarks that restore it. With ``login`` the
    system does not power off after the OK line: busybox getty prints its login
    prompt on the serial console and waits, as an installed system would.

    With ``lvm_root`` ("VG/LV") the root is that logical volume, which the caller
    makes in the last partition and writes ``token`` into as ``/blockvault-marker``:
    this builds ``/boot`` only (see *root on LVM* above)."""
    kernel = kernel or find_kernel()
    size = size or DISK_SIZE[firmware]
    token = secrets.token_hex(8)
    root_uuid = str(uuid.uuid4())
    with tempfile.TemporaryDirectory(prefix="bootdisk-", dir=path.parent) as tmp:
        work = Path(tmp)
        path.unlink(missing_ok=True)
        with open(path, "wb") as image:
            image.truncate(size)
        _partition(firmware, path, lvm=lvm_root is not None)
        parts = _partitions(path)
        root_part = parts[1]
        root_tree = work / "root"
        (root_tree / "boot").mkdir(parents=True)
        shutil.copyfile(kernel.vmlinuz, root_tree / "boot" / "vmlinuz")
        initrd = root_tree / "boot" / "initrd.img"
        if lvm_root is None:
            build_initramfs(kernel, work / "initramfs", initrd)
            (root_tree / MARKER_PATH).write_text(token + "\n")
        else:
            modules = (*INITRAMFS_MODULES, "dm_mod")
            build_initramfs(kernel, work / "initramfs", initrd, modules=modules, lvm=True)
        (root_tree / "etc").mkdir()
        (root_tree / "var" / "log").mkdir(parents=True)  # a Linux root's, for logs left there
        (root_tree / "etc" / "hostname").write_text(f"blockvault-{firmware}\n")
        if ballast > root_part[1] * 0.9:
            raise UsageError(f"ballast of {ballast} bytes does not fit a {size}-byte disk")
        _ballast(root_tree / "ballast", ballast)
        root_fs = work / "root.ext4"
        _run(
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",  # 4 KiB blocks (not mke2fs's 1 KiB for small fs): a 4Kn copy can mount it
            "4096",
            "-U",
            root_uuid,
            "-L",
            "bvroot",
            "-d",
            root_tree,
            root_fs,
            str(root_part[1] // 1024) + "k",
        )
        _splice(root_fs, path, root_part[0])
        config = work / "grub.cfg"
        root_spec = f"/dev/{lvm_root}" if lvm_root else f"UUID={root_uuid}"
        config.write_text(_grub_config(root_uuid, root_spec, login))
        core = work / "core.img"
        _run(
            "grub-mkimage",
            "-O",
            GRUB_FORMAT[firmware],
            "-o",
            core,
            "-p",
            "/boot/grub",
            "-c",
            config,
            *GRUB_MODULES[firmware],
        )
        if firmware == "bios":
            _install_bios(path, core, parts[0])
        else:
            esp = work / "esp.fat"
            _esp(esp, parts[0][1], core)
            _splice(esp, path, parts[0][0])
    return BootDisk(path, firmware, token, root_uuid, size, kernel.version)


def _ballast(directory: Path, total: int) -> None:
    directory.mkdir()
    for k in range(0, total, BALLAST_FILE):
        with open(directory / f"{k // BALLAST_FILE:05d}.bin", "wb") as f:
            for _ in range(0, min(BALLAST_FILE, total - k), MIB):
                f.write(os.urandom(MIB))


def _partition(firmware: Firmware, path: Path, *, lvm: bool) -> None:
    first = (
        ["-n", "1:2048:+1M", "-t", "1:EF02", "-c", "1:BIOS boot"]
        if firmware == "bios"
        else ["-n", f"1:2048:+{ESP_SIZE // MIB}M", "-t", "1:EF00", "-c", "1:EFI System"]
    )
    _run("sgdisk", "-Z", path)
    rest = (
        [f"-n2:0:+{LVM_BOOT_SIZE // MIB}M", "-t2:8300", "-c2:boot", "-n3:0:0", "-t3:8E00"]
        if lvm
        else ["-n", "2:0:0", "-t", "2:8300", "-c", "2:root"]
    )
    _run("sgdisk", *first, *rest, path)


def _partitions(path: Path) -> list[tuple[int, int]]:
    """(offset, size) in bytes of each partition, as sfdisk reads them."""
    table = json.loads(_run("sfdisk", "--json", path))["partitiontable"]
    unit = int(table.get("sectorsize", 512))
    return [(p["start"] * unit, p["size"] * unit) for p in table["partitions"]]


def _splice(source: Path, image: Path, offset: int) -> None:
    """Copy ``source`` into ``image`` at ``offset``, leaving holes for zero MiBs."""
    with open(source, "rb") as src, open(image, "r+b") as dst:
        position = offset
        while block := src.read(MIB):
            if block.count(0) != len(block):
                dst.seek(position)
                dst.write(block)
            position += len(block)


def _grub_config(boot_uuid: str, root_spec: str, login: bool) -> str:
    extra = " bv_login" if login else ""
    return (
        "serial --unit=0 --speed=115200\n"
        "terminal_input serial\n"
        "terminal_output serial\n"
        "echo 'blockvault: grub loaded'\n"
        f"search --no-floppy --fs-uuid --set=root {boot_uuid}\n"
        f"linux /boot/vmlinuz console=ttyS0,115200 bv_root={root_spec} panic=-1 quiet"
        f"{extra}\n"
        "initrd /boot/initrd.img\n"
        "boot\n"
        # Reached only when a step above failed (the embedded config runs on): say so and
        # power off, so a broken copy fails in seconds instead of waiting at a prompt.
        f"echo '{FAIL_LINE} grub could not load the kernel'\n"
        "halt\n"
    )


def _install_bios(image: Path, core: Path, bios_boot: tuple[int, int]) -> None:
    """Write boot.img into the MBR and core.img into the BIOS boot partition."""
    boot = bytearray((GRUB_DIR / "i386-pc" / "boot.img").read_bytes())
    core_img = bytearray(core.read_bytes())
    offset, size = bios_boot
    if len(core_img) > size:
        raise UsageError(f"GRUB core.img ({len(core_img)} bytes) exceeds the BIOS boot partition")
    first_sector = offset // 512
    sectors = -(-len(core_img) // 512)
    with open(image, "r+b") as disk:
        mbr = disk.read(512)
        boot[BPB_START:BPB_END] = mbr[BPB_START:BPB_END]
        boot[NT_MAGIC:PART_END] = mbr[NT_MAGIC:PART_END]
        struct.pack_into("<Q", boot, KERNEL_SECTOR, first_sector)
        boot[DRIVE_CHECK : DRIVE_CHECK + 2] = b"\x90\x90"
        segment = struct.unpack_from("<QHH", core_img, BLOCKLIST)[2]
        struct.pack_into("<QHH", core_img, BLOCKLIST, first_sector + 1, sectors - 1, segment)
        disk.seek(0)
        disk.write(boot)
        disk.seek(offset)
        disk.write(core_img)


def _esp(path: Path, size: int, grub_efi: Path) -> None:
    """A FAT32 EFI System Partition holding GRUB at the removable-media path."""
    with open(path, "wb") as f:
        f.truncate(size)
    _run("mkfs.fat", "-F", "32", "-s", "8", "-n", "EFI", path)
    _run("mmd", "-i", path, "::/EFI", "::/EFI/BOOT")
    _run("mcopy", "-i", path, grub_efi, "::/EFI/BOOT/BOOTX64.EFI")


def _module_files(modules: Path) -> dict[str, Path]:
    files = {}
    for ko in modules.rglob("*.ko*"):
        name = ko.name.split(".ko")[0].replace("-", "_")
        files[name] = ko
    return files


def _module_order(kernel: Kernel, wanted: Iterable[str]) -> list[Path]:
    """``wanted`` and their dependencies (from modinfo), dependencies first."""
    files = _module_files(kernel.modules)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in files:  # built into the kernel
            return
        depends = _run("modinfo", "-F", "depends", files[name]).strip()
        for dep in filter(None, depends.split(",")):
            visit(dep)
        order.append(files[name])

    for name in wanted:
        visit(name)
    return order


def build_initramfs(
    kernel: Kernel,
    tree: Path,
    output: Path,
    *,
    modules: Iterable[str] = INITRAMFS_MODULES,
    init: str = INIT_SCRIPT,
    lvm: bool = False,
) -> None:
    """A gzip'd newc cpio with static busybox, ``modules`` (with what they depend
    on, loaded in order by ``init`` from /modules.order) and ``init`` as /init;
    with ``lvm``, also the host's ``lvm`` (see :func:`_add_lvm`)."""
    for sub in ("bin", "proc", "sys", "dev", "modules"):
        (tree / sub).mkdir(parents=True)
    busybox = Path(_tool("busybox"))
    with open(busybox, "rb") as f:
        dynamic = b"/ld-linux" in f.read(4096)  # the PT_INTERP path sits in the first page
    if dynamic:
        raise UsageError(f"{busybox} is not static (apt-get install busybox-static)")
    shutil.copyfile(busybox, tree / "bin" / "busybox")
    (tree / "bin" / "busybox").chmod(0o755)
    (tree / "bin" / "sh").symlink_to("busybox")
    names = []
    for ko in _module_order(kernel, modules):
        name = ko.name.split(".ko")[0] + ".ko"
        data = lzma.decompress(ko.read_bytes()) if ko.name.endswith(".xz") else ko.read_bytes()
        (tree / "modules" / name).write_bytes(data)
        names.append(name)
    (tree / "modules.order").write_text("\n".join(names) + "\n")
    if lvm:
        _add_lvm(tree)
    (tree / "init").write_text(init)
    (tree / "init").chmod(0o755)
    listing = "\n".join(str(p.relative_to(tree)) for p in sorted(tree.rglob("*"))) + "\n"
    proc = subprocess.run(
        [_tool("cpio"), "--quiet", "-o", "-H", "newc", "-R", "0:0"],
        input=listing.encode(),
        capture_output=True,
        cwd=tree,
        check=False,
    )
    if proc.returncode != 0:
        raise UsageError(f"cpio failed: {proc.stderr.decode(errors='replace').strip()}")
    output.write_bytes(gzip.compress(proc.stdout, compresslevel=6))


def _add_lvm(tree: Path) -> None:
    """The host's ``lvm`` as /bin/lvm, the shared libraries ``ldd`` says it loads
    at their own paths, and an lvm.conf for a system without udev."""
    lvm = Path(_tool("lvm"))
    shutil.copyfile(lvm, tree / "bin" / "lvm")
    (tree / "bin" / "lvm").chmod(0o755)
    for library in re.findall(r"(/\S+) \(0x", _run("ldd", lvm)):
        target = tree / library.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(library, target)  # the file a symlink names (and its mode: ld.so runs)
    (tree / "etc" / "lvm").mkdir(parents=True)
    (tree / "etc" / "lvm" / "lvm.conf").write_text(LVM_CONF)
    for sub in ("run/lock/lvm", "tmp"):
        (tree / sub).mkdir(parents=True)


def boot(
    image: Path,
    firmware: Firmware,
    *,
    timeout: float = 300.0,
    sector_size: int = 512,
    expect_token: str | None = None,
    workdir: Path | None = None,
) -> BootResult:
    """Boot ``image`` under QEMU with TCG emulation and watch the serial console.

    ``booted`` is true when the OK line appears (with ``expect_token`` if given).
    QEMU runs through blockvault's own guest runner (:mod:`blockvault.interop.boot`)
    until the initramfs powers off, or is stopped at ``timeout`` seconds.
    """
    machine = Machine(firmware, accel="tcg", memory=512, cpus=1, sector_size=sector_size)
    with tempfile.TemporaryDirectory(prefix="qemu-", dir=workdir) as tmp:
        console = Path(tmp) / "console.log"
        check = watch_guest(
            machine,
            image,
            disk_format="raw",
            markers=(),
            timeout=timeout,
            console_log=console,
            workdir=Path(tmp),
        )
        text = console.read_bytes().decode(errors="replace")
    ok = re.search(rf"{OK_LINE} (\S+)", text)
    token = ok.group(1) if ok else None
    booted = token is not None and (expect_token is None or token == expect_token)
    return BootResult(booted, token, check.seconds, text)
