"""Network boot: power-on to restore start over PXE, and a 3-machine PXE + multicast
deployment against deploying the same three machines one after another.

The lab of ``blockvault_demo.pxelab`` (namespaces, the lab's own DHCP server,
``blockvault pxe serve --action cast``): three BIOS VMs with blank disks, the
bootable BIOS sample disk of ``blockvault_demo.sample_boot`` backed up and cast.

* **together**: the three power on at once, ``cast send --min-receivers 3`` serves
  them in one session;
* **one after another**: each machine powers on alone and gets its own one-receiver
  cast; the next starts when the previous one runs its restored system.

Per machine the serial console gives: power-on -> ``BLOCKVAULT-RESCUE-START`` (the
restore starts), -> ``BLOCKVAULT-RESCUE-OK``, -> the restored system's OK line. Each
case's wall time runs from the first power-on to the last restored system up.
Clonezilla Live (its PXE + udpcast) is not runnable here offline, so the comparison
is with one-by-one deployment. VMs run under TCG: on a shared machine these are upper
bounds; the load average is recorded.

Results: bench/work/pxe-results.json. Needs root::

    sudo python3 bench/pxe_bench.py [--iso rescue.iso] [--machines 3] [--alone]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from blockvault_demo.pxelab import START, Machine, pxe_lab
from blockvault_demo.sample_boot import BootDisk, build_boot_disk

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "work"
TIMEOUT = 3600.0


def blockvault(*args: str | Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "blockvault", *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def blank_machines(work: Path, sample: BootDisk, count: int, tag: str) -> list[Machine]:
    machines = []
    for i in range(count):
        disk = work / f"{tag}{i}.img"
        with open(disk, "wb") as file:
            file.truncate(2 * sample.size)
        machines.append(
            Machine(f"{tag}{i}", "bios", f"52:54:00:78:00:{i + 1:02x}", disk, sample.token)
        )
    return machines


def in_background(
    send: Callable[..., subprocess.CompletedProcess[str]], *args: Any, **kwargs: Any
) -> Future[subprocess.CompletedProcess[str]]:
    """``cast send`` blocks until its receivers are done: run it beside the console watch."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(send, *args, **kwargs)
    pool.shutdown(wait=False)
    return future


def case(machines: list[Machine], wall: float) -> dict[str, Any]:
    for m in machines:
        if not m.done:
            raise SystemExit(f"a machine did not boot its restored system: {m.summary()}")
    return {
        "wall_seconds": round(wall, 1),
        "machines": {
            m.name: {k.split()[0]: round(s, 1) for k, s in m.seen.items()} for m in machines
        },
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iso", type=Path, help="a rescue ISO (default: build one)")
    parser.add_argument("--machines", type=int, default=3)
    parser.add_argument("--alone", action="store_true", help="also deploy them one by one")
    options = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pxe-", dir=WORK) as tmp:
        work = Path(tmp)
        iso = options.iso
        if iso is None:
            iso = work / "rescue.iso"
            blockvault("rescue", "build", iso)
        sample = build_boot_disk("bios", work / "sample.img")
        repo, code = work / "repo", work / "cast.code"
        blockvault("-r", repo, "init")
        snapshot = blockvault("-r", repo, "backup", sample.path).split()[-1]
        code.write_text(blockvault("cast", "code"))
        results: dict[str, Any] = {"load_average_before": os.getloadavg()}
        with pxe_lab(work, iso, ["--action", "cast", "--cast-key-file", str(code)]) as lab:
            together = blank_machines(work, sample, options.machines, "together")
            started = time.monotonic()
            for machine in together:
                lab.power_on(machine)
            sent = in_background(lab.cast_send, repo, snapshot, code, receivers=len(together))
            lab.watch(together, TIMEOUT)  # meanwhile: the consoles are read as they grow
            results["together"] = case(together, time.monotonic() - started)
            results["together"]["cast_send_exit"] = sent.result().returncode
            print(json.dumps(results["together"], indent=2), flush=True)
            if options.alone:
                alone = blank_machines(work, sample, options.machines, "alone")
                started = time.monotonic()
                for machine in alone:
                    lab.power_on(machine)
                    sent = in_background(lab.cast_send, repo, snapshot, code, receivers=1)
                    lab.watch([machine], TIMEOUT)
                    sent.result()
                results["one_after_another"] = case(alone, time.monotonic() - started)
        first = [m.seen[START] for m in together]
        results["power_on_to_restore_start_seconds"] = {"min": min(first), "max": max(first)}
    out = WORK / "pxe-results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
