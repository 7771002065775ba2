"""Building the rescue ISO: a small Debian live system with blockvault in it.

Glossary:

package list
    ``packages.txt`` beside this module: the pinned suite and mirror, the Debian
    packages, and what is dropped from the root afterwards. Its hash keys the cache.
base
    The root mmdebstrap installs from the package list, made into
    ``filesystem.squashfs``, with its kernel and live-boot initramfs beside it.
    Cached under ``CACHE/base-<hash>/``: built once per package list (minutes),
    reused by every later build.
layer
    ``zz-blockvault.squashfs``: blockvault (the wheel built from this tree) and its
    Python dependencies from PyPI, the boot-time units and the menu. live-boot
    stacks it over the base (``/live/filesystem.module`` lists the order), so a
    blockvault change rebuilds only this layer (seconds). Cached by the wheel's hash.
medium
    The ISO's own files, outside both squashfs images: GRUB for BIOS and UEFI
    (``grub-mkrescue``), ``/live``, and ``/blockvault`` with the preset
    (``rescue.json``, the password file, the SSH key) and the ``.bvi`` images.
    live-boot mounts it at ``/run/live/medium``.

Invariants: every cache entry is built under a temporary name and renamed when
complete, so an interrupted build leaves nothing a later build would trust; the
library never prints (steps are :class:`~blockvault.events.Noted` events); a
missing tool is a :class:`UsageError` naming its package.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

from blockvault.errors import RescueBuildError, RescueOptionError, UsageError
from blockvault.events import Noted, Reporter, Warned, quiet
from blockvault.rescue.cmdline import job_from_cmdline, kernel_params
from blockvault.rescue.runtime import (
    CONFIG_NAME,
    IMAGES_DIR,
    MEDIUM_DIR,
    PASSWORD_NAME,
    S3_CREDENTIALS_NAME,
    SSH_DIR,
    layer_files,
    valid_endpoint,
)

__all__ = [
    "DEFAULT_CACHE",
    "STICK_BYTES",
    "IsoSummary",
    "PackageList",
    "Preset",
    "base_name",
    "build_iso",
    "cache_lock",
    "check_reproducible",
    "package_list",
]

DEFAULT_CACHE: Final = Path("~/.cache/blockvault/rescue")
STICK_BYTES: Final = 1_000_000_000  # "fits on a 1 GB stick": decimal, as sticks are sold
VOLUME_ID: Final = "BLOCKVAULT_RESCUE"
# a fixed time for every file date the build writes, unless the caller gives one;
# the base always uses its own, so that a caller's epoch does not rebuild it
DEFAULT_EPOCH: Final = 1_700_000_000
BASE_EPOCH: Final = DEFAULT_EPOCH
SQUASHFS_OPTIONS: Final = (
    "-comp",
    "zstd",
    "-Xcompression-level",
    "15",
    "-no-progress",
    "-reproducible",  # files in sorted order, no build-time stamps
)
MANIFEST_NAME: Final = "build.json"  # in MEDIUM_DIR: the build's exact inputs
MANIFEST_FORMAT: Final = 1
# the layer's recipe: a change to how the layer is made (not what goes in) renames it
LAYER_RECIPE: Final = "2: pip --no-compile, compileall in place, no direct_url.json"
LOCK_NAME: Final = ".lock"  # in the cache: builds hold it shared, pruning alone
PYPI_PLATFORMS: Final = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "linux_x86_64")
EXTRAS: Final = "sftp,s3"
KERNEL_OPTIONS: Final = "boot=live live-media-path=/live console=tty0 console=ttyS0,115200"
TOOLS: Final = {
    "mmdebstrap": "mmdebstrap",
    "mksquashfs": "squashfs-tools",
    "grub-mkrescue": "grub-common",
    "xorriso": "xorriso",
    "mformat": "mtools",
}
GRUB_PLATFORMS: Final = {"i386-pc": "grub-pc-bin", "x86_64-efi": "grub-efi-amd64-bin"}
GRUB_DIR: Final = Path("/usr/lib/grub")
# the initramfs's drivers (MODULES=list; live-boot's hook adds squashfs, overlay, loop):
# CD, USB, SATA, NVMe, virtio and SD/MMC media, their filesystems, a USB keyboard
INITRAMFS_MODULES: Final = (
    "sr_mod",
    "cdrom",
    "isofs",
    "ahci",
    "ata_piix",
    "pata_acpi",
    "sd_mod",
    "nvme",
    "usb_storage",
    "uas",
    "xhci_pci",
    "ehci_pci",
    "ohci_pci",
    "uhci_hcd",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "mmc_block",
    "sdhci_pci",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "ext4",
    "hid_generic",
    "usbhid",
    "squashfs",
    "overlay",
    "loop",
)


@dataclass(frozen=True)
class PackageList:
    suite: str
    mirror: str
    packages: tuple[str, ...]
    drops: tuple[str, ...]
    digest: str  # of the file's text: the base cache key


@dataclass(frozen=True)
class Preset:
    """What the stick brings along, so a restore needs no typing."""

    repo: str | None = None
    password_file: Path | None = None
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    images: tuple[Path, ...] = ()
    boot_options: str = ""  # kernel options of the default boot entry: blockvault.run=...
    s3_credentials: Path | None = None  # an AWS shared credentials file
    s3_endpoint: str | None = None  # an S3-compatible server (else AWS)


@dataclass(frozen=True)
class IsoSummary:
    path: Path
    size: int
    suite: str
    kernel: str
    debian_packages: int
    python_packages: tuple[str, ...]  # name==version, vendored from PyPI
    parts: dict[str, int]  # file on the medium -> bytes
    images: tuple[str, ...]
    repo: str | None
    boot_options: str
    base_cached: bool
    layer_cached: bool
    seconds: float
    sha256: str
    inputs: dict[str, object]  # what the medium's blockvault/build.json records
    manifest: str = f"{MEDIUM_DIR}/{MANIFEST_NAME}"  # where on the medium
    fits_stick: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fits_stick", self.size <= STICK_BYTES)


def package_list(text: str | None = None) -> PackageList:
    """The package list (``packages.txt`` unless ``text`` is given), parsed."""
    if text is None:
        text = resources.files(__package__).joinpath("packages.txt").read_text()
    suite = mirror = ""
    packages: list[str] = []
    drops: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "suite" and len(words) == 2:
            suite = words[1]
        elif words[0] == "mirror" and len(words) == 2:
            mirror = words[1]
        elif words[0] == "drop" and len(words) == 2 and not words[1].startswith("/"):
            drops.append(words[1])
        elif len(words) == 1:
            packages.append(words[0])
        else:
            raise RescueBuildError(f"package list line {line!r} is not understood", output="-")
    if not suite or not mirror or not packages:
        raise RescueBuildError("package list names no suite, mirror or packages", output="-")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return PackageList(suite, mirror, tuple(packages), tuple(drops), digest)


def build_iso(
    output: Path,
    preset: Preset,
    *,
    cache: Path = DEFAULT_CACHE,
    reporter: Reporter = quiet,
    epoch: int | None = None,
) -> IsoSummary:
    """Build the hybrid ISO at ``output`` (BIOS and UEFI; CD, USB stick or VM disk)."""
    started = time.monotonic()
    _check_tools()
    _check_preset(output, preset)
    cache = cache.expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    env = _build_env(epoch)
    plist = package_list()
    with tempfile.TemporaryDirectory(prefix=".rescue-", dir=output.parent) as tmp:
        with cache_lock(cache):
            base, base_cached = _base(cache, plist, _build_env(BASE_EPOCH), reporter)
            layer, layer_cached = _layer(cache, base, env, reporter)
            for used in (base / "base.json", layer / "layer.json"):
                os.utime(used)  # the time of last use, which pruning keeps by
            info = json.loads((base / "base.json").read_text())
            layer_info = json.loads((layer / "layer.json").read_text())
            tree = Path(tmp) / "medium"
            parts = _medium(tree, base, layer, preset)
        inputs = _manifest(plist, info, layer_info, preset, env)
        (tree / MEDIUM_DIR / MANIFEST_NAME).write_text(json.dumps(inputs, indent=2) + "\n")
        reporter(Noted("writing the ISO (grub-mkrescue: BIOS and UEFI)"))
        partial = Path(tmp) / "rescue.iso"
        _grub_mkrescue(tree, partial, Path(tmp), output=output, env=env)
        os.replace(partial, output)
    size = output.stat().st_size
    if size > STICK_BYTES:
        reporter(Warned(f"{output} is {size} bytes: more than a 1 GB stick holds"))
    return IsoSummary(
        path=output,
        size=size,
        suite=plist.suite,
        kernel=info["kernel"],
        debian_packages=info["packages"],
        python_packages=tuple(layer_info["python"]),
        parts=parts,
        images=tuple(p.name for p in preset.images),
        repo=preset.repo,
        boot_options=preset.boot_options,
        base_cached=base_cached,
        layer_cached=layer_cached,
        seconds=time.monotonic() - started,
        sha256=_sha256(output),
        inputs=inputs,
    )


def _manifest(
    plist: PackageList,
    base: dict[str, Any],
    layer: dict[str, Any],
    preset: Preset,
    env: dict[str, str],
) -> dict[str, object]:
    """Everything the ISO's bytes depend on (no secrets: the preset's files are named,
    not copied). Two builds with equal manifests give the same ISO."""
    return {
        "format": MANIFEST_FORMAT,
        "source_date_epoch": int(env["SOURCE_DATE_EPOCH"]),
        "debian": {
            "suite": plist.suite,
            "mirror": plist.mirror,
            "package_list": plist.digest,
            "epoch": base["epoch"],
            "kernel": base["kernel"],
            "packages": base["debian"],
        },
        "blockvault": {**layer["wheel"], "epoch": layer["epoch"]},
        "python": {"interpreter": base["python"], "packages": layer["python"]},
        "tools": {
            **base["tools"],
            **_tool_versions("grub-mkrescue", "xorriso", "mformat"),
        },
        "sha256": {
            **{f"live/{name}": digest for name, digest in base["sha256"].items()},
            **{f"live/{name}": digest for name, digest in layer["sha256"].items()},
        },
        "preset": {
            "repo": preset.repo,
            "images": [p.name for p in preset.images],
            "boot_options": preset.boot_options,
            "s3_endpoint": preset.s3_endpoint,
        },
    }


def check_reproducible(
    first: IsoSummary,
    preset: Preset,
    *,
    cache: Path = DEFAULT_CACHE,
    reporter: Reporter = quiet,
    epoch: int | None = None,
) -> None:
    """Build ``first``'s ISO again from the same inputs (and cache) beside it, and
    raise :class:`RescueBuildError` unless both are the same bytes."""
    with tempfile.TemporaryDirectory(prefix=".again-", dir=first.path.parent) as tmp:
        reporter(Noted("building the ISO a second time, to compare"))
        again = build_iso(
            Path(tmp) / first.path.name, preset, cache=cache, reporter=reporter, epoch=epoch
        )
    if again.sha256 != first.sha256:
        raise RescueBuildError(
            f"not reproducible: a second build has SHA-256 {again.sha256}, "
            f"not {first.sha256}; compare the two with xorriso -find and unsquashfs -lls",
            output=first.path,
        )


def _grub_mkrescue(
    tree: Path, iso: Path, scratch: Path, *, output: Path, env: dict[str, str]
) -> None:
    """``grub-mkrescue`` with every date and id fixed by ``SOURCE_DATE_EPOCH``.

    xorriso reads that variable, but grub-mkrescue also hands it
    ``--modification-date`` of the present moment, so the dates come again as
    xorriso commands (after ``--``, they run last). The EFI system image is made by
    ``mformat``, whose volume serial number is random unless ``-N`` gives one:
    grub-mkrescue cannot pass it, so a ``mformat`` first on the PATH adds it."""
    epoch = int(env["SOURCE_DATE_EPOCH"])
    stamp = time.strftime("%Y%m%d%H%M%S00", time.gmtime(epoch))
    mformat = shutil.which("mformat")
    if mformat is None:
        raise UsageError("mformat is not installed (apt-get install mtools)")
    tools = scratch / "bin"
    tools.mkdir()
    wrapper = tools / "mformat"
    wrapper.write_text(f'#!/bin/sh\nexec {mformat} -N {epoch & 0xFFFFFFFF:08x} "$@"\n')
    wrapper.chmod(0o755)
    dates = [
        *("-volume_date", "uuid", stamp),
        *("-volume_date", "all_file_dates", f"={epoch}"),
        *(arg for kind in "cm" for arg in ("-volume_date", kind, f"={epoch}")),
        *("-boot_image", "any", "gpt_disk_guid=volume_date_uuid"),
    ]
    _run(
        ["grub-mkrescue", "-o", str(iso), str(tree), "--", "-volid", VOLUME_ID, *dates],
        output=output,
        env={**env, "PATH": f"{tools}{os.pathsep}{env.get('PATH', os.defpath)}"},
    )


def _check_tools() -> None:
    if os.geteuid() != 0:
        raise UsageError("rescue build needs root: mmdebstrap installs the root system as root")
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            raise UsageError(f"{tool} is not installed (apt-get install {package})")
    for platform, package in GRUB_PLATFORMS.items():
        if not (GRUB_DIR / platform / "modinfo.sh").exists():
            raise UsageError(f"GRUB for {platform} is not installed (apt-get install {package})")


def _check_preset(output: Path, preset: Preset) -> None:
    if output.is_dir():
        raise RescueBuildError("is a directory; name the ISO file to write", output=output)
    if not output.parent.is_dir():
        raise RescueBuildError(f"folder {output.parent} does not exist", output=output)
    given = [
        preset.password_file,
        preset.ssh_key,
        preset.known_hosts,
        preset.s3_credentials,
        *preset.images,
    ]
    for path in given:
        if path is not None and not path.is_file():
            raise RescueBuildError(f"{path} is not a file", output=output)
    if preset.s3_endpoint is not None and not valid_endpoint(preset.s3_endpoint):
        raise RescueBuildError("the S3 endpoint is not an http:// or https:// URL", output=output)
    names = [p.name for p in preset.images]
    if len(set(names)) != len(names):
        raise RescueBuildError("two images have the same file name", output=output)
    if any(c in preset.boot_options for c in "\n\r'\\$"):
        raise RescueBuildError("boot options may not hold newlines, ', \\ or $", output=output)
    job_from_cmdline(preset.boot_options)  # a wrong option fails now, not at boot


def _build_env(epoch: int | None) -> dict[str, str]:
    given = os.environ.get("SOURCE_DATE_EPOCH")
    stamp = epoch if epoch is not None else int(given) if given else DEFAULT_EPOCH
    return {**os.environ, "SOURCE_DATE_EPOCH": str(stamp), "LC_ALL": "C.UTF-8"}


@contextmanager
def _entry(cache: Path, name: str) -> Iterator[Path]:
    """A cache entry built in a temporary folder and renamed to ``name`` once whole."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        yield tmp
        try:
            os.replace(tmp, cache / name)
        except OSError:
            if not (cache / name).is_dir():  # else a build beside ours finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _base_hooks(plist: PackageList) -> list[str]:
    """mmdebstrap's customize hooks (``$1`` is the root): networking, the dropped
    files, and a small initramfs (only the drivers that find a boot medium: GRUB
    reads it through the firmware, which is slow, so every MiB counts)."""
    modules = "\\n".join(INITRAMFS_MODULES)
    return [
        'echo blockvault-rescue > "$1/etc/hostname"',
        'mkdir -p "$1/etc/systemd/network"',
        "printf '[Match]\\nType=ether\\n\\n[Network]\\nDHCP=yes\\n' "
        '> "$1/etc/systemd/network/20-wired.network"',
        'chroot "$1" systemctl enable systemd-networkd systemd-resolved',
        'ln -sf /run/systemd/resolve/stub-resolv.conf "$1/etc/resolv.conf"',
        *(f'cd "$1" && rm -rf -- {drop}' for drop in plist.drops),
        'for k in "$1"/usr/lib/modules/*; do chroot "$1" depmod -a "${k##*/}"; done',
        'echo MODULES=list > "$1/etc/initramfs-tools/conf.d/rescue.conf"',
        f"printf '{modules}\\n' >> \"$1/etc/initramfs-tools/modules\"",
        'chroot "$1" update-initramfs -u -k all',
        'chroot "$1" dpkg-query -W -f "\\${Package}=\\${Version}\\n" | sort > "$1/../packages"',
    ]


