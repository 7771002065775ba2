"""The NBD protocol's numbers and byte layouts, declared once for the server and the client.

Everything is big-endian ("network byte order"). Names and values are those of the
protocol document (NetworkBlockDevice/nbd ``doc/proto.md``); only the part a read-only
server with structured replies and ``base:allocation`` needs is here.
"""

from __future__ import annotations

import socket
import struct
from typing import Final

# ---- handshake (fixed newstyle) -------------------------------------------------------
NBDMAGIC: Final = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT: Final = 0x49484156454F5054  # "IHAVEOPT", also the magic of each client option
OPTION_REPLY_MAGIC: Final = 0x0003E889045565A9

FLAG_FIXED_NEWSTYLE: Final = 1 << 0  # handshake flags (server, 16 bits)
FLAG_NO_ZEROES: Final = 1 << 1
FLAG_C_FIXED_NEWSTYLE: Final = 1 << 0  # client flags (32 bits)
FLAG_C_NO_ZEROES: Final = 1 << 1

GREETING = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct(">I")
OPTION = struct.Struct(">QII")  # IHAVEOPT, option, length of the data that follows
OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length of data
EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags (+124 zeros unless NO_ZEROES)

OPT_EXPORT_NAME: Final = 1
OPT_ABORT: Final = 2
OPT_LIST: Final = 3
OPT_STARTTLS: Final = 5
OPT_INFO: Final = 6
OPT_GO: Final = 7
OPT_STRUCTURED_REPLY: Final = 8
OPT_LIST_META_CONTEXT: Final = 9
OPT_SET_META_CONTEXT: Final = 10

REP_ACK: Final = 1
REP_SERVER: Final = 2
REP_INFO: Final = 3
REP_META_CONTEXT: Final = 4
REP_FLAG_ERROR: Final = 1 << 31
REP_ERR_UNSUP: Final = REP_FLAG_ERROR | 1
REP_ERR_POLICY: Final = REP_FLAG_ERROR | 2
REP_ERR_INVALID: Final = REP_FLAG_ERROR | 3
REP_ERR_UNKNOWN: Final = REP_FLAG_ERROR | 6
REP_ERR_TOO_BIG: Final = REP_FLAG_ERROR | 9

INFO_EXPORT: Final = 0  # payload of REP_INFO: type (16), then per type:
INFO_NAME: Final = 1
INFO_DESCRIPTION: Final = 2
INFO_BLOCK_SIZE: Final = 3
INFO_EXPORT_BODY = struct.Struct(">HQH")  # INFO_EXPORT, size, transmission flags
INFO_BLOCK_SIZE_BODY = struct.Struct(">HIII")  # INFO_BLOCK_SIZE, minimum, preferred, maximum

# transmission flags (16 bits)
FLAG_HAS_FLAGS: Final = 1 << 0
FLAG_READ_ONLY: Final = 1 << 1
FLAG_CAN_MULTI_CONN: Final = 1 << 8

# ---- transmission ---------------------------------------------------------------------
REQUEST_MAGIC: Final = 0x25609513
SIMPLE_REPLY_MAGIC: Final = 0x67446698
STRUCTURED_REPLY_MAGIC: Final = 0x668E33EF

REQUEST = struct.Struct(">IHHQQI")  # magic, command flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie (+ data of a read)
CHUNK = struct.Struct(">IHHQI")  # magic, flags, type, cookie, length of the payload
OFFSET = struct.Struct(">Q")  # OFFSET_DATA: offset, then the data
OFFSET_HOLE = struct.Struct(">QI")  # offset, hole size
ERROR_BODY = struct.Struct(">IH")  # error, length of the message that follows
BLOCK_DESCRIPTOR = struct.Struct(">II")  # length, status flags (after a 32-bit context id)
U32 = struct.Struct(">I")  # a context id, a string's length

CMD_READ: Final = 0
CMD_WRITE: Final = 1
CMD_DISC: Final = 2
CMD_FLUSH: Final = 3
CMD_TRIM: Final = 4
CMD_CACHE: Final = 5
CMD_WRITE_ZEROES: Final = 6
CMD_BLOCK_STATUS: Final = 7
CMD_FLAG_REQ_ONE: Final = 1 << 3

REPLY_FLAG_DONE: Final = 1 << 0
REPLY_TYPE_NONE: Final = 0
REPLY_TYPE_OFFSET_DATA: Final = 1
REPLY_TYPE_OFFSET_HOLE: Final = 2
REPLY_TYPE_BLOCK_STATUS: Final = 5
REPLY_TYPE_FLAG_ERROR: Final = 1 << 15
REPLY_TYPE_ERROR: Final = REPLY_TYPE_FLAG_ERROR | 1
REPLY_TYPE_ERROR_OFFSET: Final = REPLY_TYPE_FLAG_ERROR | 2

BASE_ALLOCATION: Final = "base:allocation"
STATE_HOLE: Final = 1 << 0  # base:allocation status flags
STATE_ZERO: Final = 1 << 1

# errno values the protocol uses (fixed by the protocol, not the host's errno)
EPERM: Final = 1
EIO: Final = 5
EINVAL: Final = 22
ENOTSUP: Final = 95

# ---- bounds (what we accept from a peer) ----------------------------------------------
MAX_STRING: Final = 4096  # export names, context names: the protocol's own limit
MAX_OPTION_DATA: Final = 64 * 1024  # larger option data closes the connection unread
MAX_REQUEST: Final = 32 * 1024 * 1024  # longest read or payload served or sent
MAX_DESCRIPTOR: Final = 0xFFFF_F000  # one block-status run (32 bits, kept 4 KiB aligned)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``sock``; ``EOFError`` if the peer closes first."""
    if n == 0:
        return b""
    buf = bytearray(n)
    recv_into_exact(sock, memoryview(buf))
    return bytes(buf)


def recv_into_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock`` (no copy); ``EOFError`` if the peer closes first."""
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError(f"peer closed the connection after {got} of {n} bytes")
        got += k
