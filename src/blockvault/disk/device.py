"""Open a block device or a disk image file and read or write it by byte offset.

A ``Device`` is the one way blockvault touches a disk. Reads are positional
(``os.pread``), so many threads may read one device at once. A ``Region`` is a
window onto a device (a partition), addressed from its own start: filesystem
parsers see only their partition and cannot read past it.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from blockvault.errors import DeviceError, SourceError

__all__ = ["Device", "Reader", "Region", "SourceDisk", "open_device"]

# <linux/fs.h>
BLKSSZGET = 0x1268  # logical sector size, int
BLKPBSZGET = 0x127B  # physical sector size, unsigned int
BLKGETSIZE64 = 0x80081272  # size in bytes, u64
BLKFLSBUF = 0x1261  # flush buffers


class Reader(Protocol):
    """Anything that reads bytes by offset: a device, a partition, a snapshot."""

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes: ...


class SourceDisk(Reader, Protocol):
    """What a backup reads a disk from: a ``Device``, or a disk another program serves
    (a VM disk read through NBD), which has no file descriptor of its own."""

    @property
    def path(self) -> Path: ...  # names the source (identity, messages, mounts)

    @property
    def is_block(self) -> bool: ...

    @property
    def logical_sector_size(self) -> int: ...

    def readinto_at(self, buffer: bytearray | memoryview, offset: int) -> None: ...


@dataclass
class Device:
    """An open block device or regular file."""

    path: Path
    fd: int
    size: int
    is_block: bool
    logical_sector_size: int
    physical_sector_size: int
    writable: bool

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise SourceError(
                f"read of {length} bytes at offset {offset} is past the end ({self.size} bytes); "
                "the disk or image looks truncated",
                path=self.path,
            )
        try:
            data = os.pread(self.fd, length, offset)
            while len(data) < length:
                more = os.pread(self.fd, length - len(data), offset + len(data))
                if not more:
                    raise SourceError(
                        f"short read at offset {offset + len(data)}: the disk or image is "
                        "truncated",
                        path=self.path,
                    )
                data += more
        except OSError as exc:
            raise DeviceError(
                f"read at offset {offset} failed: {exc.strerror}", path=self.path
            ) from None
        return data

    def readinto_at(self, buffer: bytearray | memoryview, offset: int) -> None:
        """Fill ``buffer`` from ``offset``; the fast path for large reads."""
        view = memoryview(buffer)
        done = 0
        try:
            while done < len(view):
                n = os.preadv(self.fd, [view[done:]], offset + done)
                if n == 0:
                    raise SourceError(
                        f"short read at offset {offset + done}: the disk or image is truncated",
                        path=self.path,
                    )
                done += n
        except OSError as exc:
            raise DeviceError(
                f"read at offset {offset} failed: {exc.strerror}", path=self.path
            ) from None

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        if offset + len(data) > self.size and self.is_block:
            raise DeviceError(
                f"write of {len(data)} bytes at {offset} is past the end ({self.size})",
                path=self.path,
            )
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], offset + done)
        except OSError as exc:
            raise DeviceError(
                f"write at offset {offset} failed: {exc.strerror}", path=self.path
            ) from None

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
            if self.is_block:
                fcntl.ioctl(self.fd, BLKFLSBUF)
        except OSError as exc:
            raise DeviceError(f"flush failed: {exc.strerror}", path=self.path) from None

    def region(self, offset: int, length: int) -> Region:
        return Region(self, offset, length)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Region:
    """A window ``[offset, offset + size)`` of a device, read from its own start."""

    device: Reader
    offset: int
    size: int

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise SourceError(
                f"read of {length} bytes at {offset} leaves the region of {self.size} bytes "
                f"at {self.offset}",
                path=getattr(self.device, "path", "?"),
            )
        return self.device.read_at(self.offset + offset, length)


def _ioctl_int(fd: int, request: int, fmt: str) -> int:
    buf = fcntl.ioctl(fd, request, b"\0" * struct.calcsize(fmt))
    return int(struct.unpack(fmt, buf)[0])


def open_device(
    path: str | os.PathLike[str],
    *,
    write: bool = False,
    create_size: int | None = None,
    exclusive: bool = False,
) -> Device:
    """Open ``path`` for reading (or writing).

    ``create_size`` creates a missing regular file as a sparse file of that size.
    ``exclusive`` opens a block device with ``O_EXCL``, which the kernel refuses
    while the device is mounted or claimed by another driver.
    """
    p = Path(path)
    flags = os.O_RDWR if write else os.O_RDONLY
    flags |= os.O_CLOEXEC
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if create_size is None:
            raise SourceError("no such file or device", path=p) from None
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        os.ftruncate(fd, create_size)
        return Device(p, fd, create_size, False, 512, 512, True)
    except OSError as exc:
        raise SourceError(exc.strerror or str(exc), path=p) from None
    is_block = stat.S_ISBLK(st.st_mode)
    if not is_block and not stat.S_ISREG(st.st_mode):
        raise SourceError("not a block device or disk image file", path=p)
    if exclusive and is_block:
        flags |= os.O_EXCL
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        if exc.errno == 16:  # EBUSY from O_EXCL
            raise DeviceError("device is busy: mounted or in use by the kernel", path=p) from None
        raise SourceError(exc.strerror or str(exc), path=p) from None
    if is_block:
        size = _ioctl_int(fd, BLKGETSIZE64, "Q")
        logical = _ioctl_int(fd, BLKSSZGET, "i")
        physical = _ioctl_int(fd, BLKPBSZGET, "I")
    else:
        size = st.st_size
        logical = physical = 512
    return Device(p, fd, size, is_block, logical, physical, write)
