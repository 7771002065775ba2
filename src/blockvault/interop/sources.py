"""Which other tool made an image, and the one call that imports it.

``IMAGE_KINDS`` maps each kind to a cheap recogniser (a marker file, a magic number)
and a reader giving its disks; ``import_image`` reads them and stores each disk as one
snapshot through ``importer.import_disk``. Raw ``dd`` images are not here: they are
disks, and ``pipeline.backup`` images them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from blockvault.errors import ImageDamaged, UsageError
from blockvault.events import Reporter
from blockvault.events import quiet as quiet_reporter
from blockvault.interop.image_dirs import (
    is_clonezilla,
    is_fog,
    is_redo,
    read_clonezilla,
    read_fog,
    read_redo,
)
from blockvault.interop.importer import ForeignDisk, import_disk, partclone_disk
from blockvault.interop.payload import Payload
from blockvault.repo import Repository, Snapshot

__all__ = ["IMAGE_KINDS", "ImageKind", "import_image", "is_partclone", "kind_of_image"]


def is_partclone(path: str | Path) -> bool:
    """A file (or the first of its pieces) whose plain stream starts with partclone's magic."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with Payload([path]) as payload:
            return payload.peek(15) == b"partclone-image"
    except (ImageDamaged, OSError):  # unreadable or foreign: simply not this kind
        return False


class ImageKind(NamedTuple):
    recognise: Callable[[str | Path], bool]
    disks: Callable[[Path], list[ForeignDisk]]


IMAGE_KINDS: Final = {
    "clonezilla": ImageKind(is_clonezilla, read_clonezilla),  # Rescuezilla too
    "fog": ImageKind(is_fog, read_fog),
    "redo": ImageKind(is_redo, read_redo),
    "partclone": ImageKind(is_partclone, lambda path: [partclone_disk(path)]),
}


def kind_of_image(path: str | Path) -> str | None:
    """The kind of image at ``path``, or None."""
    return next((name for name, kind in IMAGE_KINDS.items() if kind.recognise(path)), None)


def import_image(
    repo: Repository,
    path: str | Path,
    *,
    kind: str | None = None,
    tags: Sequence[str] = (),
    reporter: Reporter = quiet_reporter,
) -> list[Snapshot]:
    """Import the image at ``path`` (its kind recognised unless given): one snapshot
    per disk it holds, committed in turn."""
    kind = kind or kind_of_image(path)
    if kind not in IMAGE_KINDS:
        raise UsageError(f"{str(path)!r} is no image of {', '.join(IMAGE_KINDS)}")
    disks = IMAGE_KINDS[kind].disks(Path(path))
    return [import_disk(repo, disk, tags=tags, reporter=reporter) for disk in disks]
