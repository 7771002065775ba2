"""LVM2 and LUKS2 partitions: blockvault backup and restore vs dd + zstd of the partition.

The disk: a GPT image with partition 1 an LVM2 PV (one LV holding ext4, free extents
after it) and partition 2 a LUKS2 container holding ext4, both filled with
``make_tree(fill x size)``; built by pvcreate/vgcreate/lvcreate --driverloaded n and
cryptsetup luksFormat (blockvault_demo.sample_stack: no device-mapper needed). LUKS's
unused sectors hold ciphertext, as on a real disk, so they do not compress. Per
partition: ``dd | zstd -T0 -3`` of the whole partition and its restore ``zstd -dc |
dd``; ``blockvault backup -p N`` (with ``--luks-key-file`` for LUKS) into a fresh
repository and ``blockvault restore`` to a new file. Each step starts with a dropped
page cache; the best of ``--runs`` is kept. Results: bench/work/volumes-results.json.

    sudo python3 bench/volumes_bench.py [--size 1G] [--fill 0.45] [--runs 1]
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

from run_bench import WORK, blockvault_exe, drop_caches, log, machine_info, parse_size  # noqa: E402

MiB = 1 << 20


def build(size: int, fill: float, work: Path) -> dict[str, Any]:
    from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
    from blockvault_demo.sample_stack import (
        LogicalVolumeSpec,
        luks_format,
        make_pv,
        write_encrypted,
    )

    image = work / "volumes.img"
    meta = work / "volumes.json"
    if image.exists() and meta.exists():
        return dict(json.loads(meta.read_text()))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    disk = build_disk(
        DiskSpec(
            "gpt",
            2 * size + 4 * MiB,
            [PartitionSpec("empty", size), PartitionSpec("empty", size)],
        ),
        image,
    )
    pv, crypt = disk.partitions
    lv_size = (size - 8 * MiB) * 9 // 10 // MiB * MiB
    trees = [work / "tree-lvm", work / "tree-luks"]
    summaries = [make_tree(t, int(fill * size), seed=s) for s, t in enumerate(trees)]
    make_pv(image, pv.offset, pv.size, "bench", [LogicalVolumeSpec("root", lv_size, trees[0])])
    key = work / "luks.key"
    key.write_bytes(b"bench passphrase")
    container = luks_format(image, crypt.offset, crypt.size, key, "luks2")
    plain = work / "plain.img"
    plain.touch()
    os.truncate(plain, crypt.size - container.payload_offset)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", trees[1], plain], check=True)
    write_encrypted(image, crypt.offset, container, plain)
    plain.unlink()
    for tree in trees:
        shutil.rmtree(tree)
    info = {
        "path": str(image),
        "size": disk.size,
        "key": str(key),
        "partitions": [
            {"number": p.number, "offset": p.offset, "size": p.size} for p in (pv, crypt)
        ],
        "tree_bytes": [s.bytes for s in summaries],
    }
    meta.write_text(json.dumps(info))
    return info


def timed(command: str) -> float:
    drop_caches()
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, capture_output=True)
    os.sync()
    return time.monotonic() - started


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True,
                              check=True).stdout.split()[0])  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = WORK / f"volumes-{args.size}-{args.fill:g}"
    disk = build(parse_size(args.size), args.fill, work)
    exe = " ".join(blockvault_exe(None))
    image = disk["path"]
    rows: dict[str, dict[str, Any]] = {}
    for part, kind in zip(disk["partitions"], ("LVM2 PV", "LUKS2"), strict=True):
        n, offset, size = part["number"], part["offset"], part["size"]
        zst = work / f"p{n}.zst"
        repo = work / f"repo-{n}"
        target = work / "target.img"
        key = f"--luks-key-file {n}={disk['key']}" if kind == "LUKS2" else ""
        best: dict[str, float] = {}
        for _ in range(args.runs):
            zst.unlink(missing_ok=True)
            dd = (
                f"dd if={image} bs=4M iflag=skip_bytes,count_bytes skip={offset} count={size} "
                f"status=none | zstd -T0 -3 -q -o {zst}"
            )
            undd = (
                f"zstd -dc {zst} | dd of={target} bs=4M oflag=seek_bytes seek={offset} "
                "status=none conv=notrunc"
            )
            shutil.rmtree(repo, ignore_errors=True)
            subprocess.run([*exe.split(), "-r", repo, "init"], check=True, capture_output=True)
            target.unlink(missing_ok=True)
            steps = {
                "dd | zstd -T0 -3": dd,
                "zstd -dc | dd": f"truncate -s {disk['size']} {target} && {undd}",
                "blockvault backup": f"{exe} -r {repo} backup -p {n} {key} {image}",
            }
            for name, command in steps.items():
                best[name] = min(best.get(name, 1e9), timed(command))
            target.unlink(missing_ok=True)
            best["blockvault restore"] = min(
                best.get("blockvault restore", 1e9),
                timed(f"{exe} -r {repo} restore latest {target}"),
            )
            subprocess.run([*exe.split(), "-r", repo, "verify", "latest", "--against", image],
                           check=True, capture_output=True)  # fmt: skip
        rows[kind] = {
            "partition_bytes": size,
            "tree_bytes": disk["tree_bytes"][n - 1],
            "seconds": {k: round(v, 2) for k, v in best.items()},
            "dd_zstd_bytes": zst.stat().st_size,
            "repository_bytes": du(repo),
        }
        log(f"{kind}: {json.dumps(rows[kind])}")
        target.unlink(missing_ok=True)
    report = {"size": args.size, "fill": args.fill, "rows": rows, "machine": machine_info()}
    (WORK / "volumes-results.json").write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="size of each partition")
    parser.add_argument("--fill", type=float, default=0.45, help="file data per partition")
    parser.add_argument("--runs", type=int, default=1, help="timed runs per step (best kept)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
