"""Fault injection on real servers: restarts, cut and blackholed routes, signals, locks."""

from __future__ import annotations

import os
import re
import signal

import psycopg
import pytest

from tests import workload
from tests.plugins.pg import DbPair, wait_for_equal
from tests.support import execute, scalar, wait_until
from tests.workload import LedgerWorkload

EQUAL_TABLES = ["public.ledger", "public.acct"]


def streaming(dbs: DbPair) -> bool:
    return scalar(dbs.dst, "SELECT state FROM replicator.pipelines") == "streaming"


def applied(dbs: DbPair) -> int:
    return int(scalar(dbs.dst, "SELECT count(*) FROM ledger"))


def caught_up_once_more(dbs: DbPair, before: int) -> None:
    wait_until(lambda: applied(dbs) > before, timeout=60, reason="the pipeline applies again")


@pytest.mark.slow
def test_target_and_source_restarts_need_no_operator(dbs: DbPair, daemon):
    workload.create(dbs.src, dbs.dst)
    d = daemon(dbs.config(workload.TABLES, pipeline={"batch": {"max_delay_ms": 50}}))
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    with LedgerWorkload(dbs.src) as load:
        for cluster, mode in (
            (dbs.pair.dst, "fast"),
            (dbs.pair.dst, "immediate"),
            (dbs.pair.src, "fast"),
            (dbs.pair.src, "immediate"),
        ):
            caught_up_once_more(dbs, applied(dbs))
            cluster.restart(mode)
        caught_up_once_more(dbs, applied(dbs))
    assert not load.errors
    wait_for_equal(dbs.src, dbs.dst, EQUAL_TABLES, timeout=120)
    assert workload.duplicates(dbs.dst) == 0
    assert d.alive()


@pytest.mark.slow
@pytest.mark.parametrize("side", ["source", "target"])
def test_cut_and_blackholed_routes_are_detected_and_recovered(dbs, daemon, tcp_proxy, side):
    workload.create(dbs.src, dbs.dst)
    cluster = dbs.pair.src if side == "source" else dbs.pair.dst
    proxy = tcp_proxy(cluster.port)
    cfg = dbs.config(
        workload.TABLES,
        pipeline={
            "batch": {"max_delay_ms": 50},
            "source_timeout_s": 5,
            "target_timeout_s": 5,
        },
    )
    via = f"host=127.0.0.1 port={proxy.port} dbname={dbs.name} user=postgres connect_timeout=3"
    cfg["databases"]["src" if side == "source" else "dst"]["dsn"] = via
    d = daemon(cfg)
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    with LedgerWorkload(dbs.src) as load:
        caught_up_once_more(dbs, applied(dbs))
        proxy.cut()  # every connection reset at once
        caught_up_once_more(dbs, applied(dbs))
        retries = d.log_text().count('"pipeline_retry"')
        proxy.blackhole()  # nothing forwarded, nothing closed
        wait_until(
            lambda: d.log_text().count('"pipeline_retry"') > retries,
            timeout=30,
            reason="the dead route detected within the configured timeout",
        )
        proxy.restore()
        caught_up_once_more(dbs, applied(dbs))
    assert not load.errors
    wait_for_equal(dbs.src, dbs.dst, EQUAL_TABLES, timeout=120)
    assert workload.duplicates(dbs.dst) == 0
    log = d.log_text()
    assert re.search(r"no data from the source|TimeoutError", log)