@contextmanager
def cache_lock(cache: Path, *, exclusive: bool = False) -> Iterator[None]:
    """Builds share the cache (they only add entries, each under a temporary name);
    pruning has it alone, and fails at once while a build runs."""
    fd = os.open(cache / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            raise RescueBuildError(
                "a rescue build is using this cache; prune it when the build is done",
                output=cache,
            ) from None
        yield
    finally:
        os.close(fd)


def base_name(plist: PackageList | None = None) -> str:
    """The cache entry of the base this blockvault builds: its inputs' hash."""
    plist = plist or package_list()
    parts = [plist.digest, *_base_hooks(plist), *SQUASHFS_OPTIONS, str(BASE_EPOCH)]
    return f"base-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:16]}"


def _base(
    cache: Path, plist: PackageList, env: dict[str, str], reporter: Reporter
) -> tuple[Path, bool]:
    hooks = _base_hooks(plist)
    base = cache / base_name(plist)
    if (base / "base.json").exists():
        reporter(Noted(f"base system: cached ({base})"))
        return base, True
    reporter(Noted(f"base system: mmdebstrap {plist.suite}, {len(plist.packages)} packages"))
    with _entry(cache, base.name) as tmp:
        root = tmp / "root"
        _run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--mode=root",
                '--aptopt=APT::Install-Recommends "false"',
                *(
                    f"--dpkgopt=path-exclude=/usr/share/{d}/*"
                    for d in ("doc", "man", "locale", "info")
                ),
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                f"--include={','.join(plist.packages)}",
                *(f"--customize-hook={hook}" for hook in hooks),
                plist.suite,
                str(root),
                plist.mirror,
            ],
            output=base,
            env=env,
        )
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if len(kernels) != 1:
            raise RescueBuildError("the root holds no kernel, or several", output=base)
        version = kernels[0].name.removeprefix("vmlinuz-")
        shutil.copyfile(kernels[0], tmp / "vmlinuz")
        shutil.copyfile(root / "boot" / f"initrd.img-{version}", tmp / "initrd.img")
        python = os.readlink(root / "usr" / "bin" / "python3")  # "python3.11"
        reporter(Noted("base system: mksquashfs"))
        _squash(root, tmp / "filesystem.squashfs", output=base, env=env)
        debian = (tmp / "packages").read_text().split()
        info = {
            "kernel": version,
            "python": python,
            "packages": len(debian),
            "debian": debian,
            "epoch": BASE_EPOCH,
            "tools": _tool_versions("mmdebstrap", "mksquashfs"),
            "sha256": _digests(tmp, "vmlinuz", "initrd.img", "filesystem.squashfs"),
        }
        shutil.rmtree(root)
        (tmp / "base.json").write_text(json.dumps(info))
    return base, False


