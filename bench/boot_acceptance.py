#!/usr/bin/env python3
"""Boot acceptance: system disks copied by blockvault onto other disks still boot.

Builds a BIOS and a UEFI system disk with :mod:`blockvault_demo.sample_boot` (GPT, GRUB,
a Debian kernel and a busybox initramfs that prints its disk's random token once it
has mounted the root filesystem found by UUID), then for each disk:

* ``blockvault backup`` into a fresh repository;
* ``blockvault restore`` onto a larger image (plain, and with ``--grow``), and onto a
  smaller image that still fits (with ``--scratch`` for the shrinking);
* ``blockvault clone`` onto a larger and a smaller image;
* for UEFI, a restore onto a 4096-byte-sector loop device, booted as a disk with
  4096-byte logical blocks.

Each result is checked with ``sgdisk -v``, ``e2fsck -fn`` and ``fsck.vfat -n`` of its
partitions, its file trees against the source's, and booted under QEMU (TCG). An
operation blockvault does not offer yet, or refuses, is reported as "not run" with the
reason: nothing is faked. Results: a table on stdout, ``bench/work/boot/results.json``
and the "Boot acceptance" section of BENCHMARKS.md (``--no-write`` to skip). Root (loop
devices for the 4096-byte case).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

from blockvault_demo.sample_boot import (  # noqa: E402
    FIRMWARES,
    BootDisk,
    Firmware,
    boot,
    build_boot_disk,
)

WORK = BENCH / "work" / "boot"
MIB = 1024 * 1024
# Smaller targets: the UEFI ESP is a 260 MiB FAT32 that cannot shrink and stay FAT32,
# so only its root partition (about 25 MiB used of 123 MiB) has room to give.
SMALLER = {"bios": 64 * MIB, "uefi": 320 * MIB}
PACKAGES = BENCH / "boot-packages.txt"
SECTION = "## Boot acceptance (`bench/boot_acceptance.py`)"


@dataclass
class Source:
    status: str
    boot_seconds: float
    size: int


@dataclass
class Case:
    firmware: Firmware
    operation: str  # "restore" or "clone"
    target: str  # "larger" or "smaller"
    grow: bool = False
    sector_size: int = 512
    status: str = "not run"  # booted | FAILED | not run
    why: str = ""
    copy_seconds: float | None = None
    boot_seconds: float | None = None
    checks: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.operation == "control":
            return "control: restore → larger, then root UUID changed (tune2fs -U)"
        grow = " --grow" if self.grow else ""
        sectors = f", {self.sector_size}-byte sectors" if self.sector_size != 512 else ""
        return f"{self.operation}{grow} → {self.target}{sectors}"


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-")


def log(message: str) -> None:
    print(f"[boot {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: {proc.stderr.strip()}")
    return proc


def blockvault(*argv: str | Path, repo: Path | None = None) -> subprocess.CompletedProcess[str]:
    prefix: list[str | Path] = [sys.executable, "-m", "blockvault"]
    if repo is not None:
        prefix += ["-r", repo]
    return run(*prefix, *argv, check=False)


def first_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return lines[-1].strip()[:160] if lines else f"exit {proc.returncode}"


def ensure_packages() -> None:
    """apt-get install what boot-packages.txt lists and dpkg does not have."""
    wanted = PACKAGES.read_text().split()
    missing = [p for p in wanted if run("dpkg", "-s", p, check=False).returncode != 0]
    if missing:
        log(f"apt-get install {' '.join(missing)}")
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True)


def features() -> dict[str, bool]:
    """What the installed blockvault offers, from its own --help."""
    top = blockvault("--help").stdout
    restore = blockvault("restore", "--help").stdout
    clone = blockvault("clone", "--help").stdout if " clone " in top else ""
    return {
        "clone": bool(clone),
        "restore --grow": "--grow" in restore,
        "clone --grow": "--grow" in clone,
        "restore shrink (--scratch)": "--scratch" in restore,
        "clone shrink (--scratch)": "--scratch" in clone,
    }


def missing_feature(case: Case, have: dict[str, bool]) -> str | None:
    if case.operation == "clone" and not have["clone"]:
        return "clone"
    if case.grow and not have[f"{case.operation} --grow"]:
        return f"{case.operation} --grow"
    if case.target == "smaller" and not have[f"{case.operation} shrink (--scratch)"]:
        return f"{case.operation} shrink (--scratch)"
    return None


@contextmanager
def loop_device(path: Path, sector_size: int) -> Iterator[str]:
    """Our own loop device over ``path``; detached (only this one) afterwards."""
    dev = run("losetup", "--find", "--show", "--sector-size", str(sector_size), path).stdout
    dev = dev.strip()
    try:
        yield dev
    finally:
        run("losetup", "-d", dev, check=False)


def copy(case: Case, disk: BootDisk, repo: Path, snapshot: str, target: Path) -> None:
    """Run the blockvault operation of ``case`` onto ``target``; sets why on refusal."""
    size = disk.size * 2 if case.target == "larger" else SMALLER[case.firmware]
    target.unlink(missing_ok=True)
    with open(target, "wb") as f:
        f.truncate(size)
    options: list[str | Path] = ["--yes"]
    if case.grow:
        options.append("--grow")
    if case.target == "smaller":
        scratch = target.parent / "scratch"
        scratch.mkdir(exist_ok=True)
        options += ["--scratch", scratch]
    started = time.monotonic()
    if case.sector_size != 512:
        with loop_device(target, case.sector_size) as dev:
            proc = blockvault("restore", snapshot, dev, *options, repo=repo)
    elif case.operation in ("restore", "control"):
        proc = blockvault("restore", snapshot, target, *options, repo=repo)
    else:
        proc = blockvault("clone", disk.path, target, *options)
    case.copy_seconds = time.monotonic() - started
    if proc.returncode != 0:
        case.why = f"blockvault {case.operation} refused: {first_error(proc)}"


def partitions(image: Path, sector_size: int) -> list[dict[str, object]]:
    if sector_size == 512:
        table = json.loads(run("sfdisk", "--json", image).stdout)["partitiontable"]
    else:
        with loop_device(image, sector_size) as dev:
            table = json.loads(run("sfdisk", "--json", dev).stdout)["partitiontable"]
    unit = int(table.get("sectorsize", sector_size))
    return [
        {"type": p["type"], "offset": p["start"] * unit, "size": p["size"] * unit}
        for p in table["partitions"]
    ]


def extract(image: Path, offset: int, size: int, out: Path) -> Path:
    with open(image, "rb") as src, open(out, "wb") as dst:
        src.seek(offset)
        left = size
        while left:
            block = src.read(min(left, 4 * MIB))
            if not block:
                break
            if block.count(0) == len(block):
                dst.seek(len(block), 1)
            else:
                dst.write(block)
            left -= len(block)
        dst.truncate(size)
    return out


def tree_hashes(part: Path, kind: str, out: Path) -> dict[str, str]:
    """File path -> sha256, read by the filesystem's own tools (debugfs, mtools)."""
    out.mkdir(parents=True)
    if kind == "ext4":
        run("debugfs", "-R", f"rdump / {out}", part)
        shutil.rmtree(out / "lost+found", ignore_errors=True)
    else:
        run("mcopy", "-s", "-n", "-m", "-i", part, "::/*", out)
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def ext4_size(part: Path) -> int:
    """The filesystem's own size, from its superblock (dumpe2fs)."""
    fields = dict(
        line.split(":", 1)
        for line in run("dumpe2fs", "-h", part).stdout.splitlines()
        if ":" in line
    )
    return int(fields["Block count"]) * int(fields["Block size"])


