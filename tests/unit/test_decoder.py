"""The pgoutput decoder against real captured frames (PostgreSQL 15 and 18) and hand-built bytes.

Captured frames prove we read what the server really sends; hand-built messages
cover what a capture cannot produce on demand (malformed input, binary values,
catalog messages inside a stream).
"""

from __future__ import annotations

import copy
import datetime as dt
import pickle
import re
import struct
from typing import TypeVar

import pytest

from replicator.errors import ProtocolError
from replicator.lsn import Lsn
from replicator.protocol.decoder import PgOutputDecoder, decode_insert
from replicator.protocol.frames import XLogData, parse_frame
from replicator.protocol.messages import (
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    BinaryDatum,
    Column,
    Commit,
    CommitPrepared,
    Datum,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
    datetime_to_pg_timestamp,
    pg_timestamp_to_datetime,
)

from .conftest import CAPTURES, Capture, CapturedFrame

T = TypeVar("T")
MAJORS = sorted({c.major for c in CAPTURES})

# the capture script's labels (read from the tag byte) -> the class the decoder must return
LABEL_TYPES: dict[str, type] = {
    "Begin": Begin,
    "Commit": Commit,
    "Origin": Origin,
    "Relation": Relation,
    "Type": Type,
    "Insert": Insert,
    "Update": Update,
    "Delete": Delete,
    "Truncate": Truncate,
    "Message": LogicalMessage,
    "StreamStart": StreamStart,
    "StreamStop": StreamStop,
    "StreamCommit": StreamCommit,
    "StreamAbort": StreamAbort,
    "BeginPrepare": BeginPrepare,
    "Prepare": Prepare,
    "CommitPrepared": CommitPrepared,
    "RollbackPrepared": RollbackPrepared,
    "StreamPrepare": StreamPrepare,
}


def decoder_for(capture: Capture) -> PgOutputDecoder:
    return PgOutputDecoder(capture.proto_version, parallel_abort_info=capture.parallel_abort_info)


def capture_of(frame: CapturedFrame) -> Capture:
    return next(c for c in CAPTURES if c.id == frame.capture_id)


def payload(frame: CapturedFrame) -> bytes:
    parsed = parse_frame(frame.raw)
    assert isinstance(parsed, XLogData)
    return parsed.payload


def decode_all(capture: Capture) -> list[Message]:
    dec = decoder_for(capture)
    return [dec.decode(payload(f)) for f in capture.frames if f.label != "Keepalive"]


def of_type(msgs: list[Message], cls: type[T]) -> list[T]:
    return [m for m in msgs if isinstance(m, cls)]


# --- every captured frame ------------------------------------------------------------------


def test_fixtures_cover_postgresql_15_and_18_and_every_protocol_version() -> None:
    have = {(c.major, c.proto_version, c.scenario) for c in CAPTURES}
    basic = ["types", "key_change", "replica_identity", "toast", "truncate", "messages", "origin"]
    for major in (15, 18):
        for scenario in basic:
            assert (major, 1, scenario) in have
        assert (major, 2, "stream") in have
        assert (major, 3, "two_phase") in have
        assert (major, 3, "stream_prepare") in have
    assert (18, 4, "stream") in have


def test_every_captured_message_decodes_as_the_kind_its_tag_names(
    captured_message: CapturedFrame,
) -> None:
    capture = capture_of(captured_message)
    dec = decoder_for(capture)
    dec.in_stream = captured_message.in_stream
    msg = dec.decode(payload(captured_message))
    assert type(msg) is LABEL_TYPES[captured_message.label]
    expect_in_stream = (captured_message.in_stream or captured_message.label == "StreamStart") and (
        captured_message.label != "StreamStop"
    )
    assert dec.in_stream is expect_in_stream


def test_every_truncation_of_a_captured_message_raises_protocol_error(
    captured_message: CapturedFrame,
) -> None:
    capture = capture_of(captured_message)
    data = payload(captured_message)
    for n in range(len(data)):
        dec = decoder_for(capture)
        dec.in_stream = captured_message.in_stream
        with pytest.raises(ProtocolError) as info:  # never IndexError or struct.error
            dec.decode(data[:n])
        assert 0 <= info.value.offset <= n, f"prefix of {n} bytes"


def test_every_captured_message_with_a_byte_appended_raises_protocol_error(
    captured_message: CapturedFrame,
) -> None:
    dec = decoder_for(capture_of(captured_message))
    dec.in_stream = captured_message.in_stream
    data = payload(captured_message)
    with pytest.raises(ProtocolError, match="trailing") as info:
        dec.decode(data + b"\0")
    assert info.value.offset == len(data)


