#!/usr/bin/env python3
"""Incremental backup of a partition with about 5 % of its data changed, against
restic, borg and a second full partclone + zstd.

Uses the cached sample disk of ``run_bench.py`` (GPT + ext4, ``--fill`` of ``--size``)
and a copy of it in which :func:`blockvault_demo.sample.change_tree` rewrote, appended, added
and deleted about ``--change`` of the file data in place (the copy's ext4 partition
loop-mounted read-write; the copy is cached next to the disk). Then, each timed step
after ``sync; echo 3 > drop_caches`` and a wait until the 1-minute load average is
below ``--max-load``:

* blockvault, for each ``--chunk-sizes``: ``init --chunk-size``, full backup of the
  original, then the incremental backup of the changed copy through the same path
  (``source.img``, a symlink switched between the two images);
* restic: ``backup --stdin`` of the partition bytes (a read-only loop device), full then
  incremental;
* borg: ``create --read-special --compression zstd,3`` of a read-only loop device over
  the partition, full then incremental;
* ``partclone.ext4 -c | zstd -T0 -3`` of the changed partition.

Reports wall time, bytes added to the repository (``du -sb`` before and after) and the
peak RSS of the largest process (``wait4`` rusage); with ``--repeat N`` every step runs in
N rounds and the tables show each step's median run and the range. Results go to
``bench/work/incremental-results-<size>.json`` and a Markdown table on stdout. Root.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

import run_bench  # noqa: E402
from run_bench import WORK, drop_caches, ensure_disk, log, machine_info, parse_size  # noqa: E402

MB = 1_000_000
TOOLS = {"restic": "restic", "borg": "borgbackup", "partclone.ext4": "partclone", "zstd": "zstd"}


def ensure_tools() -> None:
    """Install the tools compared against with apt-get when missing."""
    missing = sorted({pkg for exe, pkg in TOOLS.items() if shutil.which(exe) is None})
    if missing:
        log(f"apt-get install {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", *missing], env=env, check=True)


def wait_for_load(limit: float, patience: float) -> float:
    """Wait (up to ``patience`` s) until the 1-minute load average is below ``limit``."""
    started = time.monotonic()
    while True:
        load = float(Path("/proc/loadavg").read_text().split()[0])
        waited = time.monotonic() - started
        if load < limit or waited >= patience:
            if load >= limit:
                log(f"load still {load:.2f} after {waited:.0f} s; going on")
            return waited
        time.sleep(2.0)


class Timer:
    """Runs timed steps (caches dropped, machine quiet) and records them."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], logs: Path) -> None:
        self.args = args
        self.env = env
        self.logs = logs
        self.steps: list[dict[str, Any]] = []

    def run(
        self, name: str, cmd: str, repo: Path | None, stdin: str | None = None
    ) -> dict[str, Any]:
        """Time ``cmd`` (a bash command line, ``pipefail``) and the ``sync`` after it."""
        before = run_bench.du_bytes(repo) if repo is not None and repo.exists() else 0
        waited = wait_for_load(self.args.max_load, self.args.patience)
        drop_caches()
        load = float(Path("/proc/loadavg").read_text().split()[0])
        log(f"{name}: {cmd}")
        out = self.logs / f"{len(self.steps):02d}-{name.replace(' ', '_')}.log"
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(out.open("w"))
            source: IO[bytes] | int = (
                stack.enter_context(open(stdin, "rb")) if stdin else subprocess.DEVNULL
            )
            started = time.monotonic()
            proc = subprocess.Popen(
                ["bash", "-o", "pipefail", "-c", cmd],
                stdin=source,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            os.sync()
            total = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed (exit {proc.returncode}); see {out}")
        after = run_bench.du_bytes(repo) if repo is not None else 0
        step: dict[str, Any] = {
            "name": name,
            "command": cmd,
            "wall_seconds": round(wall, 2),
            "with_sync_seconds": round(total, 2),
            "user_seconds": round(usage.ru_utime, 2),
            "system_seconds": round(usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss * 1024 / MB, 1),
            "repo_bytes_before": before,
            "repo_bytes_after": after,
            "bytes_added": after - before,
            "load_at_start": load,
            "waited_for_quiet_seconds": round(waited, 1),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        log(
            f"  {wall:.1f} s (+sync {total - wall:.1f} s), "
            f"added {step['bytes_added'] / MB:.1f} MB, peak RSS {step['peak_rss_mb']} MB"
        )
        if cmd.split()[-2:-1] == ["--json"]:  # blockvault backup: keep its own stats
            with contextlib.suppress(ValueError, KeyError):
                step["blockvault_stats"] = json.loads(out.read_text())["stats"]
        self.steps.append(step)
        return step


def loop(path: Path, offset: int, size: int, *, read_only: bool) -> str:
    argv = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size)]
    if read_only:
        argv.append("--read-only")
    return run_bench.sh(*argv, path).strip()