@pytest.mark.slow
def test_a_source_that_never_answers_start_replication_is_retried(dbs, daemon, tcp_proxy):
    """Soak episode 15127: a daemon started again after a SIGKILL said nothing more and
    streamed nothing, while the rows written meanwhile never came. Every step of a
    start waits on a server; one that never answers is a dead route like any other."""
    workload.create(dbs.src, dbs.dst)
    proxy = tcp_proxy(dbs.pair.src.port)
    cfg = dbs.config(
        workload.TABLES, pipeline={"batch": {"max_delay_ms": 50}, "source_timeout_s": 5}
    )
    via = f"host=127.0.0.1 port={proxy.port} dbname={dbs.name} user=postgres connect_timeout=3"
    cfg["databases"]["src"]["dsn"] = via
    d = daemon(cfg)
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    with LedgerWorkload(dbs.src) as load:
        caught_up_once_more(dbs, applied(dbs))
        proxy.swallow(b"START_REPLICATION")
        d.kill()
        d.start()
        wait_until(lambda: proxy.swallowed == 1, timeout=60, reason="START_REPLICATION sent")
        wait_until(
            lambda: "START_REPLICATION on 'src' did not answer" in d.log_text(),
            timeout=30,
            reason="the silent walsender given up on within source_timeout_s",
        )
        caught_up_once_more(dbs, applied(dbs))
    assert not load.errors
    wait_for_equal(dbs.src, dbs.dst, EQUAL_TABLES, timeout=120)
    assert workload.duplicates(dbs.dst) == 0


@pytest.mark.slow
def test_sigterm_under_load_exits_zero_and_a_restart_applies_nothing_twice(dbs, daemon):
    workload.create(dbs.src, dbs.dst)
    d = daemon(dbs.config(workload.TABLES, pipeline={"batch": {"max_delay_ms": 200}}))
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    with LedgerWorkload(dbs.src):
        caught_up_once_more(dbs, applied(dbs))
        assert d.stop(timeout=45) == 0
        d.start()
        caught_up_once_more(dbs, applied(dbs))
    wait_for_equal(dbs.src, dbs.dst, EQUAL_TABLES, timeout=120)
    assert workload.duplicates(dbs.dst) == 0


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


@pytest.mark.slow
def test_a_locked_target_table_stops_the_reading_not_the_memory(dbs, daemon):
    rounds = 10
    execute(dbs.src, "CREATE TABLE big (id bigserial PRIMARY KEY, payload text)")
    execute(dbs.dst, "CREATE TABLE big (id bigint PRIMARY KEY, payload text)")
    # small buffers, so ten times their size shows the bound without a gigabyte of WAL
    batch = {"queue_bytes": "4MB", "flush_bytes": "4MB"}
    d = daemon(dbs.config([{"source": "big"}], pipeline={"batch": batch}))
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    execute(
        dbs.src, "INSERT INTO big (payload) SELECT repeat('x', 200) FROM generate_series(1, 1000)"
    )
    wait_until(
        lambda: scalar(dbs.dst, "SELECT count(*) FROM big") == 1000, timeout=30, reason="warm"
    )
    before = _rss_kb(d.pid)
    peak = [before]
    start = scalar(dbs.src, "SELECT pg_current_wal_lsn()")

    def reported_read() -> int:
        """Bytes of WAL past ``start`` that the daemon reports it has received."""
        peak[0] = max(peak[0], _rss_kb(d.pid))
        return int(
            scalar(
                dbs.src,
                "SELECT pg_wal_lsn_diff(write_lsn, %s) FROM pg_stat_replication"
                " WHERE application_name = %s",
                [start, f"replicator:{dbs.pipeline}"],
            )
        )

    lock = psycopg.connect(dbs.dst)
    lock.execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
    try:
        with psycopg.connect(dbs.src, autocommit=True) as conn:
            # ~100 MB of changes arrive while the target cannot take any of them
            for _ in range(rounds):
                conn.execute(
                    "INSERT INTO big (payload) SELECT repeat('y', 200)"
                    " FROM generate_series(1, 40000)"
                )
                reported_read()
            written = int(
                conn.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [start]
                ).fetchone()[0]
            )  # type: ignore[index]
        # backpressure: once its queue is full the daemon stops reading, so what it
        # reports as received comes to a standstill (and so does its memory) while the
        # lock holds, far short of what the source wrote
        samples = [reported_read()]

        def stalled() -> bool:
            samples.append(reported_read())
            return samples[-1] == samples[-2] > 0  # it read some, then nothing more

        # the daemon reports at least every 2.5 s here (a quarter of wal_sender_timeout),
        # checked on a one-second tick: two equal samples 5 s apart are a standstill
        wait_until(stalled, timeout=60, interval=5.0, reason="the daemon stops reading")
        read = samples[-1]
        print(f"read {read >> 20} MB of {written >> 20} MB, then stopped")
        assert written - read > 40 * 1024 * 1024, f"read {read} of {written} bytes: no backpressure"
    finally:
        lock.rollback()
        lock.close()
    total = 1000 + rounds * 40000
    wait_until(
        lambda: scalar(dbs.dst, "SELECT count(*) FROM big") == total,
        timeout=240,
        reason="lag recovers once the lock goes",
    )
    growth_mb = (peak[0] - before) // 1024
    print(f"RSS growth while blocked: {growth_mb} MB")
    assert growth_mb < 160, f"RSS grew by {growth_mb} MB while blocked"
    assert d.alive()