def _layer(cache: Path, base: Path, env: dict[str, str], reporter: Reporter) -> tuple[Path, bool]:
    """blockvault and its dependencies over the base, keyed by the wheel and the base."""
    python = json.loads((base / "base.json").read_text())["python"]
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=cache) as wheels:
        wheel = _wheel(Path(wheels), cache, env)
        wheel_sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
        digest = hashlib.sha256(wheel_sha256.encode())
        digest.update(f"{base.name}\0{env['SOURCE_DATE_EPOCH']}\0".encode())
        digest.update(f"{LAYER_RECIPE}\0".encode())
        for path, (text, _) in sorted(layer_files().items()):
            digest.update(f"{path}\0{text}\0".encode())
        layer = cache / f"layer-{digest.hexdigest()[:16]}"
        if (layer / "layer.json").exists():
            reporter(Noted(f"blockvault layer: cached ({layer})"))
            return layer, True
        reporter(Noted(f"blockvault layer: {wheel.name} and its dependencies from PyPI"))
        with _entry(cache, layer.name) as tmp:
            root = tmp / "root"
            site = root / "usr" / "local" / "lib" / python / "dist-packages"
            version = python.removeprefix("python")
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-warn-script-location",
                    "--no-compile",  # pip compiles in a temporary folder: its path in each .pyc
                    "--cache-dir",
                    str(cache / "pip"),
                    "--target",
                    str(site),
                    "--only-binary=:all:",
                    "--implementation=cp",
                    f"--python-version={version}",
                    *(f"--platform={p}" for p in PYPI_PLATFORMS),
                    f"{wheel}[{EXTRAS}]",
                ],
                output=layer,
                env=env,
            )
            shutil.rmtree(site / "bin", ignore_errors=True)  # entry points: ours follow
            _forget_wheel_path(site)
            _compile(site, python, output=layer, env=env)
            for path, (text, mode) in layer_files().items():
                target = root / path
                target.parent.mkdir(parents=True, exist_ok=True)
                if text.startswith("->"):
                    target.symlink_to(text.removeprefix("->"))
                else:
                    target.write_text(text)
                    target.chmod(mode)
            installed = sorted(
                d.name.removesuffix(".dist-info").replace("-", "==", 1)
                for d in site.glob("*.dist-info")
            )
            _squash(root, tmp / "zz-blockvault.squashfs", output=layer, env=env)
            shutil.rmtree(root)
            info = {
                "python": installed,
                "wheel": {"name": wheel.name, "sha256": wheel_sha256},
                "base": base.name,
                "epoch": int(env["SOURCE_DATE_EPOCH"]),
                "sha256": _digests(tmp, "zz-blockvault.squashfs"),
            }
            (tmp / "layer.json").write_text(json.dumps(info))
    return layer, False


