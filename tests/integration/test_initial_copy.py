"""The initial copy: existing rows arrive, the stream joins without a gap or a double."""

from __future__ import annotations

import random
import secrets
import threading

import psycopg
import pytest
from psycopg import sql

from replicator.masking import compile_mask, parse_mask
from tests.plugins.pg import DbPair, wait_for_equal
from tests.support import execute, scalar, wait_until

TABLES = {
    "people": "CREATE TABLE people (id bigint PRIMARY KEY, name text, mobile text, v int)",
    "orders": "CREATE TABLE orders (id bigint PRIMARY KEY, person bigint, amount numeric)",
    "events": "CREATE TABLE events (id bigint, kind text)",  # no key: one range
}


def create(dbs: DbPair) -> None:
    for ddl in TABLES.values():
        execute(dbs.src, ddl)
        execute(dbs.dst, ddl)


def seed(dbs: DbPair, people: int, orders: int, events: int) -> None:
    execute(
        dbs.src,
        f"INSERT INTO people SELECT g, 'p' || g, '98' || lpad(g::text, 8, '0'), 0"
        f" FROM generate_series(1, {people}) g",
        f"INSERT INTO orders SELECT g, g % 1000, g / 7.0 FROM generate_series(1, {orders}) g",
        f"INSERT INTO events SELECT g, 'e' FROM generate_series(1, {events}) g",
    )


def masked_people(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT id, name, CASE WHEN mobile IS NULL THEN NULL"
            " ELSE repeat('*', length(mobile) - 4) || right(mobile, 4) END, v"
            " FROM people ORDER BY id"
        ).fetchall()


def writer(dbs: DbPair, stop: threading.Event, errors: list[BaseException]) -> None:
    rng = random.Random(3)
    next_id = 10_000_000
    try:
        with psycopg.connect(dbs.src, autocommit=True) as conn:
            while not stop.is_set():
                with conn.transaction():
                    conn.execute(
                        "UPDATE people SET v = v + 1 WHERE id = %s", [rng.randint(1, 500_000)]
                    )
                    conn.execute("DELETE FROM orders WHERE id = %s", [rng.randint(1, 400_000)])
                    conn.execute(
                        "INSERT INTO people VALUES (%s, 'new', '9111111111', 1)", [next_id]
                    )
                    conn.execute("INSERT INTO events VALUES (%s, 'w')", [next_id])
                    next_id += 1
    except BaseException as exc:
        errors.append(exc)


PEOPLE_CFG = {"source": "people", "mask": {"mobile": "partial:4"}}


@pytest.mark.slow
def test_a_million_rows_copied_under_writes_end_equal_and_masked(dbs, daemon):
    create(dbs)
    seed(dbs, 500_000, 400_000, 100_000)
    stop, errors = threading.Event(), []
    t = threading.Thread(target=writer, args=(dbs, stop, errors))
    t.start()
    try:
        daemon(
            dbs.config(
                [PEOPLE_CFG, {"source": "orders"}, {"source": "events"}],
                pipeline={"copy": {"workers": 2, "range_rows": 100_000}},
            )
        )
        wait_until(
            lambda: scalar(dbs.dst, "SELECT state FROM replicator.pipelines") == "streaming",
            timeout=240,
            reason="initial copy done",
        )
    finally:
        stop.set()
        t.join()
    assert not errors
    wait_for_equal(dbs.src, dbs.dst, ["public.orders", "public.events"], timeout=120)
    wait_until(
        lambda: masked_people(dbs.src) == masked_people(dbs.dst),
        timeout=60,
        reason="people equal, masked",
    )
    assert scalar(dbs.dst, "SELECT count(*) FROM people WHERE mobile LIKE '98%'") == 0
    assert scalar(dbs.dst, "SELECT count(*) FROM replicator.copy_ranges WHERE NOT done") == 0


