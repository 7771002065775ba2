"""Import of a Clonezilla image of the benchmark disk vs restoring that image to a disk.

The Clonezilla image is made once (cached in bench/work/cz-images) by Clonezilla's own
``ocs-sr savedisk`` (default settings: partclone, pigz, no split; run in a private
mount namespace, see blockvault_demo/clonezilla.py). Then, page cache dropped before
each timed step:

* ``blockvault import IMAGE`` into a fresh repository (join, gunzip, check partclone's
  CRCs, chunk, hash, compress, store);
* the image restored onto a disk as Clonezilla's restore does it: ``sfdisk`` from
  ``-pt.sf``, the MBR, then ``pigz -dc | partclone.ext4 -r`` onto a loop device over
  the partition (ocs-sr restoredisk runs these same commands).

Both results are checked: e2fsck -fn on the restored partition, and the imported
snapshot restored and compared with the source disk.

    sudo python3 bench/import_bench.py [--size 4G] [--fill 0.45] [--runs 1]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
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
    blockvault_exe,
    drop_caches,
    ensure_disk,
    log,
    loop_device,
    machine_info,
    parse_size,
)

from blockvault_demo.clonezilla import save_with_ocs_sr  # noqa: E402
from blockvault_demo.sample import BuiltDisk, BuiltPartition  # noqa: E402


def clonezilla_image(disk: dict[str, Any]) -> Path:
    images = WORK / "cz-images"
    image = images / f"{disk['key']}-z1p"
    if (image / "parts").is_file():
        log(f"using cached Clonezilla image {image.relative_to(ROOT)}")
        return image
    shutil.rmtree(image, ignore_errors=True)
    part = disk["partition"]
    built = BuiltDisk(
        Path(disk["path"]),
        "gpt",
        disk["size"],
        512,
        (BuiltPartition(part["number"], part["offset"], part["size"], "", "ext4", None, "tree"),),
    )
    log("saving the disk with ocs-sr savedisk -z1p")
    return save_with_ocs_sr(built, images, image.name, ("-z1p",))


def timed(argv: list[str], **kwargs: Any) -> float:
    drop_caches()
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, **kwargs)
    subprocess.run(["sync"], check=True)
    return time.monotonic() - started


def restore_like_clonezilla(image: Path, target: Path, disk: dict[str, Any]) -> float:
    """sfdisk, MBR, then pigz -dc | partclone.ext4 -r onto the partition: timed whole."""
    part = disk["partition"]
    target.unlink(missing_ok=True)
    with open(target, "wb") as f:
        f.truncate(disk["size"])
    payload = sorted(image.glob("*.ext4-ptcl-img.gz*"))
    with loop_device(target) as whole, loop_device(target, part["offset"], part["size"]) as dst:
        script = (
            f"sfdisk --no-reread -q {whole} < {image}/sdz-pt.sf && "
            f"dd if={image}/sdz-mbr of={whole} bs=446 count=1 conv=notrunc status=none && "
            f"cat {' '.join(map(str, payload))} | pigz -dc | "
            f"partclone.ext4 -q -r -s - -o {dst}"
        )
        seconds = timed(["bash", "-c", script])
        subprocess.run(["e2fsck", "-fn", dst], check=True, capture_output=True)
    return seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    disk = ensure_disk(parse_size(args.size), args.fill, 0)
    image = clonezilla_image(disk)
    bv = blockvault_exe(None)
    target = WORK / "import-target.img"
    results: dict[str, list[float]] = {"blockvault import": [], "partclone restore": []}
    for _ in range(args.runs):
        repo = WORK / "import-repo"
        shutil.rmtree(repo, ignore_errors=True)
        subprocess.run([*bv, "-r", repo, "init"], check=True, capture_output=True)
        results["blockvault import"].append(timed([*bv, "-r", str(repo), "import", str(image)]))
        results["partclone restore"].append(restore_like_clonezilla(image, target, disk))
    # the import is right: its restore equals the source disk
    target.unlink(missing_ok=True)
    subprocess.run(
        [*bv, "-r", str(repo), "restore", "latest", str(target)], check=True, capture_output=True
    )
    identical = filecmp.cmp(disk["path"], target, shallow=False)
    target.unlink(missing_ok=True)
    shutil.rmtree(repo, ignore_errors=True)
    best = {name: min(times) for name, times in results.items()}
    report = {
        "disk": {k: disk[k] for k in ("key", "size", "fill")},
        "image_bytes": sum(f.stat().st_size for f in image.iterdir()),
        "seconds": best,
        "restore_over_import": round(best["partclone restore"] / best["blockvault import"], 2),
        "import_restores_identical": identical,
        "machine": machine_info(),
    }
    (WORK / "import-results.json").write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="4G", help="benchmark disk size (cached disk)")
    parser.add_argument("--fill", type=float, default=0.45, help="fraction of the disk used")
    parser.add_argument("--runs", type=int, default=1, help="timed runs per tool (best kept)")
    report = run(parser.parse_args())
    log(
        json.dumps(
            {k: report[k] for k in ("seconds", "restore_over_import", "import_restores_identical")}
        )
    )


if __name__ == "__main__":
    main()
