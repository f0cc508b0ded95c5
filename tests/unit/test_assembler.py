"""Transaction assembly: framing checks, chunking of large transactions, origin skipping."""

from __future__ import annotations

import pytest

from replicator.assembler import Assembler, NonTransactional, TxnChunk
from replicator.errors import StreamStateError
from replicator.lsn import Lsn
from replicator.protocol.decoder import PgOutputDecoder
from replicator.protocol.frames import XLogData, parse_frame
from replicator.protocol.messages import (
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    StreamAbort,
    StreamStart,
    Truncate,
    Type,
    Update,
)

from .conftest import Capture

REL = Relation(None, 16384, "public", "t", "d", (Column(1, "id", 23, -1),))
OTHER = Relation(None, 16390, "public", "u", "d", (Column(1, "id", 23, -1),))
FINAL = Lsn("0/1000")


def begin(xid: int = 7, final: Lsn = FINAL) -> Begin:
    return Begin(final, 100, xid)


def commit(final: Lsn = FINAL) -> Commit:
    return Commit(0, final, Lsn(int(final) + 0x30), 100)


def insert(i: int, rid: int = REL.relation_id) -> Insert:
    return Insert(None, rid, (str(i).encode(),))


def message(*, transactional: bool) -> LogicalMessage:
    return LogicalMessage(None, int(transactional), Lsn("0/900"), "app", b"hi")


def feed_all(asm: Assembler, msgs: list[Message], nbytes: int = 10) -> list:
    out = []
    for n, m in enumerate(msgs):
        item = asm.feed(m, Lsn(0x100 + n), nbytes)
        if item is not None:
            out.append(item)
    return out


def test_a_transaction_becomes_one_chunk_carrying_its_commit() -> None:
    asm = Assembler()
    (chunk,) = feed_all(asm, [begin(), REL, insert(1), insert(2), commit()])
    assert isinstance(chunk, TxnChunk)
    assert chunk.xid == 7
    assert chunk.items == [REL, insert(1), insert(2)]
    assert chunk.commit == commit()
    assert chunk.first
    assert not chunk.skipped
    assert chunk.origin is None
    assert chunk.nbytes == 30
    assert not asm.in_transaction
    assert asm.transactions == 1
    assert asm.relation(REL.relation_id) == REL


@pytest.mark.parametrize(
    ("msgs", "match"),
    [
        ([REL, insert(1)], "Insert outside a transaction"),
        ([REL, Update(None, REL.relation_id, None, None, (b"1",))], "Update outside"),
        ([REL, Delete(None, REL.relation_id, "K", (b"1",))], "Delete outside"),
        ([REL, Truncate(None, 0, (REL.relation_id,))], "Truncate outside"),
        ([begin(), begin(8)], "Begin of xid 8 .* inside xid 7"),
        ([commit()], "Commit outside"),
        ([begin(), REL, commit(Lsn("0/2000"))], "Commit LSN 0/2000 of xid 7 does not match"),
        ([begin(), insert(1)], "Insert for undescribed relation 16384"),
        ([begin(), REL, insert(1, OTHER.relation_id)], "undescribed relation 16390"),
        (
            [begin(), REL, Truncate(None, 0, (REL.relation_id, OTHER.relation_id))],
            "Truncate of undescribed relation 16390",
        ),
        ([Origin(Lsn("0/1"), "x")], "Origin outside"),
        ([begin(), REL, insert(1), Origin(Lsn("0/1"), "x")], "Origin after changes"),
        ([message(transactional=True)], "transactional message outside"),
        ([StreamStart(7, True)], "StreamStart .* options this pipeline never requests"),
        ([StreamAbort(7, 8, None, None)], "StreamAbort"),
    ],
    ids=[
        "insert-outside-begin",
        "update-outside-begin",
        "delete-outside-begin",
        "truncate-outside-begin",
        "begin-inside-transaction",
        "commit-outside-transaction",
        "commit-lsn-mismatch",
        "insert-for-undescribed-relation",
        "insert-for-other-undescribed-relation",
        "truncate-of-undescribed-relation",
        "origin-outside-transaction",
        "origin-after-changes",
        "transactional-message-outside-transaction",
        "stream-start",
        "stream-abort",
    ],
)
def test_framing_errors_raise_stream_state_error(msgs: list[Message], match: str) -> None:
    asm = Assembler()
    *ok, bad = msgs
    feed_all(asm, ok)
    with pytest.raises(StreamStateError, match=match):
        asm.feed(bad, Lsn("0/500"), 10)


