"""VM disk export and import: blockvault against qemu-img on the cached benchmark disk.

In one run, page cache dropped before each timed step:

* ``blockvault export SNAP disk.qcow2`` (the snapshot served over our NBD server,
  ``qemu-img convert`` writing) against ``qemu-img convert -f raw -O qcow2`` of the raw
  disk image: wall time, file size and allocated bytes;
* ``blockvault import disk.qcow2`` (qemu-nbd + our client into a fresh repository)
  against ``blockvault backup`` of the raw image into another fresh one: wall time.

Both qcow2 files are checked (``qemu-img check``) and compared with the raw image
(``qemu-img compare``). The snapshot to export is made once, untimed. Results go to
``bench/work/vm-results.json``. Needs root (``drop_caches``)::

    sudo python3 bench/vm_bench.py [--size 4G] [--fill 0.45]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent

from run_bench import (  # noqa: E402
    WORK,
    blockvault_exe,
    drop_caches,
    ensure_disk,
    log,
    machine_info,
    parse_size,
)


def timed(argv: list[str]) -> tuple[float, str]:
    """Seconds ``argv`` took from a cold page cache (its output synced), and its stdout."""
    drop_caches()
    started = time.monotonic()
    proc = subprocess.run(argv, check=True, capture_output=True, text=True)
    os.sync()
    return time.monotonic() - started, proc.stdout


def fresh(path: Path) -> Path:
    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    return path


def sizes(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"file_bytes": st.st_size, "allocated_bytes": st.st_blocks * 512}


def check(image: Path, disk: Path) -> None:
    subprocess.run(["qemu-img", "check", "-q", "-f", "qcow2", image], check=True)
    subprocess.run(
        ["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", disk, image], check=True
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    disk = ensure_disk(parse_size(args.size), args.fill, 0)
    raw = Path(disk["path"])
    work = WORK / "vm"
    work.mkdir(parents=True, exist_ok=True)
    bv = blockvault_exe(None)
    repo = fresh(work / "repo")
    subprocess.run([*bv, "-r", repo, "init"], check=True, capture_output=True)
    log("backing up the benchmark disk (untimed)")
    snap = subprocess.run(
        [*bv, "-r", repo, "backup", raw], check=True, capture_output=True, text=True
    ).stdout.strip()

    ours, theirs = fresh(work / "blockvault.qcow2"), fresh(work / "qemu-img.qcow2")
    log("timing: blockvault export -> qcow2")
    export_s, _ = timed([*bv, "-r", str(repo), "export", snap, str(ours)])
    log("timing: qemu-img convert raw -> qcow2")
    convert_s, _ = timed(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(theirs)])
    check(ours, raw)
    check(theirs, raw)

    log("timing: blockvault import qcow2 (fresh repository)")
    import_repo = fresh(work / "import-repo")
    subprocess.run([*bv, "-r", import_repo, "init"], check=True, capture_output=True)
    import_s, _ = timed([*bv, "-r", str(import_repo), "import", str(theirs)])
    log("timing: blockvault backup raw (fresh repository)")
    backup_repo = fresh(work / "backup-repo")
    subprocess.run([*bv, "-r", backup_repo, "init"], check=True, capture_output=True)
    backup_s, _ = timed([*bv, "-r", str(backup_repo), "backup", str(raw)])

    report = {
        "disk": {k: disk[k] for k in ("key", "size", "fill")},
        "used_bytes": disk["tree"]["bytes"],
        "export_qcow2": {
            "blockvault export": {"seconds": round(export_s, 2), **sizes(ours)},
            "qemu-img convert (raw image)": {"seconds": round(convert_s, 2), **sizes(theirs)},
            "time_ratio": round(convert_s / export_s, 2),  # > 1: blockvault is faster
        },
        "import_qcow2": {
            "blockvault import qcow2": round(import_s, 2),
            "blockvault backup raw": round(backup_s, 2),
            "time_ratio": round(backup_s / import_s, 2),
        },
        "machine": machine_info(),
    }
    for path in (ours, theirs, repo, import_repo, backup_repo):
        fresh(path)
    (WORK / "vm-results.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4G", help="benchmark disk size (cached disk)")
    parser.add_argument("--fill", type=float, default=0.45, help="fraction of the disk used")
    report = run(parser.parse_args())
    log(json.dumps({k: report[k] for k in ("export_qcow2", "import_qcow2")}, indent=1))


if __name__ == "__main__":
    main()
