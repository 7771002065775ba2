#!/usr/bin/env python3
"""Browsing a snapshot against a loop-mounted copy of the raw partition.

Builds (and caches under ``bench/work/browse``) a disk without a partition table:
ext4 holding one 1 GiB incompressible file and 50,000 small files, backs it up once
into a local repository (4 MiB chunks, zstd:3), then, dropping the page cache
before every timed step:

* ``cat`` of the 1 GiB file: time to first byte and throughput, ``blockvault cat``
  against ``cat`` from a read-only kernel mount of the raw image;
* ``ls -R`` of the partition: ``blockvault ls -R`` against ``ls -R`` of that mount;
* sequential read of the partition: ``dd`` of ``MOUNTPOINT/p1.img`` from a
  ``blockvault mount`` against ``dd`` of the raw image file.

Results: ``bench/work/browse-results.json`` and a Markdown table on stdout. Needs
root (drop_caches, loop mounts, FUSE).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
MB = 1_000_000


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def build(work: Path, files: int, big: int) -> Path:
    image = work / f"browse-{files}-{big // MiB}M.img"
    if image.exists():
        return image
    tree = work / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "data").mkdir(parents=True)
    with open(tree / "big.bin", "wb") as f:
        for _ in range(big // (16 * MiB)):
            f.write(os.urandom(16 * MiB))
    for n in range(files):
        folder = tree / "data" / f"d{n // 1000:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"file-{n:05d}.txt").write_bytes(b"x" * (n % 2000))
    size = big + 1 * GiB
    build_disk(DiskSpec("none", size, [PartitionSpec("ext4", 0, None, tree)]), image)
    shutil.rmtree(tree)
    return image


def stream(command: list[str]) -> tuple[float, float, int]:
    """Run ``command``, reading its stdout: (seconds to first byte, total seconds, bytes)."""
    drop_caches()
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    ttfb = time.monotonic() - started
    total = len(first)
    while block := proc.stdout.read(4 * MiB):
        total += len(block)
    if proc.wait() != 0:
        raise SystemExit(f"{command} failed")
    return ttfb, time.monotonic() - started, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--big", type=int, default=1024, help="MiB of the large file")
    args = parser.parse_args()
    work = BENCH / "work" / "browse"
    work.mkdir(parents=True, exist_ok=True)
    image = build(work, args.files, args.big * MiB)
    repo = work / f"repo-{image.stem}"
    if not repo.exists():
        subprocess.run(["blockvault", "-r", str(repo), "init"], check=True, capture_output=True)
        subprocess.run(
            ["blockvault", "-r", str(repo), "backup", str(image)], check=True, capture_output=True
        )
    bv = ["blockvault", "-r", str(repo)]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        raw = Path(tmp, "raw")
        raw.mkdir()
        subprocess.run(["mount", "-o", "ro,loop,noload", str(image), str(raw)], check=True)
        try:
            ttfb, secs, n = stream(["cat", str(raw / "big.bin")])
            results["cat 1 GiB, loop mount"] = {"ttfb_s": ttfb, "s": secs, "MB_s": n / MB / secs}
            ttfb, secs, n = stream([*bv, "cat", "latest/big.bin"])
            results["cat 1 GiB, blockvault cat"] = {
                "ttfb_s": ttfb,
                "s": secs,
                "MB_s": n / MB / secs,
            }
            _, secs, _ = stream(["ls", "-R", str(raw)])
            results[f"ls -R {args.files} files, loop mount"] = {"s": secs}
            _, secs, _ = stream([*bv, "ls", "-R", "latest/"])
            results[f"ls -R {args.files} files, blockvault ls"] = {"s": secs}
        finally:
            subprocess.run(["umount", str(raw)], check=False)
        _, secs, n = stream(["dd", f"if={image}", "bs=1M", "status=none"])
        results["sequential read, raw image file"] = {"s": secs, "MB_s": n / MB / secs}
        mnt = Path(tmp, "mnt")
        mnt.mkdir()
        subprocess.run([*bv, "mount", "latest", str(mnt)], check=True)
        try:
            _, secs, n = stream(["dd", f"if={mnt / 'p1.img'}", "bs=1M", "status=none"])
            results["sequential read, blockvault mount p1.img"] = {
                "s": secs,
                "MB_s": n / MB / secs,
            }
        finally:
            subprocess.run(["blockvault", "umount", str(mnt)], check=False)
    (BENCH / "work" / "browse-results.json").write_text(json.dumps(results, indent=1))
    print("| Step | Time to first byte | Total | Throughput |")
    print("| --- | ---: | ---: | ---: |")
    for step, r in results.items():
        ttfb = f"{r['ttfb_s'] * 1000:.0f} ms" if "ttfb_s" in r else ""
        speed = f"{r['MB_s']:.0f} MB/s" if "MB_s" in r else ""
        print(f"| {step} | {ttfb} | {r['s']:.2f} s | {speed} |")


if __name__ == "__main__":
    main()