@pytest.mark.slow
def test_copy_killed_halfway_resumes_with_the_missing_ranges_only(dbs, daemon):
    create(dbs)
    seed(dbs, 300_000, 200_000, 50_000)
    d = daemon(
        dbs.config(
            [PEOPLE_CFG, {"source": "orders"}, {"source": "events"}],
            pipeline={"copy": {"workers": 1, "range_rows": 40_000}},
        )
    )
    done = "SELECT count(*) FROM replicator.copy_ranges WHERE done"
    total = "SELECT count(*) FROM replicator.copy_ranges"
    wait_until(
        lambda: (
            scalar(dbs.dst, "SELECT to_regclass('replicator.copy_ranges')")
            and scalar(dbs.dst, done) >= 3
        ),
        timeout=120,
        reason="a few ranges done",
    )
    d.kill()
    finished = {
        r[0]: r[1]
        for r in psycopg.connect(dbs.dst)
        .execute(
            "SELECT source_table || ':' || range_no, finished_at FROM replicator.copy_ranges"
            " WHERE done"
        )
        .fetchall()
    }
    assert 0 < len(finished) < scalar(dbs.dst, total)
    execute(
        dbs.src,
        "UPDATE people SET v = 42 WHERE id % 1000 = 0",
        "DELETE FROM orders WHERE id % 999 = 0",
        "INSERT INTO events VALUES (-1, 'after')",
    )
    d.start()
    wait_until(
        lambda: scalar(dbs.dst, "SELECT state FROM replicator.pipelines") == "streaming",
        timeout=240,
        reason="copy resumed and done",
    )
    after = dict(
        psycopg.connect(dbs.dst)
        .execute(
            "SELECT source_table || ':' || range_no, finished_at FROM replicator.copy_ranges"
            " WHERE done"
        )
        .fetchall()
    )
    assert all(after[k] == v for k, v in finished.items())  # finished ranges not copied again
    wait_for_equal(dbs.src, dbs.dst, ["public.orders", "public.events"], timeout=120)
    wait_until(
        lambda: masked_people(dbs.src) == masked_people(dbs.dst),
        timeout=60,
        reason="people equal, masked",
    )


