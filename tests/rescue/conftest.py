"""The rescue ISO every QEMU test of rescue/ boots, built once per session with the
build cache (the first build ever downloads Debian packages: minutes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blockvault.rescue.build import DEFAULT_CACHE, Preset, build_iso
from tests.conftest import need_tools

CACHE = Path(os.environ.get("BLOCKVAULT_RESCUE_CACHE", str(DEFAULT_CACHE))).expanduser()


@pytest.fixture(scope="session")
def rescue_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("mmdebstrap", "mksquashfs", "grub-mkrescue", "xorriso", "qemu-system-x86_64")
    iso = tmp_path_factory.mktemp("rescue") / "rescue.iso"
    summary = build_iso(iso, Preset(), cache=CACHE)
    assert summary.fits_stick
    return iso
