"""Make a restored Linux system boot on the machine it landed on (``restore --adapt``).

A disk imaged on one machine often does not boot on another: its initramfs holds
only the old disk controller's driver, its boot loader is set up for the other
firmware mode, its ``fstab`` names partitions by kernel device names that changed.
Not to be confused with :mod:`blockvault.pipeline.adapt`, which plans partition
sizes for another disk size.

Glossary:

target
    The restored disk: a block device, or an image file attached here to a loop
    device with partition scanning for the duration.
root
    The target's partition whose filesystem holds ``/etc/fstab`` and ``/usr/bin``,
    mounted read-write with its ``/boot`` (as its ``fstab`` says) under a private
    temporary directory.
ESP
    The EFI System Partition (FAT), never mounted: a kernel without vfat cannot, and
    GRUB's files are written into it by mtools, from the running machine.
chroot
    That root with a private ``/dev`` (a tmpfs holding only the target's nodes, the
    character devices tools need and ``/dev/disk/by-*`` links), ``/proc``, ``/sys``
    and ``/run``. The restored system's own tools run there, so its GRUB and its
    initramfs generator write files its own versions understand.
change
    One line of the report ("fstab: /dev/vda2 -> UUID=..."); a step that cannot
    apply is a skip, reported with why.

Invariants: every mount made here is undone on every way out (lazily if busy); no
path inside the restored filesystem is followed through a symbolic link (a
hostile image cannot make us mount or write outside it); the running machine's
NVRAM gets a boot entry only when the firmware mode is the running machine's own.
The restored system's tools run as root in the chroot: adapt only systems you
would boot anyway.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from blockvault.disk.rescan import reread_partitions
from blockvault.disk.system import BIOS_BOOT_GUID, ESP_GUID, ESP_MBR_TYPE
from blockvault.errors import AdaptError, UsageError
from blockvault.events import Noted, Reporter, Warned, quiet

__all__ = [
    "DRIVERS",
    "AdaptResult",
    "FirmwareMode",
    "Partition",
    "adapt_system",
    "block_device",
    "check_can_adapt",
    "running_firmware",
    "system_chroot",
]

FirmwareMode = Literal["bios", "uefi"]
Change = Callable[[str], None]  # takes one line of the report

LINUX_FILESYSTEMS: Final = ("ext2", "ext3", "ext4", "xfs", "btrfs")
ESP_TYPES: Final = (ESP_GUID, ESP_MBR_TYPE)  # as blkid shows GPT and MBR types
# the disk controllers a machine may boot from: MODULES=most takes all of them, the
# list is also named in the report
DRIVERS: Final = ("nvme", "ahci", "sd_mod", "virtio_blk", "virtio_scsi", "usb_storage")
INITRAMFS_OVERRIDE: Final = "etc/initramfs-tools/conf.d/zz-blockvault-adapt.conf"
FSTAB_MAX: Final = 1 << 20  # bytes: a larger fstab or crypttab is not one
SAVED_SUFFIX: Final = ".before-adapt"
EFI_PATH: Final = "EFI/BOOT/BOOTX64.EFI"  # where UEFI looks on a disk it has no entry for
EFI_LOADER: Final = "\\" + EFI_PATH.replace("/", "\\")
# the loader's own menu: search does not load the filesystem drivers it needs; if
# the search fails, configfile would read this menu again and again
FIRST_MENU: Final = (
    "insmod part_gpt\ninsmod part_msdos\ninsmod ext2\ninsmod xfs\ninsmod btrfs\n"
    "if search --no-floppy --fs-uuid --set=root {uuid}; then\n"
    "  configfile ($root){prefix}/grub.cfg\n"
    "fi\n"
    'echo "blockvault adapt: no filesystem {uuid} holding {prefix}/grub.cfg"\n'
)
EFI_VARS: Final = Path("/sys/firmware/efi/efivars")
ENTRY_LABEL: Final = "blockvault adapted"
# a kernel device name of a partition, as fstab lines of installers without UUIDs
# write them: /dev/sda2, /dev/vdb1, /dev/xvda3, /dev/hda1, /dev/nvme0n1p2, /dev/mmcblk0p1
DEVICE_NAME: Final = re.compile(
    r"^/dev/(?:(?:[shv]|xv)d[a-z]+|(?:nvme\d+n\d+|mmcblk\d+)p)(?P<number>\d+)$"
)
# fstab/crypttab tags -> the blkid -p key of the partition they name
TAGS: Final = {
    "UUID": "UUID",
    "LABEL": "LABEL",
    "PARTUUID": "PART_ENTRY_UUID",
    "PARTLABEL": "PART_ENTRY_NAME",
}
BY_LINKS: Final = {"by-uuid": "UUID", "by-partuuid": "PART_ENTRY_UUID", "by-label": "LABEL"}
CHAR_DEVICES: Final = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}
TOOLS: Final = {
    "mount": "mount",
    "chroot": "coreutils",
    "losetup": "mount",
    "partx": "util-linux",
    "blkid": "util-linux",
    "mcopy": "mtools",
}
CHROOT_ENV: Final = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}


@dataclass(frozen=True)
class Partition:
    """One partition of the target as ``blkid -p`` probes it (no cache, no udev)."""

    path: str  # /dev/loop3p2
    number: int
    major: int
    minor: int
    probe: dict[str, str]  # TYPE, UUID, LABEL, PART_ENTRY_UUID, PART_ENTRY_TYPE, ...

    @property
    def fs_type(self) -> str:
        return self.probe.get("TYPE", "")

    @property
    def part_type(self) -> str:
        return self.probe.get("PART_ENTRY_TYPE", "").lower()


@dataclass(frozen=True)
class AdaptResult:
    target: str
    root: str  # the root partition's device, as it was named during the run
    firmware: FirmwareMode
    changes: tuple[str, ...]
    skipped: tuple[str, ...]


def running_firmware() -> FirmwareMode:
    """The firmware mode this machine booted in (the kernel shows efi in sysfs)."""
    return "uefi" if Path("/sys/firmware/efi").is_dir() else "bios"


def check_can_adapt() -> None:
    """Refuse before a restore writes anything when adapting could not run here."""
    if os.geteuid() != 0:
        raise UsageError("--adapt needs root: it mounts the restored system and chroots into it")
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            raise UsageError(f"--adapt needs {tool} (apt-get install {package})")


def adapt_system(
    target: str | os.PathLike[str],
    *,
    firmware: FirmwareMode | None = None,
    reporter: Reporter = quiet,
) -> AdaptResult:
    """Adapt the Linux system restored on ``target`` to this machine, or to a machine
    booting in ``firmware`` mode (then no NVRAM entry is written here)."""
    check_can_adapt()
    mode = firmware or running_firmware()
    nvram = firmware is None and mode == "uefi" and EFI_VARS.is_dir()
    changes: list[str] = []
    skipped: list[str] = []

    def change(line: str) -> None:
        changes.append(line)
        reporter(Noted(f"adapt: {line}"))

    def skip(line: str) -> None:
        skipped.append(line)
        reporter(Warned(f"adapt: {line}"))

    with ExitStack() as stack:
        disk = stack.enter_context(block_device(Path(target)))
        parts = partitions(disk)
        root = _find_root(disk, parts, stack)
        with system_chroot(disk, parts, root) as (tree, mounted):
            reporter(Noted(f"adapt: root filesystem on {root.path}; {', '.join(mounted)}"))
            for name in ("fstab", "crypttab"):
                _fix_table(tree, name, parts, change, skip)
            _initramfs(tree, disk, change, skip)
            _boot_loader(tree, disk, parts, mode, nvram, change, skip)
        root_path = root.path
    return AdaptResult(str(target), root_path, mode, tuple(changes), tuple(skipped))


# --- the target -------------------------------------------------------------------


@contextmanager
def block_device(target: Path) -> Iterator[str]:
    """The target as a block device: itself, or its image file on a loop device
    with partition scanning, detached after."""
    mode = os.stat(target).st_mode
    if stat.S_ISBLK(mode):
        reread_partitions(str(target))
        yield str(target)
        return
    if not stat.S_ISREG(mode):
        raise AdaptError("is neither a block device nor an image file", target=target)
    device = _run(["losetup", "--find", "--show", "--partscan", str(target)], target).strip()
    try:
        reread_partitions(device)
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], capture_output=True, check=False)


def partitions(disk: str) -> list[Partition]:
    """The partitions the kernel sees on ``disk`` (from sysfs), probed by blkid."""
    name = Path(os.path.realpath(disk)).name
    found = []
    for entry in sorted(Path("/sys/class/block", name).iterdir()):
        number_file = entry / "partition"
        if not number_file.is_file():
            continue
        major, minor = (int(x) for x in (entry / "dev").read_text().split(":"))
        path = f"/dev/{entry.name}"
        probe = subprocess.run(
            ["blkid", "-p", "-o", "export", path], capture_output=True, text=True, check=False
        )
        fields = dict(
            line.split("=", 1) for line in probe.stdout.splitlines() if "=" in line
        )  # fmt: skip
        found.append(Partition(path, int(number_file.read_text()), major, minor, fields))
    return sorted(found, key=lambda p: p.number)


def _find_root(disk: str, parts: list[Partition], stack: ExitStack) -> Partition:
    """The partition whose filesystem holds /etc/fstab and /usr/bin (looked at
    read-only, one by one)."""
    look = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="blockvault-adapt-")))
    for part in parts:
        if part.fs_type not in LINUX_FILESYSTEMS:
            continue
        where = look / f"p{part.number}"
        where.mkdir()
        if _mount_quiet(["-o", "ro", part.path, str(where)]):
            try:
                if _is_linux_root(where):
                    return part
            finally:
                _unmount(where)
    others = sorted({p.fs_type for p in parts if p.fs_type} - set(LINUX_FILESYSTEMS))
    raise AdaptError(
        "no partition holds a Linux root filesystem (/etc/fstab and /usr/bin)"
        + (f"; found {', '.join(others)}" if others else "")
        + " (a root on LVM or LUKS is not handled by --adapt)",
        target=disk,
    )


def _is_linux_root(where: Path) -> bool:
    try:
        fstab = _inside(where, "etc/fstab")
        usr_bin = _inside(where, "usr/bin")
    except AdaptError:
        return False
    return fstab.is_file() and usr_bin.is_dir()


def _inside(root: Path, relative: str) -> Path:
    """``root/relative`` if no part of it below ``root`` is a symbolic link (a path in
    a hostile filesystem must not lead us out of it)."""
    here = root
    for name in relative.strip("/").split("/"):
        if name in ("", ".", ".."):
            raise AdaptError(f"path {relative} is not plain", target=root)
        here = here / name
        if here.is_symlink():
            raise AdaptError(f"/{relative} passes a symbolic link; refused", target=root)
    return here


# --- mounts and the chroot --------------------------------------------------------


def _mount_quiet(args: list[str]) -> bool:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


def _mount(args: list[str], what: str, target: object) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AdaptError(f"cannot mount {what}: {_last_line(proc.stderr)}", target=target)


def _unmount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "--lazy", str(where)], capture_output=True, check=False)


@contextmanager
def system_chroot(
    disk: str, parts: list[Partition], root: Partition
) -> Iterator[tuple[Path, list[str]]]:
    """``root`` mounted read-write with its /boot, set up for chroot;
    yields the tree and what was mounted (``/ on /dev/loop3p3``, ...)."""
    with ExitStack() as stack:
        tree = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="blockvault-adapt-")))
        mounted: list[str] = []

        def mount(args: list[str], where: Path, what: str) -> None:
            _mount([*args, str(where)], what, disk)
            stack.callback(_unmount, where)

        mount([root.path], tree, f"the root filesystem {root.path}")
        mounted.append(f"/ on {root.path}")
        table = _read_table(tree, "fstab")
        # the ESP is not mounted (see the glossary): mtools writes it
        part = _mounted_at(table, "/boot", parts)
        if part is not None:
            mount([part.path], _inside(tree, "boot"), f"/boot ({part.path})")
            mounted.append(f"/boot on {part.path}")
        mount(["-t", "tmpfs", "-o", "mode=755,size=8m", "bv-dev"], _inside(tree, "dev"), "/dev")
        _private_dev(_inside(tree, "dev"), disk, parts)
        mount(["-t", "proc", "bv-proc"], _inside(tree, "proc"), "/proc")
        mount(["-t", "sysfs", "bv-sys"], _inside(tree, "sys"), "/sys")
        mount(["-t", "tmpfs", "-o", "mode=755", "bv-run"], _inside(tree, "run"), "/run")
        yield tree, mounted


def _mounted_at(table: str | None, point: str, parts: list[Partition]) -> Partition | None:
    """The target's partition ``fstab`` mounts at ``point``, if any."""
    spec = next((f[0] for f in _entries(table) if len(f) > 1 and f[1] == point), None)
    return _resolve(spec, parts) if spec else None


