#!/usr/bin/env python3
"""Benchmark blockvault against partclone + zstd, dd + zstd and the read limit.

Builds (once, cached in ``bench/work/disks``) a GPT disk image with one ext4 partition
about 45 % full of :func:`blockvault_demo.sample.make_tree` data, then in one run, dropping
the page cache before each timed step, measures wall time, CPU time and peak RSS of:

* ``dd`` of the partition to ``/dev/null`` (the read limit);
* ``partclone.ext4 -c | zstd -T0 -3`` and its restore (``zstd -dc | partclone.ext4 -r``);
* ``dd | zstd -T0 -3``;
* ``blockvault backup`` (fresh repository), ``restore``, ``verify --against`` and a second,
  unchanged ``backup``.

Results go to ``bench/work/results-<size>.json`` and ``bench/BENCHMARKS.md``. Needs root
(loop devices, ``drop_caches``). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"
MB = 1_000_000
MiB = 1 << 20
GiB = 1 << 30
RSS_TARGET_MB = 300
ZSTD_LEVEL = 3


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    """One progress line on stderr."""
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """``4G``, ``512M``, ``4GiB`` or a byte count -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 4G or 512M")
    power: int = " kmgt".index(match[2] or " ")
    return int(match[1]) << (10 * power)


def size_label(n: int) -> str:
    """``4G``, ``512M``: the short form used in file names."""
    return f"{n // GiB}G" if n % GiB == 0 else f"{n // MiB}M"


