"""Multicast deployment: blockvault cast against udpcast carrying partclone+zstd.

On a bridge in its own network namespace, one sender and 1, 3 and 6 receivers
(each in a namespace, joined over veth pairs) get the cached benchmark disk of
``run_bench.py``. blockvault sends the snapshot from a repository; udpcast's
``udp-sender`` sends a ``partclone.ext4 -c | zstd -3`` image that each receiver
pipes through ``zstd -dc | partclone.ext4 -r`` onto its target, as Clonezilla does.
Each case is timed from the start of every process to the last exit, page cache
dropped before; ``/usr/bin/time`` records each process's CPU seconds and peak RSS
(a receiver's pipeline counted whole), since on a small shared machine CPU per
receiver is what scales with the number of receivers. The 1 % case drops UDP with
nftables on one receiver. ``--mtu 9000`` runs every link with jumbo frames.

    sudo python3 bench/cast_bench.py [--size 4G] [--receivers 1,3,6] [--mtu 9000]

Casts are authenticated (protocol 3): each case writes a fresh session code to
bench/work/cast/code and both sides take ``--key-file``.

Results: bench/work/cast/results.json (results-mtu9000.json for jumbo frames),
summarised by hand in BENCHMARKS.md. The snapshot is made once, again when the
default chunk size changes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from run_bench import WORK, drop_caches, ensure_disk, log, machine_info, parse_size

from blockvault.deploy.auth import new_code
from blockvault.repo.format import DEFAULT_CHUNK_SIZE
from blockvault_demo.netns import Bridge, bridge

CAST = WORK / "cast"
LIMIT = 1800  # seconds one case may take
TIME = ["/usr/bin/time", "-f", "%U %S %M", "-o"]  # user s, system s, peak RSS KiB


def sh(*argv: str | Path, input: str | None = None) -> str:
    return subprocess.run(
        [str(a) for a in argv], check=True, capture_output=True, text=True, input=input
    ).stdout


class CaseFailed(Exception):
    """One process of a case exited non-zero (udpcast's receiver sometimes ends early)."""


def run_case(commands: list[tuple[str, str]]) -> tuple[float, list[dict[str, float]]]:
    """Start every (namespace, shell command) at once; seconds until the last exits,
    and each command's CPU seconds (user + system, its children included) and peak
    RSS, from ``/usr/bin/time``. The sender is the last command."""
    drop_caches()
    stats = [CAST / f"time-{i}.txt" for i in range(len(commands))]
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", ns, *TIME, str(out), "sh", "-c", cmd],
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # one process group per command, pipelines included
        )
        for (ns, cmd), out in zip(commands, stats, strict=True)
    ]
    for proc, (_, cmd) in zip(procs, commands, strict=True):
        if proc.wait(timeout=LIMIT) != 0:
            for other in procs:  # leave nothing running behind (a pipeline's every part)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(other.pid, signal.SIGKILL)
            raise CaseFailed(f"failed ({proc.returncode}): {cmd}")
    seconds = round(time.monotonic() - start, 2)
    usage = []
    for out in stats:
        user, system, rss = out.read_text().split()[-3:]
        usage.append({"cpu_s": round(float(user) + float(system), 2), "rss_mib": int(rss) // 1024})
    return seconds, usage


def blockvault_case(
    net: Bridge, repo: Path, snap: str, targets: list[Path], rate: str
) -> list[tuple[str, str]]:
    """Sender and receivers share a fresh session code in a key file (protocol 3)."""
    code = CAST / "code"
    code.write_text(new_code() + "\n")
    session = f"--interface cast0 --session bench --key-file {code}"
    receive = [
        (ns, f"blockvault cast receive {t} {session} --max-wait 60")
        for ns, t in zip(net.receivers, targets, strict=False)
    ]
    send = (
        f"blockvault -r {repo} cast send {snap} {session} "
        f"--min-receivers {len(targets)} --max-wait 60{rate and f' --max-rate {rate}'} "
        f"--json > {CAST}/send-report.json"
    )
    return [*receive, (net.sender, send)]


def udpcast_case(
    net: Bridge, image: Path, part_size: int, targets: list[Path], rate: str
) -> list[tuple[str, str]]:
    receive = [
        (
            ns,
            f"truncate -s {part_size} {t} && udp-receiver --interface cast0 --nokbd "
            f"--no-progress 2>/dev/null | zstd -dcq | partclone.ext4 -r -q -s - -O {t} "
            f"-L {CAST}/partclone-{i}.log",
        )
        for i, (ns, t) in enumerate(zip(net.receivers, targets, strict=False))
    ]
    send = (
        f"udp-sender --file {image} --interface cast0 --nokbd --no-progress "
        f"--min-receivers {len(targets)} --max-wait 60{rate and f' --max-bitrate {rate}m'} "
        "2>/dev/null"
    )
    return [*receive, (net.sender, send)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4G")
    parser.add_argument("--fill", type=float, default=0.45)
    parser.add_argument("--receivers", default="1,3,6")
    parser.add_argument("--loss-receivers", type=int, default=3)
    parser.add_argument("--tools", default="blockvault,udpcast")
    parser.add_argument("--mtu", type=int, default=1500, help="MTU of every link (9000: jumbo)")
    parser.add_argument("--no-loss-case", action="store_true", help="skip the 1 %% loss case")
    parser.add_argument(
        "--max-rate",
        default="",
        metavar="MBIT",
        help="cap both senders (a network slower than the machine; default: their own)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("cast_bench.py needs root: network namespaces and drop_caches")
    disk = ensure_disk(parse_size(args.size), args.fill, 0)
    CAST.mkdir(parents=True, exist_ok=True)
    repo = CAST / "repo"
    config = repo / "config"
    if config.exists() and json.loads(config.read_text())["chunk_size"] != DEFAULT_CHUNK_SIZE:
        (CAST / "snapshot").unlink(missing_ok=True)  # made before the default chunk size changed
    if not (CAST / "snapshot").exists():
        subprocess.run(["rm", "-rf", str(repo)], check=True)
        sh("blockvault", "-r", repo, "init")
        out = json.loads(sh("blockvault", "-r", repo, "backup", disk["path"], "--json"))
        (CAST / "snapshot").write_text(out["id"])
    snap = (CAST / "snapshot").read_text().strip()
    part = disk["partition"]
    image = CAST / "partclone.zst"
    if not image.exists():
        log("partclone + zstd image")
        dev = sh(
            "losetup",
            "-f",
            "--show",
            "-o",
            str(part["offset"]),
            "--sizelimit",
            str(part["size"]),
            "-r",
            disk["path"],
        ).strip()
        try:
            subprocess.run(
                f"partclone.ext4 -c -q -s {dev} -o - | zstd -T0 -3 -q > {image}",
                shell=True,
                check=True,
            )
        finally:
            sh("losetup", "-d", dev)
    cases = [(int(n), 0) for n in args.receivers.split(",")]
    if not args.no_loss_case:
        cases.append((args.loss_receivers, 1))
    results: list[dict[str, Any]] = []
    results_name = "results" + (f"-mtu{args.mtu}" if args.mtu != 1500 else "")
    results_name += (f"-{args.max_rate}mbit" if args.max_rate else "") + ".json"
    for receivers, loss in cases:
        for tool in args.tools.split(","):
            with bridge(Bridge, [args.mtu] * (receivers + 1), subnet="10.78.0") as net:
                if loss:
                    net.lose(net.receivers[-1], loss)
                targets = [CAST / f"target{i}.img" for i in range(receivers)]
                for t in targets:
                    t.unlink(missing_ok=True)
                if tool == "blockvault":
                    commands = blockvault_case(net, repo, snap, targets, args.max_rate)
                else:
                    commands = udpcast_case(net, image, part["size"], targets, args.max_rate)
                try:
                    seconds, usage = run_case(commands)
                except CaseFailed as exc:  # recorded, and the other cases still run
                    log(str(exc))
                    failed = {"tool": tool, "receivers": receivers, "loss_percent": loss}
                    results.append({**failed, "failed": str(exc)})
                    continue
                finally:
                    for t in targets:
                        t.unlink(missing_ok=True)
            receiving = usage[:-1]
            row = {
                "tool": tool,
                "receivers": receivers,
                "loss_percent": loss,
                "mtu": args.mtu,
                "max_rate_mbit": args.max_rate or None,
                "seconds": seconds,
                "receiver_cpu_s": round(sum(u["cpu_s"] for u in receiving) / len(receiving), 2),
                "receiver_rss_mib": max(u["rss_mib"] for u in receiving),
                "sender_cpu_s": usage[-1]["cpu_s"],
                "load_average": round(os.getloadavg()[0], 2),
            }
            if tool == "blockvault":  # how many passes, and how much they carried again
                report = json.loads((CAST / "send-report.json").read_text())
                row["passes"] = report["passes"]
                row["chunks_sent_again"] = sum(p["chunks"] for p in report["pass_reports"][1:])
            log(json.dumps(row))
            results.append(row)
            (CAST / results_name).write_text(
                json.dumps({"machine": machine_info(), "disk": disk, "results": results}, indent=1)
            )


if __name__ == "__main__":
    main()
