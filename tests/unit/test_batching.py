"""Folding: the net change per key of a batch, for keyed, full-row and insert-only tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import psycopg
import pytest

from replicator.apply import Refused, absorb, dead_letter_of, row_after
from replicator.batching import INSERT, UPDATE, TableBatch
from replicator.errors import SchemaError
from replicator.lsn import Lsn
from replicator.protocol.messages import UNCHANGED_TOAST, Begin, Datum

from .conftest import PlanFactory

U = UNCHANGED_TOAST

# Changes as (op, old, new) over rows (id, v, big): "I" insert new, "U" update (old is the
# 'K' key tuple when the key changed, else None), "D" delete old.
Op = tuple[str, list[Datum] | None, list[Datum] | None]


def row(key: str, v: str | None = None, big: Datum = b"big") -> list[Datum]:
    return [key.encode(), None if v is None else v.encode(), big]


def key_tuple(key: str) -> list[Datum]:
    return [key.encode(), None, None]  # what a 'K' tuple holds: the key, NULL elsewhere


def fold(make_plan: PlanFactory, ops: Sequence[Op]) -> TableBatch:
    tb = TableBatch(make_plan(["id", "v", "big"], ["id"]))
    for op, old, new in ops:
        if op == "I":
            assert new is not None
            tb.insert(list(new))
        elif op == "U":
            assert new is not None
            tb.update(None if old is None else list(old), list(new))
        else:
            assert old is not None
            tb.delete(list(old))
    return tb


def summary(tb: TableBatch) -> dict:
    """The batch as the apply sees it: deletes, updates (old key -> values), inserts."""
    return {
        "deleted": [k[0] for k in tb.deleted],
        "updates": {
            e.old_key[0] if e.old_key else None: e.values
            for e in tb.rows.values()
            if e.kind == UPDATE
        },
        "inserts": tb.inserts(),
    }


FOLDS = [
    (
        "insert-then-update-is-an-insert-of-the-new-values",
        [("I", None, row("1", "a")), ("U", None, row("1", "b"))],
        {"deleted": [], "updates": {}, "inserts": [row("1", "b")]},
    ),
    (
        "insert-then-update-with-unchanged-toast-keeps-the-inserted-value",
        [("I", None, row("1", "a", b"inserted")), ("U", None, row("1", "b", U))],
        {"deleted": [], "updates": {}, "inserts": [row("1", "b", b"inserted")]},
    ),
    (
        "update-then-update-merges-into-one-update",
        [("U", None, row("1", "a")), ("U", None, row("1", "b"))],
        {"deleted": [], "updates": {b"1": row("1", "b")}, "inserts": []},
    ),
    (
        "update-then-update-with-unchanged-toast-keeps-the-first-update-value",
        [("U", None, row("1", "a", b"new big")), ("U", None, row("1", "b", U))],
        {"deleted": [], "updates": {b"1": row("1", "b", b"new big")}, "inserts": []},
    ),
    (
        "updates-that-never-send-the-toast-value-leave-it-unchanged",
        [("U", None, row("1", "a", U)), ("U", None, row("1", "b", U))],
        {"deleted": [], "updates": {b"1": row("1", "b", U)}, "inserts": []},
    ),
    (
        "insert-then-delete-is-nothing",
        [("I", None, row("1", "a")), ("D", key_tuple("1"), None)],
        {"deleted": [], "updates": {}, "inserts": []},
    ),
    (
        "update-then-delete-is-a-delete-of-the-original-key",
        [("U", None, row("1", "a")), ("D", key_tuple("1"), None)],
        {"deleted": [b"1"], "updates": {}, "inserts": []},
    ),
    (
        "key-change-then-delete-deletes-the-original-key",
        [("U", key_tuple("1"), row("2", "a")), ("D", key_tuple("2"), None)],
        {"deleted": [b"1"], "updates": {}, "inserts": []},
    ),
    (
        "delete-then-insert-is-delete-then-insert",
        [("D", key_tuple("1"), None), ("I", None, row("1", "new"))],
        {"deleted": [b"1"], "updates": {}, "inserts": [row("1", "new")]},
    ),
    (
        "delete-insert-delete-is-a-delete",
        [("D", key_tuple("1"), None), ("I", None, row("1")), ("D", key_tuple("1"), None)],
        {"deleted": [b"1"], "updates": {}, "inserts": []},
    ),
    (
        "key-change-is-a-delete-of-the-old-key-and-an-insert",
        [("U", key_tuple("1"), row("2", "moved"))],
        {"deleted": [b"1"], "updates": {}, "inserts": [row("2", "moved")]},
    ),
    (
        "key-change-then-insert-of-the-old-key",
        [("U", key_tuple("1"), row("2", "moved")), ("I", None, row("1", "fresh"))],
        {"deleted": [b"1"], "updates": {}, "inserts": [row("2", "moved"), row("1", "fresh")]},
    ),
    (
        "key-change-chain-deletes-the-first-key-once",
        [
            ("U", key_tuple("1"), row("2", "a")),
            ("U", key_tuple("2"), row("3", "b")),
        ],
        {"deleted": [b"1"], "updates": {}, "inserts": [row("3", "b")]},
    ),
    (
        "key-change-and-back-replaces-the-row",
        [("U", key_tuple("1"), row("2", "a")), ("U", key_tuple("2"), row("1", "b"))],
        {"deleted": [b"1"], "updates": {}, "inserts": [row("1", "b")]},
    ),
    (
        "insert-then-key-change-is-an-insert-at-the-new-key",
        [("I", None, row("1", "a")), ("U", key_tuple("1"), row("2", "a"))],
        {"deleted": [], "updates": {}, "inserts": [row("2", "a")]},
    ),
    (
        "delete-then-key-change-onto-the-deleted-key",
        [("D", key_tuple("2"), None), ("U", key_tuple("1"), row("2", "a"))],
        {"deleted": [b"2", b"1"], "updates": {}, "inserts": [row("2", "a")]},
    ),
]


@pytest.mark.parametrize(("ops", "expected"), [f[1:] for f in FOLDS], ids=[f[0] for f in FOLDS])
def test_changes_of_one_key_fold_into_their_net_effect(
    make_plan: PlanFactory, ops: list[Op], expected: dict
) -> None:
    tb = fold(make_plan, ops)
    assert summary(tb) == expected
    assert tb.changes == len(ops)
    assert bool(tb) == any(expected.values())


def test_a_batch_of_only_inserts_keeps_them_in_source_order(make_plan: PlanFactory) -> None:
    tb = fold(make_plan, [("I", None, row(k)) for k in "314926"])
    assert tb.inserts() == [row(k) for k in "314926"]
    assert summary(tb)["updates"] == {}
    assert tb.deleted == {}


def test_inserts_after_a_fold_stay_in_the_batch(make_plan: PlanFactory) -> None:
    tb = fold(
        make_plan,
        [
            ("I", None, row("1")),
            ("D", key_tuple("1"), None),  # folds the insert away: the batch is empty again
            ("I", None, row("2")),
            ("U", None, row("3", "x")),
            ("I", None, row("4")),
        ],
    )
    assert summary(tb) == {
        "deleted": [],
        "updates": {b"3": row("3", "x")},
        "inserts": [row("2"), row("4")],
    }


def test_folding_never_modifies_the_rows_it_was_given(make_plan: PlanFactory) -> None:
    tb = TableBatch(make_plan(["id", "v", "big"], ["id"]))
    inserted = (b"1", b"a", b"big")
    updated = (b"1", b"b", U)  # a decoded tuple may be handed over as it is
    tb.insert(inserted)
    tb.update(None, updated)
    assert updated == (b"1", b"b", U)
    assert list(tb.inserts()[0]) == [b"1", b"b", b"big"]


def test_update_groups_collect_updates_by_their_unchanged_toast_positions(
    make_plan: PlanFactory,
) -> None:
    tb = TableBatch(make_plan(["id", "a", "b"], ["id"]))
    tb.update(None, [b"1", b"x", b"y"])
    tb.update(None, [b"2", U, b"y"])
    tb.update(None, [b"3", U, U])
    tb.update(None, [b"4", b"x", b"y"])
    tb.update(None, [b"5", U, b"y"])
    tb.insert([b"6", b"x", b"y"])
    groups = tb.update_groups()
    assert {skip: [e.values[0] for e in entries] for skip, entries in groups.items()} == {
        (): [b"1", b"4"],
        (1,): [b"2", b"5"],
        (1, 2): [b"3"],
    }
    assert all(e.kind == UPDATE for entries in groups.values() for e in entries)


def test_clear_empties_the_batch(make_plan: PlanFactory) -> None:
    tb = fold(
        make_plan, [("I", None, row("1")), ("U", None, row("2")), ("D", key_tuple("3"), None)]
    )
    assert tb
    tb.clear()
    assert not tb
    assert (tb.rows, tb.deleted, tb.ordered, tb.changes) == ({}, {}, [], 0)


def test_entries_know_their_kind(make_plan: PlanFactory) -> None:
    tb = fold(make_plan, [("I", None, row("1")), ("U", None, row("2"))])
    assert [e.kind for e in tb.rows.values()] == [INSERT, UPDATE]
    assert "INSERT" in repr(tb.rows[(b"1",)])


def test_keys_swapped_through_a_spare_key_fold_into_deletes_then_inserts(
    make_plan: PlanFactory,
) -> None:
    # 1->3, 2->1, 3->2 as the source ran it: deletes run first, inserts last, so no
    # statement ever moves a row onto a key another row still holds
    tb = fold(
        make_plan,
        [
            ("U", key_tuple("1"), row("3", "a")),
            ("U", key_tuple("2"), row("1", "b")),
            ("U", key_tuple("3"), row("2", "a")),
        ],
    )
    assert summary(tb) == {
        "deleted": [b"1", b"2"],
        "updates": {},
        "inserts": [row("1", "b"), row("2", "a")],
    }


def test_a_key_move_with_unknown_toast_values_is_refused_and_leaves_the_batch_as_it_was(
    make_plan: PlanFactory,
) -> None:
    tb = fold(make_plan, [("U", None, row("1", "a", U))])
    before = summary(tb)
    assert tb.update(key_tuple("1"), row("2", "moved", U)) is False
    assert summary(tb) == before
    assert tb.changes == 1


# --- tables without a key ------------------------------------------------------------------


def test_full_row_table_keeps_every_change_in_source_order(make_plan: PlanFactory) -> None:
    plan = make_plan(["a", "b"], identity="f")  # FULL, and the target has no key either
    assert plan.mode == "full_row"
    tb = TableBatch(plan)
    tb.insert([b"1", b"x"])
    tb.update([b"1", b"x"], [b"1", b"y"])
    tb.insert([b"1", b"y"])  # a duplicate row: nothing may fold
    tb.delete([b"1", b"y"])
    assert [(o.op, o.old, o.new) for o in tb.ordered] == [
        ("I", None, [b"1", b"x"]),
        ("U", [b"1", b"x"], [b"1", b"y"]),
        ("I", None, [b"1", b"y"]),
        ("D", [b"1", b"y"], None),
    ]
    assert tb.rows == {}
    assert tb.changes == 4


def test_full_identity_table_with_a_target_key_folds_by_that_key(make_plan: PlanFactory) -> None:
    plan = make_plan(["id", "v"], identity="f", target_pk=["id"])
    assert plan.mode == "keyed"
    tb = TableBatch(plan)
    tb.update([b"1", b"old"], [b"1", b"new"])
    tb.update([b"1", b"new"], [b"1", b"newer"])
    assert summary(tb) == {"deleted": [], "updates": {b"1": [b"1", b"newer"]}, "inserts": []}


def test_full_row_update_without_old_row_is_a_schema_error(make_plan: PlanFactory) -> None:
    tb = TableBatch(make_plan(["a", "b"], identity="f"))
    with pytest.raises(SchemaError, match="UPDATE cannot be matched"):
        tb.update(None, [b"1", b"x"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda tb: tb.update([b"x"], [b"y"]), "UPDATE cannot be matched"),
        (lambda tb: tb.delete([b"x"]), "DELETE cannot be matched"),
    ],
    ids=["update", "delete"],
)
def test_insert_only_table_rejects_updates_and_deletes(
    make_plan: PlanFactory, change: Callable[[TableBatch], None], match: str
) -> None:
    plan = make_plan(["v"], identity="n")
    assert plan.mode == "insert_only"
    tb = TableBatch(plan)
    tb.insert([b"x"])
    with pytest.raises(SchemaError, match=match):
        change(tb)
    assert [o.op for o in tb.ordered] == ["I"]


# --- the ordered log: source order kept beside the folded net changes -----------------------


def ops_of(changes: Sequence[tuple]) -> list[tuple[str, bytes]]:
    """(op, key) per logged change: the key a change finds its row by, or the new key."""
    return [(op, (old if op == "D" else new)[0]) for op, old, new, _ in changes]


def begin(n: int) -> Begin:
    return Begin(final_lsn=Lsn(n), commit_time=n, xid=n)


def test_the_log_keeps_every_change_in_source_order_across_the_insert_fast_path(
    make_plan: PlanFactory,
) -> None:
    tb = TableBatch(make_plan(["id", "v", "big"], ["id"]))
    history: list[tuple[Begin, Op]] = [
        (begin(1), ("I", None, row("1", "a"))),
        (begin(1), ("I", None, row("2", "a"))),
        (begin(2), ("U", None, row("1", "b"))),  # folds the fast-path inserts
        (begin(3), ("D", key_tuple("2"), None)),
        (begin(3), ("I", None, row("3", "c"))),
    ]
    for txn, (op, old, new) in history:
        tb.ref.begin = txn
        if op == "I":
            tb.insert(new)  # type: ignore[arg-type]
        elif op == "U":
            tb.update(old, new)  # type: ignore[arg-type]
        else:
            tb.delete(old)  # type: ignore[arg-type]
    changes = tb.in_order()
    assert ops_of(changes) == [("I", b"1"), ("I", b"2"), ("U", b"1"), ("D", b"2"), ("I", b"3")]
    assert [c[3] for c in changes] == [txn for txn, _ in history]


def test_inserts_still_on_the_fast_path_come_last_in_the_log(make_plan: PlanFactory) -> None:
    tb = fold(
        make_plan,
        [("I", None, row("1")), ("D", key_tuple("1"), None), ("I", None, row("2"))],
    )
    assert tb.appended == [row("2")]  # the batch emptied: inserts take the fast path again
    assert ops_of(tb.in_order()) == [("I", b"1"), ("D", b"1"), ("I", b"2")]


def test_a_logged_update_carries_the_toast_value_folded_from_earlier_in_the_batch(
    make_plan: PlanFactory,
) -> None:
    tb = fold(make_plan, [("U", None, row("1", "a", b"new big")), ("U", None, row("1", "b", U))])
    assert [new for _, _, new, _ in tb.in_order()] == [
        row("1", "a", b"new big"),
        row("1", "b", b"new big"),
    ]


def test_a_key_move_that_cannot_fold_is_not_logged(make_plan: PlanFactory) -> None:
    tb = fold(make_plan, [("U", None, row("1", "a", U))])
    assert tb.update(key_tuple("1"), row("2", "moved", U)) is False
    assert ops_of(tb.in_order()) == [("U", b"1")]


def test_take_hands_the_log_over_and_clear_empties_it(make_plan: PlanFactory) -> None:
    tb = fold(make_plan, [("U", None, row("1")), ("D", key_tuple("2"), None)])
    snap = tb.take()
    assert ops_of(snap.in_order()) == [("U", b"1"), ("D", b"2")]
    assert tb.in_order() == []
    snap.clear()
    assert snap.in_order() == []


@pytest.mark.parametrize(("ops", "expected"), [f[1:] for f in FOLDS], ids=[f[0] for f in FOLDS])
def test_split_parts_merged_back_in_order_fold_into_the_same_net_change(
    make_plan: PlanFactory, ops: list[Op], expected: dict
) -> None:
    parts = fold(make_plan, ops).split()
    assert len(parts) == len(ops)  # one part per source change, not per net change
    assert [p.changes for p in parts] == [1] * len(ops)
    assert summary(TableBatch.merge(parts)) == expected
    assert TableBatch.merge(parts).changes == len(ops)


def test_split_cuts_a_unique_value_chain_into_source_order_steps(make_plan: PlanFactory) -> None:
    # rows 1 ('x') and 2 ('z'): 1 takes 'y', 2 takes the freed 'x', 1 is touched again.
    # Folded, 2's update comes first (last touched order) and would collide with 1 still
    # holding 'x'; the parts apply 1's first update before 2's.
    tb = TableBatch(make_plan(["id", "v", "big"], ["id"]))
    for n, new in enumerate([row("1", "y"), row("2", "x"), row("1", "y", b"other")], 1):
        tb.ref.begin = begin(n)
        tb.update(None, new)
    assert list(tb.rows) == [(b"2",), (b"1",)]
    parts = tb.split()
    assert [summary(p)["updates"] for p in parts] == [
        {b"1": row("1", "y")},
        {b"2": row("2", "x")},
        {b"1": row("1", "y", b"other")},
    ]
    assert [e.txn for p in parts for e in p.rows.values()] == [begin(1), begin(2), begin(3)]
    # consecutive pieces refold in order: the first two are 1 then 2
    assert list(TableBatch.merge(parts[:2]).rows) == [(b"1",), (b"2",)]


def test_a_key_move_part_is_one_dead_letter_with_its_old_key(make_plan: PlanFactory) -> None:
    tb = TableBatch(make_plan(["id", "v", "big"], ["id"]))
    tb.ref.begin = begin(7)
    tb.update(key_tuple("1"), row("5", "a"))
    (part,) = tb.split()
    assert (list(part.deleted), list(part.rows)) == ([(b"1",)], [(b"5",)])
    letter = dead_letter_of(part)
    assert (letter.operation, letter.key, letter.old_key, letter.txn) == (
        "update",
        {"id": "5"},
        {"id": "1"},
        begin(7),
    )
    assert letter.row == {"id": "5", "v": "a", "big": "big"}


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (
            ("I", None, row("1", "a")),
            ("insert", {"id": "1"}, None, {"id": "1", "v": "a", "big": "big"}),
        ),
        (  # an unchanged TOAST value was never received: left out
            ("U", None, row("1", "a", U)),
            ("update", {"id": "1"}, {"id": "1"}, {"id": "1", "v": "a"}),
        ),
        (("D", key_tuple("1"), None), ("delete", {"id": "1"}, None, None)),
    ],
    ids=["insert", "update", "delete"],
)
def test_each_split_part_is_one_dead_letter(
    make_plan: PlanFactory, op: Op, expected: tuple
) -> None:
    (part,) = fold(make_plan, [op]).split()
    letter = dead_letter_of(part)
    assert (letter.operation, letter.key, letter.old_key, letter.row) == expected


def test_later_changes_of_a_refused_row_fold_onto_it_and_follow_its_key_move(
    make_plan: PlanFactory,
) -> None:
    tb = TableBatch(make_plan(["id", "v", "big"], ["id"]))
    history = [
        (None, row("1", "bad")),  # refused
        (None, row("2", "ok")),
        (key_tuple("1"), row("5", "bad")),  # row 1 moves to 5
        (None, row("5", "worse", U)),
    ]
    for n, (old, new) in enumerate(history, 1):
        tb.ref.begin = begin(n)
        tb.update(old, new)
    first, *rest = tb.split()
    refused = {row_after(first): Refused(first, psycopg.errors.CheckViolation())}
    kept = absorb(rest, refused)
    assert [summary(p)["updates"] for p in kept] == [{b"2": row("2", "ok")}]
    ((key, held),) = refused.items()
    assert (key, held.absorbed) == ((b"5",), True)
    letter = dead_letter_of(held.part)
    assert (letter.operation, letter.key, letter.old_key, letter.txn) == (
        "update",
        {"id": "5"},
        {"id": "1"},
        begin(4),
    )
    assert letter.row == {"id": "5", "v": "worse", "big": "big"}
