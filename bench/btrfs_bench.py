"""btrfs: blockvault backup and restore against ``partclone.btrfs | zstd``, one run.

The disk (cached in bench/work/disks) is GPT with one btrfs partition made by
``mkfs.btrfs --rootdir`` from a ``make_tree`` tree (DUP metadata, the single-device
default), written densely so free space is read from the medium like a real disk.
It holds no snapshot: partclone.btrfs 0.3.23 loses snapshot tree blocks (see
tests/disk/fs/test_fs_btrfs.py), and a benchmark of a broken copy would mean nothing.

Page cache dropped before each timed step, every step run ``--runs`` times (median
kept):

* ``partclone.btrfs -c | zstd -T0 -3`` of the partition, and its restore
  ``zstd -dc | partclone.btrfs -r`` onto a loop device over a fresh file;
* ``blockvault backup`` of the disk into a fresh repository (zstd level 3), and
  ``blockvault restore`` of it to a fresh file.

Both restores are checked with ``btrfs check --readonly``.

    sudo python3 bench/btrfs_bench.py [--size 2G] [--fill 0.45] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "src"))

from run_bench import (  # noqa: E402
    WORK,
    ZSTD_LEVEL,
    blockvault_exe,
    drop_caches,
    du_bytes,
    log,
    loop_device,
    machine_info,
    parse_size,
    size_label,
    wait_for_quiet,
)


def ensure_btrfs_disk(size: int, fill: float, seed: int) -> dict[str, Any]:
    from blockvault_demo import sample

    builder = hashlib.sha256(Path(sample.__file__).read_bytes()).hexdigest()[:8]
    key = f"gpt-btrfs-{size_label(size)}-fill{fill:g}-seed{seed}-{builder}"
    disks = WORK / "disks"
    image, meta_path = disks / f"{key}.img", disks / f"{key}.json"
    if image.exists() and meta_path.exists():
        log(f"using cached disk {image.relative_to(ROOT)}")
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        return meta
    disks.mkdir(parents=True, exist_ok=True)
    tree, sparse = disks / f"{key}.tree", disks / f"{key}.sparse"
    shutil.rmtree(tree, ignore_errors=True)
    log(f"writing a {fill:.0%} tree into {tree.name}")
    sample.make_tree(tree, int(size * fill), seed=seed)
    log(f"building the {size_label(size)} GPT disk (mkfs.btrfs --rootdir)")
    built = sample.build_disk(
        sample.DiskSpec("gpt", size, [sample.PartitionSpec("btrfs", 0, "root", tree)]), sparse
    )
    shutil.rmtree(tree)
    subprocess.run(["cp", "--sparse=never", sparse, image], check=True)
    sparse.unlink()
    (part,) = built.partitions
    meta = {
        "key": key,
        "path": str(image),
        "size": size,
        "fill": fill,
        "partition": {"offset": part.offset, "size": part.size},
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


DISK_PATH = ""
WARM = False  # --warm: keep the page cache (compares CPU, not the shared disk)


def timed(command: str) -> float:
    """Wall seconds of ``command`` and the sync after it, started on a quiet machine
    (other sessions share it) with the page cache dropped (unless ``--warm``)."""
    wait_for_quiet(0.2, 120)
    if WARM:
        subprocess.run(["cat", DISK_PATH], check=True, stdout=subprocess.DEVNULL)
    else:
        drop_caches()
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, capture_output=True)
    subprocess.run(["sync"], check=True)
    return time.monotonic() - started


def fresh(path: Path, size: int) -> Path:
    path.unlink(missing_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    return path


def btrfs_check(device: str) -> None:
    subprocess.run(["btrfs", "check", "--readonly", device], check=True, capture_output=True)


def one_round(disk: dict[str, Any], work: Path, bv: list[str]) -> dict[str, float]:
    offset, size = disk["partition"]["offset"], disk["partition"]["size"]
    lvl = f"-{ZSTD_LEVEL}"
    pcl, repo = work / "btrfs.pcl.zst", work / "repo"
    times: dict[str, float] = {}
    with loop_device(Path(disk["path"]), offset, size, read_only=True) as part:
        times["partclone backup"] = timed(
            f"partclone.btrfs -c -q -s {part} -o - | zstd -T0 {lvl} -q -f -o {pcl}"
        )
    target = fresh(work / "pc-target.img", size)
    with loop_device(target) as dst:
        times["partclone restore"] = timed(
            f"zstd -dc -q {pcl} | partclone.btrfs -r -q -s - -o {dst}"
        )
        btrfs_check(dst)
    target.unlink()
    shutil.rmtree(repo, ignore_errors=True)
    subprocess.run([*bv, "-r", repo, "init", "--compression", f"zstd:{ZSTD_LEVEL}"], check=True)
    times["blockvault backup"] = timed(f"{' '.join(bv)} -r {repo} backup {disk['path']}")
    restored = work / "restored.img"
    restored.unlink(missing_ok=True)
    times["blockvault restore"] = timed(f"{' '.join(bv)} -r {repo} restore latest {restored}")
    with loop_device(restored, offset, size, read_only=True) as dst:
        btrfs_check(dst)
    restored.unlink()
    times["partclone bytes"] = pcl.stat().st_size
    times["blockvault bytes"] = du_bytes(repo)
    return times


def run(args: argparse.Namespace) -> dict[str, Any]:
    global WARM, DISK_PATH
    disk = ensure_btrfs_disk(parse_size(args.size), args.fill, 0)
    WARM, DISK_PATH = args.warm, disk["path"]
    work = WORK / "btrfs-run"
    work.mkdir(parents=True, exist_ok=True)
    bv = blockvault_exe(None)
    rounds = []
    for n in range(args.runs):
        log(f"round {n + 1} of {args.runs}")
        rounds.append(one_round(disk, work, bv))
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    used = json.loads(
        subprocess.run(
            [*bv, "-r", work / "repo", "info", "--json", "latest"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    shutil.rmtree(work / "repo", ignore_errors=True)
    report = {
        "disk": disk,
        "rounds": rounds,
        "median": median,
        "ratios": {
            "backup time (bv / pc)": round(
                median["blockvault backup"] / median["partclone backup"], 2
            ),
            "restore time (bv / pc)": round(
                median["blockvault restore"] / median["partclone restore"], 2
            ),
            "size (bv / pc)": round(median["blockvault bytes"] / median["partclone bytes"], 3),
        },
        "snapshot": used,
        "machine": machine_info(),
    }
    report["warm"] = WARM
    (WORK / f"btrfs-results{'-warm' if WARM else ''}.json").write_text(
        json.dumps(report, indent=1, default=str)
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="2G", help="benchmark disk size (cached disk)")
    parser.add_argument("--fill", type=float, default=0.45, help="fraction of the disk used")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (median kept)")
    parser.add_argument("--warm", action="store_true", help="read the disk from page cache")
    report = run(parser.parse_args())
    log(json.dumps({k: report[k] for k in ("median", "ratios")}, indent=1))


if __name__ == "__main__":
    main()
