"""The streaming core on real servers: what goes in on the source comes out on the target."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from replicator.lsn import Lsn
from tests.plugins.pg import DbPair, wait_for_equal
from tests.support import execute, scalar, snapshot, wait_until

TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE public.types (
    id int PRIMARY KEY,
    t text, e text, n numeric, f8 float8, b bytea, j json, jb jsonb,
    arr int[], tarr text[], u uuid, ip inet, iv interval, ts timestamptz,
    m mood, d posint, c pair
);
"""

TYPES_ROWS = r"""
INSERT INTO types VALUES
 (1, E'tab\there\nnewline\rcr\\back ''q" \\N 😀 नमस्ते', '', 'NaN', 'Infinity', '\x00ff00',
  '{"b": 1,   "a": [1, 2]}', '{"b": 1, "a": 2}', '{1,NULL,3}', ARRAY[E'a\tb', NULL, '\N', ''],
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '1 year 2 mons 3 days 04:05:06.789',
  'infinity', 'happy', 5, ROW(1, E'x\ty')),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL),
 (3, '\N', 'x', '-1.5e-10', '-0', '\x', '[]', '[]', '{}', '{}',
  '00000000-0000-0000-0000-000000000000', '::1', '-1 days -00:00:01', '-infinity', 'sad', 1,
  ROW(NULL, NULL));
"""


def both(dbs: DbPair, *sql: str) -> None:
    execute(dbs.src, *sql)
    execute(dbs.dst, *sql)


