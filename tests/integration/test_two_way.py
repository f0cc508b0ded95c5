"""Two-way sync: warehouse <-> portal without echoes, with conflict rules that converge."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tests.plugins.pg import TwoWay, run_cli, wait_for_equal
from tests.support import assert_stable, execute, scalar, snapshot, wait_until

CONSENTS = """
CREATE TABLE consents (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    citizen int NOT NULL,
    mobile text,
    status text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def both(tw: TwoWay, *statements: str) -> None:
    execute(tw.a, *statements)
    execute(tw.b, *statements)


def same(tw: TwoWay) -> bool:
    return snapshot(tw.a, "public.consents") == snapshot(tw.b, "public.consents")


def state(tw: TwoWay) -> tuple:
    """Row versions and every origin's progress, on both sides."""
    out = []
    for dsn in (tw.a, tw.b):
        with psycopg.connect(dsn) as conn:
            out.append(conn.execute("SELECT id, xmin::text FROM consents ORDER BY id").fetchall())
            out.append(
                conn.execute(
                    "SELECT external_id, remote_lsn::text FROM pg_replication_origin_status"
                    " WHERE external_id LIKE %s ORDER BY 1",
                    [f"%{tw.name}%"],
                ).fetchall()
            )
    return tuple(map(tuple, out))


def test_changes_on_each_side_arrive_on_the_other_and_nothing_echoes(two_way: TwoWay, daemon):
    tw = two_way
    both(tw, CONSENTS)
    table = {"source": "consents", "conflict": "newer_wins:updated_at"}
    d = daemon(tw.config([table], [table]))
    execute(
        tw.a, "INSERT INTO consents (citizen, status) SELECT g, 'a' FROM generate_series(1, 50) g"
    )
    execute(
        tw.b, "INSERT INTO consents (citizen, status) SELECT g, 'b' FROM generate_series(51, 80) g"
    )
    wait_until(
        lambda: (
            scalar(tw.a, "SELECT count(*) FROM consents") == 80
            and scalar(tw.b, "SELECT count(*) FROM consents") == 80
        ),
        timeout=60,
        reason="inserts crossed both ways",
    )
    execute(
        tw.a,
        "UPDATE consents SET status = 'by-a', updated_at = clock_timestamp() WHERE citizen > 70",
    )  # rows born on b
    execute(tw.b, "DELETE FROM consents WHERE citizen <= 5")  # rows born on a
    wait_until(lambda: same(tw), timeout=60, reason="both sides equal")
    assert scalar(tw.b, "SELECT count(*) FROM consents WHERE status = 'by-a'") == 10
    # quiet now: no row is rewritten and no origin moves, on either side, for 10 s
    assert_stable(lambda: state(tw), seconds=10)
    assert d.alive()


@pytest.mark.parametrize(
    ("rule", "options", "winner"),
    [
        ("newer_wins:updated_at", ({}, {}), "b"),  # b's update carries the later timestamp
        ("target_wins", ({}, {}), "b"),  # last writer wins: b committed last
        ("newer_wins:updated_at", ({"priority": 1}, {}), "a"),  # a tie goes to a's priority
    ],
    ids=["newer-wins", "target-wins-last-writer", "newer-wins-tie-priority"],
)
def test_concurrent_updates_of_one_row_converge_and_the_conflict_is_logged(
    two_way: TwoWay, daemon, rule, options, winner
):
    tw = two_way
    both(tw, CONSENTS)
    table = {"source": "consents", "conflict": rule}
    d = daemon(tw.config([table], [table], a_to_b_options=options[0], b_to_a_options=options[1]))
    execute(
        tw.a,
        "INSERT INTO consents (id, citizen, status, updated_at)"
        " VALUES ('00000000-0000-0000-0000-000000000001', 1, 'new', '2026-01-01')",
    )
    wait_until(
        lambda: scalar(tw.b, "SELECT count(*) FROM consents") == 1, timeout=30, reason="row on b"
    )
    assert d.stop() == 0  # both sides change the row before either hears of the other
    tie = winner == "a"
    execute(tw.a, "UPDATE consents SET status = 'a', updated_at = '2026-06-01 10:00'")
    execute(
        tw.b,
        f"UPDATE consents SET status = 'b', updated_at = "
        f"'{'2026-06-01 10:00' if tie else '2026-06-01 10:05'}'",
    )
    d.start()
    wait_until(
        lambda: (
            scalar(tw.a, "SELECT status FROM consents") == winner
            and scalar(tw.b, "SELECT status FROM consents") == winner
        ),
        timeout=60,
        reason=f"both sides keep {winner}'s row",
    )
    wait_until(lambda: same(tw), timeout=30, reason="identical rows")
    logged = [scalar(dsn, "SELECT count(*) FROM replicator.conflicts") for dsn in (tw.a, tw.b)]
    assert sum(logged) >= 1
    loser_side = tw.b if winner == "b" else tw.a
    row = (
        psycopg.connect(loser_side)
        .execute("SELECT kind, winner, key, source_lsn IS NOT NULL FROM replicator.conflicts")
        .fetchone()
    )
    assert row is not None
    assert row[0] == "update_older"
    assert row[1] == "target"
    assert row[2] == {"id": "00000000-0000-0000-0000-000000000001"}
    assert row[3]


def test_a_masked_column_edited_on_the_portal_never_reaches_the_original(two_way, daemon):
    tw = two_way
    both(tw, CONSENTS)
    a_to_b = {"source": "consents", "mask": {"mobile": "partial:4"}}
    b_to_a = {"source": "consents", "exclude": ["mobile"]}
    daemon(tw.config([a_to_b], [b_to_a]))
    execute(tw.a, "INSERT INTO consents (citizen, mobile, status) VALUES (1, '9876543210', 'x')")
    wait_until(
        lambda: scalar(tw.b, "SELECT mobile FROM consents") == "******3210",
        timeout=30,
        reason="masked on the portal",
    )
    execute(tw.b, "UPDATE consents SET mobile = '0000000000', status = 'edited'")
    wait_until(
        lambda: scalar(tw.a, "SELECT status FROM consents") == "edited",
        timeout=30,
        reason="the portal's edit arrives",
    )
    assert scalar(tw.a, "SELECT mobile FROM consents") == "9876543210"


def test_only_the_rows_that_lost_are_logged_as_conflicts(two_way: TwoWay, daemon):
    tw = two_way
    both(tw, CONSENTS)
    table = {"source": "consents", "conflict": "newer_wins:updated_at"}
    # b -> a loses ties: its newer_wins comparison is the strict one
    d = daemon(tw.config([table], [table], a_to_b_options={"priority": 1}))
    execute(
        tw.a,
        "INSERT INTO consents (id, citizen, status) VALUES"
        " ('00000000-0000-0000-0000-000000000001', 1, 'a'),"
        " ('00000000-0000-0000-0000-000000000002', 2, 'a')",
    )
    wait_until(
        lambda: scalar(tw.b, "SELECT count(*) FROM consents") == 2, timeout=30, reason="on b"
    )
    assert d.stop() == 0
    # one transaction on b changes both rows; a changes row 2 again after it: on a, b's
    # row 1 applies and b's row 2 loses, in the same batch
    execute(tw.b, "UPDATE consents SET status = 'b', updated_at = clock_timestamp()")
    execute(
        tw.a, "UPDATE consents SET status = 'a2', updated_at = clock_timestamp() WHERE citizen = 2"
    )
    d.start()
    wait_until(lambda: same(tw), timeout=30, reason="both sides equal")
    assert scalar(tw.a, "SELECT string_agg(status, ',' ORDER BY citizen) FROM consents") == "b,a2"
    with psycopg.connect(tw.a) as conn:
        logged = conn.execute("SELECT key, kind, winner FROM replicator.conflicts").fetchall()
    assert logged == [({"id": "00000000-0000-0000-0000-000000000002"}, "update_older", "target")]


def test_a_masked_column_converges_even_when_its_row_loses_on_the_portal(two_way, daemon):
    tw = two_way
    both(tw, CONSENTS)
    rule = "newer_wins:updated_at"
    a_to_b = {"source": "consents", "mask": {"mobile": "partial:4"}, "conflict": rule}
    b_to_a = {"source": "consents", "exclude": ["mobile"], "conflict": rule}
    d = daemon(tw.config([a_to_b], [b_to_a]))
    execute(tw.a, "INSERT INTO consents (citizen, mobile, status) VALUES (1, '9876511111', 'x')")
    wait_until(
        lambda: scalar(tw.b, "SELECT mobile FROM consents") == "******1111",
        timeout=30,
        reason="masked on the portal",
    )
    assert d.stop() == 0
    # the warehouse changes the mobile, then the portal changes the status a moment later:
    # the portal's row is newer and wins, but only the warehouse carries the mobile
    execute(tw.a, "UPDATE consents SET mobile = '9876522222', updated_at = clock_timestamp()")
    execute(tw.b, "UPDATE consents SET status = 'portal', updated_at = clock_timestamp()")
    d.start()
    wait_until(
        lambda: scalar(tw.a, "SELECT status FROM consents") == "portal",
        timeout=30,
        reason="the newer portal row wins on the warehouse",
    )
    wait_until(
        lambda: scalar(tw.b, "SELECT mobile FROM consents") == "******2222",
        timeout=30,
        reason="the new mobile reaches the portal, masked",
    )
    assert scalar(tw.b, "SELECT status FROM consents") == "portal"
    assert scalar(tw.a, "SELECT mobile FROM consents") == "9876522222"


def test_run_refuses_a_masked_column_flowing_back_over_its_original(two_way, daemon):
    tw = two_way
    both(tw, CONSENTS)
    table = {"source": "consents", "mask": {"mobile": "partial:4"}}
    d = daemon(tw.config([table], [{"source": "consents"}]), setup=False, start=False)
    res = run_cli("run", "-c", str(d.config_path))
    assert res.returncode == 1
    assert f"pipeline 'ba_{tw.name}' would copy public.consents.mobile" in res.stderr
    assert "add 'mobile' to `exclude`" in res.stderr


def test_bank_transfers_are_applied_atomically_in_every_sample(two_way: TwoWay, daemon):
    tw = two_way
    both(tw, "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)")
    execute(tw.a, "INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 100) g")
    d = daemon(
        tw.config([{"source": "accounts"}], [], b_to_a_options={})
        | {"pipeline": [tw.config([{"source": "accounts"}], [])["pipeline"][0]]}
    )
    wait_until(
        lambda: scalar(tw.b, "SELECT count(*) FROM accounts") == 100,
        timeout=60,
        reason="accounts copied",
    )
    stop = threading.Event()
    sums: list[int] = []

    def transfers() -> None:
        import random  # noqa: PLC0415

        rng = random.Random(5)
        with psycopg.connect(tw.a, autocommit=True) as conn:
            while not stop.is_set():
                x, y = rng.sample(range(1, 101), 2)
                amount = rng.randint(1, 50)
                with conn.transaction():
                    conn.execute(
                        "UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, x)
                    )
                    conn.execute(
                        "UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, y)
                    )

    t = threading.Thread(target=transfers)
    t.start()
    try:
        with psycopg.connect(tw.b, autocommit=True) as conn:
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                sums.append(conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0])
    finally:
        stop.set()
        t.join()
    assert len(sums) > 50
    assert set(sums) == {100_000}
    wait_until(
        lambda: snapshot(tw.a, "public.accounts") == snapshot(tw.b, "public.accounts"),
        timeout=60,
        reason="caught up",
    )
    assert d.alive()


