#!/usr/bin/env python3
"""Backup and restore throughput to remote repositories on loopback, against local.

Uses the cached sample disk of ``run_bench.py`` (GPT + ext4 with ``--fill`` of
``--size`` in :func:`blockvault_demo.sample.make_tree` files; default about 1 GiB used),
starts a real OpenSSH ``sshd`` and moto's standalone S3 server on 127.0.0.1 (the same
servers the tests use), and for each repository kind (local directory, ``sftp://``,
``s3://``) times ``blockvault backup`` into a fresh repository and ``blockvault
restore`` into a new file, dropping the page cache before each step, then checks that
the restore equals the source. Results: ``bench/work/remote-results.json`` and a
Markdown table on stdout. Needs root (sshd, drop_caches).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

import run_bench  # noqa: E402

from blockvault_demo.servers import start_moto, start_sshd, stop  # noqa: E402

MB = 1_000_000


def timed(env: dict[str, str], *args: str) -> tuple[float, str]:
    run_bench.drop_caches()
    started = time.monotonic()
    proc = subprocess.run(["blockvault", *args], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"blockvault {' '.join(args)} failed: {proc.stderr.strip()}")
    return seconds, proc.stdout


def measure(kind: str, repo: str, env: dict[str, str], image: Path, out: Path) -> dict[str, Any]:
    run_bench.log(f"{kind}: init + backup into {repo}")
    subprocess.run(["blockvault", "-r", repo, "init"], env=env, check=True, capture_output=True)
    backup_s, stdout = timed(env, "-r", repo, "backup", "--json", str(image))
    stats = json.loads(stdout)["stats"]
    restored = out / f"restored-{kind}.img"
    run_bench.log(f"{kind}: restore")
    restore_s, _ = timed(env, "-r", repo, "restore", "latest", str(restored))
    same = filecmp.cmp(image, restored, shallow=False)
    restored.unlink()
    used = int(stats["read_bytes"])
    return {
        "kind": kind,
        "used_bytes": used,
        "stored_bytes": int(stats.get("stored_bytes", 0)),
        "backup_seconds": round(backup_s, 2),
        "restore_seconds": round(restore_s, 2),
        "backup_MBps": round(used / backup_s / MB, 1),
        "restore_MBps": round(used / restore_s / MB, 1),
        "restore_identical": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2G", help="disk size (default 2G)")
    parser.add_argument("--fill", type=float, default=0.5, help="fraction filled (0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    meta = run_bench.ensure_disk(run_bench.parse_size(args.size), args.fill, args.seed)
    image = Path(meta["path"])
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="remote-bench-", dir=run_bench.WORK) as tmp:
        work = Path(tmp)
        sshd = start_sshd(work / "ssh")
        s3 = start_moto(work / "moto")
        try:
            for n in range(args.rounds):
                tag = f"{n}-{uuid.uuid4().hex[:6]}"
                local_env = sshd.env()
                results.append(measure("local", str(work / f"local-{tag}"), local_env, image, work))
                shutil.rmtree(work / f"local-{tag}")
                results.append(measure("sftp", sshd.url(f"repo-{tag}"), sshd.env(), image, work))
                shutil.rmtree(sshd.data / f"repo-{tag}")
                results.append(measure("s3", f"s3://bench-{tag}/repo", s3.env(), image, work))
        finally:
            if sshd.proc:
                stop(sshd.proc)
            if s3.proc:
                stop(s3.proc)
    report = {
        "disk": {k: meta[k] for k in ("key", "size", "fill", "partition")},
        "machine": run_bench.machine_info(),
        "results": results,
    }
    (run_bench.WORK / "remote-results.json").write_text(json.dumps(report, indent=1) + "\n")
    print("| repository | used data | backup | backup MB/s | restore | restore MB/s | identical |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['kind']} | {r['used_bytes'] / MB:.0f} MB | {r['backup_seconds']} s | "
            f"{r['backup_MBps']} | {r['restore_seconds']} s | {r['restore_MBps']} | "
            f"{r['restore_identical']} |"
        )


if __name__ == "__main__":
    main()