def kind_of(part_type: object) -> str:
    text = str(part_type).upper()
    if text.startswith("C12A7328"):
        return "vfat"
    if text.startswith("21686148"):
        return "bios-boot"
    return "ext4"


def source_trees(disk: BootDisk, tmp: Path) -> dict[str, dict[str, str]]:
    trees = {}
    for i, part in enumerate(partitions(disk.path, 512)):
        kind = kind_of(part["type"])
        if kind != "bios-boot":
            raw = extract(
                disk.path, int(str(part["offset"])), int(str(part["size"])), tmp / f"s{i}"
            )
            trees[kind] = tree_hashes(raw, kind, tmp / f"s{i}.tree")
            raw.unlink()
    return trees


def check(case: Case, image: Path, source: dict[str, dict[str, str]], tmp: Path) -> bool:
    """sgdisk -v, fsck and file trees of every partition; notes go to case.checks."""
    ok = True
    if case.sector_size == 512:
        verify = run("sgdisk", "-v", image, check=False).stdout
    else:
        with loop_device(image, case.sector_size) as dev:
            verify = run("sgdisk", "-v", dev, check=False).stdout
    clean = "No problems found" in verify
    ok &= clean
    case.checks.append("sgdisk -v clean" if clean else "sgdisk -v: PROBLEMS")
    for i, part in enumerate(partitions(image, case.sector_size)):
        kind = kind_of(part["type"])
        if kind == "bios-boot":
            continue
        offset, size = int(str(part["offset"])), int(str(part["size"]))
        raw = extract(image, offset, size, tmp / f"p{i}")
        fsck = ["e2fsck", "-fn"] if kind == "ext4" else ["fsck.vfat", "-n"]
        fsck_ok = run(*fsck, raw, check=False).returncode == 0
        same = tree_hashes(raw, kind, tmp / f"p{i}.tree") == source.get(kind)
        ok &= fsck_ok and same
        note = f"{kind} {size // MIB} MiB: {fsck[0]} {'clean' if fsck_ok else 'FAILED'}"
        if case.grow and kind == "ext4":
            fs_size = ext4_size(raw)
            grown = fs_size > size - MIB
            ok &= grown
            note += f", filesystem {'grown to' if grown else 'NOT GROWN:'} {fs_size // MIB} MiB"
        case.checks.append(note + (", files equal" if same else ", FILES DIFFER"))
        raw.unlink()
    return ok