PEOPLE = "CREATE TABLE people (id int PRIMARY KEY, v int NOT NULL)"


def test_target_wins_keeps_source_changes_made_while_the_initial_copy_ran(dbs, daemon):
    # track_commit_timestamp is on on the test clusters: target_wins compares commit times
    for dsn in (dbs.src, dbs.dst):
        execute(dsn, PEOPLE)
    execute(dbs.src, "INSERT INTO people SELECT g, 0 FROM generate_series(1, 20) g")
    with psycopg.connect(dbs.dst) as blocker:
        # the copy waits on this lock after the slot (and its snapshot) exist
        blocker.execute("LOCK TABLE people IN ACCESS SHARE MODE")
        daemon(dbs.config([{"source": "people", "conflict": "target_wins"}]))
        wait_until(
            lambda: (
                scalar(
                    dbs.dst,
                    "SELECT count(*) FROM pg_locks WHERE NOT granted"
                    " AND relation = 'public.people'::regclass AND database = (SELECT oid"
                    " FROM pg_database WHERE datname = current_database())",
                )
                == 1
            ),
            timeout=60,
            reason="the copy waits for the target table",
        )
        assert scalar(dbs.src, "SELECT count(*) FROM pg_replication_slots") == 1
        # after the snapshot, before the copied rows commit
        execute(
            dbs.src,
            "UPDATE people SET v = 1 WHERE id <= 5",
            "DELETE FROM people WHERE id = 20",
            "INSERT INTO people VALUES (21, 1)",
        )
        blocker.rollback()
    wait_for_equal(dbs.src, dbs.dst, ["public.people"])
    assert scalar(dbs.dst, "SELECT count(*) FROM people WHERE v = 1") == 6
    assert scalar(dbs.dst, "SELECT count(*) FROM replicator.conflicts") == 0


def test_target_wins_logs_a_delete_it_refuses(dbs, daemon):
    for dsn in (dbs.src, dbs.dst):
        execute(dsn, PEOPLE)
    execute(dbs.src, "INSERT INTO people SELECT g, 0 FROM generate_series(1, 3) g")
    d = daemon(dbs.config([{"source": "people", "conflict": "target_wins"}]))
    wait_for_equal(dbs.src, dbs.dst, ["public.people"])
    assert d.stop() == 0
    execute(dbs.src, "DELETE FROM people WHERE id IN (1, 2)")
    execute(dbs.dst, "UPDATE people SET v = 5 WHERE id = 1")  # changed here after the delete
    d.start()
    wait_until(
        lambda: scalar(dbs.dst, "SELECT count(*) FROM people WHERE id = 2") == 0,
        timeout=60,
        reason="the delete of an untouched row applies",
    )
    assert scalar(dbs.dst, "SELECT v FROM people WHERE id = 1") == 5  # the target's row won
    with psycopg.connect(dbs.dst) as conn:
        logged = conn.execute(
            "SELECT key, kind, winner, source_lsn IS NOT NULL FROM replicator.conflicts"
        ).fetchall()
    assert logged == [({"id": "1"}, "delete_older", "target", True)]
