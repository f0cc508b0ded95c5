"""CopyBoth framing of the streaming replication protocol (the layer under pgoutput).

Server → client: XLogData (``w``) carrying one pgoutput message, and Primary
keepalive (``k``). Client → server: Standby status update (``r``). Pure code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from replicator.errors import ProtocolError
from replicator.lsn import Lsn

_XLOGDATA_HDR: Final = struct.Struct("!QQq")  # dataStart, walEnd, sendTime
_KEEPALIVE: Final = struct.Struct("!QqB")  # walEnd, sendTime, replyRequested
_STATUS: Final = struct.Struct("!cQQQqB")


@dataclass(frozen=True, slots=True)
class XLogData:
    data_start: Lsn
    wal_end: Lsn
    send_time: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    wal_end: Lsn
    send_time: int
    reply_requested: bool


Frame = XLogData | Keepalive


def parse_frame(buf: bytes) -> Frame:
    """Parse one CopyData payload received in CopyBoth mode."""
    if not buf:
        raise ProtocolError("empty CopyData frame", offset=0)
    tag = buf[0]
    if tag == 0x77:  # 'w'
        if len(buf) < 1 + _XLOGDATA_HDR.size:
            raise ProtocolError("XLogData header too short", offset=len(buf), tag="w")
        start, end, t = _XLOGDATA_HDR.unpack_from(buf, 1)
        return XLogData(Lsn(start), Lsn(end), t, buf[1 + _XLOGDATA_HDR.size :])
    if tag == 0x6B:  # 'k'
        if len(buf) != 1 + _KEEPALIVE.size:
            raise ProtocolError(
                f"keepalive of {len(buf)} bytes, expected {1 + _KEEPALIVE.size}",
                offset=min(len(buf), 1 + _KEEPALIVE.size),
                tag="k",
            )
        end, t, reply = _KEEPALIVE.unpack_from(buf, 1)
        if reply not in (0, 1):
            raise ProtocolError(f"bad reply flag {reply}", offset=17, tag="k")
        return Keepalive(Lsn(end), t, bool(reply))
    raise ProtocolError(f"unknown CopyData frame tag {chr(tag)!r}", offset=0)


def standby_status_update(
    write: Lsn, flush: Lsn, apply: Lsn, now_pg_us: int, *, reply: bool = False
) -> bytes:
    """Encode the ``r`` message. ``flush`` is what the server may treat as confirmed."""
    return _STATUS.pack(b"r", write, flush, apply, now_pg_us, 1 if reply else 0)