def sh(*argv: str | Path, check: bool = True) -> str:
    """Run a helper command (untimed) and return its stdout."""
    done = subprocess.run(
        [str(a) for a in argv], check=False, capture_output=True, text=True, errors="replace"
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{shlex.join(map(str, argv))} failed: {done.stderr.strip()}")
    return done.stdout


def drop_caches() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def blockvault_exe(commit: str | None) -> list[str]:
    """The installed ``blockvault`` entry point (not the pyenv shim, which costs a bash),
    or ``python -m blockvault`` when a commit's sources are on ``PYTHONPATH``."""
    beside = Path(sys.executable).parent / "blockvault"
    if beside.exists() and commit is None:
        return [str(beside)]
    return [sys.executable, "-m", "blockvault"]


def use_commit(rev: str) -> str:
    """Extract ``src/blockvault`` of ``rev`` into ``bench/work/src-<sha>`` and put it first
    on ``sys.path`` and ``PYTHONPATH`` (ahead of the editable install); returns the sha."""
    sha = sh("git", "-C", ROOT, "rev-parse", "--short", f"{rev}^{{commit}}").strip()
    dest = WORK / f"src-{sha}"
    if not (dest / "src" / "blockvault" / "__init__.py").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", sha, "src/blockvault"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    path = str(dest / "src")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, path)
    return sha


def du_bytes(path: Path) -> int:
    """Apparent size of a file or tree, as ``du -sb``."""
    return int(sh("du", "-sb", path).split()[0])


@contextlib.contextmanager
def loop_device(
    path: Path, offset: int = 0, size: int = 0, *, read_only: bool = False
) -> Iterator[str]:
    """A loop device over ``path`` (a window when ``size``), with direct I/O to the file
    so pages are not cached twice; detached on exit."""
    argv = ["losetup", "--find", "--show", "--direct-io=on", "--offset", str(offset)]
    if size:
        argv += ["--sizelimit", str(size)]
    if read_only:
        argv.append("--read-only")
    device = sh(*argv, path).strip()
    try:
        yield device
    finally:
        sh("losetup", "-d", device, check=False)


# --------------------------------------------------------------------------- timing


@dataclass
class Step:
    """One timed command."""

    name: str
    kind: str  # read | backup | restore | verify
    tool: str  # read-limit | partclone | dd | blockvault
    command: str  # as shown in BENCHMARKS.md
    wall: float = 0.0  # the command itself, seconds
    sync: float = 0.0  # the `sync` right after it (flushing what it wrote)
    user: float = 0.0
    system: float = 0.0
    maxrss: int = 0  # bytes, largest single process of the command
    output: int | None = None  # bytes of the image or repository it wrote
    other_cpu: float = 0.0  # user-space CPU seconds other processes used meanwhile
    other_kernel: float = 0.0  # kernel CPU seconds not charged to the command (workers)
    steal: float = 0.0  # CPU seconds the hypervisor took meanwhile
    round: int = 1
    stdout: str = ""  # where its stdout went
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.wall + self.sync


@dataclass(frozen=True)
class Ticks:
    """System-wide CPU clock ticks since boot (``/proc/stat``)."""

    user: int  # user + nice
    kernel: int  # system + irq + softirq
    steal: int

    @classmethod
    def now(cls) -> Ticks:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        return cls(user + nice, system + irq + softirq, steal)


TICK = os.sysconf("SC_CLK_TCK")


def wait_for_quiet(limit: float, patience: float) -> float:
    """Wait (up to ``patience`` seconds) until user-space CPU use over one second is below
    ``limit`` CPUs; returns the seconds waited. Other sessions share the machine."""
    started = time.monotonic()
    while True:
        before = Ticks.now()
        time.sleep(1.0)
        used = (Ticks.now().user - before.user) / TICK
        waited = time.monotonic() - started
        if used < limit or waited >= patience:
            return waited


class Runner:
    """Runs timed steps; shows paths through short names in the recorded commands.

    Other sessions share the machine, so a step starts only once user-space CPU use is
    below ``quiet_limit`` CPUs, and one during which other processes used more than
    ``disturbed_at`` CPUs on average (user-space time; kernel workers such as loop and
    writeback are not counted) is run again, up to ``attempts`` times in all.
    """

    quiet_limit = 0.15
    disturbed_at = 0.2
    attempts = 3
    patience = 300.0

    def __init__(self, run_dir: Path, names: dict[str, str]) -> None:
        self.logs = run_dir / "logs"
        self.names = names
        self.steps: list[Step] = []
        self.rejected: list[Step] = []
        self.round = 1

    def start_round(self, number: int, round_dir: Path) -> None:
        """Later steps belong to round ``number`` and log into ``round_dir/logs``."""
        self.round = number
        self.logs = round_dir / "logs"
        self.logs.mkdir(parents=True)
        self.names[str(round_dir)] = "$RUN"

    def show(self, text: str) -> str:
        for path, name in sorted(self.names.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(path, name)
        return text

    def timed(
        self,
        name: str,
        kind: str,
        tool: str,
        argv: Sequence[str],
        *,
        shell: bool = False,
        prepare: Callable[[], object] | None = None,
    ) -> Step:
        """Run ``argv`` (a ``bash -c`` script when ``shell``) as a timed step, again when
        disturbed; ``prepare`` (untimed) runs before each attempt."""
        for attempt in range(1, self.attempts + 1):
            if prepare is not None:
                prepare()
            step = self._once(name, kind, tool, argv, shell)
            step.extra["attempt"] = attempt
            limit = self.disturbed_at * step.wall + 0.5
            if step.other_cpu <= limit:
                break
            step.extra["disturbed"] = True
            if attempt < self.attempts:
                log(f"  disturbed (others used {step.other_cpu:.1f} CPU-s): running it again")
                self.rejected.append(step)
        self.steps.append(step)
        return step

    def _once(self, name: str, kind: str, tool: str, argv: Sequence[str], shell: bool) -> Step:
        """Drop caches, wait for a quiet machine, run, then ``sync``."""
        if shell:
            (script,) = argv
            command = ["bash", "-o", "pipefail", "-c", script]
            shown = script
        else:
            command = list(argv)
            shown = shlex.join(command)
        step = Step(name, kind, tool, self.show(shown), round=self.round)
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        err_path = self.logs / f"{slug}.err"
        out_path = self.logs / f"{slug}.out"
        step.stdout = str(out_path)
        drop_caches()
        waited = wait_for_quiet(self.quiet_limit, self.patience)
        if waited > 1.5:
            log(f"waited {waited:.0f}s for the machine to quieten")
        step.extra["waited_for_quiet"] = round(waited, 1)
        log(f"{name}: {step.command}")
        with open(err_path, "wb") as err, open(out_path, "wb") as out:
            before = Ticks.now()
            started = time.monotonic()
            proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            step.wall = time.monotonic() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            after = Ticks.now()
        started = time.monotonic()
        os.sync()
        step.sync = time.monotonic() - started
        step.user, step.system = usage.ru_utime, usage.ru_stime
        step.maxrss = usage.ru_maxrss * 1024
        step.other_cpu = max(0.0, (after.user - before.user) / TICK - usage.ru_utime)
        step.other_kernel = max(0.0, (after.kernel - before.kernel) / TICK - usage.ru_stime)
        step.steal = (after.steal - before.steal) / TICK
        if proc.returncode != 0:
            tail = err_path.read_text(errors="replace").strip().splitlines()[-15:]
            raise RuntimeError(
                f"{name} exited {proc.returncode}: {step.command}\n" + "\n".join(tail)
            )
        log(
            f"  {step.wall:.2f}s (+{step.sync:.2f}s sync), cpu {step.user + step.system:.1f}s, "
            f"rss {step.maxrss / MB:.0f} MB, others {step.other_cpu:.1f}s user "
            f"{step.other_kernel:.1f}s kernel, steal {step.steal:.1f}s"
        )
        return step


# --------------------------------------------------------------------------- the disk


def _classify(rel: str) -> str:
    if rel.startswith(("usr/bin/", "usr/local/bin/")):
        return "binaries (copies of /usr/bin, synthetic ELF-like)"
    if ".so" in rel:
        return "shared libraries"
    if rel.endswith((".jpg", ".deb")):
        return "incompressible (random: photos, packages)"
    if rel.startswith(("var/log/", "home/user/data/", "var/lib/app/prealloc")):
        return "highly compressible (logs, CSV, half-zero preallocated)"
    if rel.startswith("var/lib/app/store.db"):
        return "one large mixed file"
    return "text (copyright files, prose, notes)"


def file_mix(root: Path) -> dict[str, dict[str, int]]:
    """Files and bytes of the tree by kind."""
    mix: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"files": 0, "bytes": 0})
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            entry = mix[_classify(path.relative_to(root).as_posix())]
            entry["files"] += 1
            entry["bytes"] += path.stat().st_size
    return dict(sorted(mix.items(), key=lambda kv: -kv[1]["bytes"]))


