#!/usr/bin/env python3
"""Export to a one-file image (``.bvi``) against a full partclone + zstd backup.

On the benchmark disk of ``run_bench.py`` (GPT, one ext4 partition about 45 % full of
``make_tree`` data; built once and cached in ``bench/work/disks``), in one run and
dropping the page cache before each timed step:

* ``partclone.ext4 -c | zstd -T0 -3 > img.pcl.zst`` of the partition (what Clonezilla
  writes: a full, compressed, single-file image);
* ``blockvault backup`` into a fresh repository (setup, timed for reference);
* ``blockvault export latest disk.bvi`` (the timed step the target is about), the
  same with ``--recompress zstd:9`` (chunks compressed again, for a smaller image) and
  with ``--split fat32``;
* ``blockvault restore disk.bvi`` onto a fresh sparse file, against
  ``zstd -dc | partclone.ext4 -r`` onto one.

Prints a Markdown table with times, sizes and ratios, and writes
``bench/work/bundle-results-<size>.json``. Needs root (loop devices, drop_caches).

    python bench/bundle_bench.py                 # the 4 GiB benchmark disk
    python bench/bundle_bench.py --size 512M     # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_bench import (
    MB,
    WORK,
    drop_caches,
    ensure_disk,
    loop_device,
    parse_size,
    size_label,
)


def timed(label: str, command: str, results: dict[str, dict[str, float]]) -> float:
    """Run ``command`` (a shell line) after dropping the page cache; record its time."""
    drop_caches()
    started = time.monotonic()
    done = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{label}: {command} failed: {done.stderr.strip()}")
    os.sync()
    results[label] = {"s": round(seconds, 3)}
    print(f"  {label}: {seconds:.2f} s", file=sys.stderr, flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("4G"))
    parser.add_argument("--fill", type=float, default=0.45)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    meta = ensure_disk(args.size, args.fill, args.seed)
    disk = Path(meta["path"])
    part = meta["partition"]
    run = WORK / f"bundle-{size_label(args.size)}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    bv = [shutil.which("blockvault") or "blockvault"]
    results: dict[str, dict[str, float]] = {}
    repo, pcl, bvi = run / "repo", run / "img.pcl.zst", run / "disk.bvi"
    try:
        with loop_device(disk, part["offset"], part["size"], read_only=True) as device:
            timed(
                "partclone.ext4 -c | zstd -T0 -3",
                f"partclone.ext4 -c -q -s {device} -o - | zstd -T0 -3 -q > {pcl}",
                results,
            )
        results["partclone.ext4 -c | zstd -T0 -3"]["bytes"] = pcl.stat().st_size
        subprocess.run([*bv, "-r", str(repo), "init"], check=True, capture_output=True)
        timed("blockvault backup (fresh repository)", f"{bv[0]} -r {repo} backup {disk}", results)
        export = f"{bv[0]} -r {repo} export latest {bvi}"
        timed("blockvault export latest disk.bvi", export, results)
        results["blockvault export latest disk.bvi"]["bytes"] = bvi.stat().st_size
        small = run / "small.bvi"
        timed(
            "blockvault export latest disk.bvi --recompress zstd:9",
            f"{bv[0]} -r {repo} export latest {small} --recompress zstd:9",
            results,
        )
        results["blockvault export latest disk.bvi --recompress zstd:9"]["bytes"] = (
            small.stat().st_size
        )
        small.unlink()
        split = run / "split" / "disk.bvi"
        split.parent.mkdir()
        timed(
            "blockvault export latest disk.bvi --split fat32",
            f"{bv[0]} -r {repo} export latest {split} --split fat32",
            results,
        )
        shutil.rmtree(split.parent)
        target = run / "target.img"
        with open(target, "wb") as f:
            f.truncate(meta["size"])
        timed("blockvault restore disk.bvi", f"{bv[0]} restore {bvi} {target} --yes", results)
        target.unlink()
        with open(target, "wb") as f:
            f.truncate(part["size"])
        with loop_device(target) as device:
            timed(
                "zstd -dc | partclone.ext4 -r",
                f"zstd -dc -q {pcl} | partclone.ext4 -r -q -s - -o {device}",
                results,
            )
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        for leftover in (pcl, bvi, run / "target.img"):
            leftover.unlink(missing_ok=True)
    pc = results["partclone.ext4 -c | zstd -T0 -3"]
    ex = results["blockvault export latest disk.bvi"]
    small = results["blockvault export latest disk.bvi --recompress zstd:9"]
    ratios = {
        "export time / partclone+zstd time": ex["s"] / pc["s"],
        "export size / partclone+zstd size": ex["bytes"] / pc["bytes"],
        "export --recompress zstd:9 time / partclone+zstd time": small["s"] / pc["s"],
        "export --recompress zstd:9 size / partclone+zstd size": small["bytes"] / pc["bytes"],
        "restore from .bvi / partclone restore": results["blockvault restore disk.bvi"]["s"]
        / results["zstd -dc | partclone.ext4 -r"]["s"],
    }
    out = WORK / f"bundle-results-{size_label(args.size)}.json"
    out.write_text(json.dumps({"disk": meta["key"], "steps": results, "ratios": ratios}, indent=1))
    print(f"Disk: {meta['key']} ({meta['tree']['bytes'] / MB:.0f} MB of files)\n")
    print("| Step | Time | Size |")
    print("| --- | ---: | ---: |")
    for step, r in results.items():
        size = f"{r['bytes'] / MB:.0f} MB" if "bytes" in r else ""
        print(f"| {step} | {r['s']:.2f} s | {size} |")
    print("\n| Ratio | Value | Target |")
    print("| --- | ---: | --- |")
    targets = {
        "export time / partclone+zstd time": "≤ 1",
        "export size / partclone+zstd size": "≤ 1",
    }
    for name, value in ratios.items():
        print(f"| {name} | {value:.2f} | {targets.get(name, '')} |")


if __name__ == "__main__":
    main()
