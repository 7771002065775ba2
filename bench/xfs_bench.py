#!/usr/bin/env python3
"""XFS: blockvault backup and restore against ``partclone.xfs`` + zstd, in one run.

On a GPT disk with one XFS partition filled with ``make_tree`` data (``--fill`` of the
disk; built once through a loop mount and cached in ``bench/work/disks``), for each of
``--repeat`` rounds, dropping the page cache before each timed step:

* ``partclone.xfs -c | zstd -T0 -3 > img.pcl.zst`` of the partition (a read-only loop
  device), and ``zstd -dc | partclone.xfs -r`` onto a loop device over a fresh file;
* ``blockvault backup`` of the disk image into a fresh repository (zstd level 3, the
  default) and ``blockvault restore`` onto a fresh sparse file.

After each round ``xfs_repair -n`` must pass on both restored partitions and the two
tools must have kept the same number of used bytes. Prints a Markdown table of the
median round (times, sizes, ratios) and writes ``bench/work/xfs-results-<size>.json``.
Needs root (loop devices, drop_caches, the mount that fills the disk).

    python bench/xfs_bench.py                          # 2 GiB, 3 rounds
    python bench/xfs_bench.py --size 512M --repeat 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_bench import (
    MB,
    WORK,
    drop_caches,
    du_bytes,
    ensure_disk,
    loop_device,
    parse_size,
    sh,
    size_label,
)

PC_BACKUP = "partclone.xfs -c | zstd -T0 -3"
PC_RESTORE = "zstd -dc | partclone.xfs -r"
BV_BACKUP = "blockvault backup (fresh repository)"
BV_RESTORE = "blockvault restore (to a new file)"


def timed(command: str) -> float:
    """Seconds ``command`` (a shell line) and the ``sync`` after it take, from a cold
    page cache."""
    drop_caches()
    started = time.monotonic()
    done = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{command} failed: {done.stderr.strip()[-300:]}")
    sh("sync")
    return time.monotonic() - started


def new_file(path: Path, size: int) -> Path:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def one_round(
    meta: dict[str, object], run: Path, bv: str, chunk_size: str | None
) -> dict[str, dict[str, float]]:
    disk = Path(str(meta["path"]))
    part = meta["partition"]
    assert isinstance(part, dict)
    offset, size = int(part["offset"]), int(part["size"])
    repo, pcl = run / "repo", run / "img.pcl.zst"
    shutil.rmtree(repo, ignore_errors=True)
    steps: dict[str, dict[str, float]] = {}
    with loop_device(disk, offset, size, read_only=True) as device:
        seconds = timed(f"partclone.xfs -c -q -s {device} -o - | zstd -T0 -3 -q > {pcl}")
    steps[PC_BACKUP] = {"s": seconds, "bytes": pcl.stat().st_size}
    sh(bv, "-r", repo, "init", *(["--chunk-size", chunk_size] if chunk_size else []))
    init_bytes = du_bytes(repo)
    seconds = timed(f"{bv} -r {repo} backup {disk}")
    steps[BV_BACKUP] = {"s": seconds, "bytes": du_bytes(repo) - init_bytes}
    target = new_file(run / "target.img", int(str(meta["size"])))
    steps[BV_RESTORE] = {"s": timed(f"{bv} -r {repo} restore --yes latest {target}")}
    pc_target = new_file(run / "pc-target.img", size)
    with loop_device(pc_target) as device:
        steps[PC_RESTORE] = {
            "s": timed(f"zstd -dc -q {pcl} | partclone.xfs -r -q -s - -o {device}")
        }
    with loop_device(target, offset, size, read_only=True) as device:
        sh("xfs_repair", "-n", device)
    sh("xfs_repair", "-n", "-f", pc_target)
    for leftover in (target, pc_target, pcl):
        leftover.unlink()
    shutil.rmtree(repo)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("2G"))
    parser.add_argument("--fill", type=float, default=0.45)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-size", help="blockvault init --chunk-size (default: its own)")
    args = parser.parse_args()
    meta = ensure_disk(args.size, args.fill, args.seed, fs="xfs")
    part = meta["partition"]
    with loop_device(Path(meta["path"]), part["offset"], part["size"], read_only=True) as dev:
        used = int(sh(sys.executable, "-c", _USED, dev).strip())
    run = WORK / f"xfs-{size_label(args.size)}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    bv = shutil.which("blockvault") or "blockvault"
    rounds = [one_round(meta, run, bv, args.chunk_size) for _ in range(args.repeat)]
    median = {
        step: {key: statistics.median(r[step][key] for r in rounds) for key in rounds[0][step]}
        for step in rounds[0]
    }
    pairs = {
        "backup time": (BV_BACKUP, PC_BACKUP, "s"),
        "stored size": (BV_BACKUP, PC_BACKUP, "bytes"),
        "restore time": (BV_RESTORE, PC_RESTORE, "s"),
    }
    ratios = {name: median[b][k] / median[p][k] for name, (b, p, k) in pairs.items()}
    per_round = {name: [r[b][k] / r[p][k] for r in rounds] for name, (b, p, k) in pairs.items()}
    suffix = f"-chunks{args.chunk_size}" if args.chunk_size else ""
    out = WORK / f"xfs-results-{size_label(args.size)}{suffix}.json"
    report = {
        "disk": meta["key"],
        "chunk_size": args.chunk_size,
        "used_bytes": used,
        "rounds": rounds,
        "ratios": ratios,
        "per_round": per_round,
    }
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"Disk: {meta['key']}: XFS of {part['size'] / MB:,.0f} MB, {used / MB:,.0f} MB used,")
    print(f"{meta['tree']['bytes'] / MB:,.0f} MB of files; median of {args.repeat} rounds\n")
    print("| step | wall + sync s | range s | output MB |")
    print("|---|---:|---:|---:|")
    for step, value in median.items():
        times = [r[step]["s"] for r in rounds]
        size = f"{value['bytes'] / MB:,.0f}" if "bytes" in value else ""
        step_name = step.replace("|", "\\|")
        print(f"| {step_name} | {value['s']:.2f} | {min(times):.1f}–{max(times):.1f} | {size} |")
    print("\n| blockvault / partclone + zstd -3 | ratio | per-round range | target |")
    print("|---|---:|---:|---|")
    for name, value in ratios.items():
        low, high = min(per_round[name]), max(per_round[name])
        verdict = "meets" if value <= 1 else "misses"
        print(f"| {name} | {value:.3f} | {low:.3f}–{high:.3f} | ≤ 1: {verdict} |")


# the used bytes by blockvault's map (checked against partclone in the tests)
_USED = """
import sys
from blockvault.disk.device import open_device
from blockvault.disk.fs.probe import probe
with open_device(sys.argv[1]) as dev:
    print(probe(dev).used_bytes)
"""


if __name__ == "__main__":
    main()
