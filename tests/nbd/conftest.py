"""An export for the protocol tests: a real disk image file, with its holes.

The image is a sparse file written with data in some places and nothing elsewhere; its
holes are the file's own (``SEEK_DATA``/``SEEK_HOLE``, the kernel's answer), so the
map the server announces can be checked against ``nbdinfo --map`` and the bytes
against ``qemu-img compare`` on the same file.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

MiB = 1024 * 1024


class FileExport:
    """A sparse file as an NBD export: reads by ``os.pread``, holes by ``SEEK_HOLE``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.fd = os.open(path, os.O_RDONLY)
        self.reads: list[tuple[int, int]] = []  # every read_at, to show holes are not read

    def read_at(self, offset: int, length: int) -> bytes:
        assert offset >= 0 and offset + length <= self.size, "the server read outside"
        self.reads.append((offset, length))
        return os.pread(self.fd, length, offset)

    def extents(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        pos, end = offset, offset + length
        while pos < end:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                data = self.size
            if data > pos:
                yield pos, min(data, end) - pos, True
                pos = min(data, end)
                continue
            hole = os.lseek(self.fd, pos, os.SEEK_HOLE)
            yield pos, min(hole, end) - pos, False
            pos = min(hole, end)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture(scope="module")
def sparse_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 MiB + 512 bytes: random data in some 1 MiB pieces, holes between, data at the
    very end (an odd tail is where off-by-ones live)."""
    path = tmp_path_factory.mktemp("nbd") / "sparse.img"
    rng = random.Random(19)
    size = 24 * MiB + 512
    with open(path, "wb") as f:
        f.truncate(size)
        for k in (0, 1, 5, 6, 7, 12, 20):
            f.seek(k * MiB)
            f.write(rng.randbytes(MiB))
        f.seek(size - 4096)
        f.write(rng.randbytes(4096))
    return path


@pytest.fixture
def export(sparse_image: Path) -> Iterator[FileExport]:
    exported = FileExport(sparse_image)
    yield exported
    exported.close()
