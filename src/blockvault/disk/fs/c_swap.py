"""Linux swap header on-disk structure, declared once, in both byte orders.

Read and built by name everywhere (``dumps()`` gives the bytes back).
"""

from __future__ import annotations

from typing import Any

from dissect.cstruct import cstruct  # type: ignore[import-untyped]

__all__ = ["MAGICS", "MAGIC_SIZE", "c_swap_be", "c_swap_le"]

# The "info" view of union swap_header, include/linux/swap.h. The header is written
# in the byte order of the machine that made it; the magic is the same in both.
_SWAP_INFO = """
struct swap_info {
    char    bootbits[1024];     /* Space for disklabel etc. */
    uint32  version;
    uint32  last_page;
    uint32  nr_badpages;
    uint8   sws_uuid[16];
    char    sws_volume[16];
    uint32  padding[117];
    uint32  badpages[1];
};
"""
c_swap_le: Any = cstruct(endian="<").load(_SWAP_INFO)
c_swap_be: Any = cstruct(endian=">").load(_SWAP_INFO)

MAGICS = (b"SWAPSPACE2", b"SWAP-SPACE")  # version 1, and the obsolete version 0
MAGIC_SIZE = 10  # in the last bytes of the first page
