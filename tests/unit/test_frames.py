"""CopyBoth framing: XLogData and keepalive frames in, standby status updates out."""

from __future__ import annotations

import struct

import pytest

from replicator.errors import ProtocolError
from replicator.lsn import Lsn
from replicator.protocol.frames import Keepalive, XLogData, parse_frame, standby_status_update

from .conftest import CapturedFrame


def xlogdata(start: int, end: int, when: int, payload: bytes) -> bytes:
    return b"w" + struct.pack("!QQq", start, end, when) + payload


def keepalive(end: int, when: int, reply: int) -> bytes:
    return b"k" + struct.pack("!QqB", end, when, reply)


def test_every_captured_frame_parses_as_the_kind_it_was_captured_as(
    captured_frame: CapturedFrame,
) -> None:
    frame = parse_frame(captured_frame.raw)
    if captured_frame.label == "Keepalive":
        assert isinstance(frame, Keepalive)
        assert frame.wal_end > 0
        return
    assert isinstance(frame, XLogData)
    assert frame.payload == captured_frame.raw[25:]
    # Relation and Type messages (and a session's first Begin) come with 0/0 positions
    assert frame.wal_end >= frame.data_start
    assert frame.send_time > 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            xlogdata(0x1_0000_0010, 0x1_0000_0020, 1234, b"B..."),
            XLogData(Lsn("1/10"), Lsn("1/20"), 1234, b"B..."),
        ),
        (xlogdata(16, 16, -5, b""), XLogData(Lsn("0/10"), Lsn("0/10"), -5, b"")),
        (keepalive(0xFFFF, 99, 0), Keepalive(Lsn("0/FFFF"), 99, False)),
        (keepalive(1 << 40, 99, 1), Keepalive(Lsn("100/0"), 99, True)),
    ],
    ids=["xlogdata", "xlogdata-empty-payload", "keepalive", "keepalive-reply-requested"],
)
def test_frames_parse_into_their_fields(raw: bytes, expected: XLogData | Keepalive) -> None:
    assert parse_frame(raw) == expected


@pytest.mark.parametrize(
    ("raw", "offset", "reason"),
    [
        (b"", 0, "empty"),
        (b"x" + bytes(24), 0, "unknown CopyData frame tag 'x'"),
        (b"r" + bytes(33), 0, "unknown CopyData frame tag 'r'"),
        (b"w", 1, "XLogData header too short"),
        (xlogdata(1, 1, 1, b"")[:24], 24, "XLogData header too short"),
        (b"k", 1, "keepalive of 1 bytes"),
        (keepalive(1, 1, 0)[:17], 17, "keepalive of 17 bytes"),
        (keepalive(1, 1, 0) + b"\0", 18, "keepalive of 19 bytes"),
        (keepalive(1, 1, 2), 17, "bad reply flag 2"),
    ],
    ids=[
        "empty",
        "unknown-tag",
        "status-update-tag",
        "xlogdata-tag-only",
        "xlogdata-header-one-short",
        "keepalive-tag-only",
        "keepalive-one-short",
        "keepalive-one-long",
        "keepalive-bad-reply-flag",
    ],
)
def test_malformed_frames_raise_protocol_error_with_offset(
    raw: bytes, offset: int, reason: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame(raw)
    assert info.value.offset == offset
    assert reason in info.value.reason


def test_every_truncation_of_a_captured_frame_header_raises_protocol_error(
    captured_frame: CapturedFrame,
) -> None:
    header = 25 if captured_frame.label != "Keepalive" else len(captured_frame.raw)
    for n in range(header):
        with pytest.raises(ProtocolError):
            parse_frame(captured_frame.raw[:n])


@pytest.mark.parametrize("reply", [False, True], ids=["no-reply", "reply-requested"])
def test_standby_status_update_has_the_documented_layout(reply: bool) -> None:
    msg = standby_status_update(Lsn("1/30"), Lsn("1/20"), Lsn("1/10"), 789_000_000, reply=reply)
    # Byte1('r'), Int64 write, Int64 flush, Int64 apply, Int64 clock, Byte1 reply
    assert len(msg) == 1 + 8 * 4 + 1
    tag, write, flush, apply, clock, flag = struct.unpack("!cQQQqB", msg)
    assert tag == b"r"
    assert (write, flush, apply) == ((1 << 32) + 0x30, (1 << 32) + 0x20, (1 << 32) + 0x10)
    assert clock == 789_000_000
    assert flag == (1 if reply else 0)
