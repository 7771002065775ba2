"""Rescue ISO build: cold (empty cache) and cached, and the ISO's size.

Three builds of ``blockvault rescue build``, each timed from the command's start to
its exit:

* **cold**: an empty cache folder: mmdebstrap downloads and installs the Debian root,
  mksquashfs packs it, pip fetches blockvault's dependencies;
* **after a blockvault change**: the same cache, with a changed wheel (a different
  ``SOURCE_DATE_EPOCH`` dates the wheel's files, so its hash and the layer's key
  change): the base is reused, the blockvault layer rebuilt;
* **cached**: nothing changed: both squashfs images reused, only the ISO written;
* **again**: the cached build once more, whose ISO must be the same bytes (its
  SHA-256 is compared with the cached one's: the build is reproducible).

Results go to ``bench/work/rescue-results.json``. Needs root and the network::

    sudo python3 bench/rescue_bench.py [--cache DIR] [--keep-cache]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SRC = BENCH.parent / "src"


def timed_build(iso: Path, cache: Path, epoch: int) -> tuple[float, int, str]:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "blockvault", "rescue", "build", str(iso), "--cache", str(cache)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC), "SOURCE_DATE_EPOCH": str(epoch)},
    )
    seconds = time.monotonic() - started
    return seconds, iso.stat().st_size, hashlib.sha256(iso.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="a cache folder (default: a new one)")
    parser.add_argument("--keep-cache", action="store_true")
    options = parser.parse_args()
    work = BENCH / "work"
    work.mkdir(exist_ok=True)
    cache = options.cache or Path(tempfile.mkdtemp(prefix="rescue-cache-", dir=work))
    iso = work / "rescue-bench.iso"
    results = {}
    for name, epoch in (
        ("cold", 1_700_000_000),
        ("changed", 1_700_000_001),
        ("cached", 1_700_000_001),
        ("again", 1_700_000_001),
    ):
        seconds, size, digest = timed_build(iso, cache, epoch)
        results[name] = {"seconds": round(seconds, 1), "bytes": size, "sha256": digest}
        print(f"{name}: {seconds:.1f} s, {size} bytes, sha256 {digest}", flush=True)
    if results["again"]["sha256"] != results["cached"]["sha256"]:
        sys.exit("the same inputs built two different ISOs: not reproducible")
    (work / "rescue-results.json").write_text(json.dumps(results, indent=2) + "\n")
    iso.unlink()
    if not options.keep_cache and options.cache is None:
        shutil.rmtree(cache)


if __name__ == "__main__":
    main()