def _received(dbs: DbPair) -> int:
    """What the daemon reports it has received (write_lsn), as a byte position."""
    return int(
        scalar(
            dbs.src,
            "SELECT pg_wal_lsn_diff(write_lsn, '0/0') FROM pg_stat_replication"
            " WHERE application_name = %s",
            [f"replicator:{dbs.pipeline}"],
        )
        or 0
    )


@pytest.mark.slow
def test_a_failure_with_a_full_queue_does_not_stop_the_next_session_reading(dbs, daemon):
    """Regression (issue 11.10/11.11): the queue's byte count outlived a failed session,
    so after a target outage with a full queue the reader saw it full forever, stopped
    reading and never said so; the last transactions never arrived."""
    execute(dbs.src, "CREATE TABLE big (id bigserial PRIMARY KEY, payload text)")
    execute(dbs.dst, "CREATE TABLE big (id bigint PRIMARY KEY, payload text)")
    batch = {"queue_bytes": "64kB", "flush_bytes": "64kB"}
    daemon(dbs.config([{"source": "big"}], pipeline={"batch": batch}))
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    insert = "INSERT INTO big (payload) SELECT repeat('y', 200) FROM generate_series(1, "
    lock = psycopg.connect(dbs.dst)
    lock.execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
    try:
        execute(dbs.src, insert + "20000)")  # ~5 MB: far more than the queue may hold
        samples = [_received(dbs)]

        def stalled() -> bool:
            samples.append(_received(dbs))
            return samples[-1] == samples[-2] > 0

        # the queue is full and the reader has stopped (see the locked-target test)
        wait_until(stalled, timeout=60, interval=5.0, reason="the daemon stops reading")
        # the target goes away under the full queue: the pipeline fails and starts over
        scalar(
            dbs.dst,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            [f"replicator:{dbs.pipeline}:apply"],
        )
    finally:
        lock.rollback()
        lock.close()
    execute(dbs.src, insert + "100)")
    wait_until(
        lambda: scalar(dbs.dst, "SELECT count(*) FROM big") == 20100,
        timeout=120,
        reason="every row arrives after the failed session",
    )


FAIL_ONCE_AT_COMMIT = (
    "CREATE SEQUENCE fail_once",
    """CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.id = 2 AND nextval('fail_once') = 1 THEN
            RAISE EXCEPTION 'refused at commit, once' USING ERRCODE = '40001';
        END IF;
        RETURN NULL;
    END $$""",
    "CREATE CONSTRAINT TRIGGER fail_once AFTER INSERT ON led DEFERRABLE INITIALLY DEFERRED"
    " FOR EACH ROW EXECUTE FUNCTION fail_once()",
    "ALTER TABLE led ENABLE ALWAYS TRIGGER fail_once",  # fires under replica role too
)