def run_case(
    case: Case,
    disk: BootDisk,
    repo: Path,
    snapshot: str,
    have: dict[str, bool],
    source: dict[str, dict[str, str]],
    timeout: float,
) -> None:
    missing = missing_feature(case, have)
    if missing:
        case.why = f"{missing} missing"
        return
    with tempfile.TemporaryDirectory(dir=WORK) as tmp_dir:
        tmp = Path(tmp_dir)
        target = tmp / "target.img"
        copy(case, disk, repo, snapshot, target)
        if case.why:
            return
        checks_ok = check(case, target, source, tmp)
        if case.operation == "control":
            control(case, target, disk, tmp, timeout)
            return
        result = boot(
            target,
            case.firmware,
            expect_token=disk.token,
            timeout=timeout,
            sector_size=case.sector_size,
            workdir=tmp,
        )
        case.boot_seconds = result.seconds
        if result.booted and checks_ok:
            case.status = "booted"
        else:
            case.status = "FAILED"
            case.why = result.reason if not result.booted else "booted, but checks failed"
            (WORK / f"console-{case.firmware}-{slug(case.name)}.log").write_text(result.console)


def control(case: Case, target: Path, disk: BootDisk, tmp: Path, timeout: float) -> None:
    """A copy whose root has a new filesystem UUID must NOT boot: the check can fail."""
    root = partitions(target, 512)[-1]
    dev = run(
        "losetup",
        "--find",
        "--show",
        "--offset",
        str(root["offset"]),
        "--sizelimit",
        str(root["size"]),
        target,
    ).stdout.strip()
    try:
        run("tune2fs", "-U", "random", dev)
    finally:
        run("losetup", "-d", dev, check=False)
    result = boot(target, case.firmware, expect_token=disk.token, timeout=timeout, workdir=tmp)
    case.boot_seconds = result.seconds
    case.status = "FAILED" if result.booted else "did not boot, as expected"
    case.why = "booted with a changed root UUID" if result.booted else result.reason


def cases_for(firmware: Firmware) -> list[Case]:
    cases = [
        Case(firmware, "control", "larger"),
        Case(firmware, "restore", "larger"),
        Case(firmware, "restore", "larger", grow=True),
        Case(firmware, "restore", "smaller"),
        Case(firmware, "clone", "larger"),
        Case(firmware, "clone", "larger", grow=True),
        Case(firmware, "clone", "smaller"),
    ]
    if firmware == "uefi":
        cases.append(Case(firmware, "restore", "larger", sector_size=4096))
    return cases


def table(sources: dict[str, Source], cases: list[Case]) -> str:
    lines = [
        "| disk | operation | result | copy s | boot s | checks |",
        "|---|---|---|---:|---:|---|",
    ]
    for fw, info in sources.items():
        lines.append(
            f"| {fw} | source as built | {info.status} |  | {info.boot_seconds:.1f} "
            f"| {info.size // MIB} MiB image |"
        )
    for c in cases:
        result = c.status if not c.why else f"{c.status}: {c.why}"
        copy_s = (
            f"{c.copy_seconds:.1f}" if c.copy_seconds is not None and c.status != "not run" else ""
        )
        boot_s = f"{c.boot_seconds:.1f}" if c.boot_seconds is not None else ""
        lines.append(
            f"| {c.firmware} | {c.name} | {result} | {copy_s} | {boot_s} | {'; '.join(c.checks)} |"
        )
    return "\n".join(lines)


