"""The demo: build a sample disk, back it up twice, restore it, verify it, check it.

This is what README's first command runs on a fresh machine, so it exercises the
whole spine with real filesystems made by the real tools.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from blockvault.disk.device import open_device
from blockvault.disk.fscheck import check_filesystem
from blockvault.disk.layout import read_layout
from blockvault.errors import RepositoryNotFound
from blockvault.events import Reporter
from blockvault.events import quiet as quiet_reporter
from blockvault.pipeline.backup import backup
from blockvault.pipeline.restore import restore
from blockvault.pipeline.verify import verify
from blockvault.repo import Repository, Snapshot
from blockvault_demo.sample import demo_disk

__all__ = ["DemoResult", "run_demo"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class DemoResult:
    disk: str
    repository: str
    snapshot: Snapshot
    second: Snapshot
    restored: str
    seconds: float
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def run_demo(workdir: Path, repository: str, reporter: Reporter = quiet_reporter) -> DemoResult:
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    disk = workdir / "sample-disk.img"
    restored = workdir / "restored-disk.img"
    for stale in (disk, restored):
        stale.unlink(missing_ok=True)
    demo_disk(disk)
    try:
        repo = Repository.open(repository)
    except RepositoryNotFound:
        if Path(repository).exists() and not any(Path(repository).iterdir()):
            shutil.rmtree(repository)
        repo = Repository.init(repository)
    first = backup(repo, str(disk), tags=("demo",), reporter=reporter)
    second = backup(repo, str(disk), tags=("demo",), reporter=reporter)
    restore(repo, first, str(restored), reporter=reporter)
    checks = [
        Check(
            "second backup deduplicated",
            second.stats.new_chunks == 0,
            f"{second.stats.new_chunks} new chunks, {second.stats.stored_bytes} bytes added",
        )
    ]
    stored = verify(repo, [first], reporter=reporter)
    checks.append(Check("every chunk re-hashed", stored.ok, f"{stored.chunks} chunks"))
    against = verify(repo, [first], against=str(restored), reporter=reporter)
    checks.append(
        Check("restored used blocks equal the snapshot", against.ok, f"{against.bytes} bytes")
    )
    source_check = verify(repo, [first], against=str(disk), reporter=reporter)
    checks.append(
        Check(
            "source used blocks equal the snapshot", source_check.ok, f"{source_check.bytes} bytes"
        )
    )
    with open_device(restored) as device:
        layout = read_layout(device)
        for part in layout.partitions:
            result = check_filesystem(
                device.region(part.partition.start, part.partition.size),
                part.fs.type,
                part.fs.used,
                workdir=str(workdir),
            )
            if result is not None:
                checks.append(
                    Check(
                        f"partition {part.number} {part.fs.type}: {result.command}",
                        result.ok,
                        result.output.splitlines()[-1] if result.output else "",
                    )
                )
    return DemoResult(
        str(disk),
        repo.location,
        first,
        second,
        str(restored),
        round(time.monotonic() - started, 2),
        tuple(checks),
    )