@pytest.mark.parametrize(
    ("chunk_items", "chunk_bytes", "changes", "sizes"),
    [
        (3, 1 << 30, 7, [3, 3, 1]),
        (3, 1 << 30, 6, [3, 3, 0]),
        (1000, 25, 7, [3, 3, 1]),
        (1, 1 << 30, 2, [1, 1, 0]),
    ],
    ids=["by-item-count", "exact-multiple-ends-empty", "by-bytes", "one-item-chunks"],
)
def test_large_transaction_is_cut_into_chunks_and_only_the_last_carries_commit(
    chunk_items: int, chunk_bytes: int, changes: int, sizes: list[int]
) -> None:
    asm = Assembler(chunk_items=chunk_items, chunk_bytes=chunk_bytes)
    # the Relation counts as an item too: it travels with the changes that need it
    msgs: list[Message] = [begin(), REL, *(insert(i) for i in range(changes - 1)), commit()]
    chunks = feed_all(asm, msgs)
    assert [len(c.items) for c in chunks] == sizes
    assert [c.commit is not None for c in chunks] == [False] * (len(sizes) - 1) + [True]
    assert [c.first for c in chunks] == [True] + [False] * (len(sizes) - 1)
    assert {c.xid for c in chunks} == {7}
    assert [i for c in chunks for i in c.items] == msgs[1:-1]
    assert asm.transactions == 1


def test_transaction_from_a_skipped_origin_yields_only_its_commit_and_relations() -> None:
    asm = Assembler(skip_origins=frozenset({"replicator_back"}), chunk_items=1)
    msgs: list[Message] = [
        begin(),
        Origin(Lsn("0/77"), "replicator_back"),
        REL,
        insert(1),
        insert(2),
        message(transactional=True),
        commit(),
    ]
    (chunk,) = feed_all(asm, msgs)
    assert chunk.skipped
    # the relation is described once per session: a later transaction needs it applied
    assert chunk.items == [REL]
    assert chunk.commit == commit()  # progress still moves past it
    assert chunk.origin == "replicator_back"
    assert (asm.transactions, asm.skipped_transactions) == (1, 1)
    # the relation was still learned: a later transaction may use it
    assert asm.relation(REL.relation_id) == REL


def test_transaction_from_another_origin_is_kept_and_names_it() -> None:
    asm = Assembler(skip_origins=frozenset({"replicator_back"}))
    (chunk,) = feed_all(
        asm, [begin(), Origin(Lsn("0/77"), "someone_else"), REL, insert(1), commit()]
    )
    assert not chunk.skipped
    assert chunk.origin == "someone_else"
    assert chunk.items == [REL, insert(1)]
    assert asm.skipped_transactions == 0


def test_non_transactional_message_outside_a_transaction_is_its_own_work_item() -> None:
    asm = Assembler()
    msg = message(transactional=False)
    assert asm.feed(msg, Lsn("0/900"), 10) == NonTransactional(msg, Lsn("0/900"))
    assert not asm.in_transaction


def test_messages_inside_a_transaction_travel_with_its_changes() -> None:
    asm = Assembler()
    in_txn = message(transactional=True)
    (chunk,) = feed_all(asm, [begin(), in_txn, REL, insert(1), commit()])
    assert chunk.items == [in_txn, REL, insert(1)]


def test_type_messages_are_dropped_and_relations_outside_transactions_are_learned() -> None:
    asm = Assembler()
    assert asm.feed(Type(None, 16500, "public", "mood"), Lsn("0/1"), 10) is None
    assert asm.feed(REL, Lsn("0/1"), 10) is None
    (chunk,) = feed_all(asm, [begin(), insert(1), commit()])
    assert chunk.items == [insert(1)]