@pytest.mark.slow
def test_a_transaction_refused_at_its_commit_is_applied_again_not_skipped(dbs, daemon):
    """Regression (issue 11.10, PostgreSQL 16+): an abort record carries the origin LSN
    that pg_replication_origin_xact_setup set, so a target transaction that failed at its
    COMMIT (here a deferred trigger; in the report a backend ended by a fast shutdown)
    moved origin progress past the data it rolled back. The restart resumed after it and
    the batch was gone for good, with no error. PG 18 lost row 2 before the fix."""
    ddl = "CREATE TABLE led (id int PRIMARY KEY, v text)"
    execute(dbs.src, ddl)
    execute(dbs.dst, ddl, *FAIL_ONCE_AT_COMMIT)
    d = daemon(dbs.config([{"source": "led"}]))
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    execute(dbs.src, "INSERT INTO led VALUES (1, 'a')")
    wait_until(lambda: scalar(dbs.dst, "SELECT count(*) FROM led") == 1, timeout=30, reason="1")
    execute(dbs.src, "INSERT INTO led VALUES (2, 'b')")  # its target commit fails once
    wait_until(lambda: '"pipeline_retry"' in d.log_text(), timeout=30, reason="the commit refused")
    execute(dbs.src, "INSERT INTO led VALUES (3, 'c')")
    wait_for_equal(dbs.src, dbs.dst, ["public.led"], timeout=60)
    assert d.alive()


@pytest.mark.slow
def test_an_idle_source_among_busy_databases_keeps_its_slot_small(dbs, daemon):
    execute(dbs.src, "CREATE TABLE quiet (id int PRIMARY KEY)")
    execute(dbs.dst, "CREATE TABLE quiet (id int PRIMARY KEY)")
    d = daemon(dbs.config([{"source": "quiet"}], pipeline={"heartbeat_interval_s": 1}))
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    slot = f"replicator_{dbs.pipeline}"
    retained = (
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)"
        " FROM pg_replication_slots WHERE slot_name = %s"
    )
    busy = dbs.pair.src.conninfo("postgres")
    execute(busy, "CREATE TABLE IF NOT EXISTS noise (id int, payload text)")
    try:
        for _ in range(8):  # ~120 MB of WAL in another database
            execute(
                busy,
                "INSERT INTO noise SELECT g, repeat('n', 500) FROM generate_series(1, 30000) g",
                "CHECKPOINT",
            )
        wait_until(
            lambda: scalar(dbs.src, retained, [slot]) < 32 * 1024 * 1024,
            timeout=60,
            reason="the idle slot follows the WAL (heartbeats)",
        )
    finally:
        execute(busy, "DROP TABLE IF EXISTS noise")
    assert d.alive()


def test_sighup_restarts_only_the_pipeline_whose_config_changed(dbs, daemon, tmp_path):
    for t in ("one", "two"):
        execute(dbs.src, f"CREATE TABLE {t} (id int PRIMARY KEY, v int)")
        execute(dbs.dst, f"CREATE TABLE {t} (id int PRIMARY KEY, v int)")
    cfg = dbs.config([{"source": "one"}])
    second = dict(cfg["pipeline"][0], name=f"q_{dbs.name}", table=[{"source": "two"}])
    cfg["pipeline"].append(second)
    d = daemon(cfg)
    wait_until(
        lambda: (
            scalar(dbs.dst, "SELECT count(*) FROM replicator.pipelines WHERE state = 'streaming'")
            == 2
        ),
        timeout=60,
        reason="both streaming",
    )
    second["batch"] = {"max_delay_ms": 100}  # a change to the second pipeline only
    from tests.support import toml_dumps  # noqa: PLC0415

    d.config_path.write_text(toml_dumps(cfg))
    os.kill(d.pid, signal.SIGHUP)
    wait_until(lambda: '"reloaded"' in d.log_text(), timeout=30, reason="reloaded")
    line = next(ln for ln in d.log_text().splitlines() if '"reloaded"' in ln)
    assert f'"kept":["{dbs.pipeline}"]' in line
    assert f'"restarted":["q_{dbs.name}"]' in line
    execute(dbs.src, "INSERT INTO one VALUES (1, 1)", "INSERT INTO two VALUES (2, 2)")
    wait_for_equal(dbs.src, dbs.dst, ["public.one", "public.two"])