def _private_dev(dev: Path, disk: str, parts: list[Partition]) -> None:
    """The chroot's /dev: the target disk and its partitions under the names the
    kernel gave them (GRUB finds / through /proc/self/mountinfo's name), the usual
    character devices, and the /dev/disk/by-* links GRUB's scripts look for."""
    for name, (major, minor) in CHAR_DEVICES.items():
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    real = os.path.realpath(disk)
    disk_dev = os.stat(real).st_rdev
    os.mknod(dev / Path(real).name, 0o660 | stat.S_IFBLK, disk_dev)
    for part in parts:
        name = Path(part.path).name
        os.mknod(dev / name, 0o660 | stat.S_IFBLK, os.makedev(part.major, part.minor))
        for folder, key in BY_LINKS.items():
            value = part.probe.get(key)
            if value and "/" not in value and value not in (".", ".."):
                links = dev / "disk" / folder
                links.mkdir(parents=True, exist_ok=True)
                (links / value).symlink_to(f"../../{name}")


def _chroot(tree: Path, argv: list[str], target: str) -> str:
    return _run(["chroot", str(tree), *argv], target, env=CHROOT_ENV)


def _run(argv: list[str], target: object, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tool = " ".join(argv[2:4] if argv[0] == "chroot" else argv[:1])
        raise AdaptError(f"{tool} failed: {_last_line(proc.stderr or proc.stdout)}", target=target)
    return proc.stdout


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no message"


# --- fstab and crypttab -----------------------------------------------------------


def _read_table(tree: Path, name: str) -> str | None:
    path = _inside(tree, f"etc/{name}")
    if not path.is_file():
        return None
    if path.stat().st_size > FSTAB_MAX:
        raise AdaptError(f"/etc/{name} is larger than {FSTAB_MAX} bytes", target=tree)
    return path.read_text(errors="replace")


def _entries(text: str | None) -> Iterator[list[str]]:
    for line in (text or "").splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            yield fields


def _resolve(spec: str, parts: list[Partition]) -> Partition | None:
    """The target's partition an fstab/crypttab device field names, if any."""
    tag, _, value = spec.partition("=")
    key = TAGS.get(tag)
    if key is None and spec.startswith("/dev/disk/"):
        folder, _, value = spec.removeprefix("/dev/disk/").partition("/")
        key = BY_LINKS.get(folder)
    if key is not None:
        return next((p for p in parts if p.probe.get(key) == value), None)
    named = DEVICE_NAME.match(spec)
    if named:
        return next((p for p in parts if p.number == int(named["number"])), None)
    return None


def _fix_table(tree: Path, name: str, parts: list[Partition], change: Change, skip: Change) -> None:
    """Rewrite kernel device names (which the new machine may give other disks) to
    ``UUID=`` of the partition with that number; name the entries the target does
    not hold. The device is the first field of fstab, the second of crypttab."""
    text = _read_table(tree, name)
    if text is None:
        return
    column = 0 if name == "fstab" else 1
    lines = text.splitlines(keepends=True)
    rewritten = False
    for i, line in enumerate(lines):
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) <= column:
            continue
        spec = fields[column]
        if not (DEVICE_NAME.match(spec) or "=" in spec or spec.startswith("/dev/disk/")):
            continue  # proc, tmpfs, /dev/mapper/..., LVM names, swap files
        part = _resolve(spec, parts)
        if part is None:
            skip(f"{name}: {spec} is not on the restored disk (left as is)")
        elif DEVICE_NAME.match(spec):
            uuid = part.probe.get("UUID")
            if not uuid:
                skip(f"{name}: {spec} has no UUID on the restored disk (left as is)")
                continue
            lines[i] = re.sub(rf"(?<!\S){re.escape(spec)}(?!\S)", f"UUID={uuid}", line, count=1)
            change(f"{name}: {spec} -> UUID={uuid}")
            rewritten = True
    if rewritten:
        path = _inside(tree, f"etc/{name}")
        shutil.copy2(path, _inside(tree, f"etc/{name}{SAVED_SUFFIX}"))  # not through a link
        path.write_text("".join(lines))