def detach(device: str) -> None:
    run_bench.sh("losetup", "-d", device, check=False)


def ensure_changed(meta: dict[str, Any], fraction: float, seed: int) -> dict[str, Any]:
    """A copy of the disk with ``fraction`` of its file data changed in place (cached)."""

    image = Path(meta["path"])
    changed = image.with_name(f"{meta['key']}-changed{fraction:g}-seed{seed}.img")
    info_path = changed.with_suffix(".json")
    if changed.exists() and info_path.exists():
        log(f"using cached changed copy {changed.name}")
        cached: dict[str, Any] = json.loads(info_path.read_text())
        return cached
    log(f"copying {image.name} and changing {fraction:.0%} of its files")
    partial = changed.with_suffix(".partial")
    run_bench.sh("cp", "--sparse=never", image, partial)
    summary = change_partition(partial, meta["partition"], fraction, seed, WORK / "incremental-mnt")
    partial.rename(changed)
    info = {"path": str(changed), "fraction": fraction, "seed": seed, "change": _plain(summary)}
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    return info


def change_partition(
    image: Path, part: dict[str, int], fraction: float, seed: int, mnt: Path
) -> object:
    """Change ``fraction`` of the files on the image's ext4 partition, loop-mounted
    read-write at ``mnt``; returns sample.change_tree's summary."""
    from blockvault_demo import sample

    device = loop(image, part["offset"], part["size"], read_only=False)
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        run_bench.sh("mount", "-t", "ext4", device, mnt)
        try:
            return sample.change_tree(mnt, fraction, seed=seed)
        finally:
            run_bench.sh("umount", mnt)
    finally:
        detach(device)


def _plain(summary: object) -> Any:
    from dataclasses import asdict, is_dataclass

    return (
        asdict(summary) if is_dataclass(summary) and not isinstance(summary, type) else str(summary)
    )


def bench_blockvault(t: Timer, work: Path, images: tuple[Path, Path], chunk: str) -> None:
    repo = work / f"bv-{chunk}"
    source = work / "source.img"
    bv = " ".join(run_bench.blockvault_exe(None))
    run_bench.sh(*run_bench.blockvault_exe(None), "-r", repo, "init", "--chunk-size", chunk)
    for label, image in zip(("full", "incremental"), images, strict=True):
        source.unlink(missing_ok=True)
        source.symlink_to(image)
        t.run(f"blockvault {chunk} {label}", f"{bv} -r {repo} backup --json {source}", repo)
    shutil.rmtree(repo)


def bench_restic(t: Timer, work: Path, devices: tuple[str, str]) -> None:
    repo = work / "restic"
    run_bench.sh("restic", "-r", repo, "init")
    for label, device in zip(("full", "incremental"), devices, strict=True):
        cmd = f"restic -r {repo} backup --stdin --stdin-filename part.img"
        t.run(f"restic {label}", cmd, repo, stdin=device)
    shutil.rmtree(repo)


def bench_borg(t: Timer, work: Path, devices: tuple[str, str]) -> None:
    repo = work / "borg"
    run_bench.sh("borg", "init", "-e", "none", repo)
    for n, (label, device) in enumerate(zip(("full", "incremental"), devices, strict=True)):
        cmd = f"borg create --read-special --compression zstd,3 {repo}::a{n} {device}"
        t.run(f"borg {label}", cmd, repo)
    shutil.rmtree(repo)


def bench_partclone(t: Timer, work: Path, device: str) -> None:
    out = work / "partclone"
    out.mkdir()
    cmd = f"partclone.ext4 -c -s {device} -o - 2>/dev/null | zstd -q -T0 -3 > {out}/part.pcl.zst"
    t.run("partclone+zstd full of changed", cmd, out)
    shutil.rmtree(out)