def section(report: str, kernel: str, have: dict[str, bool]) -> str:
    commit = run("git", "-C", ROOT, "rev-parse", "--short", "HEAD").stdout.strip()
    dirty = run("git", "-C", ROOT, "status", "--porcelain", "src").stdout.strip()
    offered = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in have.items())
    return f"""{SECTION}

Measured {datetime.now(UTC).isoformat(timespec="seconds")} with `python bench/boot_acceptance.py`
(blockvault {commit}{"+dirty" if dirty else ""}). Each disk is built by
`blockvault_demo.sample_boot` (GPT; BIOS: 1 MiB BIOS boot partition with GRUB i386-pc
core.img and boot.img in the MBR, ext4 root; UEFI: 260 MiB FAT32 ESP with GRUB x86_64-efi
as `\\EFI\\BOOT\\BOOTX64.EFI`, ext4 root), kernel {kernel} with a busybox initramfs.
"booted" means the copy's initramfs found the root filesystem by UUID and printed this
disk's random token on the serial console of `qemu-system-x86_64` (TCG emulation, no KVM;
SeaBIOS or OVMF; virtio-blk), and `sgdisk -v`, `e2fsck -fn` / `fsck.vfat -n` were clean and
every file equal to the source's. Larger = twice the source; smaller =
{SMALLER["bios"] // MIB} MiB (BIOS) and {SMALLER["uefi"] // MIB} MiB (UEFI). Boot times
are whole emulated boots (firmware to power-off) on a machine shared with other sessions
(2 vCPUs): they show the check is cheap, not how fast anything is.
blockvault offered: {offered}.

{report}
"""


def write_section(text: str, path: Path) -> None:
    """Replace (or append) only our section of BENCHMARKS.md."""
    current = path.read_text()
    start = current.find(SECTION)
    if start < 0:
        path.write_text(current.rstrip("\n") + "\n\n" + text)
        return
    end = current.find("\n## ", start + len(SECTION))
    rest = current[end + 1 :] if end >= 0 else ""
    path.write_text(current[:start] + text + ("\n" + rest if rest else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--firmware",
        choices=FIRMWARES,
        action="append",
        help="only this firmware (repeatable); default both",
    )
    parser.add_argument("--timeout", type=float, default=240, help="seconds per boot")
    parser.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    ensure_packages()
    have = features()
    log(f"blockvault offers: {have}")
    sources: dict[str, Source] = {}
    cases: list[Case] = []
    kernel = "?"
    for fw in args.firmware or FIRMWARES:
        disk = build_boot_disk(fw, WORK / f"{fw}.img")
        kernel = disk.kernel
        result = boot(disk.path, fw, expect_token=disk.token, timeout=args.timeout, workdir=WORK)
        status = "booted" if result.booted else f"FAILED: {result.reason}"
        sources[fw] = Source(status, result.seconds, disk.size)
        log(f"{fw} source: {sources[fw].status} in {result.seconds:.1f}s")
        if not result.booted:
            continue
        repo = WORK / f"repo-{fw}"
        shutil.rmtree(repo, ignore_errors=True)
        blockvault("init", repo=repo)
        backed = blockvault("backup", disk.path, repo=repo)
        if backed.returncode != 0:
            raise SystemExit(f"backup of {disk.path} failed: {first_error(backed)}")
        snapshot = "latest"  # the one snapshot of this fresh repository
        with tempfile.TemporaryDirectory(dir=WORK) as tmp:
            source = source_trees(disk, Path(tmp))
        for case in cases_for(fw):
            log(f"{fw}: {case.name}")
            run_case(case, disk, repo, snapshot, have, source, args.timeout)
            log(f"  -> {case.status} {case.why}")
            cases.append(case)
    report = table(sources, cases)
    print(report)
    (WORK / "results.json").write_text(
        json.dumps(
            {
                "sources": {k: asdict(v) for k, v in sources.items()},
                "cases": [asdict(c) for c in cases],
            },
            indent=1,
        )
    )
    if not args.no_write:
        write_section(section(report, kernel, have), BENCH / "BENCHMARKS.md")
    failed = [c for c in cases if c.status == "FAILED"]
    return 1 if failed or any(s.status != "booted" for s in sources.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