# --- initramfs and boot loader ----------------------------------------------------


def _initramfs(tree: Path, disk: str, change: Change, skip: Change) -> None:
    """A generic initramfs (every disk controller's driver) instead of one with only
    the drivers of the machine it was made on; kept for later kernel updates."""
    if _inside(tree, "usr/sbin/update-initramfs").exists():
        override = _inside(tree, INITRAMFS_OVERRIDE)
        if not override.parent.is_dir():
            skip("initramfs: /etc/initramfs-tools/conf.d is missing (left as is)")
            return
        override.write_text(
            "# blockvault restore --adapt: drivers for any disk controller\nMODULES=most\n"
        )
        _chroot(tree, ["update-initramfs", "-u", "-k", "all"], disk)
        change(f"initramfs: MODULES=most in /{INITRAMFS_OVERRIDE}, regenerated for every kernel")
    elif _inside(tree, "usr/bin/dracut").exists():
        _chroot(tree, ["dracut", "--no-hostonly", "--force", "--regenerate-all"], disk)
        change("initramfs: regenerated by dracut --no-hostonly for every kernel")
    else:
        skip("initramfs: the restored system has neither update-initramfs nor dracut")


def _boot_loader(
    tree: Path,
    disk: str,
    parts: list[Partition],
    firmware: FirmwareMode,
    nvram: bool,
    change: Change,
    skip: Change,
) -> None:
    if not _inside(tree, "usr/sbin/grub-install").exists():
        skip("boot loader: the restored system has no grub-install (left as is)")
        return
    if firmware == "bios":
        if not _inside(tree, "usr/lib/grub/i386-pc").is_dir():
            skip("GRUB: no GRUB for BIOS in the restored system (install grub-pc-bin in it)")
            return
        gpt = any(p.probe.get("PART_ENTRY_SCHEME") == "gpt" for p in parts)
        if gpt and not any(p.part_type == BIOS_BOOT_GUID for p in parts):
            skip("GRUB: a GPT disk without a BIOS boot partition cannot boot GRUB by BIOS")
            return
        _chroot(tree, ["grub-install", "--target=i386-pc", disk], disk)
        change(f"GRUB: installed for BIOS on {disk}")
    else:
        if not _inside(tree, "usr/lib/grub/x86_64-efi").is_dir():
            skip("GRUB: no GRUB for UEFI in the restored system (install grub-efi-amd64-bin in it)")
            return
        esp = _mounted_at(_read_table(tree, "fstab"), "/boot/efi", parts) or next(
            (p for p in parts if p.part_type in ESP_TYPES), None
        )
        if esp is None or esp.fs_type != "vfat":
            why = "no EFI System Partition" if esp is None else f"no FAT filesystem on {esp.path}"
            skip(f"GRUB: {why} on {disk}: UEFI cannot boot it (none is created)")
            return
        _efi_loader(tree, disk, parts, esp)
        change(f"GRUB: installed for UEFI at the removable-media path {EFI_PATH} on {esp.path}")
        if nvram:
            _boot_entry(disk, esp, change, skip)
        else:
            skip("UEFI boot entry: not written (not this machine's firmware, or no efivars)")
    for tool in (["update-grub"], ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]):
        if _inside(tree, f"usr/sbin/{tool[0]}").exists():
            _chroot(tree, tool, disk)
            change("GRUB: menu regenerated (/boot/grub/grub.cfg)")
            return
    skip("GRUB: neither update-grub nor grub-mkconfig in the restored system")


