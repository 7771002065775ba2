"""The frozen format-1 one-file images (made once by make-bvi-v1.sh from the frozen
repositories of v1/) must be read, verified and restored byte-identically by every
later version: one whole, one encrypted in four pieces."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.compat.test_compat import PASSPHRASE, expected
from tests.conftest import blockvault

FROZEN = Path(__file__).parent / "bvi-v1"
IMAGES = {"plain": FROZEN / "plain.bvi", "encrypted": FROZEN / "encrypted.bvi"}
ENV = {"BLOCKVAULT_PASSWORD": PASSPHRASE}


def test_fixture_is_small() -> None:
    assert sum(p.stat().st_size for p in FROZEN.iterdir()) < 128 * 1024
    assert sorted(p.name for p in FROZEN.iterdir()) == [
        *(f"encrypted.bvi.00{n}" for n in range(1, 5)),
        "plain.bvi",
    ]


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_frozen_image_verifies_and_restores_like_its_source(kind: str, tmp_path: Path) -> None:
    image = IMAGES[kind]
    want = expected(kind)["second"]
    verified = blockvault("verify", image, env=ENV)
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stderr
    target = tmp_path / "restored.img"
    done = blockvault("restore", image, target, env=ENV)
    assert done.returncode == 0, done.stderr
    assert want.snapshot[:12] in done.stdout
    assert hashlib.sha256(target.read_bytes()).hexdigest() == want.sha256
    listed = blockvault("ls", f"{image}:1/etc", env=ENV)
    assert listed.returncode == 0 and "hostname" in listed.stdout.split(), listed.stderr