# --- what PostgreSQL sends, scenario by scenario ------------------------------------------

_BLOCK = r"(StreamStart (Type |Relation |Insert |Update |Delete )*StreamStop )"
EXPECTED_KINDS = {
    "types": r"Begin (Type ){3}Relation Insert Insert Commit ",
    "key_change": r"Begin Relation Update Update Delete Commit ",
    "replica_identity": (
        r"Begin Relation Insert Update Delete Relation Insert Relation Update Commit "
    ),
    "toast": r"Begin Relation Update Commit ",
    "truncate": (
        r"Begin Relation Insert Commit "
        r"Begin Relation Relation Truncate Commit "
        r"Begin Relation Relation Truncate Commit "
        r"Begin Relation Relation Relation Truncate Commit "
    ),
    "messages": r"Begin LogicalMessage Commit LogicalMessage ",
    "origin": r"Begin Origin Relation Insert Commit ",
    # PostgreSQL 18 no longer streams a transaction that has already aborted when it is
    # decoded, so the second (rolled back) transaction may not appear at all
    "stream": rf"{_BLOCK}+StreamAbort {_BLOCK}+StreamCommit ({_BLOCK}+StreamAbort )?",
    "two_phase": (
        r"BeginPrepare Relation Insert Prepare CommitPrepared "
        r"BeginPrepare Insert Prepare RollbackPrepared "
    ),
    "stream_prepare": rf"{_BLOCK}+StreamPrepare CommitPrepared ",
    "keepalive": r"",
}


def test_each_scenario_sends_the_message_kinds_postgresql_sends(capture: Capture) -> None:
    kinds = "".join(f"{type(m).__name__} " for m in decode_all(capture))
    assert re.fullmatch(EXPECTED_KINDS[capture.scenario], kinds), kinds


def test_changes_carry_an_xid_exactly_inside_stream_blocks(capture: Capture) -> None:
    dec = decoder_for(capture)
    for frame in capture.frames:
        if frame.label == "Keepalive":
            continue
        inside = dec.in_stream
        msg = dec.decode(payload(frame))
        if isinstance(msg, Insert | Update | Delete | Truncate | Relation | Type):
            assert (msg.xid is not None) is inside, frame.id


def test_every_commit_matches_its_begin(capture: Capture) -> None:
    begin: Begin | None = None
    for msg in decode_all(capture):
        match msg:
            case Begin():
                assert begin is None
                begin = msg
            case Commit():
                assert begin is not None
                assert msg.commit_lsn == begin.final_lsn
                assert msg.end_lsn > msg.commit_lsn
                assert msg.commit_time == begin.commit_time
                begin = None
    assert begin is None


# --- concrete values ------------------------------------------------------------------------