def _forget_wheel_path(site: Path) -> None:
    """Drop pip's record of where the wheel was installed from (``direct_url.json``,
    and its line in ``RECORD``): a temporary folder, different in every build."""
    for record in site.glob("*.dist-info/RECORD"):
        url = record.parent / "direct_url.json"
        if not url.exists():
            continue
        url.unlink()
        lines = record.read_text().splitlines(keepends=True)
        record.write_text(
            "".join(x for x in lines if not x.startswith(f"{url.parent.name}/direct_url.json,"))
        )


def _compile(site: Path, python: str, *, output: Path, env: dict[str, str]) -> None:
    """Byte-compile the layer where it will be (each ``.pyc`` names its source's
    path) with hashes, not dates, for the check; only when this interpreter is the
    base's version, whose bytecode the rescue system can use (else it compiles at
    import, into its RAM overlay)."""
    if python != f"python{sys.version_info.major}.{sys.version_info.minor}":
        return
    final = f"/usr/local/lib/{python}/dist-packages"
    _run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "--invalidation-mode",
            "checked-hash",
            "-s",
            str(site),
            "-p",
            final,
            str(site),
        ],
        output=output,
        env=env,
    )


def _wheel(directory: Path, cache: Path, env: dict[str, str]) -> Path:
    """The wheel of the tree this blockvault runs from (a source checkout), built
    from a copy so that the checkout gets no build/ or egg-info folders."""
    tree = Path(__file__).resolve().parents[3]
    project = tree / "pyproject.toml"
    if not project.is_file() or 'name = "blockvault"' not in project.read_text():
        raise RescueBuildError(
            f"blockvault runs from {tree}, not a source tree: build from a checkout",
            output="-",
        )
    copy = directory / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(tree / "src", copy / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(tree / name, copy / name)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--cache-dir",
            str(cache / "pip"),
            "--wheel-dir",
            str(directory),
            str(copy),
        ],
        output=directory,
        env=env,
    )
    (wheel,) = directory.glob("blockvault-*.whl")
    return wheel


