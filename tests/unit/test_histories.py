"""The differential test's history generator and episode planner: pure and seeded."""

from __future__ import annotations

import pytest

from tests import histories
from tests.differential import FAULTS, plan_episode, replay_command

SAVEPOINTS = {"savepoint", "rollback_to", "release"}


def test_the_same_seed_gives_the_same_history_and_another_seed_another():
    a, b = histories.generate(7), histories.generate(7)
    assert a == b
    assert a.transactions  # something to compare
    assert histories.generate(8) != a


def test_every_operation_kind_is_produced():
    seen: set[str] = set()
    for seed in range(40):
        seen |= histories.generate(seed).ops
    assert seen == set(histories.FEATURES)
    kinds = {
        s.kind
        for seed in range(40)
        for tx in histories.generate(seed).transactions
        for s in tx.stmts
    }
    assert kinds == {
        "insert",
        "update",
        "delete",
        "truncate",
        "savepoint",
        "rollback_to",
        "release",
    }


@pytest.mark.parametrize("off", histories.FEATURES)
def test_a_feature_switched_off_is_never_exercised(off):
    features = set(histories.FEATURES) - {off}
    for seed in range(15):
        h = histories.generate(seed, features)
        assert off not in h.ops
        if off == "multi_statement":
            for tx in h.transactions:
                data = [
                    s for s in tx.stmts if s.kind not in ("savepoint", "rollback_to", "release")
                ]
                swap = "unique_swap_tx" in tx.ops or "delete" in tx.ops or "fk" in tx.ops
                assert len(data) == 1 or swap or "savepoint" in tx.ops
        if off == "truncate_fk":
            assert not any(
                set(s.tables) & {"parent", "child"}
                for tx in (*h.initial, *h.transactions)
                for s in tx.stmts
            )


def test_swaps_leave_the_unique_column_unique_at_every_commit():
    """The model behind the generator: replay the statements and check the unique column
    never holds a value twice after a statement (PostgreSQL checks it per statement)."""
    for seed in range(30):
        h = histories.generate(seed)
        rows: dict[int, str] = {}
        for tx in (*h.initial, *h.transactions):
            before, saved = dict(rows), {}
            for s in tx.stmts:
                if s.kind == "savepoint":
                    saved[s.name] = dict(rows)
                elif s.kind == "rollback_to":
                    rows = dict(saved[s.name])
                elif s.table == "u" and s.kind == "insert":
                    r = dict(s.row)
                    rows[r["id"]] = r["email"]
                elif s.table == "u" and s.kind == "update":
                    (_, old), r = s.key[0], dict(s.row)
                    assert old in rows, f"seed {seed}: update of a missing row {old}"
                    email = r.get("email", rows.pop(old))
                    rows.pop(old, None)
                    rows[r.get("id", old)] = email
                elif s.table == "u" and s.kind == "delete":
                    del rows[s.key[0][1]]
                elif s.kind == "truncate" and "u" in s.tables:  # CASCADE reaches only child
                    rows.clear()
                assert len(set(rows.values())) == len(rows), f"seed {seed}: duplicate email"
            if not tx.commit:
                rows = before


def test_features_parse_from_a_spec_and_unknown_ones_are_refused():
    assert histories.parse_features("all") == frozenset(histories.FEATURES)
    assert histories.parse_features("all,-unique_swap_tx") == frozenset(histories.FEATURES) - {
        "unique_swap_tx"
    }
    assert histories.parse_features("insert,update") == {"insert", "update"}
    with pytest.raises(ValueError, match="unknown feature 'swaps'"):
        histories.parse_features("all,-swaps")


def test_an_episode_plan_is_a_function_of_its_seed():
    a, b = plan_episode(3), plan_episode(3)
    assert a == b
    assert plan_episode(4) != a
    # each history's transactions are all scheduled, faults only of the kinds asked for
    for i, h in enumerate(a.histories):
        assert a.order.count(i) == len(h.transactions)
    assert all(kind in FAULTS for _, kind in a.faults)
    assert all(kind == "kill" for _, kind in plan_episode(3, faults=["kill"]).faults)
    assert not plan_episode(3, faults=[]).faults
    assert "--episode 3 " in replay_command(a, 15)