def _median_steps(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per step name, the run with the median wall + sync time, with the range of all
    runs and their count added."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        runs.setdefault(step["name"], []).append(step)
    out = {}
    for name, group in runs.items():
        ordered = sorted(group, key=lambda s: s["with_sync_seconds"])
        median = dict(ordered[(len(ordered) - 1) // 2])
        median["runs"] = len(ordered)
        median["range"] = f"{ordered[0]['with_sync_seconds']}-{ordered[-1]['with_sync_seconds']}"
        out[name] = median
    return out


def table(steps: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| step | runs | wall s | +sync s | range s | bytes added | peak RSS MB | load at start |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = _median_steps(steps)
    for s in by.values():
        lines.append(
            f"| {s['name']} | {s['runs']} | {s['wall_seconds']} | {s['with_sync_seconds']} | "
            f"{s['range']} | {s['bytes_added'] / MB:,.1f} MB | {s['peak_rss_mb']} | "
            f"{s['load_at_start']} |"
        )
    others = ("partclone+zstd full of changed", "restic incremental", "borg incremental")
    lines += ["", "| incremental | vs | time ratio (x faster) | bytes added (ours / theirs) |"]
    lines.append("|---|---|---:|---:|")
    ours_steps = [s for s in by.values() if s["name"].startswith("blockvault")]
    for inc in (s for s in ours_steps if "incr" in s["name"]):
        for other in (by[o] for o in others if o in by):
            speed = other["with_sync_seconds"] / inc["with_sync_seconds"]
            ours, theirs = inc["bytes_added"] / MB, other["bytes_added"] / MB
            lines.append(
                f"| {inc['name']} | {other['name']} | {speed:.2f} | {ours:.1f} / {theirs:.1f} MB |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="4G", help="disk size (default 4G)")
    parser.add_argument("--fill", type=float, default=0.45, help="fraction filled (0.45)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--change", type=float, default=0.05, help="fraction changed (0.05)")
    parser.add_argument("--chunk-sizes", default="4MiB,256KiB,1MiB")
    parser.add_argument("--tools", default="blockvault,restic,borg,partclone")
    parser.add_argument("--max-load", type=float, default=1.0, help="1-min load to wait for")
    parser.add_argument("--patience", type=float, default=300.0, help="max wait, seconds")
    parser.add_argument("--prepare-only", action="store_true", help="build the copies, stop")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every step; tables show the median"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("incremental_bench.py needs root (loop devices, drop_caches)")
    ensure_tools()
    size = parse_size(args.size)
    meta = ensure_disk(size, args.fill, args.seed)
    changed = ensure_changed(meta, args.change, 1)
    if args.prepare_only:
        return
    images = (Path(meta["path"]), Path(changed["path"]))
    part = meta["partition"]
    tools = args.tools.split(",")
    label = run_bench.size_label(size)
    work = WORK / f"incremental-{label}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    env = {
        **os.environ,
        "RESTIC_PASSWORD": "bench",
        "RESTIC_CACHE_DIR": str(work / "restic-cache"),
        "BORG_BASE_DIR": str(work / "borg-base"),
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
    }
    os.environ.update(env)
    t = Timer(args, env, work / "logs")
    results_path = WORK / f"incremental-results-{label}.json"
    devices: list[str] = []
    try:
        devices = [loop(i, part["offset"], part["size"], read_only=True) for i in images]
        pair = (devices[0], devices[1])
        order: list[tuple[str, Any]] = []
        chunks = args.chunk_sizes.split(",")
        if "blockvault" in tools and chunks:
            order.append(("blockvault", lambda c=chunks[0]: bench_blockvault(t, work, images, c)))
        if "restic" in tools:
            order.append(("restic", lambda: bench_restic(t, work, pair)))
        if "borg" in tools:
            order.append(("borg", lambda: bench_borg(t, work, pair)))
        if "partclone" in tools:
            order.append(("partclone", lambda: bench_partclone(t, work, pair[1])))
        if "blockvault" in tools:
            for c in chunks[1:]:
                order.append(("blockvault", lambda c=c: bench_blockvault(t, work, images, c)))
        for _round, (_name, fn) in itertools.product(range(args.repeat), order):
            fn()
            report = {
                "disk": {k: meta[k] for k in ("key", "size", "fill", "partition", "tree")},
                "changed": changed,
                "machine": machine_info(),
                "steps": t.steps,
            }
            results_path.write_text(json.dumps(report, indent=1) + "\n")
    finally:
        for d in devices:
            detach(d)
        (work / "source.img").unlink(missing_ok=True)
    print("\n".join(table(t.steps)))
    log(f"results in {results_path}")


if __name__ == "__main__":
    main()
