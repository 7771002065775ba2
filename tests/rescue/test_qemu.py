"""The rescue ISO booted under QEMU: as a CD and as a USB stick, BIOS (SeaBIOS) and
UEFI (OVMF). The ISO is built once per session with the build cache (the first
build ever downloads Debian packages: minutes); guests run under TCG unless KVM
can run them."""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault.interop.boot import OVMF_PAIRS, ConsoleWatch, default_accel
from blockvault.rescue.build import DEFAULT_CACHE, Preset, build_iso
from blockvault_demo.sample_boot import boot, build_boot_disk
from tests.conftest import IS_ROOT, blockvault, need_tools

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT, reason="mmdebstrap builds the rescue root as root"),
]

MENU = "Choose:"
BOOT_TIMEOUT = 600.0  # seconds: GRUB reads the kernel through the firmware, slow under TCG
CACHE = Path(os.environ.get("BLOCKVAULT_RESCUE_CACHE", str(DEFAULT_CACHE))).expanduser()


@pytest.fixture(scope="session")
def rescue_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("mmdebstrap", "mksquashfs", "grub-mkrescue", "xorriso", "qemu-system-x86_64")
    iso = tmp_path_factory.mktemp("rescue") / "rescue.iso"
    summary = build_iso(iso, Preset(), cache=CACHE)
    assert summary.fits_stick
    return iso


def boot_rescue(
    medium: Path, firmware: str, how: str, disk: Path, *, until: tuple[str, ...], timeout: float
) -> str:
    """Boot ``medium`` (as ``cdrom`` or ``usb``) with ``disk`` as the machine's blank
    virtio disk; the serial console's text once one of ``until`` appears, else when
    the guest powers off or the timeout passes."""
    accel = default_accel()
    args = [
        "qemu-system-x86_64",
        "-accel",
        accel,
        *(["-cpu", "host"] if accel == "kvm" else []),
        "-m",
        "1024",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-nic",
        "none",
        "-drive",
        f"if=virtio,format=raw,file={disk}",
    ]
    if how == "cdrom":
        args += ["-drive", f"media=cdrom,readonly=on,file={medium}"]
    else:
        args += [
            "-device",
            "qemu-xhci",
            "-drive",
            f"if=none,id=stick,format=raw,readonly=on,file={medium}",
            "-device",
            "usb-storage,drive=stick,bootindex=0",
        ]
    if firmware == "uefi":
        code, variables = next((c, v) for c, v in OVMF_PAIRS if c.exists() and v.exists())
        own = disk.with_suffix(".vars")
        shutil.copyfile(variables, own)
        args += [
            "-drive",
            f"if=pflash,format=raw,readonly=on,file={code}",
            "-drive",
            f"if=pflash,format=raw,file={own}",
        ]
    watch = ConsoleWatch(until)
    seen = bytearray()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not selector.select(deadline - time.monotonic()):
                    continue
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    break
                seen += data
                if watch.feed(data):
                    break
    finally:
        proc.terminate()
        proc.wait(10)
    return seen.decode(errors="replace")


@pytest.fixture
def blank(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "blank.img"
    with open(disk, "wb") as file:
        file.truncate(256 * 1024 * 1024)
    yield disk


@pytest.mark.parametrize(("firmware", "how"), [("bios", "cdrom"), ("uefi", "usb")])
def test_the_menu_appears_on_the_serial_console(
    rescue_iso: Path, blank: Path, firmware: str, how: str
) -> None:
    console = boot_rescue(rescue_iso, firmware, how, blank, until=(MENU,), timeout=BOOT_TIMEOUT)
    assert "== blockvault rescue ==" in console, console[-2000:]
    assert "1) Restore a disk from a repository" in console


def test_unattended_restore_from_an_image_on_the_stick_then_the_system_boots(
    tmp_path: Path, blank: Path, rescue_iso: Path
) -> None:
    sample = build_boot_disk("bios", tmp_path / "sample.img")
    repo, image = tmp_path / "repo", tmp_path / "sample.bvi"
    for args in (
        ("-r", repo, "init"),
        ("-r", repo, "backup", sample.path),
        ("-r", repo, "export", "--format", "bvi", "latest", image),
    ):
        done = blockvault(*args)
        assert done.returncode == 0, done.stderr
    stick = tmp_path / "stick.iso"
    options = 'blockvault.run="restore latest /dev/vda --yes" blockvault.after=poweroff'
    build_iso(stick, Preset(images=(image,), boot_options=options), cache=CACHE)
    # blockvault.after=poweroff: the console ends when the guest has synced and stopped
    console = boot_rescue(stick, "uefi", "usb", blank, until=(), timeout=BOOT_TIMEOUT)
    assert "BLOCKVAULT-RESCUE-START blockvault restore latest /dev/vda --yes" in console
    assert "BLOCKVAULT-RESCUE-OK" in console, console[-2000:]
    assert "reboot: Power down" in console
    restored = boot(blank, "bios", expect_token=sample.token)
    assert restored.booted, restored.reason
