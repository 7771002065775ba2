#!/usr/bin/env python3
"""Garbage collection at scale: 20 daily snapshots of the benchmark disk, prune half, gc.

Uses the cached sample disk of ``run_bench.py`` (GPT + ext4, ``--fill`` of ``--size``).
A working copy of it is changed between backups as between days of use: its ext4
partition is loop-mounted read-write and :func:`blockvault_demo.sample.change_tree` rewrites,
appends, adds and deletes about ``--daily-change`` of the file data (a new seed each
day). After each change the whole disk is backed up into one repository. Then
``prune --keep-last`` keeps the newest half, and ``gc`` runs timed (caches dropped),
followed by ``check`` to show the repository is still whole.

Reports the backups' times and growth, gc's wall time, what it deleted and the
repository size before and after, as JSON in ``bench/work/gc-results-<size>.json`` and
as Markdown on stdout. Root (loop devices, mount).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

import run_bench  # noqa: E402
from incremental_bench import change_partition  # noqa: E402
from run_bench import WORK, drop_caches, ensure_disk, log, machine_info, parse_size  # noqa: E402

MB = 1_000_000


def blockvault(*args: str | Path) -> dict[str, Any]:
    """Run the CLI with ``--json``; returns its parsed output."""
    argv = [*run_bench.blockvault_exe(None), *map(str, args), "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return result


def timed(*args: str | Path) -> tuple[float, dict[str, Any]]:
    drop_caches()
    started = time.monotonic()
    out = blockvault(*args)
    return round(time.monotonic() - started, 2), out


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = parse_size(args.size)
    meta = ensure_disk(size, args.fill, args.seed)
    work = WORK / "gc"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    image = work / "disk.img"
    log(f"copying {Path(meta['path']).name} to a working copy")
    run_bench.sh("cp", "--sparse=always", meta["path"], image)
    repo = work / "repo"
    init = ["-r", repo, "init"] + (["--chunk-size", args.chunk_size] if args.chunk_size else [])
    subprocess.run([*run_bench.blockvault_exe(None), *map(str, init)], check=True)
    backups = []
    for day in range(args.snapshots):
        if day:
            change_partition(image, meta["partition"], args.daily_change, 1000 + day, work / "mnt")
        seconds, out = timed("-r", repo, "backup", image)
        stats = out.get("stats", {})
        backups.append({"day": day, "seconds": seconds, "stored_bytes": stats.get("stored_bytes")})
        log(f"day {day}: backup {seconds:.1f} s, stored {stats.get('stored_bytes', 0) / MB:.1f} MB")
    before = run_bench.du_bytes(repo)
    keep = args.snapshots - args.snapshots // 2
    prune_seconds, pruned = timed("-r", repo, "prune", "--keep-last", str(keep))
    gc_seconds, gc = timed("-r", repo, "gc", "--margin", "0")
    after = run_bench.du_bytes(repo)
    check_seconds, _ = timed("-r", repo, "check")
    log(f"gc {gc_seconds:.1f} s: repository {before / MB:,.0f} -> {after / MB:,.0f} MB")
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "disk": {"size": size, "fill": args.fill, "path": meta["path"]},
        "chunk_size": args.chunk_size or "default",
        "daily_change": args.daily_change,
        "backups": backups,
        "prune": {"seconds": prune_seconds, "result": pruned},
        "gc": {"seconds": gc_seconds, "result": gc},
        "check_seconds": check_seconds,
        "repo_bytes_before_gc": before,
        "repo_bytes_after_gc": after,
    }


def render(results: dict[str, Any]) -> str:
    gc = results["gc"]["result"]
    backups = results["backups"]
    incremental = [b["seconds"] for b in backups[1:]]
    lines = [
        "| snapshots | daily change | backup (first / median of the rest) | prune | gc | "
        "chunks deleted | freed | repository before -> after | check |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {len(backups)} | {results['daily_change']:.0%} | {backups[0]['seconds']} s / "
        f"{sorted(incremental)[len(incremental) // 2] if incremental else 0} s | "
        f"{results['prune']['seconds']} s | **{results['gc']['seconds']} s** | "
        f"{gc.get('deleted_chunks')} | {gc.get('deleted_bytes', 0) / MB:,.0f} MB | "
        f"{results['repo_bytes_before_gc'] / MB:,.0f} -> {results['repo_bytes_after_gc'] / MB:,.0f}"
        f" MB | {results['check_seconds']} s |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="4G", help="disk size (default 4G)")
    parser.add_argument("--fill", type=float, default=0.45, help="fraction filled (0.45)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snapshots", type=int, default=20, help="backups to take (20)")
    parser.add_argument("--daily-change", type=float, default=0.02, help="per day (0.02)")
    parser.add_argument("--chunk-size", default="", help="init --chunk-size (default: ours)")
    args = parser.parse_args()
    results = run(args)
    out = WORK / f"gc-results-{args.size}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(render(results))
    log(f"results in {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
