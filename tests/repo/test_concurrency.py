"""Backups really running in parallel (separate processes) while prune and gc run in
a loop; afterwards every snapshot restores byte for byte and check --read-data passes.

Each round backs up a new version of every disk (about 10 % of its files changed), and
prune --keep-last 1 removes the previous version's manifest while the new backup is
deduplicating against its chunks, so gc (margin 0) really deletes chunks the running
backups have found in storage."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import time
from pathlib import Path

from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, change_tree, make_tree

MiB = 1024 * 1024
DISKS = 3
ROUNDS = 3


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["blockvault", *map(str, args)], capture_output=True, text=True, check=False
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_parallel_backups_with_gc_in_a_loop(tmp_path: Path) -> None:
    rng = random.Random(7)
    versions: dict[tuple[int, int], Path] = {}
    for d in range(DISKS):
        tree = tmp_path / f"tree{d}"
        make_tree(tree, 8 * MiB, seed=100 + d)
        for r in range(ROUNDS):
            if r:
                change_tree(tree, 0.1, seed=r)
            spec = DiskSpec("gpt", 32 * MiB, [PartitionSpec("ext4", 0, "root", tree)])
            versions[d, r] = build_disk(spec, tmp_path / f"disk{d}-v{r}.img").path
    digests = {sha(p) for p in versions.values()}
    repo = tmp_path / "repo"
    assert run("-r", repo, "init", "--chunk-size", "64KiB").returncode == 0
    sources = [tmp_path / f"disk{d}.img" for d in range(DISKS)]
    gc_runs = deleted = restored_again = 0
    for r in range(ROUNDS):
        for d, source in enumerate(sources):
            shutil.copyfile(versions[d, r], source)
        backups = [
            subprocess.Popen(
                ["blockvault", "-r", str(repo), "backup", str(s)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for s in sources
        ]
        time.sleep(rng.uniform(0.1, 1.0))
        assert run("-r", repo, "prune", "--keep-last", "1").returncode == 0
        while True:  # at least one gc per round, more while backups still run
            running = any(b.poll() is None for b in backups)
            proc = run("-r", repo, "gc", "--margin", "0", "--json")
            assert proc.returncode == 0, proc.stderr
            deleted += json.loads(proc.stdout)["deleted_chunks"]
            gc_runs += 1
            if not running:
                break
        for b in backups:
            _, err = b.communicate()
            assert b.returncode == 0, err
            restored_again += "gc removed" in err
    assert gc_runs >= ROUNDS and deleted > 0
    print(f"{gc_runs} gc runs deleted {deleted} chunks; {restored_again} backups stored again")
    check = run("-r", repo, "check", "--read-data", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["ok"]
    snaps = json.loads(run("-r", repo, "snapshots", "--json").stdout)
    assert len(snaps) >= DISKS
    for snap in snaps:
        target = tmp_path / "restored.img"
        target.unlink(missing_ok=True)
        proc = run("-r", repo, "restore", snap["id"], target)
        assert proc.returncode == 0, proc.stderr
        assert sha(target) in digests
    # the newest snapshot of each disk is its last version
    newest = {s["source"]: s["id"] for s in snaps}
    for d, source in enumerate(sources):
        target = tmp_path / "latest.img"
        target.unlink(missing_ok=True)
        assert run("-r", repo, "restore", newest[str(source)], target).returncode == 0
        assert sha(target) == sha(versions[d, ROUNDS - 1])
    # nothing is left to collect but the markers-free, fully referenced repository
    final = json.loads(run("-r", repo, "gc", "--margin", "0", "--json").stdout)
    assert final["live_sessions"] == 0
    assert run("-r", repo, "check", "--json").returncode == 0