def _efi_loader(tree: Path, disk: str, parts: list[Partition], esp: Partition) -> None:
    """GRUB for UEFI at the removable-media path of the ESP, without mounting it.

    grub-install refuses an EFI directory that is not a mounted FAT filesystem, so
    the restored system's own grub-mkstandalone builds the loader (every GRUB
    module inside it) into the chroot's private /run, with a first menu that finds
    the filesystem holding /boot/grub by UUID and hands over to the grub.cfg that
    update-grub writes there; mtools copies it into the ESP."""
    grub = _inside(tree, "boot/grub")
    if not grub.is_dir():
        raise AdaptError("the restored system has no /boot/grub folder", target=disk)
    device = grub.stat().st_dev
    holder = next((p for p in parts if os.makedev(p.major, p.minor) == device), None)
    uuid = holder.probe.get("UUID", "") if holder else ""
    if not re.fullmatch(r"[0-9A-Fa-f-]{1,64}", uuid):
        raise AdaptError("the filesystem holding /boot/grub has no plain UUID", target=disk)
    prefix = "/boot/grub" if os.stat(tree).st_dev == device else "/grub"
    staging = _inside(tree, "run") / "blockvault-esp"
    (staging / "EFI" / "BOOT").mkdir(parents=True)
    (staging / "first.cfg").write_text(FIRST_MENU.format(uuid=uuid, prefix=prefix))
    _chroot(
        tree,
        [
            "grub-mkstandalone",
            "--format=x86_64-efi",
            f"--output=/run/blockvault-esp/{EFI_PATH}",
            "boot/grub/grub.cfg=/run/blockvault-esp/first.cfg",
        ],
        disk,
    )
    mtools = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}  # partitions need not fit a geometry
    for folder in ("::/EFI", "::/EFI/BOOT"):
        if subprocess.run(
            ["mdir", "-b", "-i", esp.path, folder], env=mtools, capture_output=True, check=False
        ).returncode:
            _run(["mmd", "-i", esp.path, folder], esp.path, env=mtools)
    _run(
        ["mcopy", "-o", "-i", esp.path, str(staging / EFI_PATH), f"::/{EFI_PATH}"],
        esp.path,
        env=mtools,
    )
    listing = _run(["mdir", "-b", "-i", esp.path, f"::/{EFI_PATH}"], esp.path, env=mtools)
    if "BOOTX64.EFI" not in listing.upper():
        raise AdaptError(f"{EFI_PATH} is not on the ESP after copying it", target=esp.path)


def _boot_entry(disk: str, part: Partition, change: Change, skip: Change) -> None:
    """An NVRAM entry for the loader just installed, written by this machine's
    efibootmgr (the rescue system booted UEFI on the machine being adapted)."""
    if shutil.which("efibootmgr") is None:
        skip("UEFI boot entry: efibootmgr is not installed here (the removable path boots)")
        return
    _run(
        [
            "efibootmgr",
            "--create",
            "--disk",
            disk,
            "--part",
            str(part.number),
            "--label",
            ENTRY_LABEL,
            "--loader",
            EFI_LOADER,
        ],
        disk,
    )
    change(f"UEFI boot entry '{ENTRY_LABEL}' -> {EFI_LOADER} on partition {part.number}")
