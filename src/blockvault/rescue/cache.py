"""The rescue build cache: what it holds, and pruning what no build will use again.

Every input change leaves an entry behind: a new package list or build hook makes
a new ``base-*`` (hundreds of MiB), every blockvault change a new ``layer-*``
(tens of MiB). An entry's last use is the time of its ``base.json`` /
``layer.json``, which each build touches. Pruning keeps:

* the base this blockvault builds on (:func:`~blockvault.rescue.build.base_name`),
  whatever its age, and the ``keep`` bases used last;
* of each kept base's layers, the ``keep`` used last (a layer over a removed base
  can never be used again);
* ``pip/`` (PyPI's downloads, which make a layer rebuild fast) and anything it does
  not recognise.

It removes the rest, and the temporary folders of interrupted builds. It holds the
cache's lock alone, so it never removes what a running build uses: while one runs,
pruning fails at once.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from blockvault.events import Noted, Reporter, quiet
from blockvault.rescue.build import base_name, cache_lock

__all__ = ["CacheEntry", "cache_entries", "prune_cache"]

KINDS: Final = {"base-": "base.json", "layer-": "layer.json"}
PARTIAL_PREFIXES: Final = (".base-", ".layer-", ".wheel-")
INFO_MAX: Final = 4 * 1024 * 1024  # a layer.json or base.json read, at most


@dataclass(frozen=True)
class CacheEntry:
    name: str
    kind: str  # base, layer, partial (an interrupted build's), pip
    size: int  # bytes
    used: float | None  # when a build last used it (seconds since the epoch)
    base: str | None = None  # a layer's base
    current: bool = False  # the base this blockvault builds on


def cache_entries(cache: Path) -> list[CacheEntry]:
    """The entries in ``cache``, most recently used first (none: an empty list)."""
    cache = cache.expanduser()
    if not cache.is_dir():
        return []
    current = base_name()
    entries = []
    for path in sorted(cache.iterdir()):
        if path.is_symlink() or not path.is_dir():
            continue
        kind, used, base = _kind(path)
        if kind is None:
            continue
        entries.append(CacheEntry(path.name, kind, _size(path), used, base, path.name == current))
    return sorted(entries, key=lambda e: -(e.used or 0.0))


def prune_cache(cache: Path, keep: int = 1, *, reporter: Reporter = quiet) -> list[CacheEntry]:
    """Remove what no build will use again (see the module's rules); what was removed."""
    if keep < 1:
        raise ValueError("keep at least one entry of each kind")
    cache = cache.expanduser()
    if not cache.is_dir():
        return []
    with cache_lock(cache, exclusive=True):
        entries = cache_entries(cache)  # most recently used first
        bases = [e for e in entries if e.kind == "base"]
        kept_bases = {e.name for e in bases[:keep]} | {e.name for e in bases if e.current}
        layers_kept: dict[str, int] = {}
        doomed = []
        for entry in entries:
            if entry.kind == "base":
                gone = entry.name not in kept_bases
            elif entry.kind == "layer":
                base = entry.base or ""
                gone = base not in kept_bases or layers_kept.get(base, 0) >= keep
                if not gone:
                    layers_kept[base] = layers_kept.get(base, 0) + 1
            else:
                gone = entry.kind == "partial"
            if gone:
                doomed.append(entry)
        for entry in doomed:
            reporter(Noted(f"removing {entry.name} ({entry.kind}, {entry.size} bytes)"))
            shutil.rmtree(cache / entry.name)
    return doomed


def _kind(path: Path) -> tuple[str | None, float | None, str | None]:
    """(kind, last use, a layer's base) of a folder in the cache; kind None: not ours."""
    name = path.name
    if name == "pip":
        return "pip", None, None
    if name.startswith(PARTIAL_PREFIXES):
        return "partial", path.stat().st_mtime, None
    for prefix, info_name in KINDS.items():
        if name.startswith(prefix):
            info = path / info_name
            try:
                with open(info, "rb") as file:
                    data = json.loads(file.read(INFO_MAX))
                base = data.get("base") if isinstance(data, dict) else None
                return prefix[:-1], info.stat().st_mtime, base if isinstance(base, str) else None
            except (OSError, ValueError):
                return prefix[:-1], None, None  # incomplete or damaged: never used again
    return None, None, None


def _size(path: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                continue
    return total