def test_type_matrix_round_trips_exactly_through_insert_update_delete(dbs, daemon):
    both(dbs, TYPES_DDL)
    d = daemon(dbs.config([{"source": "public.types"}]))
    execute(dbs.src, TYPES_ROWS)
    wait_for_equal(dbs.src, dbs.dst, ["public.types"])
    execute(
        dbs.src,
        r"UPDATE types SET t = E'new\\\tvalue', f8 = '-Infinity', j = '{ }', arr = '{NULL}',"
        " e = NULL WHERE id = 1",
        "UPDATE types SET e = '', n = 1e-20, b = '\\xdeadbeef' WHERE id = 2",
        "DELETE FROM types WHERE id = 3",
        "INSERT INTO types (id, t) VALUES (4, '')",
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.types"])
    assert snapshot(dbs.dst, "public.types")[0].startswith("(1,")
    assert d.stop() == 0


def test_composite_and_uuid_keys_follow_key_updates(dbs, daemon):
    both(
        dbs,
        "CREATE TABLE comp (a int, b text, v text, PRIMARY KEY (a, b))",
        "CREATE TABLE ukey (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), v int)",
    )
    daemon(dbs.config([{"source": "comp"}, {"source": "ukey"}]))
    execute(
        dbs.src,
        "INSERT INTO comp SELECT g % 10, 'k' || g, 'v' FROM generate_series(1, 200) g",
        "INSERT INTO ukey (v) SELECT g FROM generate_series(1, 100) g",
        "UPDATE comp SET b = b || '-moved' WHERE a = 3",
        "UPDATE comp SET a = a + 100, v = 'both' WHERE a = 4",
        "UPDATE ukey SET id = gen_random_uuid() WHERE v <= 50",
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.comp", "public.ukey"])


def test_insert_update_delete_of_one_key_fold_within_and_across_transactions(dbs, daemon):
    both(dbs, "CREATE TABLE f (id int PRIMARY KEY, v text)")
    daemon(dbs.config([{"source": "f"}], pipeline={"batch": {"max_delay_ms": 2000}}))
    with psycopg.connect(dbs.src) as conn:
        conn.execute("INSERT INTO f VALUES (1, 'a'), (2, 'a'), (3, 'a')")
        conn.execute("UPDATE f SET v = 'b' WHERE id = 1")
        conn.execute("DELETE FROM f WHERE id = 2")
        conn.execute("INSERT INTO f VALUES (2, 'again')")
        conn.execute("UPDATE f SET id = 30 WHERE id = 3")
        conn.execute("INSERT INTO f VALUES (3, 'reused')")
        conn.commit()
    with psycopg.connect(dbs.src, autocommit=True) as conn:
        for i in range(50):  # many small transactions on the same keys, folded in one batch
            conn.execute("UPDATE f SET v = %s WHERE id = 1", [f"v{i}"])
            conn.execute("INSERT INTO f VALUES (100, 'tmp')")
            conn.execute("DELETE FROM f WHERE id = 100")
            conn.execute("UPDATE f SET id = id + 1000 WHERE id = 30")
            conn.execute("UPDATE f SET id = id - 1000 WHERE id = 1030")
    wait_for_equal(dbs.src, dbs.dst, ["public.f"])


def test_unchanged_toast_value_survives_update_of_another_column(dbs, daemon):
    both(dbs, "CREATE TABLE doc (id int PRIMARY KEY, body text, n int)")
    big = "".join(random.choice("abcdefghij") for _ in range(200_000))  # incompressible-ish
    execute(dbs.src, f"INSERT INTO doc VALUES (1, '{big}', 0), (2, 'small', 0)")
    daemon(dbs.config([{"source": "doc"}]))
    # the row arrives by an update, so the target only learns body from the stream
    execute(dbs.dst, f"INSERT INTO doc VALUES (1, '{big}', 0), (2, 'small', 0)")
    execute(dbs.src, "UPDATE doc SET n = n + 1")
    wait_until(
        lambda: scalar(dbs.dst, "SELECT sum(n) FROM doc") == 2, timeout=30, reason="updates applied"
    )
    assert scalar(dbs.dst, "SELECT length(body) FROM doc WHERE id = 1") == 200_000
    assert scalar(dbs.dst, "SELECT md5(body) FROM doc WHERE id = 1") == scalar(
        dbs.src, "SELECT md5(body) FROM doc WHERE id = 1"
    )


def test_replica_identity_full_changes_exactly_one_of_duplicate_rows(dbs, daemon):
    both(dbs, "CREATE TABLE dup (a int, b text, j json)")
    execute(dbs.src, "ALTER TABLE dup REPLICA IDENTITY FULL")
    daemon(dbs.config([{"source": "dup"}]))
    execute(
        dbs.src,
        """INSERT INTO dup VALUES (1, 'x', '{"k": 1}'), (1, 'x', '{"k": 1}'), (1, 'x', '{"k": 1}'),
           (2, NULL, NULL), (2, NULL, NULL)""",
        "UPDATE dup SET b = 'y' WHERE ctid = (SELECT min(ctid) FROM dup WHERE a = 1)",
        "DELETE FROM dup WHERE ctid = (SELECT min(ctid) FROM dup WHERE a = 2)",
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.dup"])
    assert snapshot(dbs.dst, "public.dup").count('(1,x,"{""k"": 1}")') == 2


def test_truncate_of_several_tables_in_one_statement(dbs, daemon):
    both(
        dbs,
        "CREATE TABLE t1 (id serial PRIMARY KEY, v int)",
        "CREATE TABLE t2 (id int PRIMARY KEY)",
        "CREATE TABLE keep (id int PRIMARY KEY)",
    )
    daemon(dbs.config([{"source": "t1"}, {"source": "t2"}, {"source": "keep"}]))
    execute(
        dbs.src,
        "INSERT INTO t1 (v) SELECT g FROM generate_series(1, 100) g",
        "INSERT INTO t2 SELECT g FROM generate_series(1, 100) g",
        "INSERT INTO keep SELECT g FROM generate_series(1, 10) g",
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.t1", "public.t2", "public.keep"])
    with psycopg.connect(dbs.src) as conn:
        conn.execute("INSERT INTO t1 (v) VALUES (-1)")
        conn.execute("TRUNCATE t1, t2 RESTART IDENTITY")
        conn.execute("INSERT INTO t1 (v) VALUES (7)")
        conn.commit()
    wait_for_equal(dbs.src, dbs.dst, ["public.t1", "public.t2", "public.keep"])
    assert scalar(dbs.dst, "SELECT count(*) FROM keep") == 10


def test_mapping_renames_excludes_and_keeps_target_only_and_generated_columns(dbs, daemon):
    execute(dbs.src, "CREATE TABLE src_t (id int PRIMARY KEY, name text, secret text, n int)")
    execute(
        dbs.dst,
        "CREATE SCHEMA portal",
        "CREATE TABLE portal.dst_t (id int PRIMARY KEY, full_name text, n int,"
        " n2 int GENERATED ALWAYS AS (n * 2) STORED, note text DEFAULT 'target-only')",
    )
    daemon(
        dbs.config(
            [
                {
                    "source": "public.src_t",
                    "target": "portal.dst_t",
                    "columns": {"name": "full_name"},
                    "exclude": ["secret"],
                }
            ]
        )
    )
    execute(
        dbs.src,
        "INSERT INTO src_t VALUES (1, 'A', 's1', 1), (2, 'B', 's2', 2)",
        "UPDATE src_t SET n = 10, secret = 'z' WHERE id = 1",
    )
    expected = ["(1,A,10,20,target-only)", "(2,B,2,4,target-only)"]
    wait_until(
        lambda: snapshot(dbs.dst, "portal.dst_t") == expected, timeout=30, reason="mapped rows"
    )


def test_target_without_unique_key_gets_plain_inserts_and_keyed_updates(dbs, daemon):
    execute(dbs.src, "CREATE TABLE audit (id int PRIMARY KEY, v text)")
    execute(dbs.dst, "CREATE TABLE audit (id int, v text)")  # an append-only copy
    daemon(dbs.config([{"source": "audit"}]))
    execute(
        dbs.src,
        "INSERT INTO audit SELECT g, 'a' FROM generate_series(1, 100) g",
        "UPDATE audit SET v = 'b' WHERE id <= 10",
        "DELETE FROM audit WHERE id > 90",
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.audit"])


def test_sigterm_finishes_batch_confirms_and_exits_zero(dbs, daemon):
    both(dbs, "CREATE TABLE s (id int PRIMARY KEY)")
    d = daemon(dbs.config([{"source": "s"}]))
    execute(dbs.src, "INSERT INTO s SELECT generate_series(1, 5000)")
    wait_for_equal(dbs.src, dbs.dst, ["public.s"])
    assert d.stop() == 0
    confirmed = scalar(
        dbs.src,
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        [f"replicator_{dbs.pipeline}"],
    )
    progress = scalar(
        dbs.dst,
        "SELECT pg_replication_origin_progress(%s, true)::text",
        [f"replicator_{dbs.pipeline}"],
    )
    assert confirmed == progress
    assert '"pipeline_stopped"' in d.log_text()


@pytest.mark.slow
def test_million_row_transaction_arrives_whole_to_a_concurrent_reader(dbs, daemon):
    both(dbs, "CREATE TABLE big (id bigint PRIMARY KEY, payload text)")
    daemon(dbs.config([{"source": "big"}]))
    # streaming first: a transaction running while the first run creates its slot lands in
    # the initial copy instead (slot creation waits for it), whose ranges commit apart
    wait_until(
        lambda: scalar(dbs.dst, "SELECT state FROM replicator.pipelines") == "streaming",
        timeout=60,
        reason="pipeline streaming",
    )
    seen: set[int] = set()
    stop = threading.Event()

    def reader() -> None:
        with psycopg.connect(dbs.dst, autocommit=True) as conn:
            while not stop.is_set():
                seen.add(conn.execute("SELECT count(*) FROM big").fetchone()[0])  # type: ignore[index]
                time.sleep(0.02)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    execute(
        dbs.src, "INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 1000000) g"
    )
    wait_until(lambda: 1_000_000 in seen, timeout=240, reason="all rows visible on the target")
    stop.set()
    t.join()
    assert seen <= {0, 1_000_000}


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_applies_nothing_twice(dbs, daemon):
    execute(
        dbs.src,
        "CREATE TABLE ledger (id bigserial PRIMARY KEY, acct int, amount int)",
        "CREATE TABLE acct (id int PRIMARY KEY, balance bigint)",
        "INSERT INTO acct SELECT g, 0 FROM generate_series(1, 20) g",
    )
    # the ledger's target copy has no unique key: a transaction applied twice shows
    execute(
        dbs.dst,
        "CREATE TABLE ledger (id bigint, acct int, amount int)",
        "CREATE TABLE acct (id int PRIMARY KEY, balance bigint)",
    )
    execute(dbs.dst, "INSERT INTO acct SELECT g, 0 FROM generate_series(1, 20) g")
    d = daemon(
        dbs.config(
            [{"source": "ledger"}, {"source": "acct"}], pipeline={"batch": {"max_delay_ms": 50}}
        )
    )
    slot = f"replicator_{dbs.pipeline}"
    stop = threading.Event()
    errors: list[BaseException] = []
    violations: list[tuple[str, str]] = []

    def workload() -> None:
        rng = random.Random(7)
        try:
            with psycopg.connect(dbs.src, autocommit=True) as conn:
                while not stop.is_set():
                    with conn.transaction():
                        for _ in range(rng.randint(1, 20)):
                            a, amt = rng.randint(1, 20), rng.randint(1, 100)
                            conn.execute(
                                "INSERT INTO ledger (acct, amount) VALUES (%s, %s)", (a, amt)
                            )
                            conn.execute(
                                "UPDATE acct SET balance = balance + %s WHERE id = %s", (amt, a)
                            )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    def sampler() -> None:
        # confirmed first, then progress: progress only grows, so confirmed <= progress must hold
        with (
            psycopg.connect(dbs.src, autocommit=True) as s,
            psycopg.connect(dbs.dst, autocommit=True) as t,
        ):
            while not stop.is_set():
                c = s.execute(
                    "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                    [slot],
                ).fetchone()
                o = t.execute("SELECT pg_replication_origin_progress(%s, true)", [slot]).fetchone()
                if c and c[0] and o and o[0] is not None and Lsn(c[0]) > Lsn(o[0]):
                    violations.append((str(c[0]), str(o[0])))
                time.sleep(0.01)

    threads = [threading.Thread(target=workload), threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    rng = random.Random(11)
    try:
        for _ in range(10):  # ten kills at random moments under load
            time.sleep(rng.uniform(0.3, 1.5))
            d.kill()
            d.start()
        # the last restart, too, applies under load before the workload stops
        before = scalar(dbs.dst, "SELECT count(*) FROM ledger")
        wait_until(
            lambda: scalar(dbs.dst, "SELECT count(*) FROM ledger") > before,
            timeout=60,
            reason="the restarted daemon applies again",
        )
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    wait_for_equal(dbs.src, dbs.dst, ["public.ledger", "public.acct"], timeout=120)
    assert scalar(dbs.dst, "SELECT count(*) - count(DISTINCT id) FROM ledger") == 0
    assert violations == []
    assert d.stop() == 0


def test_keys_swapped_through_a_spare_key_apply_without_collisions(dbs, daemon):
    both(dbs, "CREATE TABLE sw (id int PRIMARY KEY, v text UNIQUE)")
    execute(dbs.src, "INSERT INTO sw VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    execute(dbs.dst, "INSERT INTO sw VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    daemon(dbs.config([{"source": "sw"}], pipeline={"batch": {"max_delay_ms": 2000}}))
    with psycopg.connect(dbs.src) as conn:  # one transaction: 1 and 2 trade places via 100
        conn.execute("UPDATE sw SET id = 100 WHERE id = 1")
        conn.execute("UPDATE sw SET id = 1 WHERE id = 2")
        conn.execute("UPDATE sw SET id = 2 WHERE id = 100")
        conn.commit()
    with psycopg.connect(dbs.src, autocommit=True) as conn:  # the same across transactions
        conn.execute("UPDATE sw SET id = 100 WHERE id = 2")
        conn.execute("UPDATE sw SET id = 2 WHERE id = 3")
        conn.execute("UPDATE sw SET id = 3 WHERE id = 100")
    wait_for_equal(dbs.src, dbs.dst, ["public.sw"])


def test_key_move_keeps_an_unchanged_toast_value_it_never_received(dbs, daemon):
    both(dbs, "CREATE TABLE doc (id int PRIMARY KEY, body text, n int)")
    big = "".join(random.choice("abcdefghij") for _ in range(200_000))
    for dsn in (dbs.src, dbs.dst):
        execute(dsn, f"INSERT INTO doc VALUES (1, '{big}', 0), (2, 'small', 0)")
    daemon(dbs.config([{"source": "doc"}]))
    with psycopg.connect(dbs.src) as conn:
        conn.execute("UPDATE doc SET n = 5 WHERE id = 2")
        conn.execute("UPDATE doc SET id = 10 WHERE id = 1")  # body arrives as unchanged TOAST
        conn.execute("UPDATE doc SET n = 7 WHERE id = 10")
        conn.commit()
    wait_for_equal(dbs.src, dbs.dst, ["public.doc"])