def ensure_disk(size: int, fill: float, seed: int, fs: str = "ext4") -> dict[str, Any]:
    """The cached sample disk for these parameters, built when missing; returns its
    metadata (path, partition offset and size, tree summary and file mix). ``fs`` is
    the partition's filesystem (``xfs``: filled through a loop mount, so as root)."""
    from blockvault_demo import sample

    builder = hashlib.sha256(Path(sample.__file__).read_bytes()).hexdigest()[:8]
    key = f"gpt-{fs}-{size_label(size)}-fill{fill:g}-seed{seed}-{builder}"
    disks = WORK / "disks"
    image, meta_path = disks / f"{key}.img", disks / f"{key}.json"
    if image.exists() and meta_path.exists():
        log(f"using cached disk {image.relative_to(ROOT)}")
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        return meta
    disks.mkdir(parents=True, exist_ok=True)
    tree = disks / f"{key}.tree"
    sparse = disks / f"{key}.sparse"
    shutil.rmtree(tree, ignore_errors=True)
    started = time.monotonic()
    log(f"writing a {fill:.0%} tree ({int(size * fill) / GiB:.2f} GiB) into {tree.name}")
    summary = sample.make_tree(tree, int(size * fill), seed=seed)
    mix = file_mix(tree)
    log(f"building the {size_label(size)} GPT disk ({fs})")
    built = sample.build_disk(
        sample.DiskSpec("gpt", size, [sample.PartitionSpec(fs, 0, "root", tree)]), sparse
    )
    shutil.rmtree(tree)
    # Free space on a real disk is media to read, not a hole: write the image densely so
    # dd reads every byte from the device instead of zero-filling holes from memory.
    log("writing the image densely (cp --sparse=never)")
    sh("cp", "--sparse=never", sparse, image)
    sparse.unlink()
    (part,) = built.partitions
    meta = {
        "key": key,
        "path": str(image),
        "size": size,
        "fill": fill,
        "seed": seed,
        "sample_py_sha256": builder,
        "partition": {"number": part.number, "offset": part.offset, "size": part.size},
        "tree": asdict(summary),
        "mix": mix,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def partition_from_sfdisk(image: Path) -> tuple[int, int]:
    """Offset and size in bytes of the first partition, as ``sfdisk --json`` reports them."""
    table = json.loads(sh("sfdisk", "--json", image))["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    first = table["partitions"][0]
    return first["start"] * sector, first["size"] * sector


def ext_usage(device: str) -> dict[str, int]:
    """Block size, block count and used bytes of an ext filesystem (``dumpe2fs -h``)."""
    fields: dict[str, int] = {}
    for line in sh("dumpe2fs", "-h", device).splitlines():
        name, _, value = line.partition(":")
        if name in ("Block count", "Free blocks", "Block size", "Inode count", "Free inodes"):
            fields[name] = int(value.strip())
    block = fields["Block size"]
    return {
        "block_size": block,
        "blocks": fields["Block count"],
        "used_bytes": (fields["Block count"] - fields["Free blocks"]) * block,
        "inodes_used": fields["Inode count"] - fields["Free inodes"],
    }


# --------------------------------------------------------------------------- machine


def first_line(*argv: str) -> str:
    with contextlib.suppress(OSError, RuntimeError):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        text = (done.stdout or done.stderr).strip()
        return text.splitlines()[0].strip() if text else ""
    return ""


def machine_info() -> dict[str, Any]:
    """CPU, RAM, kernel and the device holding ``bench/work``."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    source, fstype = sh("findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", WORK).split()[:2]
    disk = Path(source).name
    rotational = ""
    with contextlib.suppress(OSError):
        rotational = Path(f"/sys/block/{disk}/queue/rotational").read_text().strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "work_device": source,
        "work_fs": fstype,
        "work_device_rotational": rotational,
    }


def versions(commit: str | None) -> dict[str, str]:
    """Tool versions and the blockvault commit (the working tree's HEAD, ``+dirty`` with
    uncommitted changes under ``src``, unless ``commit`` was extracted)."""
    dirty = ""
    if commit is None:
        commit = sh("git", "-C", ROOT, "rev-parse", "--short", "HEAD", check=False).strip()
        dirty = sh("git", "-C", ROOT, "status", "--porcelain", "--", "src", check=False).strip()
    import blake3
    import zstandard

    def version_in(text: str) -> str:
        found = re.search(r"v?(\d+\.\d+(?:\.\d+)?)", text)
        return found[1] if found else text

    return {
        "blockvault": f"{commit}{'+dirty' if dirty else ''}",
        "partclone": version_in(first_line("partclone.ext4", "--version")),
        "zstd": version_in(first_line("zstd", "--version")),
        "coreutils dd": version_in(first_line("dd", "--version")),
        "e2fsprogs": version_in(first_line("mke2fs", "-V")),
        "python-zstandard": f"{zstandard.__version__} (libzstd "
        + ".".join(map(str, zstandard.ZSTD_VERSION))
        + ")",
        "blake3": getattr(blake3, "__version__", "?"),
    }


# --------------------------------------------------------------------------- profiling


def profile(runner: Runner, name: str, argv: list[str], out: Path) -> dict[str, Any]:
    """Sample ``argv`` with ``py-spy record`` (all threads, no idle) and summarise the top
    functions by self and total samples."""
    raw = out.with_suffix(".txt")
    drop_caches()
    wait_for_quiet(Runner.quiet_limit, Runner.patience)
    log(f"profiling {name} with py-spy")
    cmd = ["py-spy", "record", "--rate", "200", "--format", "raw", "-o", str(raw), "--", *argv]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"py-spy on {name} failed: {done.stderr.strip()[-2000:]}")
    self_counts: collections.Counter[str] = collections.Counter()
    total_counts: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [f.replace(str(ROOT) + "/src/", "").replace(sys.prefix + "/", "") for f in frames]
        if any("<frozen importlib" in f for f in frames):
            frames = ["(Python start-up: imports)"]
        self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count
    top = 12
    return {
        "command": runner.show(shlex.join(argv)),
        "wall_under_profiler": round(wall, 2),
        "samples": samples,
        "self": [(f, c) for f, c in self_counts.most_common(top)],
        "total": [(f, c) for f, c in total_counts.most_common(top + 8)],
        "raw": str(raw.relative_to(ROOT)),
    }


# --------------------------------------------------------------------------- the run


@dataclass
class Context:
    """What every round needs: the disk, its partition and the command pieces."""

    disk: Path
    offset: int
    size: int
    part: str  # read-only loop device over the partition
    used: int  # bytes the filesystem uses
    bv: list[str]
    keep: bool

    @property
    def dd_window(self) -> str:
        return (
            f"bs=4M iflag=skip_bytes,count_bytes skip={self.offset} count={self.size} status=none"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build or reuse the disk, run every step ``--repeat`` times, return the results."""
    if os.geteuid() != 0:
        sys.exit("run_bench.py needs root: loop devices and /proc/sys/vm/drop_caches")
    for tool in ("partclone.ext4", "zstd", "dd", "losetup", "sfdisk", "dumpe2fs", "e2fsck"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (apt-get install partclone zstd e2fsprogs fdisk mount)")
    if args.profile and shutil.which("py-spy") is None:
        sys.exit("--profile needs py-spy (pip install py-spy)")

    commit = use_commit(args.commit) if args.commit else None
    meta = ensure_disk(args.size, args.fill, args.seed)
    disk = Path(meta["path"])
    offset, psize = partition_from_sfdisk(disk)
    run_dir = WORK / f"run-{size_label(args.size)}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    bv = blockvault_exe(commit)
    runner = Runner(run_dir, {" ".join(bv): "blockvault", str(disk): "$DISK"})
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "repeat": args.repeat,
        "commit": commit,
        "machine": machine_info(),
        "versions": versions(commit),
        "disk": {**meta, "partition": {**meta["partition"], "offset": offset, "size": psize}},
    }
    with loop_device(disk, offset, psize, read_only=True) as part:
        runner.names[part] = "$PART"
        results["disk"]["ext4"] = ext_usage(part)
        log(f"partition {offset}+{psize} on {part}: {results['disk']['ext4']}")
        used = results["disk"]["ext4"]["used_bytes"]
        ctx = Context(disk, offset, psize, part, used, bv, args.keep)
        for number in range(1, args.repeat + 1):
            log(f"round {number} of {args.repeat}")
            round_dir = run_dir / f"round-{number}"
            runner.start_round(number, round_dir)
            results["partclone_e2fsck"] = one_round(runner, ctx, round_dir)
            if not args.keep:
                shutil.rmtree(round_dir / "out")
    results["rounds"] = [asdict(s) | {"total": s.total} for s in runner.steps]
    results["rejected"] = [asdict(s) | {"total": s.total} for s in runner.rejected]
    results["steps"] = medians(results["rounds"])
    if args.profile:
        save(results, args.size)  # the timed rounds survive a profiler failure
        try:
            results["profiles"] = _profiles(runner, bv, disk, run_dir)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            log(f"profiling failed, results kept without profiles: {exc}")
    return results


def save(results: dict[str, Any], size: int) -> Path:
    """Write ``bench/work/results-<size>.json``; returns its path."""
    path = WORK / f"results-{size_label(size)}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def one_round(runner: Runner, ctx: Context, round_dir: Path) -> dict[str, Any]:
    """Every timed step once; returns the e2fsck result of partclone's restore."""
    out = round_dir / "out"
    out.mkdir()
    logs = runner.logs
    lvl = f"-{ZSTD_LEVEL}"
    disk, part = ctx.disk, ctx.part
    # 1. read limit
    runner.timed(
        "read limit: dd partition > /dev/null",
        "read",
        "read-limit",
        [f"dd if={disk} of=/dev/null {ctx.dd_window}"],
        shell=True,
    )
    runner.timed(
        "read limit: dd loop device > /dev/null",
        "read",
        "read-limit",
        [f"dd if={part} of=/dev/null bs=4M status=none"],
        shell=True,
    )
    # the write limit: as many bytes as the filesystem uses, flushed to the disk
    scratch = out / "write-limit.img"
    runner.timed(
        "write limit: dd zeros > file, fsync",
        "write",
        "write-limit",
        [
            f"dd if=/dev/zero of={scratch} bs=4M count={-(-ctx.used // (4 * MiB))} conv=fsync "
            "status=none"
        ],
        shell=True,
    )
    scratch.unlink()
    # 2. partclone + zstd
    pcl = out / "img.pcl.zst"
    step = runner.timed(
        "partclone.ext4 -c | zstd -T0 -3",
        "backup",
        "partclone",
        [
            f"partclone.ext4 -c -q -L {logs}/partclone-c.log -s {part} -o - "
            f"| zstd -T0 {lvl} -q > {pcl}"
        ],
        shell=True,
    )
    step.output = pcl.stat().st_size
    # 3. its restore, onto a loop device over a fresh sparse file
    target = out / "target-pcl.img"
    with open(target, "wb") as f:
        f.truncate(ctx.size)
    with loop_device(target) as tloop:
        runner.names[tloop] = "$TARGET_LOOP"
        runner.timed(
            "zstd -dc | partclone.ext4 -r",
            "restore",
            "partclone",
            [f"zstd -dc -q {pcl} | partclone.ext4 -r -q -L {logs}/partclone-r.log -s - -o {tloop}"],
            shell=True,
        )
        fsck = subprocess.run(["e2fsck", "-fn", tloop], capture_output=True, text=True)
        del runner.names[tloop]
    log(f"  e2fsck -fn on the partclone restore: exit {fsck.returncode}")
    if fsck.returncode != 0:
        raise RuntimeError(f"e2fsck -fn failed on the partclone restore:\n{fsck.stdout}")
    target.unlink()
    # 4. dd + zstd
    ddz = out / "img.dd.zst"
    step = runner.timed(
        "dd | zstd -T0 -3",
        "backup",
        "dd",
        [f"dd if={disk} {ctx.dd_window} | zstd -T0 {lvl} -q > {ddz}"],
        shell=True,
    )
    step.output = ddz.stat().st_size
    # 5. blockvault backup into a fresh repository
    repo = out / "repo"

    def fresh_repo() -> None:
        shutil.rmtree(repo, ignore_errors=True)
        sh(*ctx.bv, "-r", repo, "init", "--compression", f"zstd:{ZSTD_LEVEL}")

    step = runner.timed(
        "blockvault backup (fresh repository)",
        "backup",
        "blockvault",
        [*ctx.bv, "-r", str(repo), "backup", "--json", str(disk)],
        prepare=fresh_repo,
    )
    step.output = du_bytes(repo)
    step.extra["snapshot_stats"] = _snapshot_stats(step.stdout)
    # 6. restore to a new file, then verify it against the snapshot
    restored = out / "restored.img"
    runner.timed(
        "blockvault restore (to a new file)",
        "restore",
        "blockvault",
        [*ctx.bv, "-r", str(repo), "restore", "--json", "latest", str(restored)],
        prepare=lambda: restored.unlink(missing_ok=True),
    )
    runner.timed(
        "blockvault verify --against the restored file",
        "verify",
        "blockvault",
        [*ctx.bv, "-r", str(repo), "verify", "latest", "--against", str(restored)],
    )
    restored.unlink()
    # 7. a second, unchanged backup
    step = runner.timed(
        "blockvault backup (again, unchanged)",
        "backup",
        "blockvault",
        [*ctx.bv, "-r", str(repo), "backup", "--json", str(disk)],
    )
    step.output = du_bytes(repo)
    step.extra["snapshot_stats"] = _snapshot_stats(step.stdout)
    return {"exit": fsck.returncode, "tail": fsck.stdout.strip().splitlines()[-1:]}


def medians(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step, the round with the median total time, plus the range over rounds."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for step in rounds:
        by_name.setdefault(step["name"], []).append(step)
    out = []
    for runs in by_name.values():
        ordered = sorted(runs, key=lambda s: s["total"])
        chosen = dict(ordered[(len(ordered) - 1) // 2])
        chosen["min_total"], chosen["max_total"] = ordered[0]["total"], ordered[-1]["total"]
        chosen["max_maxrss"] = max(s["maxrss"] for s in runs)
        out.append(chosen)
    return out


def _snapshot_stats(path: str) -> dict[str, Any]:
    with contextlib.suppress(ValueError, OSError):
        stats: dict[str, Any] = json.loads(Path(path).read_text()).get("stats", {})
        return stats
    return {}


def _profiles(runner: Runner, bv: list[str], disk: Path, run_dir: Path) -> dict[str, Any]:
    prof = run_dir / "profile"
    prof.mkdir()
    runner.names[str(prof)] = "$PROF"
    repo = prof / "repo"
    sh(*bv, "-r", repo, "init", "--compression", f"zstd:{ZSTD_LEVEL}")
    out = {
        "backup": profile(
            runner, "backup", [*bv, "-r", str(repo), "backup", str(disk)], prof / "backup"
        )
    }
    restored = prof / "restored.img"
    out["restore"] = profile(
        runner,
        "restore",
        [*bv, "-r", str(repo), "restore", "latest", str(restored)],
        prof / "restore",
    )
    restored.unlink()
    shutil.rmtree(repo)
    return out


# --------------------------------------------------------------------------- report


def _find(steps: list[dict[str, Any]], tool: str, kind: str, first: bool = True) -> dict[str, Any]:
    found = [s for s in steps if s["tool"] == tool and s["kind"] == kind]
    return found[0] if first else found[-1]


def ratios(results: dict[str, Any], steps: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """The issue's targets as ratios (<= 1 meets the target), from the median steps or
    from the steps of one round."""
    steps = steps if steps is not None else results["steps"]
    pc_b, pc_r = _find(steps, "partclone", "backup"), _find(steps, "partclone", "restore")
    bv_b, bv_r = _find(steps, "blockvault", "backup"), _find(steps, "blockvault", "restore")
    peak = max(s.get("max_maxrss", s["maxrss"]) for s in steps if s["tool"] == "blockvault")
    return {
        "backup_time": bv_b["total"] / pc_b["total"],
        "backup_time_command_only": bv_b["wall"] / pc_b["wall"],
        "size": bv_b["output"] / pc_b["output"],
        "restore_time": bv_r["total"] / pc_r["total"],
        "restore_time_command_only": bv_r["wall"] / pc_r["wall"],
        "peak_rss": peak / (RSS_TARGET_MB * MB),
    }


def round_ratios(results: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Each ratio's range over the rounds, each round compared with itself."""
    rounds = sorted({s["round"] for s in results["rounds"]})
    per = [ratios(results, [s for s in results["rounds"] if s["round"] == n]) for n in rounds]
    return {k: (min(r[k] for r in per), max(r[k] for r in per)) for k in per[0]}


def _mb(n: float | None, digits: int = 0) -> str:
    return "" if n is None else f"{n / MB:,.{digits}f}"


def _verdict(ratio: float) -> str:
    return "**meets**" if ratio <= 1.0 else "**misses**"


def render(results: dict[str, Any]) -> str:
    """BENCHMARKS.md from one results dictionary."""
    m, v, d = results["machine"], results["versions"], results["disk"]
    ext = d["ext4"]
    used = ext["used_bytes"]
    steps = results["steps"]
    r, spread = ratios(results), round_ratios(results)
    repeat = results.get("repeat", 1)
    pc_b, pc_r = _find(steps, "partclone", "backup"), _find(steps, "partclone", "restore")
    bv_b, bv_r = _find(steps, "blockvault", "backup"), _find(steps, "blockvault", "restore")
    bv_i = _find(steps, "blockvault", "backup", first=False)
    dd_z = _find(steps, "dd", "backup")
    peak = max(s["max_maxrss"] for s in steps if s["tool"] == "blockvault")
    pc_peak = max(s["max_maxrss"] for s in steps if s["tool"] == "partclone")
    label = size_label(d["size"])
    out: list[str] = []
    add = out.append
    add("# Benchmarks\n")
    add(
        f"Measured {results['date']} with `python bench/run_bench.py --size {label} "
        f"--fill {d['fill']:g} --repeat {repeat}"
        + (" --profile" if "profiles" in results else "")
        + (f" --commit {results['commit']}" if results.get("commit") else "")
        + "` (see [README.md](README.md)); raw numbers, every round included, in "
        f"`bench/work/results-{label}.json`. Each of the {repeat} rounds runs every step once, "
        "in the order of the table; every timed step starts with "
        "`sync; echo 3 > /proc/sys/vm/drop_caches`. The tables show, per step, the round "
        "with the median time.\n"
    )
    add("## Machine\n")
    add(f"* {m['nproc']} vCPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}")
    add(
        f"* work disk: `{m['work_device']}` (a virtual disk; the kernel's `queue/rotational` "
        f"says {m['work_device_rotational']}), {m['work_fs']}. The sample disk is a regular "
        "file there. The guest's page cache is dropped before each step, but the host may "
        "cache the virtual disk: these are not cold-media numbers"
    )
    add(
        "* partclone reads the partition through a loop device "
        "(`losetup --direct-io=on --offset --sizelimit --read-only`) and restores onto one; "
        "dd and blockvault read the image file, blockvault restores to a new file"
    )
    add(f"* Python {m['python']}; " + ", ".join(f"{k} {val}" for k, val in v.items()) + "\n")
    add("## Dataset\n")
    add(
        f"* {d['size'] / GiB:g} GiB GPT disk image, one ext4 partition of "
        f"{d['partition']['size'] / MB:,.0f} MB at offset {d['partition']['offset']}, built by "
        "`blockvault_demo.sample.build_disk` (`mkfs.ext4 -d`) from `make_tree(size="
        f"{d['fill']:g} × disk size, seed={d['seed']})`, then written densely (free space is "
        "zeros on the disk, not holes in the file)"
    )
    add(
        f"* ext4 used: {used / MB:,.0f} MB ({used / d['partition']['size']:.1%} of the "
        f"partition), {ext['inodes_used']:,} inodes, {ext['block_size']}-byte blocks"
    )
    t = d["tree"]
    add(
        f"* tree: {t['files']:,} files, {t['directories']:,} directories, {t['symlinks']} "
        f"symlinks, {t['bytes'] / MB:,.0f} MB of file data:\n"
    )
    add("| kind | files | MB |")
    add("|---|---:|---:|")
    for kind, entry in d["mix"].items():
        add(f"| {kind} | {entry['files']:,} | {entry['bytes'] / MB:,.0f} |")
    add(
        f"\nzstd -3 makes the whole partition {_mb(dd_z['output'])} MB and partclone's image "
        f"of the used blocks {_mb(pc_b['output'])} MB ({pc_b['output'] / used:.0%} of the used "
        "bytes): the free space of a freshly made filesystem is zeros, so dd + zstd loses "
        "nothing here; on a disk whose free space holds deleted data it would.\n"
    )
    add("## Results\n")
    add(
        f"MB = 10^6 bytes. *wall* is the command; *+sync* the `sync` right after it (data it "
        "left dirty in the page cache); *range* is the fastest and slowest round of wall + "
        f"sync. *used MB/s* is ext4's used bytes ({used / MB:,.0f} MB) over wall + sync, "
        "whatever the tool reads (dd reads the whole partition). *CPU* is user + system of "
        "the command's processes (the median round's); *others' CPU* the user-space CPU "
        "other processes used meanwhile: other sessions share this VM, so each step waits "
        f"for a quiet machine and is run again (up to {Runner.attempts} attempts in all) "
        f"when others used more than {Runner.disturbed_at} CPUs during it "
        f"({len(results.get('rejected', []))} attempts were discarded this way; a step still "
        "disturbed on its last attempt is marked †). *peak RSS* is the largest single "
        "process (of a pipeline, its largest member), the largest over the rounds.\n"
    )
    add(
        "| step | wall s | +sync s | range s | used MB/s | CPU s | others' CPU s "
        "| peak RSS MB | output MB |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in steps:
        name = s["name"].replace("|", "\\|")
        if any(
            r.get("extra", {}).get("disturbed") and r["name"] == s["name"]
            for r in results["rounds"]
        ):
            name += " †"
        add(
            f"| {name} | {s['wall']:.2f} | {s['sync']:.2f} "
            f"| {s['min_total']:.1f}–{s['max_total']:.1f} | {used / MB / s['total']:,.0f} "
            f"| {s['user'] + s['system']:.1f} | {s['other_cpu']:.1f} "
            f"| {s['max_maxrss'] / MB:.0f} | {_mb(s['output'])} |"
        )
    stats = bv_b.get("extra", {}).get("snapshot_stats", {})
    again = bv_i.get("extra", {}).get("snapshot_stats", {})
    add(
        f"\nblockvault's *output* is `du -sb` of the repository (chunks, index, manifest, "
        f"config). The first backup read {_mb(stats.get('read_bytes'))} MB and stored "
        f"{stats.get('new_chunks', '?')} chunks ({_mb(stats.get('new_bytes'))} MB "
        f"of non-zero chunk data, {_mb(stats.get('stored_bytes'))} MB stored); the unchanged "
        f"second backup read {_mb(again.get('read_bytes'))} MB and added "
        f"{again.get('new_chunks', '?')} chunks. In every round `e2fsck -fn` passed on "
        "partclone's restore and `blockvault verify latest --against` (exit 0) on "
        "blockvault's.\n"
    )
    add("## Against the targets\n")
    add(
        f"Ratios of the median times; *per-round range* compares blockvault and partclone "
        f"within each of the {repeat} rounds.\n"
    )
    add("| target | blockvault | partclone + zstd -3 | ratio | per-round range | |")
    add("|---|---:|---:|---:|---:|---|")

    def row(target: str, ours: str, theirs: str, key: str, digits: int = 2) -> None:
        low, high = spread[key]
        add(
            f"| {target} | {ours} | {theirs} | {r[key]:.{digits}f} "
            f"| {low:.{digits}f}–{high:.{digits}f} | {_verdict(r[key])} |"
        )

    row(
        "backup wall time ≤ partclone+zstd's",
        f"{bv_b['total']:.1f} s",
        f"{pc_b['total']:.1f} s",
        "backup_time",
    )
    row(
        "image no larger",
        f"{_mb(bv_b['output'], 1)} MB",
        f"{_mb(pc_b['output'], 1)} MB",
        "size",
        4,
    )
    row(
        "restore wall time ≤ partclone's",
        f"{bv_r['total']:.1f} s",
        f"{pc_r['total']:.1f} s",
        "restore_time",
    )
    row(
        f"peak memory < {RSS_TARGET_MB} MB",
        f"{peak / MB:.0f} MB",
        f"{pc_peak / MB:.0f} MB",
        "peak_rss",
    )
    reads = [s for s in steps if s["tool"] == "read-limit"]
    add(
        f"\nWithout the final sync the ratios are {r['backup_time_command_only']:.2f} (backup) "
        f"and {r['restore_time_command_only']:.2f} (restore). For context: reading the whole "
        "partition takes "
        + " and ".join(
            f"{s['wall']:.1f} s ({d['partition']['size'] / MB / s['wall']:,.0f} MB/s) "
            + ("from the loop device" if "loop" in s["name"] else "from the image file")
            for s in reads
        )
        + ", writing as many bytes as ext4 uses (zeros, then fsync) "
        + " ".join(
            f"{s['total']:.1f} s ({used / MB / s['total']:,.0f} MB/s)"
            for s in steps
            if s["tool"] == "write-limit"
        )
        + f", dd + zstd {dd_z['total']:.1f} s; blockvault's unchanged second backup takes "
        f"{bv_i['total']:.1f} s.\n"
    )
    add("## What limits it\n")
    add(results.get("analysis") or "_(not written yet)_")
    add("")
    if "profiles" in results:
        add("## Profiles\n")
        add(
            "`py-spy record --rate 200 --format raw` (every thread, idle samples left out) of "
            "one more backup into a fresh repository and of its restore, after dropping the "
            "page cache. Frames are `function (file)`; time in C (zstd, BLAKE3, `pread`, "
            "`write`, `fsync`) counts in the Python frame that calls it.\n"
        )
        for what, p in results["profiles"].items():
            add(f"### {what}: `{p['command']}`\n")
            add(f"{p['samples']:,} samples, {p['wall_under_profiler']:.1f} s under py-spy.\n")
            add("| self % | function |")
            add("|---:|---|")
            for frame, count in p["self"][:10]:
                add(f"| {100 * count / p['samples']:.1f} | `{frame}` |")
            add("")
    add("## Commands\n")
    add(
        "`$DISK` is the cached disk image, `$PART` a read-only loop device over its ext4 "
        "partition, `$TARGET_LOOP` a loop device over a fresh sparse file of the partition's "
        f"size, `$RUN` the round's directory (`bench/work/run-{label}/round-N`). Each round's "
        f"repository is made with `blockvault -r $RUN/out/repo init --compression "
        f"zstd:{ZSTD_LEVEL}` (4 MiB chunks).\n"
    )
    add("```sh")
    for s in steps:
        add(f"# {s['name']}")
        add(s["command"])
    add("```\n")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run the benchmark, or re-render a results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=4 * GiB, help="disk size (4G)")
    parser.add_argument("--fill", type=float, default=0.45, help="file data / disk size (0.45)")
    parser.add_argument("--seed", type=int, default=0, help="make_tree seed (0)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every step (3)")
    parser.add_argument("--profile", action="store_true", help="also py-spy backup and restore")
    parser.add_argument(
        "--commit",
        metavar="REV",
        help="benchmark blockvault as of this commit (default: the working tree)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the images and repository")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS.json",
        help="only re-render BENCHMARKS.md from a results file",
    )
    parser.add_argument(
        "--output", type=Path, default=BENCH / "BENCHMARKS.md", help="where to write the report"
    )
    parser.add_argument(
        "--analysis",
        type=Path,
        metavar="NOTES.md",
        help="with --render: store this text as the 'what limits it' section",
    )
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        if args.analysis:
            results["analysis"] = args.analysis.read_text().strip()
            args.render.write_text(json.dumps(results, indent=1) + "\n")
    else:
        results = run(args)
        out_json = save(results, args.size)
        log(f"results in {out_json.relative_to(ROOT)}")
    args.output.write_text(render(results))
    for name, value in ratios(results).items():
        log(f"ratio {name}: {value:.3f}")
    log(f"report in {args.output}")


if __name__ == "__main__":
    main()
