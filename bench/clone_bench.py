"""Disk-to-disk clone of the cached benchmark disk: blockvault clone vs partclone -b vs dd.

Source and targets are loop devices (direct I/O) over image files in bench/work, so
each tool reads a device and writes a device; the page cache is dropped before every
timed run. partclone.ext4 -b copies the ext4 partition (its used blocks) device to
device; dd bs=4M copies the whole disk; blockvault clone copies the disk's used blocks
and boot areas. Each result is checked: e2fsck -fn on the copy's partition.

    sudo python3 bench/clone_bench.py [--size 4G] [--fill 0.45] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

from run_bench import (  # noqa: E402
    WORK,
    blockvault_exe,
    drop_caches,
    ensure_disk,
    log,
    loop_device,
    machine_info,
    parse_size,
)


def fresh_target(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def timed(argv: list[str]) -> float:
    drop_caches()
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    os.sync()
    return time.monotonic() - started


def check_ext(device: str) -> None:
    subprocess.run(["e2fsck", "-fn", device], check=True, capture_output=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    disk = ensure_disk(parse_size(args.size), args.fill, 0)
    source = Path(disk["path"])
    size = int(disk["size"])
    part = disk["partition"]
    target = WORK / "clone-target.img"
    results: dict[str, list[float]] = {
        "blockvault clone": [],
        "partclone.ext4 -b": [],
        "dd bs=4M": [],
    }
    for _ in range(args.runs):
        with ExitStack() as stack:
            src = stack.enter_context(loop_device(source, read_only=True))
            fresh_target(target, size)
            dst = stack.enter_context(loop_device(target))
            results["blockvault clone"].append(
                timed([*blockvault_exe(None), "clone", src, dst, "--yes"])
            )
            with loop_device(target, part["offset"], part["size"], read_only=True) as p:
                check_ext(p)
        with ExitStack() as stack:
            src = stack.enter_context(
                loop_device(source, part["offset"], part["size"], read_only=True)
            )
            fresh_target(target, size)
            dst = stack.enter_context(loop_device(target, part["offset"], part["size"]))
            results["partclone.ext4 -b"].append(
                timed(["partclone.ext4", "-b", "-q", "-s", src, "-o", dst])
            )
            check_ext(dst)
        with ExitStack() as stack:
            src = stack.enter_context(loop_device(source, read_only=True))
            fresh_target(target, size)
            dst = stack.enter_context(loop_device(target))
            results["dd bs=4M"].append(
                timed(["dd", f"if={src}", f"of={dst}", "bs=4M", "conv=fsync", "status=none"])
            )
    target.unlink(missing_ok=True)
    best = {name: min(times) for name, times in results.items()}
    report = {
        "disk": {k: disk[k] for k in ("key", "size", "fill")},
        "used_bytes": disk["tree"]["bytes"],
        "seconds": best,
        "vs_partclone": round(best["partclone.ext4 -b"] / best["blockvault clone"], 2),
        "vs_dd": round(best["dd bs=4M"] / best["blockvault clone"], 2),
        "machine": machine_info(),
    }
    (WORK / "clone-results.json").write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4G", help="benchmark disk size (cached disk)")
    parser.add_argument("--fill", type=float, default=0.45, help="fraction of the disk used")
    parser.add_argument("--runs", type=int, default=1, help="timed runs per tool (best kept)")
    report = run(parser.parse_args())
    log(json.dumps({k: report[k] for k in ("seconds", "vs_partclone", "vs_dd")}))


if __name__ == "__main__":
    main()