TYPE_MATRIX_ROW = (
    b"1",
    b"tab\there\nnew line\\backslash 'single' \"double\" " + "\N{GRINNING FACE}".encode(),
    b"NaN",
    b"Infinity",
    b"-0",
    b"\\x00ff00",
    b'{"a": [1, "x"]}',
    b'{"b": null}',
    b"{1,NULL,3}",
    b"00000000-0000-0000-0000-000000000001",
    b"192.168.0.1/24",
    b"1 day 02:03:04",
    b"infinity",
    b"happy",
    b"7",
    b'(1,"x y")',
)
TYPE_MATRIX_COLUMNS = [
    ("id", 23),
    ("t", 25),
    ("n", 1700),
    ("f", 701),
    ("fz", 701),
    ("b", 17),
    ("j", 114),
    ("jb", 3802),
    ("ia", 1007),
    ("u", 2950),
    ("ip", 869),
    ("iv", 1186),
    ("ts", 1184),
]


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_type_matrix_values_arrive_as_exact_server_text(
    major: int, captures: dict[tuple[int, int, str], Capture]
) -> None:
    msgs = decode_all(captures[(major, 1, "types")])
    first, second = of_type(msgs, Insert)
    assert first.new_tuple == TYPE_MATRIX_ROW
    assert second.new_tuple == (b"2",) + (None,) * 15


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_type_matrix_relation_describes_columns_key_and_user_types(
    major: int, captures: dict[tuple[int, int, str], Capture]
) -> None:
    msgs = decode_all(captures[(major, 1, "types")])
    (rel,) = of_type(msgs, Relation)
    assert (rel.namespace, rel.relation_name, rel.replica_identity) == (
        "public",
        "type_matrix",
        "d",
    )
    assert [(c.name, c.type_id) for c in rel.columns[:13]] == TYPE_MATRIX_COLUMNS
    assert [c.name for c in rel.columns if c.is_key] == ["id"]
    assert all(c.type_modifier == -1 for c in rel.columns)
    types = {t.type_id: (t.namespace, t.name) for t in of_type(msgs, Type)}
    by_name = {c.name: c.type_id for c in rel.columns}
    assert types[by_name["m"]] == ("public", "mood")
    # a domain's Type message names its base type; "" is how pg_catalog is sent
    assert types[by_name["d"]] == ("", "int4")
    assert types[by_name["c"]] == ("public", "pair")


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_unchanged_toast_value_arrives_as_the_unchanged_toast_marker(
    major: int, captures: dict[tuple[int, int, str], Capture]
) -> None:
    (update,) = of_type(decode_all(captures[(major, 1, "toast")]), Update)
    assert update.old_kind is None
    assert update.new_tuple == (b"1", UNCHANGED_TOAST, b"after")
    assert update.new_tuple[1] is UNCHANGED_TOAST


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_key_change_sends_the_old_key_and_delete_sends_the_key(
    major: int, captures: dict[tuple[int, int, str], Capture]
) -> None:
    msgs = decode_all(captures[(major, 1, "key_change")])
    (rel,) = of_type(msgs, Relation)
    moved, renamed = of_type(msgs, Update)
    (deleted,) = of_type(msgs, Delete)
    assert rel.columns[2].type_modifier == (12 << 16 | 2) + 4  # numeric(12, 2)
    assert (moved.old_kind, moved.old_tuple) == ("K", (b"1", None, None))
    assert moved.new_tuple == (b"10", b"alice", b"10.50")
    # the key did not change: no old tuple at all
    assert (renamed.old_kind, renamed.old_tuple) == (None, None)
    assert renamed.new_tuple == (b"2", b"bobby", b"20.00")
    assert (deleted.old_kind, deleted.old_tuple) == ("K", (b"10", None, None))


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_replica_identities_full_nothing_and_index_as_sent(
    major: int, captures: dict[tuple[int, int, str], Capture]
) -> None:
    msgs = decode_all(captures[(major, 1, "replica_identity")])
    full, nokey, by_index = of_type(msgs, Relation)
    assert (full.relation_name, full.replica_identity) == ("full_rows", "f")
    assert all(c.is_key for c in full.columns)  # FULL flags every column
    assert (nokey.relation_name, nokey.replica_identity) == ("nokey", "n")
    assert not any(c.is_key for c in nokey.columns)
    assert (by_index.relation_name, by_index.replica_identity) == ("by_index", "i")
    assert [c.is_key for c in by_index.columns] == [True, False]

    full_update, index_update = of_type(msgs, Update)
    assert (full_update.old_kind, full_update.old_tuple) == ("O", (b"1", b"one"))
    assert full_update.new_tuple == (b"1", b"uno")
    (full_delete,) = of_type(msgs, Delete)
    assert (full_delete.old_kind, full_delete.old_tuple) == ("O", (b"2", b"two"))
    assert (index_update.old_kind, index_update.old_tuple) == ("K", (b"a", None))
    assert index_update.new_tuple == (b"b", b"2")


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_truncate_carries_options_and_every_truncated_relation(
    major: int, captures: dict[tuple[int, int, str], Capture]
) -> None:
    msgs = decode_all(captures[(major, 1, "truncate")])
    names = {r.relation_id: r.relation_name for r in of_type(msgs, Relation)}
    got = [
        (t.options, t.cascade, t.restart_identity, [names[i] for i in t.relation_ids])
        for t in of_type(msgs, Truncate)
    ]
    assert got == [
        (0, False, False, ["trunc_b", "trunc_child"]),
        (2, False, True, ["trunc_b", "trunc_child"]),
        # CASCADE reaches trunc_child through its foreign key
        (1, True, False, ["trunc_a", "trunc_b", "trunc_child"]),
    ]


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_logical_messages_carry_transactional_flag_prefix_and_raw_content(
    major: int, captures: dict[tuple[int, int, str], Capture]
) -> None:
    msgs = decode_all(captures[(major, 1, "messages")])
    in_txn, outside = of_type(msgs, LogicalMessage)
    assert (in_txn.transactional, in_txn.flags, in_txn.prefix, in_txn.content) == (
        True,
        1,
        "capture",
        b"in a transaction",
    )
    assert (outside.transactional, outside.prefix, outside.content) == (
        False,
        "capture",
        b"\x00\x01hi\xff",
    )
    assert in_txn.xid is None
    assert outside.lsn > in_txn.lsn > 0


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_origin_message_names_the_origin_and_its_commit_lsn(
    major: int, captures: dict[tuple[int, int, str], Capture]
) -> None:
    msgs = decode_all(captures[(major, 1, "origin")])
    (origin,) = of_type(msgs, Origin)
    assert origin == Origin(Lsn("0/ABCDEF0"), "capture_origin")
    (begin,) = of_type(msgs, Begin)
    # pg_replication_origin_xact_setup() also sets the commit timestamp
    assert pg_timestamp_to_datetime(begin.commit_time) == dt.datetime(
        2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC
    )


