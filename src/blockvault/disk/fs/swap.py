"""Linux swap: only the header page is worth keeping.

The first page holds the header (``union swap_header`` in
``include/linux/swap.h``): 1024 bytes left for a boot loader or disk label, the
version 1 fields, and the magic in the page's last ten bytes. Everything after
it is scratch space the kernel rewrites before reading, so a restore needs only
the header; the system sees an empty swap area with the same UUID and label.

The page size is that of the machine that ran ``mkswap``, so the magic is
looked for at the end of each possible page size.
"""

from __future__ import annotations

import uuid
from typing import Any

from blockvault.disk.device import Reader
from blockvault.disk.fs import FilesystemInfo
from blockvault.disk.fs.c_swap import MAGIC_SIZE, MAGICS, c_swap_be, c_swap_le
from blockvault.errors import FilesystemError
from blockvault.extents import ExtentMap

__all__ = ["detect", "read"]

PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)  # x86 and most others; arm64, ppc64: 64 KiB


def _page_size(reader: Reader) -> tuple[int, bytes] | None:
    """The page size whose last ten bytes hold a swap magic, and that magic."""
    for page in PAGE_SIZES:
        if page > reader.size:
            break
        magic = reader.read_at(page - MAGIC_SIZE, MAGIC_SIZE)
        if magic in MAGICS:
            return page, magic
    return None


def detect(reader: Reader) -> bool:
    return _page_size(reader) is not None


def read(reader: Reader) -> FilesystemInfo:
    """The header page of the swap area on ``reader``."""
    found = _page_size(reader)
    if found is None:
        raise FilesystemError(
            "no SWAPSPACE2 or SWAP-SPACE magic at the end of the first page",
            fs="swap",
            where="header",
        )
    page, magic = found
    size = reader.size
    label = uuid_ = None
    if magic == MAGICS[0]:
        header = _header(reader.read_at(0, len(c_swap_le.swap_info)))
        # last_page is the highest usable page; beyond it the partition is not swap.
        size = max(page, min(size, (header.last_page + 1) * page))
        raw_uuid = bytes(header.sws_uuid)
        uuid_ = str(uuid.UUID(bytes=raw_uuid)) if any(raw_uuid) else None
        label = bytes(header.sws_volume).split(b"\0", 1)[0].decode("utf-8", "replace") or None
    return FilesystemInfo(
        type="swap",
        size=size,
        block_size=page,
        used=ExtentMap.span(0, page),
        label=label,
        uuid=uuid_,
    )


def _header(data: bytes) -> Any:
    """The version 1 header, read in whichever byte order gives version 1."""
    header = c_swap_le.swap_info(data)
    if header.version != 1:
        header = c_swap_be.swap_info(data)
    if header.version != 1:
        raise FilesystemError(
            f"swap header version {header.version} (expected 1)", fs="swap", where="header"
        )
    return header
