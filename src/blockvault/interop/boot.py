"""Booting a disk image, or a snapshot without restoring it, as a QEMU guest.

Glossary:

machine
    What the guest gets (:class:`Machine`): firmware, memory, CPUs, network, the
    disk's logical sector size, and the accelerator (KVM when ``/dev/kvm`` opens,
    else TCG emulation).
firmware
    ``bios`` (SeaBIOS) or ``uefi`` (OVMF, with a private copy of its variable
    store). :func:`firmware_for` chooses it from a snapshot's disk the way a PC
    would need: a GPT disk with an EFI System Partition and no BIOS boot
    partition boots UEFI; MBR disks, and GPT disks with a BIOS boot partition
    (GRUB's core image), boot BIOS.
overlay
    A qcow2 file whose backing file is the read-only NBD export of the snapshot:
    every guest write lands in it, so the repository is never written. It lives
    in a private temporary directory (mode 0700) removed afterwards, unless the
    caller keeps it.
console watch
    The guest's first serial port read as it comes (:class:`ConsoleWatch`): the
    boot passes when a marker (``login:`` by default) appears within the
    timeout. The bytes come from the guest, so they are untrusted: only a
    bounded tail is kept, and the last line quoted in an error is cut short and
    made terminal-safe by the error tree.

Invariants: the library never prints (a headless boot returns a
:class:`BootCheck`; an interactive one hands the terminal to QEMU); QEMU is
stopped (SIGTERM, then SIGKILL) on every way out, including ``Interrupted``.
"""

from __future__ import annotations

import fcntl
import os
import re
import selectors
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from blockvault.disk.system import BIOS_BOOT_GUID, ESP_GUID
from blockvault.errors import BootFailed, Interrupted, UsageError, VirtualMachineError
from blockvault.interop.vm import snapshot_export
from blockvault.nbd.server import serving
from blockvault.repo.manifest import Snapshot
from blockvault.repo.repository import Repository

__all__ = [
    "ACCELS",
    "DEFAULT_MARKERS",
    "DEFAULT_TIMEOUT",
    "FIRMWARES",
    "NETWORKS",
    "Accel",
    "BootCheck",
    "ConsoleWatch",
    "Controller",
    "Firmware",
    "Machine",
    "Network",
    "boot_snapshot",
    "default_accel",
    "fail_unless_booted",
    "firmware_for",
    "kvm_usable",
    "machine_for",
    "overlay",
    "qemu_command",
    "run_guest",
    "snapshot_overlay",
    "verify_boot",
    "watch_guest",
]

Firmware = Literal["bios", "uefi"]
Accel = Literal["kvm", "tcg"]
Controller = Literal["virtio", "nvme", "ahci"]
Network = Literal["none", "user"]
FIRMWARES: Final[tuple[Firmware, ...]] = ("bios", "uefi")
ACCELS: Final[tuple[Accel, ...]] = ("kvm", "tcg")
NETWORKS: Final[tuple[Network, ...]] = ("none", "user")

QEMU: Final = "qemu-system-x86_64"
QEMU_IMG: Final = "qemu-img"
DEFAULT_MARKERS: Final = ("login:",)
DEFAULT_TIMEOUT: Final = 300.0  # seconds: a full distribution under TCG reaches login in 1-3 min