def test_rows_present_before_the_first_run_arrive_and_the_stream_follows(dbs, daemon):
    create(dbs)
    seed(dbs, 1000, 1000, 100)
    execute(dbs.dst, "INSERT INTO orders VALUES (-5, 0, 0)")  # truncated by the copy
    daemon(dbs.config([PEOPLE_CFG, {"source": "orders"}, {"source": "events"}]))
    execute(
        dbs.src, "UPDATE orders SET amount = 0 WHERE id <= 10", "INSERT INTO events VALUES (0, 'z')"
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.orders", "public.events"])
    wait_until(
        lambda: masked_people(dbs.src) == masked_people(dbs.dst),
        timeout=30,
        reason="people equal, masked",
    )


def test_merge_keeps_target_rows_and_skip_copies_nothing(dbs, daemon):
    create(dbs)
    seed(dbs, 100, 100, 10)
    execute(dbs.dst, "INSERT INTO orders VALUES (-5, 0, 0), (1, 1, 1)")
    daemon(dbs.config([{"source": "orders", "target": "orders"}], pipeline={"snapshot": "merge"}))
    wait_until(
        lambda: scalar(dbs.dst, "SELECT count(*) FROM orders") == 101, timeout=30, reason="merged"
    )
    assert scalar(dbs.dst, "SELECT amount FROM orders WHERE id = 1") == scalar(
        dbs.src, "SELECT amount FROM orders WHERE id = 1"
    )


def test_dropped_slot_stops_the_pipeline_with_a_clear_message(dbs, daemon):
    create(dbs)
    d = daemon(dbs.config([{"source": "orders"}]))
    wait_until(
        lambda: scalar(dbs.dst, "SELECT state FROM replicator.pipelines") == "streaming",
        timeout=60,
        reason="streaming",
    )
    assert d.stop() == 0
    execute(dbs.src, f"SELECT pg_drop_replication_slot('replicator_{dbs.pipeline}')")
    d.start()
    wait_until(lambda: not d.alive(), timeout=30, reason="daemon refuses to run")
    assert d.proc.returncode == 1
    assert f"replication slot 'replicator_{dbs.pipeline}' on 'src' is missing" in d.log_text()
    assert "resync --all" in d.log_text()


def test_rows_the_target_rejects_during_the_copy_become_dead_letters(dbs, daemon):
    create(dbs)
    seed(dbs, 3000, 10, 10)
    execute(dbs.src, "UPDATE people SET v = -1 WHERE id IN (7, 2500)")
    execute(dbs.dst, "ALTER TABLE people ADD CONSTRAINT v_positive CHECK (v >= 0)")
    d = daemon(dbs.config([PEOPLE_CFG]))
    wait_until(
        lambda: scalar(dbs.dst, "SELECT state FROM replicator.pipelines") == "streaming",
        timeout=60,
        reason="copy done",
    )
    assert scalar(dbs.dst, "SELECT count(*) FROM people") == 2998
    with psycopg.connect(dbs.dst) as conn:
        letters = conn.execute(
            "SELECT key, row_data ->> 'mobile', error_class FROM replicator.dead_letters"
            " ORDER BY (key ->> 'id')::bigint"
        ).fetchall()
    assert letters == [
        ({"id": "7"}, "******0007", "23514"),
        ({"id": "2500"}, "******2500", "23514"),
    ]
    assert "9800000007" not in d.log_text()
    execute(dbs.src, "INSERT INTO people VALUES (5000, 'after', NULL, 1)")
    wait_until(
        lambda: scalar(dbs.dst, "SELECT count(*) FROM people") == 2999,
        timeout=30,
        reason="the stream goes on after the copy",
    )


HASHED = "CREATE TABLE ids (aadhaar text PRIMARY KEY, name text, v int)"


def raw_values(dsn: str, query: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute(query).fetchall()}  # type: ignore[arg-type]


def target_text(dsn: str) -> str:
    """Every row of every table in the target database, as row text."""
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        return "\n".join(
            r[0]
            for t in tables
            for r in conn.execute(
                sql.SQL("SELECT t::text FROM {} AS t").format(sql.Identifier(*t))
            ).fetchall()
        )


def test_a_big_table_keyed_by_a_hashed_column_is_split_without_storing_a_key(dbs, daemon, tmp_path):
    key = tmp_path / "mask.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    execute(dbs.src, HASHED)
    execute(dbs.dst, HASHED)
    execute(
        dbs.src,
        "INSERT INTO ids SELECT '5' || lpad((g * 7919)::text, 11, '0'), 'n' || g, g"
        " FROM generate_series(1, 20000) g",
        "ANALYZE ids",
    )
    daemon(
        dbs.config(
            [{"source": "ids", "mask": {"aadhaar": "hash"}}],
            pipeline={"copy": {"workers": 2, "range_rows": 2000}},
            masking={"key_file": str(key)},
        )
    )
    wait_until(
        lambda: scalar(dbs.dst, "SELECT state FROM replicator.pipelines") == "streaming",
        timeout=120,
        reason="initial copy done",
    )
    assert scalar(dbs.dst, "SELECT count(*) FROM replicator.copy_ranges") > 5  # it was split
    fn = compile_mask(parse_mask("hash"), key.read_text().strip().encode())
    with psycopg.connect(dbs.src) as conn:
        src = conn.execute("SELECT aadhaar, name, v FROM ids").fetchall()
    want = sorted((fn(a.encode()).decode(), n, v) for a, n, v in src)
    with psycopg.connect(dbs.dst) as conn:
        assert sorted(conn.execute("SELECT aadhaar, name, v FROM ids").fetchall()) == want
    dump = target_text(dbs.dst)
    leaked = [a for a in raw_values(dbs.src, "SELECT aadhaar FROM ids") if a in dump]
    assert leaked == []


def blocked_copy_trigger(dsn: str, marker: int) -> None:
    """The target's copy of the range that holds row ``marker`` waits until released:
    the daemon can be killed with the ranges before it done and the rest not."""
    execute(
        dsn,
        "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.v = {marker} THEN PERFORM pg_sleep(600); END IF; RETURN NEW; END $$",
        "CREATE TRIGGER hold BEFORE INSERT ON ids FOR EACH ROW EXECUTE FUNCTION hold()",
        "ALTER TABLE ids ENABLE ALWAYS TRIGGER hold",
    )


def test_a_resumed_copy_keeps_rows_an_update_moved_into_a_range_done_before(dbs, daemon, tmp_path):
    key = tmp_path / "mask.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    ddl = (
        "CREATE TABLE ids (aadhaar text PRIMARY KEY, name text, v int, note text);"
        " ALTER TABLE ids ALTER note SET STORAGE EXTERNAL"
    )
    execute(dbs.src, ddl, "CREATE INDEX ON ids (v)")  # updates of v are never HOT
    execute(dbs.dst, ddl)
    execute(
        dbs.src,
        "INSERT INTO ids SELECT '5' || lpad((g * 7919)::text, 11, '0'), 'n' || g, g,"
        " CASE WHEN g % 2 = 0 THEN repeat(md5(g::text), 100) END"
        " FROM generate_series(1, 8000) g",
        "ANALYZE ids",
    )
    blocked_copy_trigger(dbs.dst, 6000)
    cfg = dbs.config(
        [{"source": "ids", "mask": {"aadhaar": "hash"}}],
        pipeline={"copy": {"workers": 1, "range_rows": 1000}},
        masking={"key_file": str(key)},
    )
    d = daemon(cfg)
    done = "SELECT count(*) FROM replicator.copy_ranges WHERE done"
    wait_until(
        lambda: (
            scalar(dbs.dst, "SELECT to_regclass('replicator.copy_ranges')")
            and scalar(
                dbs.dst,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                " AND datname = current_database()",
            )
        ),
        timeout=120,
        reason="the copy waits at the marked row",
    )
    d.kill()
    execute(
        dbs.dst,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
        "DROP TRIGGER hold ON ids",
    )
    ranges = (
        psycopg.connect(dbs.dst)
        .execute(
            "SELECT lower_block, upper_block, done FROM replicator.copy_ranges ORDER BY range_no"
        )
        .fetchall()
    )
    first_open = next(lo for lo, _, ok in ranges if not ok)
    assert scalar(dbs.dst, done) > 0
    assert first_open
    # free room in the done ranges, then move rows of the open ranges into it; the
    # moved rows keep their TOASTed note unchanged, so the stream carries no note
    execute(
        dbs.src,
        f"DELETE FROM ids WHERE ctid < '({first_open // 2},0)'",
        "VACUUM ids",
        f"UPDATE ids SET v = -v WHERE ctid >= '({first_open},0)' AND note IS NOT NULL",
    )
    moved = scalar(dbs.src, f"SELECT count(*) FROM ids WHERE v < 0 AND ctid < '({first_open},0)'")
    assert moved > 0  # the hole the resume must fill is there
    d.start()
    wait_until(
        lambda: scalar(dbs.dst, "SELECT state FROM replicator.pipelines") == "streaming",
        timeout=180,
        reason="copy resumed and done",
    )
    fn = compile_mask(parse_mask("hash"), key.read_text().strip().encode())

    def expected() -> list[tuple]:
        with psycopg.connect(dbs.src) as conn:
            rows = conn.execute("SELECT aadhaar, name, v, note FROM ids").fetchall()
        return sorted((fn(a.encode()).decode(), *rest) for a, *rest in rows)

    def actual() -> list[tuple]:
        with psycopg.connect(dbs.dst) as conn:
            return sorted(conn.execute("SELECT aadhaar, name, v, note FROM ids").fetchall())

    wait_until(lambda: actual() == expected(), timeout=60, reason="target equals source")
