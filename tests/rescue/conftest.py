"""The rescue ISO, built once per test session for every file that boots it (the
menu and unattended tests here, PXE and ``--adapt`` beside them). The build cache
is the user's (``BLOCKVAULT_RESCUE_CACHE`` names another): the first build ever
downloads Debian packages (minutes), later ones reuse the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blockvault.rescue.build import DEFAULT_CACHE, Preset, build_iso
from tests.conftest import need_tools

CACHE = Path(os.environ.get("BLOCKVAULT_RESCUE_CACHE", str(DEFAULT_CACHE))).expanduser()


@pytest.fixture(scope="session")
def rescue_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plain rescue ISO (no preset): boots to the menu."""
    need_tools("mmdebstrap", "mksquashfs", "grub-mkrescue", "xorriso", "qemu-system-x86_64")
    iso = tmp_path_factory.mktemp("rescue") / "rescue.iso"
    summary = build_iso(iso, Preset(), cache=CACHE)
    assert summary.fits_stick
    return iso