# OVMF as Debian's ovmf package installs it: (code, variable store template), first found wins
OVMF_PAIRS: Final = (
    (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd")),
    (Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd")),
)

KVM_DEVICE: Final = Path("/dev/kvm")
KVM_GET_API_VERSION: Final = 0xAE00  # linux/kvm.h: _IO(KVMIO, 0x00)
KVM_API_VERSION: Final = 12
KVM_GET_SUPPORTED_CPUID: Final = 0xC008AE05  # _IOWR(KVMIO, 0x05, struct kvm_cpuid2)
CPUID_ENTRIES: Final = 256
SSE3: Final = 1 << 0  # CPUID.01H:ECX bit 0 ("pni")
# SeaBIOS mirrors its screen to this serial port when fw_cfg holds it (u16, little-endian):
# headless, the console then says "No bootable device" or where the boot stopped
SEABIOS_SERCON: Final = ("etc/sercon-port", struct.pack("<H", 0x3F8))
BIOS_RETRY_MS: Final = 1000  # headless: SeaBIOS gives up (and QEMU exits) this soon

CONSOLE_TAIL: Final = 64 * 1024  # console bytes kept for the last line
LAST_LINE_MAX: Final = 160  # characters of it quoted in an error
STOPPED: Final = "the guest powered off or reset"  # headless guests do not reboot
STOP_GRACE: Final = 10.0  # seconds QEMU gets to exit after SIGTERM before SIGKILL
# CSI and other escape sequences firmware menus paint with; dropped from the quoted line
_ESCAPES = re.compile(rb"\x1b(\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")


@dataclass(frozen=True)
class Machine:
    """The virtual PC a disk boots in."""

    firmware: Firmware
    accel: Accel
    memory: int = 1024  # MiB
    cpus: int = 2
    network: Network = "none"
    sector_size: int = 512  # the disk's logical (and physical) sector size
    vnc: str | None = None  # also show the screen on this VNC display (QEMU -vnc syntax)
    controller: Controller = "virtio"  # the disk's bus: virtio-blk, NVMe or AHCI (SATA)


@dataclass(frozen=True)
class BootCheck:
    """What one headless boot showed: whether a marker appeared, when, and the last line."""

    booted: bool
    marker: str | None  # the marker seen, when booted
    seconds: float
    ended: str  # "marker", "timeout" or STOPPED
    last_line: str
    firmware: Firmware
    accel: Accel


def kvm_usable() -> bool:
    """Whether KVM can run a guest: ``/dev/kvm`` opens read-write, speaks the API QEMU
    needs, and offers guests SSE3. Every x86-64 CPU since 2004 has SSE3; a KVM that
    hides it is an incomplete nested hypervisor (seen under Firecracker) on which
    firmware and kernels hang or die of emulation failures, so TCG is the safe choice."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, KVM_GET_API_VERSION) != KVM_API_VERSION:
            return False
        return _kvm_leaf1_ecx(fd) & SSE3 != 0
    except OSError:
        return False
    finally:
        os.close(fd)


def _kvm_leaf1_ecx(fd: int) -> int:
    """ECX of CPUID leaf 1 as KVM offers it to guests (KVM_GET_SUPPORTED_CPUID)."""
    # struct kvm_cpuid2 {u32 nent; u32 padding; struct kvm_cpuid_entry2 entries[nent]},
    # entry: u32 function, index, flags, eax, ebx, ecx, edx, padding[3]
    buffer = bytearray(struct.pack("<II", CPUID_ENTRIES, 0) + bytes(40 * CPUID_ENTRIES))
    fcntl.ioctl(fd, KVM_GET_SUPPORTED_CPUID, buffer)
    count = min(struct.unpack_from("<I", buffer)[0], CPUID_ENTRIES)
    for k in range(count):
        function, _, _, _, _, ecx, _ = struct.unpack_from("<7I", buffer, 8 + 40 * k)
        if function == 1:
            return int(ecx)
    return 0


def default_accel() -> Accel:
    return "kvm" if kvm_usable() else "tcg"


def firmware_for(snapshot: Snapshot) -> Firmware:
    """The firmware the snapshot's disk boots with: UEFI for a GPT disk with an EFI
    System Partition and no BIOS boot partition, else BIOS (MBR disks; GPT disks
    that GRUB boots from a BIOS boot partition; disks with neither, which only a
    BIOS could boot from their first sector)."""
    if snapshot.table != "gpt":
        return "bios"
    types = {p.type.lower() for p in snapshot.partitions}
    return "uefi" if ESP_GUID in types and BIOS_BOOT_GUID not in types else "bios"


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise UsageError(f"{name} is not installed (apt-get install {package})")
    return found


def _ovmf() -> tuple[Path, Path]:
    for code, variables in OVMF_PAIRS:
        if code.exists() and variables.exists():
            return code, variables
    raise UsageError("UEFI firmware (OVMF) is not installed (apt-get install ovmf)")


def qemu_command(
    machine: Machine,
    disk: Path,
    *,
    disk_format: str,
    private: Path,
    headless: bool = True,
) -> list[str]:
    """QEMU's command line: the disk as a virtio disk (first to boot), serial console
    on QEMU's stdio (Ctrl-C on an interactive terminal stops QEMU), no monitor, no
    screen unless ``vnc``. Firmware files the guest may write (OVMF's variable store)
    are copied into ``private``. Headless guests do not reboot: a reset ends the run."""
    sector = machine.sector_size
    args = [
        _tool(QEMU, "qemu-system-x86"),
        "-accel",
        machine.accel,
        *(["-cpu", "host"] if machine.accel == "kvm" else []),
        "-m",
        str(machine.memory),
        "-smp",
        str(machine.cpus),
        "-drive",
        f"if=none,id=disk0,format={disk_format},file={_value(disk)}",
        *_disk_device(machine.controller, sector),
        "-chardev",
        f"stdio,id=console0,signal={'off' if headless else 'on'}",
        "-serial",
        "chardev:console0",
        "-monitor",
        "none",
        *(["-vnc", machine.vnc] if machine.vnc else ["-display", "none"]),
        *(["-nic", "user,model=virtio-net-pci"] if machine.network == "user" else ["-nic", "none"]),
        *(["-no-reboot"] if headless else []),
    ]
    if machine.firmware == "uefi":
        code, variables = _ovmf()
        own_variables = private / "uefi-vars.fd"
        shutil.copyfile(variables, own_variables)
        args += [
            "-drive",
            f"if=pflash,format=raw,readonly=on,file={_value(code)}",
            "-drive",
            f"if=pflash,format=raw,file={_value(own_variables)}",
        ]
    else:
        name, value = SEABIOS_SERCON
        sercon = private / "sercon-port"
        sercon.write_bytes(value)
        args += ["-fw_cfg", f"name={name},file={_value(sercon)}"]
        if headless:
            args += ["-boot", f"reboot-timeout={BIOS_RETRY_MS}"]
    return args


def _disk_device(controller: Controller, sector: int) -> list[str]:
    """QEMU's device options that attach drive ``disk0`` on ``controller``, first to boot."""
    sizes = f"logical_block_size={sector},physical_block_size={sector}"
    if controller == "nvme":
        return ["-device", f"nvme,drive=disk0,serial=blockvault0,bootindex=0,{sizes}"]
    if controller == "ahci":
        return [
            "-device",
            "ahci,id=sata0",
            "-device",
            f"ide-hd,drive=disk0,bus=sata0.0,bootindex=0,{sizes}",
        ]
    return ["-device", f"virtio-blk-pci,drive=disk0,bootindex=0,{sizes}"]


def _value(path: Path) -> str:
    """``path`` as a value in a QEMU option list, where a comma would start the next
    option (QEMU reads a doubled comma as one)."""
    return str(path).replace(",", ",,")


@contextmanager
def _workdir(parent: Path | None = None) -> Iterator[Path]:
    """A private directory (mkdtemp makes it 0700) for the overlay, the UEFI variable
    store and the QEMU log, removed on every way out."""
    with tempfile.TemporaryDirectory(prefix="blockvault-boot-", dir=parent) as tmp:
        yield Path(tmp)


def overlay(backing: str, size: int, path: Path) -> Path:
    """Create at ``path`` a qcow2 overlay of ``size`` bytes over the raw disk
    ``backing`` (a file or an NBD URI), not opening it: QEMU opens it read-only when
    the guest starts. ``path`` must not exist yet."""
    if path.exists() or path.is_symlink():
        raise UsageError(f"overlay {path} already exists; choose a new file name")
    create = [_tool(QEMU_IMG, "qemu-utils"), "create", "-q", "-f", "qcow2", "-u", "-F", "raw"]
    proc = subprocess.run(
        [*create, "-b", backing, str(path), str(size)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise VirtualMachineError(detail=f"qemu-img create {path}: {_last_line(proc.stderr)}")
    return path


class ConsoleWatch:
    """Serial console bytes in; whether a marker has appeared, and the last line.

    Markers are found across read boundaries; memory stays bounded whatever the
    guest writes."""

    def __init__(self, markers: tuple[str, ...]) -> None:
        self.markers = tuple(m.encode() for m in markers if m)
        self._overlap = max((len(m) for m in self.markers), default=1) - 1
        self._tail = b""
        self.found: str | None = None

    def feed(self, data: bytes) -> str | None:
        """Take more console output; the first marker seen so far, if any."""
        window = self._tail[-self._overlap :] + data if self._overlap else data
        if self.found is None:
            hits = [(window.find(m), m) for m in self.markers if m in window]
            if hits:
                self.found = min(hits)[1].decode()
        self._tail = (self._tail + data)[-CONSOLE_TAIL:]
        return self.found

    @property
    def last_line(self) -> str:
        """The last non-blank console line, escape sequences removed, cut short."""
        text = _ESCAPES.sub(b"", self._tail).decode(errors="replace")
        lines = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]
        return lines[-1][:LAST_LINE_MAX] if lines else "(nothing)"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:LAST_LINE_MAX] if lines else "no message"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End QEMU: SIGTERM (it exits cleanly), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def watch_guest(
    machine: Machine,
    disk: Path,
    *,
    disk_format: str,
    markers: tuple[str, ...] = DEFAULT_MARKERS,
    timeout: float,
    console_log: Path | None = None,
    workdir: Path | None = None,
) -> BootCheck:
    """Boot ``disk`` headless and watch its serial console until a marker appears
    (then stop the guest), the guest stops by itself, or ``timeout`` seconds pass.
    With no markers it runs until the guest stops or the timeout. ``console_log``,
    if given, receives every console byte. A QEMU that cannot start the guest
    raises :class:`VirtualMachineError` with its own message."""
    watch = ConsoleWatch(markers)
    with _workdir(workdir) as tmp:
        command = qemu_command(machine, disk, disk_format=disk_format, private=tmp)
        qemu_log = tmp / "qemu.log"
        with (
            open(qemu_log, "wb") as errors,
            open(console_log or os.devnull, "wb") as log,
            selectors.DefaultSelector() as selector,
        ):
            started = time.monotonic()
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
            )
            console = proc.stdout
            assert console is not None  # stdout=PIPE
            try:
                fd = console.fileno()
                selector.register(fd, selectors.EVENT_READ)
                deadline = started + timeout
                ended = "timeout"
                while (left := deadline - time.monotonic()) > 0:
                    if not selector.select(left):
                        continue
                    data = os.read(fd, 65536)
                    if not data:
                        ended = STOPPED
                        break
                    log.write(data)
                    if watch.feed(data):
                        ended = "marker"
                        break
                seconds = time.monotonic() - started
            finally:
                _stop(proc)
                console.close()
        status = proc.returncode
        if ended == STOPPED and status not in (0, None) and watch.found is None:
            raise _qemu_failed(status, qemu_log)
    return BootCheck(
        booted=watch.found is not None,
        marker=watch.found,
        seconds=seconds,
        ended=ended,
        last_line=watch.last_line,
        firmware=machine.firmware,
        accel=machine.accel,
    )


def run_guest(
    machine: Machine, disk: Path, *, disk_format: str, workdir: Path | None = None
) -> None:
    """Boot ``disk`` with its serial console on this process's terminal until the
    guest powers off or QEMU is stopped (Ctrl-C reaches QEMU too: it quits). On
    ``Interrupted`` (SIGTERM, SIGHUP) QEMU is stopped before it propagates. QEMU's
    own messages go to a log, quoted in :class:`VirtualMachineError` if it fails."""
    with _workdir(workdir) as tmp:
        command = qemu_command(machine, disk, disk_format=disk_format, private=tmp, headless=False)
        qemu_log = tmp / "qemu.log"
        with open(qemu_log, "wb") as errors:
            proc = subprocess.Popen(command, stderr=errors)
            try:
                status = proc.wait()
            finally:
                _stop(proc)
        if status != 0:
            raise _qemu_failed(status, qemu_log)


def _qemu_failed(status: int, qemu_log: Path) -> VirtualMachineError:
    """QEMU's own last word (not the warning our SeaBIOS console setting always gives)."""
    lines = [
        line
        for line in qemu_log.read_text(errors="replace").splitlines()
        if SEABIOS_SERCON[0] not in line
    ]
    return VirtualMachineError(
        detail=f"{QEMU} exited with status {status}: {_last_line(chr(10).join(lines))}"
    )


def fail_unless_booted(check: BootCheck, snapshot: str, repo: str, timeout: float) -> BootCheck:
    """``check`` if it booted, else :class:`BootFailed` naming the snapshot and why."""
    if check.booted:
        return check
    why = f"no marker within {timeout:g}s" if check.ended == "timeout" else check.ended
    raise BootFailed(
        snapshot=snapshot,
        repo=repo,
        detail=f"{why} ({check.firmware}, {check.accel})",
        last=check.last_line,
    )


def machine_for(
    snapshot: Snapshot,
    *,
    firmware: Firmware | None = None,
    accel: Accel | None = None,
    memory: int = 1024,
    cpus: int = 2,
    network: Network = "none",
    vnc: str | None = None,
) -> Machine:
    """The machine ``snapshot``'s disk boots in; ``None`` chooses firmware from its
    disk and the accelerator from this host."""
    if memory < 64 or cpus < 1:
        raise UsageError(f"a guest needs at least 64 MiB and 1 CPU (given {memory} MiB, {cpus})")
    return Machine(
        firmware=firmware or firmware_for(snapshot),
        accel=accel or default_accel(),
        memory=memory,
        cpus=cpus,
        network=network,
        sector_size=snapshot.sector_size,
        vnc=vnc,
    )


@contextmanager
def snapshot_overlay(
    repo: Repository, snapshot: Snapshot, private: Path, *, keep: Path | None = None
) -> Iterator[Path]:
    """A qcow2 overlay over ``snapshot``'s whole disk, served read-only over NBD from a
    socket in ``private`` while the block runs. The overlay is made in ``private``
    and removed at the end, unless ``keep`` names where it stays."""
    export = snapshot_export(repo, snapshot)
    with serving(export, socket_path=str(private / "nbd.sock")) as uri:
        path = overlay(uri, export.size, keep or private / "overlay.qcow2")
        try:
            yield path
        finally:
            if keep is None:
                path.unlink(missing_ok=True)


def verify_boot(
    repo: Repository,
    snapshot: Snapshot,
    machine: Machine,
    *,
    markers: tuple[str, ...] = DEFAULT_MARKERS,
    timeout: float = DEFAULT_TIMEOUT,
    console_log: Path | None = None,
) -> BootCheck:
    """Boot ``snapshot`` headless on an overlay; its :class:`BootCheck` when a marker
    appeared within ``timeout`` seconds, else :class:`BootFailed`. Only reads the
    repository."""
    try:
        with _workdir() as private, snapshot_overlay(repo, snapshot, private) as disk:
            check = watch_guest(
                machine,
                disk,
                disk_format="qcow2",
                markers=markers,
                timeout=timeout,
                console_log=console_log,
                workdir=private,
            )
    except Interrupted as exc:
        exc.outcome = "the guest was stopped; the repository was only read"
        raise
    return fail_unless_booted(check, snapshot.id[:12], repo.location, timeout)


def boot_snapshot(
    repo: Repository, snapshot: Snapshot, machine: Machine, *, keep_overlay: Path | None = None
) -> None:
    """Run ``snapshot``'s system with its console on this terminal until it powers off
    or is stopped. The guest's writes go to an overlay, kept at
    ``keep_overlay`` if given; the repository is only read."""
    if keep_overlay is not None and not keep_overlay.parent.is_dir():
        raise UsageError(f"overlay {keep_overlay}: its directory does not exist")
    kept = f"its writes are in {keep_overlay}" if keep_overlay else "its writes were discarded"
    try:
        with (
            _workdir() as private,
            snapshot_overlay(repo, snapshot, private, keep=keep_overlay) as disk,
        ):
            run_guest(machine, disk, disk_format="qcow2", workdir=private)
    except Interrupted as exc:
        exc.outcome = f"the guest was stopped, {kept}; the repository was only read"
        raise
