"""Boot a backup: ``blockvault verify SNAP --boot`` against restoring the disk, then booting it.

In one run, on one bootable disk, page cache dropped before each timed step:

* **boot from the snapshot**: ``blockvault -r REPO verify SNAP --boot --marker M``, from
  the command's start to the guest's marker on its serial console (QEMU on a qcow2
  overlay over the snapshot's NBD export; only the blocks the boot reads are fetched);
* **restore, then boot**: ``blockvault -r REPO restore SNAP disk.img --yes`` (every used
  block written to a fresh sparse image, synced), then the same QEMU machine booting
  that raw image until the same marker.

The disk is ``blockvault_demo.sample_boot``'s (GRUB, a Linux kernel, a busybox
initramfs that prints a random token from the root filesystem) grown to ``--size``
with ``--fill`` of it in random, incompressible files on the root, so the restore
has a real system's worth of data to write. The marker is that token, printed only
after the root filesystem was found and mounted. The target is at least 5x (issue 19).
The disk and its backup are built once and cached under ``bench/work/boot-bench/``;
results go to ``bench/work/boot-results.json``. Needs root (``drop_caches``)::

    sudo python3 bench/boot_bench.py [--size 4G] [--fill 0.45] [--firmware bios|uefi]
                                     [--accel kvm|tcg] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))

from run_bench import (  # noqa: E402
    WORK,
    blockvault_exe,
    drop_caches,
    log,
    machine_info,
    parse_size,
    size_label,
)

from blockvault.interop.boot import Machine, default_accel, watch_guest  # noqa: E402
from blockvault_demo.sample_boot import OK_LINE, build_boot_disk  # noqa: E402

TIMEOUT = 900.0


def ensure(size: int, fill: float, firmware: str, bv: list[str]) -> dict[str, Any]:
    """The cached disk, its repository and snapshot id (built and backed up once)."""
    work = WORK / "boot-bench" / f"{firmware}-{size_label(size)}-{fill}"
    meta_path = work / "meta.json"
    if meta_path.exists():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        return meta
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log(f"building a bootable {firmware} disk of {size_label(size)}, {fill:.0%} full")
    disk = build_boot_disk(firmware, work / "disk.img", size=size, ballast=int(size * fill))
    repo = work / "repo"
    subprocess.run([*bv, "-r", repo, "init"], check=True, capture_output=True)
    log("backing it up (untimed)")
    snap = subprocess.run(
        [*bv, "-r", repo, "backup", disk.path], check=True, capture_output=True, text=True
    ).stdout.strip()
    meta = {
        "disk": str(disk.path),
        "repo": str(repo),
        "snapshot": snap,
        "marker": f"{OK_LINE} {disk.token}",
        "size": size,
        "fill": fill,
        "firmware": firmware,
        "kernel": disk.kernel,
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def boot_from_snapshot(bv: list[str], meta: dict[str, Any], accel: str) -> float:
    drop_caches()
    started = time.monotonic()
    verify = [*bv, "-r", meta["repo"], "verify", meta["snapshot"], "--boot", "--accel", accel]
    subprocess.run(
        [*verify, "--marker", meta["marker"], "--timeout", str(TIMEOUT)],
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def restore_then_boot(bv: list[str], meta: dict[str, Any], accel: str) -> tuple[float, float]:
    target = Path(meta["repo"]).parent / "restored.img"
    target.unlink(missing_ok=True)
    with open(target, "wb") as f:
        f.truncate(meta["size"])
    drop_caches()
    started = time.monotonic()
    subprocess.run(
        [*bv, "-r", meta["repo"], "restore", meta["snapshot"], target, "--yes"],
        check=True,
        capture_output=True,
    )
    os.sync()
    restored = time.monotonic() - started
    machine = Machine(meta["firmware"], accel)
    check = watch_guest(
        machine, target, disk_format="raw", markers=(meta["marker"],), timeout=TIMEOUT
    )
    total = time.monotonic() - started
    target.unlink()
    if not check.booted:
        raise SystemExit(f"the restored disk did not boot: {check.last_line}")
    return restored, total


def run(args: argparse.Namespace) -> dict[str, Any]:
    bv = blockvault_exe(None)
    accel = args.accel or default_accel()
    meta = ensure(parse_size(args.size), args.fill, args.firmware, bv)
    snapshot_s, restore_s, total_s = [], [], []
    for k in range(args.rounds):
        log(f"round {k + 1}: boot from the snapshot ({accel})")
        snapshot_s.append(boot_from_snapshot(bv, meta, accel))
        log(f"round {k + 1}: restore, then boot ({accel})")
        restored, total = restore_then_boot(bv, meta, accel)
        restore_s.append(restored)
        total_s.append(total)
    ours, theirs = statistics.median(snapshot_s), statistics.median(total_s)
    report = {
        "disk": {k: meta[k] for k in ("size", "fill", "firmware", "kernel")},
        "accel": accel,
        "rounds": args.rounds,
        "boot SNAP to marker (s)": [round(s, 2) for s in snapshot_s],
        "restore (s)": [round(s, 2) for s in restore_s],
        "restore then boot to marker (s)": [round(s, 2) for s in total_s],
        "speedup (median restore+boot / median boot SNAP)": round(theirs / ours, 2),
        "machine": machine_info(),
    }
    (WORK / "boot-results.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4G", help="bootable disk size (cached)")
    parser.add_argument("--fill", type=float, default=0.45, help="fraction of it used")
    parser.add_argument("--firmware", choices=("bios", "uefi"), default="bios")
    parser.add_argument("--accel", choices=("kvm", "tcg"), help="default: kvm if it can run")
    parser.add_argument("--rounds", type=int, default=3)
    report = run(parser.parse_args())
    log(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
