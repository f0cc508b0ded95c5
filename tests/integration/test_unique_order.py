"""Non-key UNIQUE constraints: changes folded across transactions apply as the source
ordered them, and only a change the target rejects in that order is a dead letter."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.plugins.pg import DbPair, wait_for_equal
from tests.support import execute, scalar, wait_until

# ``big`` is stored out of line: an update that leaves it alone sends it as unchanged
# TOAST, which puts that row in another update group than a row that sets it
DDL = (
    "CREATE TABLE u (id int PRIMARY KEY, email text UNIQUE, n int NOT NULL DEFAULT 0,"
    " big text); ALTER TABLE u ALTER COLUMN big SET STORAGE EXTERNAL"
)
GATE = "CREATE TABLE gate (id int PRIMARY KEY)"
SEED = (
    "INSERT INTO u (id, email, big)"
    " SELECT id, email, repeat('b', 5000) FROM (VALUES (1, 'x'), (2, 'z'), (3, 'q')) v(id, email)"
)


def letters(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT operation, key, error_class FROM replicator.dead_letters ORDER BY id"
        ).fetchall()


def folded_history(dbs: DbPair, daemon: Any, history: list[str], *, target_ddl: str = "") -> Any:
    """Seed, replicate, then run ``history`` (one source transaction per statement) so that
    it folds into one batch: a lock held on the target keeps the applier waiting on an
    earlier transaction until the daemon has received all of ``history``, which is then
    in its queue and folds together (max_delay_ms and max_changes leave room for it)."""
    execute(dbs.src, DDL, SEED, GATE)
    execute(dbs.dst, DDL, GATE, *([target_ddl] if target_ddl else []))
    d = daemon(
        dbs.config(
            [{"source": "u"}, {"source": "gate"}],
            pipeline={"batch": {"max_delay_ms": 60_000, "max_changes": 100_000}},
        )
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.u"])
    with psycopg.connect(dbs.dst) as hold:
        hold.execute("LOCK TABLE gate IN ACCESS EXCLUSIVE MODE")
        execute(dbs.src, "INSERT INTO gate VALUES (1)")
        wait_until(
            lambda: scalar(
                dbs.dst,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND application_name LIKE 'replicator:%:apply'",
            ),
            timeout=30,
            reason="the applier waits for the gate",
        )
        with psycopg.connect(dbs.src, autocommit=True) as conn:
            for statement in history:
                conn.execute(statement)  # type: ignore[arg-type]  # literal test SQL
            end = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        wait_until(
            lambda: scalar(
                dbs.src,
                "SELECT write_lsn >= %s::pg_lsn FROM pg_stat_replication r"
                " JOIN pg_replication_slots s ON s.active_pid = r.pid"
                " WHERE s.database = current_database()",
                [end],
            ),
            timeout=30,
            reason="the daemon received the whole history",
        )
        hold.rollback()
    return d


HISTORIES = [
    (
        "chain-freed-value-taken-then-first-row-touched-again",
        [
            "UPDATE u SET email = 'y' WHERE id = 1",
            "UPDATE u SET email = 'x' WHERE id = 2",
            "UPDATE u SET n = n + 1 WHERE id = 1",
        ],
    ),
    (
        "swap-through-a-temporary-value",
        [
            "UPDATE u SET email = 'tmp' WHERE id = 1",
            "UPDATE u SET email = 'x' WHERE id = 2",
            "UPDATE u SET email = 'z' WHERE id = 1",
        ],
    ),
    (
        # freed values passed on along three rows, in three later transactions; the first
        # row changes again last, so folding puts it last. The update groups differ too
        # (``big`` set, or left as unchanged TOAST).
        "freed-values-reused-by-other-rows-later",
        [
            "UPDATE u SET email = 'w' WHERE id = 1",  # frees 'x'
            "UPDATE u SET email = 'x', big = 'small' WHERE id = 2",  # takes 'x', frees 'z'
            "UPDATE u SET email = 'z' WHERE id = 3",  # takes 'z'
            "UPDATE u SET n = 1 WHERE id = 1",
        ],
    ),
]


@pytest.mark.parametrize("history", [h for _, h in HISTORIES], ids=[i for i, _ in HISTORIES])
def test_valid_unique_history_folded_into_one_batch_applies_with_no_dead_letter(
    dbs: DbPair, daemon: Any, history: list[str]
) -> None:
    d = folded_history(dbs, daemon, history)
    wait_for_equal(dbs.src, dbs.dst, ["public.u"])
    assert letters(dbs.dst) == []
    assert d.alive()


def test_only_the_row_the_target_rejects_is_a_dead_letter_among_order_dependent_changes(
    dbs: DbPair, daemon: Any
) -> None:
    history = [
        "UPDATE u SET email = 'tmp' WHERE id = 1",
        "UPDATE u SET email = 'x' WHERE id = 2",
        "UPDATE u SET email = 'z' WHERE id = 1",
        "UPDATE u SET n = -1 WHERE id = 3",  # the target's own CHECK refuses this one
        "INSERT INTO u (id, email) VALUES (4, 'tmp')",
    ]
    d = folded_history(
        dbs, daemon, history, target_ddl="ALTER TABLE u ADD CONSTRAINT positive CHECK (n >= 0)"
    )
    wait_until(lambda: len(letters(dbs.dst)) >= 1, timeout=60, reason="the bad row is refused")
    wait_until(
        lambda: scalar(dbs.dst, "SELECT count(*) FROM u WHERE id = 4") == 1,
        timeout=60,
        reason="the rest of the batch applies",
    )
    assert letters(dbs.dst) == [("update", {"id": "3"}, "23514")]
    # everything but the refused row matches the source
    execute(dbs.src, "UPDATE u SET n = 0 WHERE id = 3")
    wait_for_equal(dbs.src, dbs.dst, ["public.u"])
    assert len(letters(dbs.dst)) == 1
    assert d.alive()
