"""Many datagrams per system call: ``recvmmsg`` and ``sendmmsg`` through ctypes.

A cast moves about a million datagrams per GiB at the Ethernet MTU; one Python
call and one system call per datagram cost more CPU than the data itself. An
``Inbox`` fills a preallocated ring of fixed-size slots in one call (the GIL is
released while it waits); an ``Outbox`` sends a run of datagrams laid out back to
back in one buffer. Both fall back to one call per datagram where libc lacks them.
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from typing import Any

__all__ = ["Inbox", "Outbox"]

MSG_WAITFORONE = 0x10000
SOL_UDP, UDP_SEGMENT = 17, 103  # <linux/udp.h>: segmentation offload (Linux 4.18)
GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS
GSO_BYTES = 65507  # one IPv4 datagram's payload: the run before it is cut
UDP_GRO = 104  # <linux/udp.h>: receive coalesced runs, the size in a control message
GRO_SLOT = 65536  # bytes one coalesced run may take
CMSG_HEADER = 16  # struct cmsghdr on LP64
CONTROL = 32  # control bytes per message: CMSG_SPACE(sizeof(u16))
_U16 = struct.Struct("=H")


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):  # <sys/socket.h> struct msghdr
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_Iovec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):  # struct mmsghdr: one message and its length
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


class _SockaddrIn(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_ushort),
        ("port", ctypes.c_uint16),  # network byte order
        ("addr", ctypes.c_uint8 * 4),
        ("zero", ctypes.c_uint8 * 8),
    ]


def _libc() -> Any:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.recvmmsg.restype = lib.sendmmsg.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


_LIBC = _libc()
_LEN_OFFSET = _Mmsghdr.len.offset


class Inbox:
    """A ring of ``slots`` buffers, filled by ``receive``.

    After ``n = receive()``, message ``k < n`` is ``view[k * slot : k * slot +
    lengths[k]]``: one datagram, or with ``coalesce`` a run of datagrams of
    ``segments[k]`` bytes each (the last may be shorter) that the kernel kept
    together (UDP GRO, Linux 5.0: the sender's segmentation-offloaded runs arrive as
    sent, and receive offload may merge datagrams of one flow), so the stack's work per
    datagram is paid once per run. The socket must be blocking with SO_RCVTIMEO
    set (``receive`` returns 0 when it expires).
    """

    def __init__(
        self, sock: socket.socket, slot: int, slots: int = 64, coalesce: bool = False
    ) -> None:
        self.sock = sock
        self.slots = slots if _LIBC is not None else 1
        self.coalesce = coalesce and _LIBC is not None and _enable_gro(sock)
        self.slot = GRO_SLOT if self.coalesce else slot
        slot = self.slot
        self.buffer = bytearray(slot * self.slots)
        self.view = memoryview(self.buffer)
        self.lengths: list[int] | memoryview = [0] * self.slots
        self.segments: list[int] | memoryview = self.lengths
        if _LIBC is None:
            return
        self._iov = (_Iovec * self.slots)()
        self._msgs = (_Mmsghdr * self.slots)()
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))
        for k in range(self.slots):
            self._iov[k].base = base + k * slot
            self._iov[k].len = slot
            self._msgs[k].hdr.iov = ctypes.pointer(self._iov[k])
            self._msgs[k].hdr.iovlen = 1
        # every message's msg_len, read in place: a strided view of the u32s
        words = memoryview(self._msgs).cast("B").cast("I")
        stride = ctypes.sizeof(_Mmsghdr) // 4
        self.lengths = self.segments = words[_LEN_OFFSET // 4 :: stride]
        if not self.coalesce:
            return
        self._control = (ctypes.c_char * (CONTROL * self.slots))()
        address = ctypes.addressof(self._control)
        for k in range(self.slots):
            self._msgs[k].hdr.control = address + k * CONTROL
        longs = memoryview(self._msgs).cast("B").cast("Q")
        offset = (_Mmsghdr.hdr.offset + _Msghdr.controllen.offset) // 8
        self._control_lengths = longs[offset :: ctypes.sizeof(_Mmsghdr) // 8]
        self._full = memoryview(array.array("Q", [CONTROL] * self.slots))
        self._control_lengths[:] = self._full
        self._cmsgs = memoryview(self._control).cast("B")
        self._segments = [0] * self.slots
        self.segments = self._segments

    def receive(self) -> int:
        """Wait for at least one datagram, take as many as are queued (up to the ring)."""
        if _LIBC is None:
            try:
                self.lengths[0] = self.sock.recv_into(self.buffer)
            except (BlockingIOError, TimeoutError):
                return 0
            return 1
        n = _LIBC.recvmmsg(self.sock.fileno(), self._msgs, self.slots, MSG_WAITFORONE, None)
        if n < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EINTR):  # SO_RCVTIMEO expired, or a signal
                return 0
            raise OSError(code, os.strerror(code))
        if self.coalesce:
            used, cmsgs, segments = self._control_lengths, self._cmsgs, self._segments
            for k in range(n):
                # struct cmsghdr {size_t len; int level; int type;} then the u16 size
                if used[k] >= CMSG_HEADER + 2:
                    segments[k] = _U16.unpack_from(cmsgs, k * CONTROL + CMSG_HEADER)[0]
                else:
                    segments[k] = self.lengths[k]
            self._control_lengths[:n] = self._full[:n]
        return int(n)


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


class Outbox:
    """Sends runs of datagrams to one address, up to ``batch`` per system call."""

    def __init__(self, sock: socket.socket, address: tuple[str, int], batch: int = 64) -> None:
        self.sock = sock
        self.address = address
        self.batch = batch if _LIBC is not None else 0
        self.gso = True  # until the kernel or the device says no
        if not self.batch:
            return
        self._name = _SockaddrIn(socket.AF_INET, socket.htons(address[1]))
        self._name.addr[:] = socket.inet_aton(address[0])
        self._iov = (_Iovec * batch)()
        self._msgs = (_Mmsghdr * batch)()
        for k in range(batch):
            self._msgs[k].hdr.name = ctypes.addressof(self._name)
            self._msgs[k].hdr.namelen = ctypes.sizeof(_SockaddrIn)
            self._msgs[k].hdr.iov = ctypes.pointer(self._iov[k])
            self._msgs[k].hdr.iovlen = 1

    def send(self, buffer: bytearray, bounds: list[int], first: int, last: int) -> int:
        """Send datagrams ``first..last-1`` of ``buffer`` (datagram k spans
        ``bounds[k]:bounds[k+1]``); returns how many the kernel took (a full queue
        stops early: the rest count as lost and are asked for again)."""
        if self.gso:
            return self._send_segmented(buffer, bounds, first, last)
        if not self.batch:
            view, sent = memoryview(buffer), 0
            for k in range(first, last):
                try:
                    self.sock.sendto(view[bounds[k] : bounds[k + 1]], self.address)
                except OSError:
                    break
                sent += 1
            return sent
        base = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        sent = 0
        while first < last:
            n = min(self.batch, last - first)
            for k in range(n):
                self._iov[k].base = base + bounds[first + k]
                self._iov[k].len = bounds[first + k + 1] - bounds[first + k]
            got: int = _LIBC.sendmmsg(self.sock.fileno(), self._msgs, n, 0)
            if got <= 0:
                return sent
            sent += got
            first += got
            if got < n:
                return sent
        return sent

    def _send_segmented(self, buffer: bytearray, bounds: list[int], first: int, last: int) -> int:
        """UDP generic segmentation offload: a run of equal-sized datagrams (the last
        may be shorter) goes down the stack as one buffer and is cut into datagrams
        as late as possible (by the NIC where it can), so the stack's work per
        datagram is paid once per run."""
        view, sent, k = memoryview(buffer), 0, first
        while k < last:
            size = bounds[k + 1] - bounds[k]
            limit = min(last, k + min(GSO_SEGMENTS, GSO_BYTES // size))
            end = k + 1
            while end < limit and bounds[end + 1] - bounds[end] == size:
                end += 1
            if end < limit and bounds[end + 1] - bounds[end] < size:
                end += 1  # a shorter datagram may close the run
            segment = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
            try:
                self.sock.sendmsg([view[bounds[k] : bounds[end]]], segment, 0, self.address)
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    self.gso = False  # no checksum offload, or an old kernel
                    return sent + self.send(buffer, bounds, k, last)
                return sent  # ENOBUFS: the queue is full; the rest count as lost
            sent += end - k
            k = end
        return sent