@pytest.mark.parametrize(
    ("major", "proto"),
    [(m, p) for m in MAJORS for p in (2, 4) if p == 2 or m >= 16],
    ids=str,
)
def test_streamed_transaction_with_a_rolled_back_subtransaction(
    major: int, proto: int, captures: dict[tuple[int, int, str], Capture]
) -> None:
    msgs = decode_all(captures[(major, proto, "stream")])
    commit_index = next(i for i, m in enumerate(msgs) if isinstance(m, StreamCommit))
    first_txn = msgs[: commit_index + 1]
    starts = of_type(first_txn, StreamStart)
    xid = starts[0].xid
    assert [s.first_segment for s in starts] == [True] + [False] * (len(starts) - 1)
    assert {s.xid for s in starts} == {xid}
    (abort,) = of_type(first_txn, StreamAbort)
    assert abort.xid == xid
    assert abort.subxid != xid
    rolled_back = [i for i in of_type(first_txn, Insert) if i.xid == abort.subxid]
    assert [i.new_tuple for i in rolled_back] == [(b"2", b"rolled back")]
    assert of_type(first_txn, StreamCommit)[0].xid == xid
    if proto == 4:  # streaming = parallel: the abort says where and when
        assert abort.abort_lsn is not None
        assert abort.abort_lsn > 0
        assert abort.abort_time is not None
        assert abort.abort_time > 0
    else:
        assert (abort.abort_lsn, abort.abort_time) == (None, None)


def test_aborted_streamed_transaction_ends_in_stream_abort_of_its_own_xid(
    captures: dict[tuple[int, int, str], Capture],
) -> None:
    # PostgreSQL 15 streams it before it aborts; 18 skips transactions already aborted
    msgs = decode_all(captures[(15, 2, "stream")])
    commit_index = next(i for i, m in enumerate(msgs) if isinstance(m, StreamCommit))
    second = msgs[commit_index + 1 :]
    xid = of_type(second, StreamStart)[0].xid
    assert second[-1] == StreamAbort(xid, xid, None, None)


@pytest.mark.parametrize(
    ("major", "proto", "parallel", "ok"),
    [
        (18, 4, True, True),
        (18, 4, False, False),
        (15, 2, False, True),
        (15, 2, True, False),
    ],
    ids=["parallel-frames-parallel-decoder", "parallel-frames-plain-decoder",
         "plain-frames-plain-decoder", "plain-frames-parallel-decoder"],
)  # fmt: skip
def test_parallel_abort_info_decides_the_stream_abort_layout(
    major: int,
    proto: int,
    parallel: bool,
    ok: bool,
    captures: dict[tuple[int, int, str], Capture],
) -> None:
    capture = captures[(major, proto, "stream")]
    (frame,) = [f for f in capture.frames if f.label == "StreamAbort"][:1]
    dec = PgOutputDecoder(proto, parallel_abort_info=parallel)
    if ok:
        assert isinstance(dec.decode(payload(frame)), StreamAbort)
    else:
        with pytest.raises(ProtocolError, match=r"trailing|too short"):
            dec.decode(payload(frame))


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_two_phase_messages_tie_prepare_to_commit_and_rollback(
    major: int, captures: dict[tuple[int, int, str], Capture]
) -> None:
    msgs = decode_all(captures[(major, 3, "two_phase")])
    b1, b2 = of_type(msgs, BeginPrepare)
    p1, p2 = of_type(msgs, Prepare)
    (committed,) = of_type(msgs, CommitPrepared)
    (rolled_back,) = of_type(msgs, RollbackPrepared)
    for begin, prepare in ((b1, p1), (b2, p2)):
        assert (begin.prepare_lsn, begin.end_lsn, begin.xid, begin.gid) == (
            prepare.prepare_lsn,
            prepare.end_lsn,
            prepare.xid,
            prepare.gid,
        )
        assert prepare.flags == 0
    assert (b1.gid, b2.gid) == ("gid-commit", "gid-rollback")
    assert (committed.gid, committed.xid) == ("gid-commit", b1.xid)
    assert committed.commit_lsn >= p1.end_lsn
    assert (rolled_back.gid, rolled_back.xid) == ("gid-rollback", b2.xid)
    assert rolled_back.prepare_end_lsn == p2.end_lsn
    assert rolled_back.prepare_time == p2.prepare_time
    assert rolled_back.rollback_end_lsn > rolled_back.prepare_end_lsn
    assert [i.new_tuple for i in of_type(msgs, Insert)] == [
        (b"10", b"prepared then committed"),
        (b"11", b"prepared then rolled back"),
    ]


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_streamed_prepared_transaction_ends_in_stream_prepare(
    major: int, captures: dict[tuple[int, int, str], Capture]
) -> None:
    msgs = decode_all(captures[(major, 3, "stream_prepare")])
    xid = of_type(msgs, StreamStart)[0].xid
    (prepare,) = of_type(msgs, StreamPrepare)
    (committed,) = of_type(msgs, CommitPrepared)
    assert (prepare.xid, prepare.gid, prepare.flags) == (xid, "gid-stream", 0)
    assert (committed.xid, committed.gid) == (xid, "gid-stream")
    assert [i.new_tuple for i in of_type(msgs, Insert)] == [(b"20", b"streamed and prepared")]


