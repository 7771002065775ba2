"""The rescue ISO is reproducible, records its inputs, and fits a 1 GB stick.

Builds from the session's cache (``rescue_iso`` builds it; cold, that is minutes,
hence ``-m qemu`` with the boot tests): the same inputs give the same bytes, checked
by our own ``--check-reproducible`` and by hashing two builds here; the package
versions the medium's ``build.json`` records are the ones dpkg installed in the root
(read from the squashfs by unsquashfs)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from blockvault.rescue.build import STICK_BYTES, Preset, build_iso
from blockvault_demo.sample_boot import build_boot_disk
from tests.conftest import IS_ROOT, blockvault, need_tools, sh
from tests.rescue.conftest import CACHE

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.root,
    pytest.mark.skipif(not IS_ROOT, reason="mmdebstrap builds the rescue root as root"),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_builds_from_the_same_inputs_are_the_same_bytes(
    tmp_path: Path, rescue_iso: Path
) -> None:
    again = tmp_path / "again.iso"
    build_iso(again, Preset(), cache=CACHE)
    assert sha256(again) == sha256(rescue_iso)
    # the files on the medium and the squashfs images: the same too, not just in sum
    listing = [
        sh("xorriso", "-indev", iso, "-find", "/", "-exec", "lsdl", "--")
        for iso in (again, rescue_iso)
    ]
    assert listing[0] == listing[1]


def test_the_medium_records_the_installed_versions(tmp_path: Path, rescue_iso: Path) -> None:
    need_tools("xorriso", "unsquashfs")
    out = tmp_path / "medium"
    for name in ("blockvault/build.json", "live/filesystem.squashfs"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        sh("xorriso", "-osirrox", "on", "-indev", rescue_iso, "-extract", f"/{name}", out / name)
    inputs = json.loads((out / "blockvault/build.json").read_text())
    status = sh("unsquashfs", "-cat", out / "live/filesystem.squashfs", "var/lib/dpkg/status")
    installed = sorted(
        f"{block['Package']}={block['Version']}"
        for block in (
            dict(line.split(": ", 1) for line in para.splitlines() if ": " in line[:60])
            for para in status.split("\n\n")
        )
        if "installed" in block.get("Status", "") and "Package" in block
    )
    assert inputs["debian"]["packages"] == installed
    assert inputs["debian"]["suite"] == "bookworm"
    assert inputs["sha256"]["live/filesystem.squashfs"] == sha256(out / "live/filesystem.squashfs")
    assert inputs["blockvault"]["name"].startswith("blockvault-")
    assert inputs["source_date_epoch"] > 0


@pytest.mark.qemu_extra  # a second preset build: minutes; the plain ISO's size is checked in CI
def test_a_stick_with_an_image_is_reproducible_and_fits_1_gb(
    tmp_path: Path, rescue_iso: Path
) -> None:
    repo, image = tmp_path / "repo", tmp_path / "sample.bvi"
    sample = build_boot_disk("bios", tmp_path / "sample.img")
    for args in (
        ("init",),
        ("backup", sample.path),
        ("export", "--format", "bvi", "latest", image),
    ):
        done = blockvault("-r", repo, *args)
        assert done.returncode == 0, done.stderr
    iso = tmp_path / "stick.iso"
    done = blockvault(
        "rescue",
        "build",
        iso,
        "--add-image",
        image,
        "--cache",
        CACHE,
        "--check-reproducible",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["sha256"] == sha256(iso)
    assert iso.stat().st_size == summary["size"] < STICK_BYTES
    assert summary["fits_stick"] is True
    assert summary["inputs"]["preset"]["images"] == ["sample.bvi"]
