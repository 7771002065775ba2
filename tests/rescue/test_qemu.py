"""The rescue ISO booted under QEMU: as a CD and as a USB stick, BIOS (SeaBIOS) and
UEFI (OVMF). The plain ISO is the session's ``rescue_iso`` (conftest.py); guests
run under TCG unless KVM can run them."""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blockvault.interop.boot import OVMF_PAIRS, ConsoleWatch, default_accel
from blockvault.rescue.build import Preset, build_iso
from blockvault_demo.sample_boot import BootDisk, boot, build_boot_disk
from blockvault_demo.servers import start_moto, start_sshd, stop
from tests.conftest import IS_ROOT, blockvault, sh
from tests.rescue.conftest import CACHE

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT, reason="mmdebstrap builds the rescue root as root"),
]

MENU = "Choose:"
RESTORE = 'blockvault.run="restore latest /dev/vda --yes" blockvault.after=poweroff'
BOOT_TIMEOUT = 600.0  # seconds: GRUB reads the kernel through the firmware, slow under TCG


def boot_rescue(
    medium: Path,
    firmware: str,
    how: str,
    disk: Path,
    *,
    until: tuple[str, ...],
    timeout: float,
    network: bool = False,
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
        "user,model=virtio-net-pci" if network else "none",
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
        # kept beside the disk: a failing test's tmp_path stays for reading
        disk.with_name(f"{disk.stem}-{firmware}-{how}.console").write_bytes(seen)
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


def backed_up(repo: Path | str, tmp_path: Path, env: dict[str, str] | None = None) -> BootDisk:
    """A bootable sample disk (BIOS; it prints a random token once up), backed up."""
    sample = build_boot_disk("bios", tmp_path / "sample.img")
    for args in (("-r", repo, "init"), ("-r", repo, "backup", sample.path)):
        done = blockvault(*args, env=env)
        assert done.returncode == 0, done.stderr
    return sample


def assert_restored_and_booted(
    console: str, blank: Path, sample: BootDisk, loop: Callable[..., str]
) -> None:
    """The job reported success, the guest powered off (after syncing), the job's log
    is in the restored root's /var/log, and the disk it wrote boots the sample's
    system, token and all."""
    assert "BLOCKVAULT-RESCUE-START blockvault restore latest /dev/vda --yes" in console
    assert "BLOCKVAULT-RESCUE-OK" in console, console[-2000:]
    assert "reboot: Power down" in console
    kept = re.search(r"log kept on the restored system: /dev/vda2:/var/log/(\S+)", console)
    assert kept, console[-2000:]
    # the root is the sample's second partition (sfdisk reads where), e2fsprogs the file
    table = json.loads(sh("sfdisk", "--json", blank))["partitiontable"]
    root = table["partitions"][1]
    device = loop(blank, offset=root["start"] * 512, size=root["size"] * 512)
    log = sh("debugfs", "-R", f"cat /var/log/{kept.group(1)}", device)
    assert "BLOCKVAULT-RESCUE-START blockvault restore latest /dev/vda --yes" in log
    assert log.splitlines()[-1] == "BLOCKVAULT-RESCUE-OK"
    restored = boot(blank, "bios", expect_token=sample.token)
    assert restored.booted, restored.reason


def test_unattended_restore_from_an_image_on_the_stick_then_the_system_boots(
    tmp_path: Path, blank: Path, rescue_iso: Path, loop: Callable[..., str]
) -> None:
    repo, image = tmp_path / "repo", tmp_path / "sample.bvi"
    sample = backed_up(repo, tmp_path)
    done = blockvault("-r", repo, "export", "--format", "bvi", "latest", image)
    assert done.returncode == 0, done.stderr
    stick = tmp_path / "stick.iso"
    build_iso(stick, Preset(images=(image,), boot_options=RESTORE), cache=CACHE)
    # blockvault.after=poweroff: the console ends when the guest has synced and stopped
    console = boot_rescue(stick, "uefi", "usb", blank, until=(), timeout=BOOT_TIMEOUT)
    assert_restored_and_booted(console, blank, sample, loop)


def test_unattended_restore_from_an_sftp_repository_then_the_system_boots(
    tmp_path: Path, blank: Path, rescue_iso: Path, loop: Callable[..., str]
) -> None:
    server = start_sshd(tmp_path / "server")
    try:
        sample = backed_up(server.data / "repo", tmp_path)
        # the guest reaches the host's loopback as 10.0.2.2 (QEMU user networking)
        known = tmp_path / "known_hosts"
        key_type, key_blob = server.host_key.split()[:2]
        known.write_text(f"[10.0.2.2]:{server.port} {key_type} {key_blob}\n")
        preset = Preset(
            repo=f"sftp://root@10.0.2.2:{server.port}{server.data / 'repo'}",
            ssh_key=server.home / ".ssh" / "id_ed25519",
            known_hosts=known,
            boot_options=RESTORE,
        )
        cd = tmp_path / "sftp.iso"
        build_iso(cd, preset, cache=CACHE)
        console = boot_rescue(
            cd, "bios", "cdrom", blank, until=(), timeout=BOOT_TIMEOUT, network=True
        )
        assert "waiting for the network (DHCP)" in console
        assert_restored_and_booted(console, blank, sample, loop)
    finally:
        if server.proc:
            stop(server.proc)


@pytest.mark.qemu_extra  # the SFTP case covers the network path in CI's time box
def test_unattended_restore_from_an_s3_repository_then_the_system_boots(
    tmp_path: Path, blank: Path, rescue_iso: Path, loop: Callable[..., str]
) -> None:
    server = start_moto(tmp_path / "s3")
    try:
        env = server.env()
        sample = backed_up("s3://rescue/repo", tmp_path, env)
        # the credentials travel on the stick as an AWS credentials file, not on the
        # kernel command line (which every process and the boot menu show)
        credentials = tmp_path / "credentials"
        credentials.write_text(
            f"[default]\naws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
            f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n"
        )
        preset = Preset(
            repo="s3://rescue/repo",
            s3_credentials=credentials,
            s3_endpoint=f"http://10.0.2.2:{server.port}",  # the host, from QEMU's network
            boot_options=RESTORE,
        )
        cd = tmp_path / "s3.iso"
        build_iso(cd, preset, cache=CACHE)
        console = boot_rescue(
            cd, "bios", "cdrom", blank, until=(), timeout=BOOT_TIMEOUT, network=True
        )
        assert "waiting for the network (DHCP)" in console
        assert env["AWS_SECRET_ACCESS_KEY"] not in console
        assert_restored_and_booted(console, blank, sample, loop)
    finally:
        if server.proc:
            stop(server.proc)