# --- hand-built messages --------------------------------------------------------------------


def u8(v: int) -> bytes:
    return struct.pack("!B", v)


def i16(v: int) -> bytes:
    return struct.pack("!h", v)


def i32(v: int) -> bytes:
    return struct.pack("!i", v)


def u32(v: int) -> bytes:
    return struct.pack("!I", v)


def i64(v: int) -> bytes:
    return struct.pack("!q", v)


def u64(v: int) -> bytes:
    return struct.pack("!Q", v)


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def tup(*values: Datum) -> bytes:
    out = i16(len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED_TOAST:
            out += b"u"
        elif isinstance(v, BinaryDatum):
            out += b"b" + i32(len(v.data)) + v.data
        else:
            assert isinstance(v, bytes)
            out += b"t" + i32(len(v)) + v
    return out


def relation_bytes(ident: bytes = b"d", ncols: int = 1, xid: bytes = b"") -> bytes:
    cols = b"".join(u8(1) + cstr(f"c{i}") + u32(23) + i32(-1) for i in range(ncols))
    return b"R" + xid + u32(16384) + cstr("public") + cstr("t") + ident + i16(ncols) + cols


def decode(data: bytes, proto: int = 1, *, in_stream: bool = False, parallel: bool = False):
    dec = PgOutputDecoder(proto, parallel_abort_info=parallel)
    dec.in_stream = in_stream
    return dec.decode(data)


@pytest.mark.parametrize(
    ("data", "proto", "in_stream", "expected"),
    [
        (
            b"B" + u64(0x100) + i64(5) + u32(7),
            1,
            False,
            Begin(Lsn("0/100"), 5, 7),
        ),
        (
            b"O" + u64(0x20) + cstr("ünï"),
            1,
            False,
            Origin(Lsn("0/20"), "ünï"),
        ),
        (
            b"Y" + u32(99) + u32(16500) + cstr("app") + cstr("mood"),
            2,
            True,
            Type(99, 16500, "app", "mood"),
        ),
        (
            b"R" + u32(99) + u32(16384) + cstr("") + cstr("pg_thing") + b"n" + i16(2)
            + u8(0) + cstr("a") + u32(1043) + i32(36) + u8(1) + cstr("Mixed Case") + u32(25)
            + i32(-1),
            2,
            True,
            Relation(
                99, 16384, "", "pg_thing", "n",
                (Column(0, "a", 1043, 36), Column(1, "Mixed Case", 25, -1)),
            ),
        ),
        (
            b"I" + u32(16384) + b"N" + tup(BinaryDatum(b"\x00\x00\x00\x01"), b"", None),
            1,
            False,
            Insert(None, 16384, (BinaryDatum(b"\x00\x00\x00\x01"), b"", None)),
        ),
        (
            b"I" + u32(16384) + b"N" + tup(),
            1,
            False,
            Insert(None, 16384, ()),
        ),
        (
            b"U" + u32(5) + u32(16384) + b"O" + tup(b"1", UNCHANGED_TOAST) + b"N"
            + tup(b"1", UNCHANGED_TOAST),
            2,
            True,
            Update(5, 16384, "O", (b"1", UNCHANGED_TOAST), (b"1", UNCHANGED_TOAST)),
        ),
        (
            b"D" + u32(5) + u32(16384) + b"K" + tup(b"1", None),
            2,
            True,
            Delete(5, 16384, "K", (b"1", None)),
        ),
        (
            b"T" + u32(5) + i32(2) + u8(3) + u32(16384) + u32(16390),
            2,
            True,
            Truncate(5, 3, (16384, 16390)),
        ),
        (
            b"T" + i32(0) + u8(0),
            1,
            False,
            Truncate(None, 0, ()),
        ),
        (
            b"M" + u32(5) + u8(1) + u64(0x30) + cstr("p") + i32(0),
            2,
            True,
            LogicalMessage(5, 1, Lsn("0/30"), "p", b""),
        ),
        (
            b"c" + u32(5) + u8(0) + u64(0x40) + u64(0x48) + i64(9),
            2,
            False,
            StreamCommit(5, 0, Lsn("0/40"), Lsn("0/48"), 9),
        ),
        (
            b"p" + u8(0) + u64(0x40) + u64(0x48) + i64(9) + u32(5) + cstr("g"),
            3,
            False,
            StreamPrepare(0, Lsn("0/40"), Lsn("0/48"), 9, 5, "g"),
        ),
    ],
    ids=[
        "begin",
        "origin-non-ascii-name",
        "type-in-stream",
        "relation-in-stream-pg-catalog-typmod",
        "insert-binary-empty-and-null",
        "insert-zero-columns",
        "update-full-old-row-unchanged-toast-in-stream",
        "delete-in-stream",
        "truncate-in-stream-cascade-restart",
        "truncate-no-relations",
        "message-in-stream-empty-content",
        "stream-commit",
        "stream-prepare",
    ],
)  # fmt: skip
def test_hand_built_messages_decode_to_their_fields(
    data: bytes, proto: int, in_stream: bool, expected: Message
) -> None:
    assert decode(data, proto, in_stream=in_stream) == expected


def test_stream_abort_carries_lsn_and_time_only_with_parallel_abort_info() -> None:
    plain = b"A" + u32(5) + u32(6)
    parallel = plain + u64(0x50) + i64(11)
    assert decode(plain, 2) == StreamAbort(5, 6, None, None)
    assert decode(parallel, 4, parallel=True) == StreamAbort(5, 6, Lsn("0/50"), 11)


def test_relation_in_pg_catalog_is_named_with_its_schema() -> None:
    rel = decode(b"R" + u32(1) + cstr("") + cstr("x") + b"d" + i16(0))
    assert isinstance(rel, Relation)
    assert rel.qualified_name == "pg_catalog.x"


def _at(prefix: bytes, rest: bytes) -> tuple[bytes, int]:
    """A message and the offset where ``rest`` begins: where the error must point."""
    return prefix + rest, len(prefix)


_I_HEAD = b"I" + u32(1) + b"N"
_M_HEAD = b"M" + u8(1) + u64(1) + cstr("p")
_R_HEAD = b"R" + u32(1) + cstr("public") + cstr("t")
_COMMIT = b"C" + u8(0) + u64(1) + u64(2) + i64(3)

MALFORMED = [
    # (id, message, offset, proto, in_stream, reason)
    ("empty", b"", 0, 1, False, "empty"),
    ("unknown-tag", b"Z" + bytes(8), 0, 1, False, "unknown message tag 'Z'"),
    ("stream-tag-on-proto-1", b"S" + u32(1) + u8(1), 0, 1, False, "unknown message tag 'S'"),
    ("two-phase-tag-on-proto-2", b"b" + bytes(30), 0, 2, False, "unknown message tag 'b'"),
    ("commit-prepared-tag-on-proto-2", b"K" + bytes(30), 0, 2, False, "unknown message tag"),
    ("begin-final-lsn-unset", b"B" + u64(0) + i64(1) + u32(1), 1, 1, False, "final_lsn"),
    ("trailing-byte", _COMMIT + b"\0", len(_COMMIT), 1, False, "1 trailing byte"),
    ("commit-unknown-flags", b"C" + u8(1) + bytes(24), 1, 1, False, "unrecognized flags 1"),
    (
        "stream-commit-unknown-flags",
        b"c" + u32(1) + u8(2) + bytes(24),
        5,
        2,
        False,
        "unrecognized flags 2",
    ),
    ("prepare-unknown-flags", b"P" + u8(1) + bytes(40), 1, 3, False, "unrecognized flags"),
    (
        "commit-prepared-unknown-flags",
        b"K" + u8(4) + bytes(40),
        1,
        3,
        False,
        "unrecognized flags",
    ),
    (
        "rollback-prepared-unknown-flags",
        b"r" + u8(1) + bytes(48),
        1,
        3,
        False,
        "unrecognized flags",
    ),
    ("stream-prepare-unknown-flags", b"p" + u8(1) + bytes(40), 1, 3, False, "unrecognized"),
    ("message-unknown-flags", b"M" + u8(2) + u64(1) + cstr("p") + i32(0), 1, 1, False, "flags 2"),
    (
        "message-negative-content-length",
        *_at(_M_HEAD, i32(-1)),
        1,
        False,
        "negative length -1",
    ),
    ("message-content-too-short", *_at(_M_HEAD + i32(5), b"abc"), 1, False, "too short"),
    ("truncate-negative-count", b"T" + i32(-1) + u8(0), 1, 1, False, "negative relation count"),
    ("truncate-unknown-options", b"T" + i32(0) + u8(4), 5, 1, False, "unknown truncate options"),
    (
        "stream-start-bad-first-segment",
        b"S" + u32(1) + u8(2),
        5,
        2,
        False,
        "bad first_segment flag 2",
    ),
    ("stream-start-inside-stream", b"S" + u32(1) + u8(1), 0, 2, True, "inside a streamed"),
    ("stream-stop-outside-stream", b"E", 0, 2, False, "outside a streamed"),
    ("relation-bad-replica-identity", *_at(_R_HEAD, b"z" + i16(0)), 1, False, "identity 'z'"),
    (
        "relation-negative-column-count",
        *_at(_R_HEAD + b"d", i16(-1)),
        1,
        False,
        "negative column count",
    ),
    (
        "relation-unknown-column-flags",
        *_at(_R_HEAD + b"d" + i16(1), u8(2) + cstr("a") + u32(23) + i32(-1)),
        1,
        False,
        "unknown column flags 2",
    ),
    (
        "relation-unterminated-namespace",
        *_at(b"R" + u32(1), b"public"),
        1,
        False,
        "unterminated string for namespace",
    ),
    (
        "relation-invalid-utf8-name",
        *_at(b"R" + u32(1) + cstr("public"), b"\xff\xfe\0d" + i16(0)),
        1,
        False,
        "invalid UTF-8 in relation_name",
    ),
    ("insert-bad-tuple-marker", b"I" + u32(1) + b"X" + tup(), 5, 1, False, "'N'"),
    (
        "insert-bad-tuple-marker-in-stream",
        b"I" + u32(7) + u32(1) + b"K" + tup(),
        9,
        2,
        True,
        "'N'",
    ),
    (
        "unknown-tuple-kind",
        *_at(_I_HEAD + i16(2) + b"t" + i32(1) + b"x", b"z"),
        1,
        False,
        "unknown tuple column kind 'z'",
    ),
    ("negative-tuple-column-count", *_at(_I_HEAD, i16(-1)), 1, False, "negative column count"),
    (
        "negative-column-length",
        *_at(_I_HEAD + i16(1) + b"t", i32(-1)),
        1,
        False,
        "bad length -1",
    ),
    (
        "column-length-beyond-message",
        *_at(_I_HEAD + i16(1) + b"t", i32(10) + b"abc"),
        1,
        False,
        "bad length 10",
    ),
    (
        "binary-column-negative-length",
        *_at(_I_HEAD + i16(1) + b"b", i32(-2)),
        1,
        False,
        "bad length -2",
    ),
    (
        "column-count-beyond-message",
        *_at(_I_HEAD + i16(2) + b"n", b""),
        1,
        False,
        "too short for new tuple column 1",
    ),
    ("update-bad-first-marker", b"U" + u32(1) + b"X" + tup(), 5, 1, False, "got 'X'"),
    (
        "update-old-tuple-not-followed-by-new",
        *_at(b"U" + u32(1) + b"K" + tup(b"1"), b"K" + tup(b"1")),
        1,
        False,
        "got 'K'",
    ),
    ("delete-new-tuple-marker", b"D" + u32(1) + b"N" + tup(b"1"), 5, 1, False, "got 'N'"),
    (
        "stream-abort-parallel-too-short",
        *_at(b"A" + u32(1) + u32(1) + u64(1), b""),
        4,
        False,
        "too short for abort_time",
    ),
]


@pytest.mark.parametrize(
    ("data", "offset", "proto", "in_stream", "reason"),
    [
        pytest.param(
            *case[1:],
            id=case[0],
        )
        for case in MALFORMED
    ],
)
def test_malformed_messages_raise_protocol_error_at_the_offending_byte(
    data: bytes, offset: int, proto: int, in_stream: bool, reason: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(data, proto, in_stream=in_stream, parallel=proto == 4)
    assert info.value.offset == offset
    assert reason in str(info.value)


# --- decode_insert: the Insert fast path ---------------------------------------------------


def captured_inserts() -> list[tuple[str, bytes]]:
    return [
        (f.id, payload(f))
        for c in CAPTURES
        for f in c.frames
        if f.label == "Insert" and not f.in_stream
    ]


def test_decode_insert_agrees_with_decode_on_every_captured_insert() -> None:
    inserts = captured_inserts()
    assert len(inserts) > 10
    for frame_id, data in inserts:
        msg = decode(data)
        assert isinstance(msg, Insert)
        assert decode_insert(data) == (msg.relation_id, msg.new_tuple), frame_id


def test_decode_insert_rejects_every_truncation_of_a_captured_insert() -> None:
    for _, data in captured_inserts():
        for n in range(len(data)):
            with pytest.raises(ProtocolError):
                decode_insert(data[:n])
        with pytest.raises(ProtocolError, match="trailing"):
            decode_insert(data + b"\0")


@pytest.mark.parametrize(
    ("data", "offset", "reason"),
    [
        pytest.param(b"U" + u32(1) + b"N" + tup(b"1"), 0, "not an Insert", id="not-an-insert"),
        pytest.param(b"I" + u32(1) + b"K" + tup(b"1"), 5, "'N'", id="bad-marker"),
        pytest.param(*_at(_I_HEAD + i16(1) + b"t", i32(-1)), "bad length -1", id="negative-length"),
        pytest.param(
            *_at(_I_HEAD + i16(1) + b"t", i32(9) + b"abc"), "bad length 9", id="length-overrun"
        ),
        pytest.param(*_at(_I_HEAD + i16(1), b"z"), "kind 'z'", id="unknown-kind"),
        pytest.param(
            *_at(_I_HEAD + i16(1) + b"b" + i32(1) + b"\x01", b"\0"),
            "1 trailing byte",
            id="binary-column-then-trailing-byte",
        ),
        pytest.param(
            *_at(_I_HEAD, i16(-1)),
            "negative column count",
            id="negative-column-count",
        ),
    ],
)
def test_decode_insert_is_as_strict_as_decode(data: bytes, offset: int, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_insert(data)
    assert info.value.offset == offset
    assert reason in str(info.value)


def test_decode_insert_reads_binary_values_like_decode() -> None:
    data = _I_HEAD + tup(BinaryDatum(b"\x00\x01"), None, UNCHANGED_TOAST, b"")
    assert decode_insert(data) == (1, (BinaryDatum(b"\x00\x01"), None, UNCHANGED_TOAST, b""))


def test_protocol_error_names_the_message_tag() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(_COMMIT + b"\0")
    assert info.value.tag == "C"
    assert "'C' message" in str(info.value)


@pytest.mark.parametrize("proto", [0, 5], ids=["zero", "five"])
def test_decoder_refuses_protocol_versions_it_does_not_know(proto: int) -> None:
    with pytest.raises(ValueError, match="proto_version"):
        PgOutputDecoder(proto)


def test_stream_start_and_stop_toggle_the_stream_state() -> None:
    dec = PgOutputDecoder(2)
    assert dec.decode(b"S" + u32(9) + u8(1)) == StreamStart(9, True)
    assert dec.in_stream
    # inside the block a change carries its (sub)transaction xid
    assert dec.decode(b"I" + u32(10) + u32(1) + b"N" + tup(b"x")) == Insert(10, 1, (b"x",))
    assert dec.decode(b"E") == StreamStop()
    assert not dec.in_stream
    assert dec.decode(b"I" + u32(1) + b"N" + tup(b"x")) == Insert(None, 1, (b"x",))


# --- message values -------------------------------------------------------------------------


def test_unchanged_toast_is_one_value_through_copy_and_pickle() -> None:
    assert copy.deepcopy(UNCHANGED_TOAST) is UNCHANGED_TOAST
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST
    assert type(UNCHANGED_TOAST)() is UNCHANGED_TOAST
    assert UNCHANGED_TOAST is not None
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"


@pytest.mark.parametrize(
    ("us", "when"),
    [
        (0, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)),
        (-1, dt.datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC)),
        (757_479_845_000_001, dt.datetime(2024, 1, 2, 3, 4, 5, 1, tzinfo=dt.UTC)),
    ],
    ids=["epoch", "before-epoch", "with-microseconds"],
)
def test_protocol_timestamps_convert_both_ways(us: int, when: dt.datetime) -> None:
    assert pg_timestamp_to_datetime(us) == when
    assert datetime_to_pg_timestamp(when) == us
