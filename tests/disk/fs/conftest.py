"""Fixtures of the filesystem map tests: each case's image, built once per module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from blockvault.disk.fs import FilesystemInfo
from tests.conftest import need_tools

from .fsimages import CASES, FsCase, read_map


@dataclass(frozen=True)
class Built:
    case: FsCase
    image: Path
    info: FilesystemInfo  # what probe() made of it

    @property
    def source(self) -> Path:
        """The tree the image was filled from (``fsimages.source_tree``)."""
        return self.image.parent / "src"


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A case's image. Tests only read it; write to a copy."""
    case: FsCase = request.param
    need_tools(*case.tools)
    image = case.build(tmp_path_factory.mktemp(case.id))
    return Built(case, image, read_map(image))
