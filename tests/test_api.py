"""The public Python API: every name in ``blockvault.__all__`` resolves to the library's
own object, ``import blockvault`` loads no pipeline, and the example in docs/api.md
runs as written on a sample disk (restored bytes compared with ``cmp``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import blockvault
from blockvault_demo.sample import DiskSpec, PartitionSpec, build_disk, make_tree
from tests.conftest import need_tools

MiB = 1 << 20
DOC = Path(__file__).parents[1] / "docs" / "api.md"


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=os.environ, check=False
    )


def test_every_public_name_resolves_to_the_library_object() -> None:
    assert blockvault.__all__ == sorted(set(blockvault.__all__))
    for name in blockvault.__all__:
        value = getattr(blockvault, name)
        module = blockvault._EXPORTS[name]
        assert value is getattr(sys.modules[module], name), name
    assert issubclass(blockvault.BlockvaultError, Exception)
    assert blockvault.Repository.open.__qualname__ == "Repository.open"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        blockvault.nothing  # type: ignore[attr-defined]  # noqa: B018


def test_import_loads_no_pipeline_until_a_name_is_used() -> None:
    probe = (
        "import sys, blockvault\n"
        "print(sorted(m for m in sys.modules if m.startswith('blockvault.')))\n"
        "blockvault.backup\n"
        "print('blockvault.pipeline.backup' in sys.modules)\n"
    )
    done = _python("-c", probe)
    assert done.returncode == 0, done.stderr
    loaded, used = done.stdout.splitlines()
    assert loaded == "[]"
    assert used == "True"


def test_star_import_gives_exactly_all() -> None:
    done = _python("-c", "from blockvault import *; print(sorted(k for k in dir() if k[0] != '_'))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sorted(blockvault.__all__))


def test_the_documented_example_runs_on_a_sample_disk(tmp_path: Path) -> None:
    need_tools("sfdisk", "mkfs.ext4", "mkfs.fat", "mcopy", "cmp")
    example = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert example is not None, "docs/api.md has no python example"
    script = tmp_path / "example.py"
    script.write_text(example[1])

    content = tmp_path / "tree"
    make_tree(content, 2 * MiB, seed=3)
    spec = DiskSpec(
        "gpt",
        40 * MiB,
        [
            PartitionSpec("fat32", 34 * MiB, label="ESP", content=content),
            PartitionSpec("ext4", 0, label="root", content=content),
        ],
    )
    disk = build_disk(spec, tmp_path / "disk.img")
    target = tmp_path / "target.img"
    with target.open("wb") as f:
        f.truncate(spec.size)

    done = _python(str(script), str(tmp_path / "repo"), str(disk.path), str(target))
    assert done.returncode == 0, done.stderr
    assert "verify ok: True; check ok: True" in done.stdout
    reported = re.search(r"bytes reported: (\{.*\})", done.stdout)
    assert reported is not None and "'backup'" in reported[1] and "'restore'" in reported[1]
    # byte for byte the source: its unused blocks are zeros, as on the new target
    assert subprocess.run(["cmp", disk.path, target], check=False).returncode == 0
