#!/usr/bin/env python3
"""File backup against restic and borg on the same tree, in one run.

Builds (once, cached in ``bench/work/files-tree-<files>-<size>-<seed>``) a tree of
``--files`` files and about ``--size`` bytes of mixed data, every file's content a
function of (seed, its number), so a run can put the tree back after changing it:

* source code (``.py``/``.c``, small, text from a 256-token vocabulary: zstd ~4x);
* documents (``.md``/``.txt``, larger prose-like text);
* media (``.jpg``/``.mp4``, random bytes: incompressible, most of the bytes);
* sparse disk images (``.img``: a few MiB of data in a file with large holes);
* hard links (about 1 % of the source files have a second name elsewhere);
* a few empty files and deep directories.

Then for each tool (blockvault, restic, borg; encrypted repositories for all three
because restic cannot do without: blockvault ``repokey`` AES-256-GCM, restic's
AES-256-CTR + Poly1305, borg ``repokey-blake2`` AES-256-CTR + BLAKE2b; zstd level 3
where it can be chosen: blockvault ``zstd:3``, borg ``zstd,3``, restic ``auto`` = its
default zstd level), each step timed after ``sync; echo 3 > drop_caches`` and a quiet
machine (``run_bench.Runner``): first backup; second backup, nothing changed; backup
after ``--change`` of the files changed (rewritten in part), added and removed; full
restore of that last snapshot into an empty directory; restore of one file. Reports
wall time, bytes added to the repository (``du -sb``), peak RSS (``wait4``'s
``ru_maxrss``: the same number ``/usr/bin/time -v`` prints) and ratios.

``--empty N`` adds a tree of N empty files (cached too): first backup, then the timed
walk of an unchanged incremental. ``--profile`` samples blockvault's first and
unchanged backups with py-spy. Results go to
``bench/work/files-results-<files>-<time>.json`` (``--report`` merges several) and
Markdown tables on stdout. Root.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run_bench import (  # noqa: E402
    MB,
    WORK,
    Runner,
    Step,
    blockvault_exe,
    du_bytes,
    first_line,
    log,
    machine_info,
    parse_size,
    profile,
)

TOOLS = ("blockvault", "restic", "borg")
PASSWORD = "blockvault-bench"
STAMP = ".complete"
CHANGED = ".changed"  # the change set applied, so the next run puts it back first

# Kinds: (share of files, share of bytes, extension). Shares of bytes decide each kind's
# mean size; sizes vary +-75 % around it, deterministically.
KINDS: dict[str, tuple[float, float, str]] = {
    "source": (0.70, 0.12, ".py"),
    "header": (0.08, 0.02, ".c"),
    "document": (0.17, 0.18, ".md"),
    "media": (0.01, 0.62, ".jpg"),
    "sparse": (0.0002, 0.06, ".img"),
    "empty": (0.0398, 0.0, ".lock"),
}
SPARSE_SPAN = 16  # a sparse file's apparent size is this many times its data
LINK_EVERY = 97  # every 97th source file gets a second name (hard link)
FILES_PER_DIR = 100


def _vocabulary() -> list[bytes]:
    """256 tokens that look like code and prose (keywords, names, punctuation, newlines)."""
    rng = random.Random(1)
    words = [
        b"def", b"return", b"if", b"else", b"for", b"in", b"import", b"self", b"None",
        b"the", b"of", b"and", b"to", b"a", b"is", b"that", b"with", b"=", b"==", b"(", b")",
        b":", b",", b"\n", b"\n    ", b"\n        ", b"{", b"}", b";", b"int", b"char", b"0",
    ]  # fmt: skip
    letters = b"abcdefghijklmnopqrstuvwxyz_"
    while len(words) < 256:
        words.append(bytes(rng.choice(letters) for _ in range(rng.randint(3, 11))))
    return words


WORDS = _vocabulary()


@dataclass(frozen=True)
class Entry:
    """One file of the tree: its number, kind, relative path and data size."""

    number: int
    kind: str
    path: str
    size: int
    link_of: int | None = None  # a hard link to that earlier file's path


class Tree:
    """The generated tree: a deterministic plan of entries and the code that writes them."""

    def __init__(self, root: Path, files: int, size: int, seed: int) -> None:
        self.root, self.files, self.size, self.seed = root, files, size, seed
        counts = {k: share * files for k, (share, _, _) in KINDS.items()}
        self.mean = {k: (size * KINDS[k][1] / counts[k]) if counts[k] else 0.0 for k in KINDS}
        self.entries = [self._plan(i) for i in range(files)]

    def _plan(self, number: int) -> Entry:
        rng = random.Random(f"{self.seed}:{number}")
        kind = rng.choices(list(KINDS), weights=[share for share, _, _ in KINDS.values()])[0]
        size = int(self.mean[kind] * rng.uniform(0.25, 1.75))
        top, sub = divmod(number // FILES_PER_DIR, 100)
        path = f"d{top:03d}/s{sub:02d}/{kind}-{number:07d}{KINDS[kind][2]}"
        if kind == "source" and number % LINK_EVERY == 0 and number >= LINK_EVERY * 100:
            return Entry(number, "link", path.replace(".py", ".link.py"), 0, number - 50 * 97)
        return Entry(number, kind, path, size)

    def content(self, entry: Entry, generation: int = 0) -> bytes:
        """The file's bytes; ``generation`` 1 is its changed version (a rewritten middle)."""
        rng = random.Random(f"{self.seed}:{entry.number}:content")
        if entry.kind in ("media", "sparse"):
            data = bytearray(rng.randbytes(entry.size))
        elif entry.kind == "empty":
            return b""
        else:
            head = f"# {entry.path}\n".encode()
            data = bytearray(
                head + b" ".join(map(WORDS.__getitem__, rng.randbytes(entry.size // 5)))
            )
        if generation:
            middle = len(data) // 2
            patch = random.Random(f"{self.seed}:{entry.number}:change").randbytes(
                max(1, len(data) // 20)
            )
            data[middle : middle + len(patch)] = patch
        return bytes(data)

    def write(self, entry: Entry, generation: int = 0) -> None:
        path = self.root / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry.link_of is not None:
            path.unlink(missing_ok=True)
            os.link(self.root / self.entries[entry.link_of].path, path)
            return
        data = self.content(entry, generation)
        with open(path, "wb") as f:  # in place: a hard link to it stays one
            if entry.kind == "sparse":
                piece = max(1, len(data) // 4)
                for k in range(4):  # four data runs spread over a span of holes
                    f.seek(k * piece * SPARSE_SPAN)
                    f.write(data[k * piece : (k + 1) * piece])
                f.truncate(len(data) * SPARSE_SPAN)
            else:
                f.write(data)

    def ensure(self) -> None:
        """Write the tree unless a complete one is cached; undo a previous run's changes."""
        if (self.root / STAMP).exists():
            self.undo_change()
            return
        log(f"writing {self.files:,} files, about {self.size / MB:,.0f} MB, into {self.root}")
        shutil.rmtree(self.root, ignore_errors=True)
        for entry in self.entries:  # links come after their targets (link_of < number)
            self.write(entry)
        os.sync()
        (self.root / STAMP).write_text(json.dumps(self.summary()))

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, dict[str, int]] = {}
        for e in self.entries:
            row = kinds.setdefault(e.kind, {"files": 0, "bytes": 0})
            row["files"] += 1
            row["bytes"] += e.size
        return {"files": self.files, "seed": self.seed, "kinds": kinds}

    # The change set: every (1/fraction)th eligible file in a seeded order, split into
    # changed (2/5), added (2/5: new files beside them) and removed (1/5). Hard links,
    # their targets and sparse files are left alone, so undoing is rewriting.

    def change_set(self, fraction: float) -> tuple[list[Entry], list[Entry], list[Entry]]:
        targets = {e.link_of for e in self.entries if e.link_of is not None}
        eligible = [
            e
            for e in self.entries
            if e.kind in ("source", "header", "document", "media") and e.number not in targets
        ]
        rng = random.Random(f"{self.seed}:change")
        chosen = rng.sample(eligible, round(len(eligible) * fraction))
        n = len(chosen)
        cut, cut2 = 2 * n // 5, 4 * n // 5
        changed, added_beside, removed = chosen[:cut], chosen[cut:cut2], chosen[cut2:]
        added = [
            Entry(self.files + k, e.kind, e.path.replace(f"-{e.number:07d}", f"-n{k:07d}"), e.size)
            for k, e in enumerate(added_beside)
        ]  # fmt: skip
        return changed, added, removed

    def apply_change(self, fraction: float) -> dict[str, int]:
        changed, added, removed = self.change_set(fraction)
        (self.root / CHANGED).write_text(str(fraction))
        for e in changed:
            self.write(e, generation=1)
        for e in added:
            self.write(e)
        for e in removed:
            (self.root / e.path).unlink()
        os.sync()
        return {
            "changed": len(changed),
            "added": len(added),
            "removed": len(removed),
            "bytes_changed": sum(e.size // 20 for e in changed) + sum(e.size for e in added),
        }

    def undo_change(self) -> None:
        marker = self.root / CHANGED
        if not marker.exists():
            return
        changed, added, removed = self.change_set(float(marker.read_text()))
        log(f"putting back {len(changed) + len(added) + len(removed):,} changed files")
        for e in changed + removed:
            self.write(e)
        for e in added:
            (self.root / e.path).unlink(missing_ok=True)
        marker.unlink()
        os.sync()


def empty_tree(root: Path, files: int) -> None:
    """``files`` empty files, 1,000 to a directory (cached)."""
    if (root / STAMP).exists():
        return
    log(f"writing {files:,} empty files into {root}")
    shutil.rmtree(root, ignore_errors=True)
    for d in range(0, files, 1000):
        folder = root / f"d{d // 1000:04d}"
        folder.mkdir(parents=True)
        for k in range(min(1000, files - d)):
            os.close(os.open(folder / f"f{k:03d}", os.O_CREAT | os.O_WRONLY, 0o644))
    os.sync()
    (root / STAMP).write_text(str(files))


# --------------------------------------------------------------------------- the tools


@dataclass
class Tool:
    """How one tool does each step: argv lists (a str is a bash script)."""

    name: str
    repo: Path
    init: Callable[[], list[str]]
    backup: Callable[[Path, int], list[str]]  # tree, backup number
    restore: Callable[[Path, str | None], list[str]]  # target dir, one path or all

    def stored(self) -> int:
        return du_bytes(self.repo) if self.repo.exists() else 0


def tools(run_dir: Path, bv: list[str], tree_root: Path) -> dict[str, Tool]:
    """The three tools, each with its repository under ``run_dir``; snapshots named by
    backup number, so a restore takes the last one."""
    repos = {name: run_dir / f"{name}-repo" for name in TOOLS}
    last = {"borg": "3"}  # the archive a restore reads: the last backup (a run makes three)

    def bv_backup(tree: Path, n: int) -> list[str]:
        return [*bv, "-r", str(repos["blockvault"]), "backup", str(tree), "--tag", f"n{n}"]

    def bv_restore(target: Path, one: str | None) -> list[str]:
        address = "latest" if one is None else f"latest:/{tree_root.relative_to('/')}/{one}"
        return [*bv, "-r", str(repos["blockvault"]), "restore", address, str(target)]

    def borg_backup(tree: Path, n: int) -> list[str]:
        last["borg"] = str(n)
        return ["borg", "create", "--compression", "zstd,3", f"{repos['borg']}::n{n}", str(tree)]

    def borg_restore(target: Path, one: str | None) -> list[str]:
        """borg extracts into the current directory."""
        inside = [str(tree_root.relative_to("/") / one)] if one else []
        argv = ["borg", "extract", "--sparse", f"{repos['borg']}::n{last['borg']}", *inside]
        quoted = shlex.quote(str(target))
        return ["bash", "-c", f"mkdir -p {quoted} && cd {quoted} && exec {shlex.join(argv)}"]

    def restic_restore(target: Path, one: str | None) -> list[str]:
        include = ["--include", str(tree_root / one)] if one else []
        restic = ["restic", "-r", str(repos["restic"])]
        return [*restic, "restore", "latest", "--target", str(target), *include]

    return {
        "blockvault": Tool(
            "blockvault",
            repos["blockvault"],
            lambda: [
                *bv,
                "-r",
                str(repos["blockvault"]),
                "init",
                "--encryption",
                "repokey",
                "--compression",
                "zstd:3",
            ],
            bv_backup,
            bv_restore,
        ),
        "restic": Tool(
            "restic",
            repos["restic"],
            lambda: ["restic", "-r", str(repos["restic"]), "init", "--repository-version", "2"],
            lambda tree, n: [
                "restic",
                "-r",
                str(repos["restic"]),
                "backup",
                "--compression",
                "auto",
                "--tag",
                f"n{n}",
                str(tree),
            ],
            restic_restore,
        ),
        "borg": Tool(
            "borg",
            repos["borg"],
            lambda: ["borg", "init", "--encryption", "repokey-blake2", str(repos["borg"])],
            borg_backup,
            borg_restore,
        ),
    }


def tool_env(run_dir: Path) -> None:
    """Passwords and caches of all three tools inside the run directory: every run starts
    cold, and nothing of the user's is read or written."""
    os.environ.update(
        BLOCKVAULT_PASSWORD=PASSWORD,
        RESTIC_PASSWORD=PASSWORD,
        RESTIC_CACHE_DIR=str(run_dir / "restic-cache"),
        BORG_PASSPHRASE=PASSWORD,
        BORG_BASE_DIR=str(run_dir / "borg-base"),
        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        XDG_CACHE_HOME=str(run_dir / "cache"),
    )


def timed(
    runner: Runner, tool: Tool, kind: str, argv: list[str], failed: dict[str, str]
) -> Step | None:
    """One timed step; records the bytes it added to the tool's repository. A step that
    fails is recorded in ``failed`` with its last error line, and the run goes on."""
    before = tool.stored()
    try:
        step = runner.timed(f"{tool.name} {kind}", kind, tool.name, argv)
    except RuntimeError as e:
        failed[f"{tool.name} {kind}"] = str(e).strip().splitlines()[-1]
        log(f"  FAILED: {failed[f'{tool.name} {kind}']}")
        return None
    step.output = tool.stored() - before
    return step


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    if os.geteuid() != 0:
        sys.exit("files_bench.py needs root: /proc/sys/vm/drop_caches")
    for exe in ("restic", "borg"):
        if shutil.which(exe) is None:
            sys.exit(f"{exe} is not installed: apt-get install restic borgbackup")
    name = f"files-tree-{args.files}-{args.size >> 20}M-{args.seed}"
    tree = Tree(WORK / name, args.files, args.size, args.seed)
    stamp = datetime.now(UTC)
    if args.resume:  # the repositories and the changed tree of an interrupted run
        run_dir = args.resume.resolve()  # borg extracts after a cd
        if not (tree.root / CHANGED).exists():
            sys.exit(f"{tree.root} is not in its changed state: nothing to resume")
    else:
        tree.ensure()
        run_dir = WORK / f"files-run-{stamp:%Y%m%dT%H%M%S}"
        run_dir.mkdir(parents=True)
    tool_env(run_dir)
    bv = blockvault_exe(None)
    runner = Runner(run_dir, {str(run_dir): "$RUN", str(tree.root): "$TREE"})
    runner.logs = run_dir / f"logs-{stamp:%H%M%S}"
    runner.logs.mkdir(parents=True)
    chosen = {k: v for k, v in tools(run_dir, bv, tree.root).items() if k in args.tools}
    touched = {e.number for part in tree.change_set(args.change) for e in part}
    one = next(e.path for e in tree.entries if e.kind == "media" and e.number not in touched)
    results: dict[str, Any] = {
        "measured": stamp.isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "machine": machine_info(),
        "versions": {
            "blockvault": first_line("git", "-C", str(BENCH.parent), "describe", "--always"),
            "restic": first_line("restic", "version"),
            "borg": first_line("borg", "--version"),
        },
        "tree": {**tree.summary(), "bytes_on_disk": du_bytes(tree.root), "one_file": one},
    }
    failed: dict[str, str] = results.setdefault("failed", {})
    if not args.resume:
        for tool in chosen.values():
            runner.timed(f"{tool.name} init", "init", tool.name, tool.init())
        for n, kind in ((1, "first backup"), (2, "unchanged backup")):
            for tool in chosen.values():
                timed(runner, tool, kind, tool.backup(tree.root, n), failed)
        results["change"] = tree.apply_change(args.change)
        for tool in chosen.values():
            timed(runner, tool, "changed backup", tool.backup(tree.root, 3), failed)
    for tool in chosen.values():
        target = run_dir / f"{tool.name}-restore"
        if "full restore" in args.steps and timed(
            runner, tool, "full restore", tool.restore(target, None), failed
        ):
            _check_restore(tree, target, tool.name)
        shutil.rmtree(target, ignore_errors=True)
        target = run_dir / f"{tool.name}-one"
        if "one-file restore" in args.steps and timed(
            runner, tool, "one-file restore", tool.restore(target, one), failed
        ):
            found = list(target.rglob(Path(one).name))
            if len(found) != 1 or found[0].read_bytes() != (tree.root / one).read_bytes():
                raise RuntimeError(f"{tool.name}: the one-file restore did not give {one} back")
        shutil.rmtree(target, ignore_errors=True)
    if not args.resume or "empty" in args.steps:  # a resumed run's last part puts it back
        tree.undo_change()
    if args.empty and "empty" in args.steps:
        empty = WORK / f"files-empty-{args.empty}"
        empty_tree(empty, args.empty)
        runner.names[str(empty)] = "$EMPTY"
        for tool in tools(run_dir / "empty", bv, empty).values():
            if tool.name not in args.tools:
                continue
            tool.repo.parent.mkdir(parents=True, exist_ok=True)
            runner.timed(f"{tool.name} init (empty files)", "init", tool.name, tool.init())
            for n, kind in ((1, "empty files: first backup"), (2, "empty files: unchanged walk")):
                timed(runner, tool, kind, tool.backup(empty, n), failed)
    if args.profile and "blockvault" in chosen:
        prof = run_dir / "profile"
        prof.mkdir()
        subprocess.run([*bv, "-r", str(prof / "repo"), "init"], check=True, capture_output=True)
        backup = [*bv, "-r", str(prof / "repo"), "backup", str(tree.root)]
        results["profiles"] = {
            name: profile(runner, name, backup, prof / name) for name in ("first", "unchanged")
        }
    results["steps"] = [asdict(s) for s in runner.steps]
    results["rejected"] = [asdict(s) for s in runner.rejected]
    if not args.keep:
        for tool in chosen.values():
            shutil.rmtree(tool.repo, ignore_errors=True)
    return results


def _check_restore(tree: Tree, target: Path, tool: str) -> None:
    """The restored tree is the changed tree: the same paths and, for a seeded sample of
    files, the same bytes (all of them would double the run)."""
    restored = next((p for p in target.rglob(tree.root.name) if p.is_dir()), None)
    if restored is None:
        raise RuntimeError(f"{tool}: {tree.root.name} not found in the restored tree")
    ours = sorted(str(p.relative_to(tree.root)) for p in _files(tree.root))
    theirs = sorted(str(p.relative_to(restored)) for p in _files(restored))
    if ours != theirs:
        raise RuntimeError(f"{tool}: the restored tree lists other files than the source")
    for rel in random.Random(0).sample(ours, min(200, len(ours))):
        if (tree.root / rel).read_bytes() != (restored / rel).read_bytes():
            raise RuntimeError(f"{tool}: {rel} differs after the restore")


def _files(root: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name not in (STAMP, CHANGED):
                yield Path(dirpath) / name


# --------------------------------------------------------------------------- the report


def table(results: dict[str, Any]) -> str:
    steps = [s for s in results["steps"] if s["kind"] != "init"]
    kinds = list(dict.fromkeys(s["kind"] for s in steps))
    by = {(s["kind"], s["tool"]): s for s in steps}
    present = [t for t in TOOLS if any(s["tool"] == t for s in steps)]
    head = ["step", *(f"{t} s" for t in present), *(f"{t} MB added" for t in present),
            *(f"{t} peak MB" for t in present), "time vs restic", "time vs borg"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in kinds:
        row = [kind]
        found = [by.get((kind, t)) for t in present]
        row += [f"{s['wall'] + s['sync']:.1f}" if s else "" for s in found]
        row += [f"{(s['output'] or 0) / MB:,.0f}" if s else "" for s in found]
        row += [f"{s['maxrss'] / MB:,.0f}" if s else "" for s in found]
        for other in ("restic", "borg"):
            if (kind, "blockvault") in by and (kind, other) in by:
                ours = by[kind, "blockvault"]["wall"] + by[kind, "blockvault"]["sync"]
                theirs = by[kind, other]["wall"] + by[kind, other]["sync"]
                row.append(f"{ours / theirs:.2f}")
            else:
                row.append("")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[str]:
    """The issue's targets, each with the numbers that meet or miss it."""
    steps = [s for s in results["steps"] if s["kind"] != "init" and s["tool"] in TOOLS]
    total = {
        t: sum(s["output"] or 0 for s in steps if s["tool"] == t and "empty" not in s["kind"])
        for t in TOOLS
    }
    peak = {t: max((s["maxrss"] for s in steps if s["tool"] == t), default=0) for t in TOOLS}
    by = {(s["kind"], s["tool"]): s["wall"] + s["sync"] for s in steps}
    kinds = dict.fromkeys(s["kind"] for s in steps)
    slower = [
        k for k in kinds
        if (k, "blockvault") in by
        and any(by[k, "blockvault"] > by.get((k, o), float("inf")) for o in ("restic", "borg"))
    ]  # fmt: skip
    smaller = min(total["restic"], total["borg"]) or 1
    verdict = "yes" if not slower else "no; slower on " + ", ".join(slower)
    return [
        f"* faster than both on every row: {verdict}",
        f"* repository after the three backups: blockvault {total['blockvault'] / MB:,.0f} MB, "
        f"restic {total['restic'] / MB:,.0f} MB, borg {total['borg'] / MB:,.0f} MB "
        f"({total['blockvault'] / smaller:.2f} x the smaller)",
        f"* peak memory: blockvault {peak['blockvault'] / MB:,.0f} MB, restic "
        f"{peak['restic'] / MB:,.0f} MB, borg {peak['borg'] / MB:,.0f} MB",
    ]


def report(results: dict[str, Any]) -> str:
    lines = [table(results), "", *targets(results)]
    lines += [f"* {name} failed: {why}" for name, why in results.get("failed", {}).items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200_000, help="files in the tree")
    parser.add_argument("--size", type=parse_size, default=parse_size("4G"), help="data bytes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--change", type=float, default=0.05, help="fraction of files touched")
    parser.add_argument("--empty", type=int, default=0, help="also N empty files (1000000)")
    parser.add_argument("--tools", default=",".join(TOOLS), type=lambda s: s.split(","))
    parser.add_argument("--profile", action="store_true", help="py-spy blockvault's backups")
    parser.add_argument("--keep", action="store_true", help="keep the repositories")
    parser.add_argument(
        "--report", type=Path, nargs="+", help="only print the tables of results files"
    )
    parser.add_argument(
        "--resume", type=Path, help="a run directory whose backups are done: restores only"
    )
    parser.add_argument(
        "--steps",
        default="full restore,one-file restore,empty",
        type=lambda s: s.split(","),
        help="with --resume: which of full restore, one-file restore, empty to run",
    )
    parser.add_argument(
        "--patience", type=float, default=Runner.patience, help="seconds to wait for quiet"
    )
    parser.add_argument(
        "--attempts", type=int, default=Runner.attempts, help="runs of a disturbed step"
    )
    args = parser.parse_args()
    Runner.patience, Runner.attempts = args.patience, args.attempts
    if args.report:
        parts = [json.loads(path.read_text()) for path in args.report]
        merged = {**parts[0], "steps": [s for p in parts for s in p["steps"]]}
        merged["failed"] = {k: v for p in parts for k, v in p.get("failed", {}).items()}
        print(report(merged))
        return
    results = run(args)
    out = WORK / f"files-results-{args.files}-{results['measured'][:19].replace(':', '')}.json"
    out.write_text(json.dumps(results, indent=1))
    log(f"results in {out}")
    print(report(results))


if __name__ == "__main__":
    main()