def test_a_later_relation_message_replaces_the_earlier_description() -> None:
    asm = Assembler()
    widened = Relation(
        None, REL.relation_id, "public", "t", "d", (*REL.columns, Column(0, "v", 25, -1))
    )
    feed_all(asm, [begin(), REL, insert(1), commit(), begin(8), widened, commit()])
    assert asm.relation(REL.relation_id) == widened


def test_empty_transaction_yields_one_empty_chunk() -> None:
    asm = Assembler()
    (chunk,) = feed_all(asm, [begin(), commit()])
    assert chunk.items == []
    assert chunk.commit == commit()


@pytest.mark.parametrize(
    ("major", "scenario"),
    [(m, s) for m in (15, 18) for s in ("types", "key_change", "replica_identity", "toast",
                                         "truncate", "messages", "origin")],
    ids=str,
)  # fmt: skip
def test_captured_proto_1_streams_assemble_without_errors(
    major: int, scenario: str, captures: dict[tuple[int, int, str], Capture]
) -> None:
    capture = captures[(major, 1, scenario)]
    dec = PgOutputDecoder(1)
    asm = Assembler(skip_origins=frozenset({"capture_origin"}))
    items = []
    for f in capture.frames:
        frame = parse_frame(f.raw)
        assert isinstance(frame, XLogData)
        item = asm.feed(dec.decode(frame.payload), frame.data_start, len(frame.payload))
        if item is not None:
            items.append(item)
    assert not asm.in_transaction
    chunks = [i for i in items if isinstance(i, TxnChunk)]
    assert all(c.commit is not None for c in chunks)
    assert all(c.skipped == (scenario == "origin") for c in chunks)


# --- raw changes (kept undecoded until the applier folds them) ---------------------------


def raw_insert(rid: int = REL.relation_id, size: int = 10) -> bytes:
    return b"I" + rid.to_bytes(4, "big") + b"N" + b"\0" * (size - 6)


def test_raw_changes_join_the_chunk_as_bytes_and_count_their_size() -> None:
    asm = Assembler()
    feed_all(asm, [begin(), REL])
    assert asm.feed_change(raw_insert(size=12), 0x100) is None
    (chunk,) = feed_all(asm, [commit()])
    assert chunk.items == [REL, raw_insert(size=12)]
    assert chunk.nbytes == 10 + 12


@pytest.mark.parametrize(
    ("prefix", "payload", "match"),
    [
        ([REL], raw_insert(), "'I' change outside a transaction"),
        ([begin(), REL], b"U\0\0", "truncated 'U' change"),
        ([begin()], raw_insert(), "undescribed relation 16384"),
        ([begin(), REL], raw_insert(OTHER.relation_id), "undescribed relation 16390"),
    ],
    ids=["outside-transaction", "truncated", "undescribed-relation", "other-relation"],
)
def test_raw_change_framing_errors_raise_stream_state_error(
    prefix: list[Message], payload: bytes, match: str
) -> None:
    asm = Assembler()
    feed_all(asm, prefix)
    with pytest.raises(StreamStateError, match=match):
        asm.feed_change(payload, 0x500)


def test_raw_changes_are_chunked_like_decoded_ones() -> None:
    asm = Assembler(chunk_items=2)
    feed_all(asm, [begin(), REL])
    out = [asm.feed_change(raw_insert(), 0x100 + i) for i in range(3)]
    (final,) = feed_all(asm, [commit()])
    handed = [c for c in out if c is not None]
    # the Relation and three changes: two full chunks, then the commit in an empty one
    assert [len(c.items) for c in (*handed, final)] == [2, 2, 0]
    assert [c.commit is not None for c in (*handed, final)] == [False, False, True]


def test_raw_changes_of_a_skipped_origin_are_dropped() -> None:
    asm = Assembler(skip_origins=frozenset({"replicator_back"}))
    feed_all(asm, [begin(), Origin(Lsn("0/1"), "replicator_back"), REL])
    assert asm.feed_change(raw_insert(), 0x100) is None
    (chunk,) = feed_all(asm, [commit()])
    assert (chunk.skipped, chunk.items) == (True, [REL])