def _squash(root: Path, image: Path, *, output: Path, env: dict[str, str]) -> None:
    """``root`` packed; mksquashfs reads ``SOURCE_DATE_EPOCH`` from ``env``: the image's
    date, and every file date after it clamped to it (files written by the build
    hooks and pip carry the time they were written; those from packages are older)."""
    _run(
        ["mksquashfs", str(root), str(image), "-noappend", *SQUASHFS_OPTIONS],
        output=output,
        env=env,
    )


def _tool_versions(*tools: str) -> dict[str, str]:
    """The first line of each tool's version: their output is part of the ISO."""
    versions = {}
    for tool in tools:
        flag = "-version" if tool == "mksquashfs" else "--version"
        proc = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
        lines = (proc.stdout or proc.stderr).strip().splitlines()
        versions[tool] = lines[0].strip() if lines else "unknown"
    return versions


def _digests(folder: Path, *names: str) -> dict[str, str]:
    return {name: _sha256(folder / name) for name in names}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _medium(tree: Path, base: Path, layer: Path, preset: Preset) -> dict[str, int]:
    """Lay out the ISO's files; the squashfs images are hard links into the cache
    when it is on the same filesystem."""
    live = tree / "live"
    live.mkdir(parents=True)
    files = {
        "live/vmlinuz": base / "vmlinuz",
        "live/initrd.img": base / "initrd.img",
        "live/filesystem.squashfs": base / "filesystem.squashfs",
        "live/zz-blockvault.squashfs": layer / "zz-blockvault.squashfs",
    }
    medium = tree / MEDIUM_DIR
    medium.mkdir()
    config: dict[str, object] = {"repo": preset.repo, "images": []}
    if preset.password_file:
        files[f"{MEDIUM_DIR}/{PASSWORD_NAME}"] = preset.password_file
        config["password_file"] = PASSWORD_NAME
    if preset.ssh_key:
        files[f"{MEDIUM_DIR}/{SSH_DIR}/id_rescue"] = preset.ssh_key
        config["ssh_key"] = f"{SSH_DIR}/id_rescue"
    if preset.known_hosts:
        files[f"{MEDIUM_DIR}/{SSH_DIR}/known_hosts"] = preset.known_hosts
        config["known_hosts"] = f"{SSH_DIR}/known_hosts"
    if preset.s3_credentials:
        files[f"{MEDIUM_DIR}/{S3_CREDENTIALS_NAME}"] = preset.s3_credentials
        config["s3_credentials"] = S3_CREDENTIALS_NAME
    if preset.s3_endpoint:
        config["s3_endpoint"] = preset.s3_endpoint
    for image in preset.images:
        files[f"{MEDIUM_DIR}/{IMAGES_DIR}/{image.name}"] = image
        config["images"] = [*config["images"], f"{IMAGES_DIR}/{image.name}"]  # type: ignore[misc]
    for name, source in files.items():
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    (live / "filesystem.module").write_text("filesystem.squashfs\nzz-blockvault.squashfs\n")
    (medium / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    grub = tree / "boot" / "grub"
    grub.mkdir(parents=True)
    (grub / "grub.cfg").write_text(grub_config(preset.boot_options))
    return {name: (tree / name).stat().st_size for name in files}


def grub_config(boot_options: str) -> str:
    """GRUB's menu on screen and serial port: the rescue system, with the preset's
    boot options when there are some, and without them as the second entry."""
    # GRUB reads its own quoting, then writes each argument that holds a space as
    # "word" for the kernel, whose parser takes "name=value with spaces" whole. So
    # each parameter goes to GRUB unquoted, single-quoted as one GRUB word (the build
    # refused ' and \\ in the options, and " inside a value below)
    words = []
    for name, value in kernel_params(boot_options):
        if value is not None and '"' in value:
            raise RescueOptionError("a value may not hold a double quote", option=name)
        words.append(f"'{name}'" if value is None else f"'{name}={value}'")
    extra = " ".join(words)
    entries = [("blockvault rescue", extra)] if extra else []
    entries.append(("blockvault rescue (menu)" if extra else "blockvault rescue", ""))
    lines = [
        "serial --unit=0 --speed=115200",
        "terminal_input console serial",
        "terminal_output console serial",
        "set timeout=3",
        "set default=0",
    ]
    for title, options in entries:
        lines += [
            f'menuentry "{title}" {{',
            f"    linux /live/vmlinuz {KERNEL_OPTIONS} {options}".rstrip(),
            "    initrd /live/initrd.img",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _run(argv: list[str], *, output: Path | str, env: dict[str, str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise RescueBuildError(f"{Path(argv[0]).name} failed: {last}", output=output)
