"""Resync and pause: an operator re-copies a table, starts over, or holds a pipeline."""

from __future__ import annotations

import os
import signal

import psycopg

from tests.plugins.pg import DbPair, run_cli, wait_for_equal
from tests.support import execute, scalar, toml_dumps, wait_until
from tests.workload import LedgerWorkload

TABLES = {
    "ledger": "CREATE TABLE ledger (id bigserial PRIMARY KEY, acct int, amount int)",
    "acct": "CREATE TABLE acct (id int PRIMARY KEY, balance bigint)",
}


def setup_tables(dbs: DbPair) -> None:
    for ddl in TABLES.values():
        execute(dbs.src, ddl)
        execute(dbs.dst, ddl)
    execute(
        dbs.src,
        "INSERT INTO acct SELECT g, 0 FROM generate_series(1, 20) g",
        "INSERT INTO ledger (acct, amount) SELECT g % 20 + 1, 1 FROM generate_series(1, 50000) g",
    )


def streaming(dbs: DbPair) -> bool:
    return scalar(dbs.dst, "SELECT state FROM replicator.pipelines") == "streaming"


def table_state(dbs: DbPair, table: str) -> str | None:
    return scalar(dbs.dst, "SELECT state FROM replicator.tables WHERE source_table = %s", [table])


def test_resync_of_a_table_repairs_it_while_writers_run_and_the_rest_streams(dbs, daemon):
    setup_tables(dbs)
    d = daemon(dbs.config([{"source": "ledger"}, {"source": "acct"}]))
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    wait_for_equal(dbs.src, dbs.dst, ["public.ledger", "public.acct"])
    # someone damages the target copy; the resync puts it right
    execute(dbs.dst, "DELETE FROM ledger WHERE id % 3 = 0", "UPDATE ledger SET amount = -1")
    with LedgerWorkload(dbs.src):
        res = run_cli("resync", "-c", str(d.config_path), "--table", "public.ledger")
        assert res.returncode == 0, res.stderr
        assert "marked for resync" in res.stdout
        wait_until(lambda: '"resync_done"' in d.log_text(), timeout=120, reason="resync done")
    wait_for_equal(dbs.src, dbs.dst, ["public.ledger", "public.acct"], timeout=120)
    wait_until(lambda: table_state(dbs, "ledger") == "ready", timeout=30, reason="ready")
    assert d.alive()
    log = d.log_text()
    assert log.index('"resync_started"') < log.index('"resync_done"')


def test_resync_all_after_a_lost_slot_starts_over_with_a_full_copy(dbs, daemon):
    setup_tables(dbs)
    d = daemon(dbs.config([{"source": "ledger"}, {"source": "acct"}]))
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    assert d.stop() == 0
    execute(
        dbs.src,
        f"SELECT pg_drop_replication_slot('replicator_{dbs.pipeline}')",
        "INSERT INTO ledger (acct, amount) VALUES (1, 99)",
    )  # lost with the slot
    res = run_cli("resync", "-c", str(d.config_path), "--all")
    assert res.returncode == 0, res.stderr
    assert "next `replicator run` creates a new slot" in res.stdout
    d.start()
    wait_for_equal(dbs.src, dbs.dst, ["public.ledger", "public.acct"], timeout=120)


def test_resync_all_refuses_while_the_daemon_holds_the_slot(dbs, daemon):
    setup_tables(dbs)
    d = daemon(dbs.config([{"source": "acct"}]))
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    res = run_cli("resync", "-c", str(d.config_path), "--all")
    assert res.returncode == 1
    assert "stop the daemon first" in res.stderr


def test_a_table_added_to_the_config_is_copied_and_streamed_after_a_reload(dbs, daemon):
    setup_tables(dbs)
    cfg = dbs.config([{"source": "acct"}])
    d = daemon(cfg)
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    cfg["pipeline"][0]["table"].append({"source": "ledger"})
    d.config_path.write_text(toml_dumps(cfg))
    assert d.setup().returncode == 0  # the publication gains the table
    os.kill(d.pid, signal.SIGHUP)
    execute(dbs.src, "INSERT INTO ledger (acct, amount) VALUES (2, 7)")
    wait_for_equal(dbs.src, dbs.dst, ["public.ledger", "public.acct"], timeout=120)
    wait_until(lambda: table_state(dbs, "ledger") == "ready", timeout=30, reason="ready")


def test_a_paused_pipeline_applies_nothing_until_resumed(dbs, daemon):
    setup_tables(dbs)
    d = daemon(dbs.config([{"source": "acct"}]))
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    with psycopg.connect(dbs.dst, autocommit=True) as conn:
        conn.execute("UPDATE replicator.pipelines SET paused = true, paused_at = now()")
        conn.execute("SELECT pg_notify('replicator_control', %s)", [dbs.pipeline])
    wait_until(lambda: '"pipeline_paused"' in d.log_text(), timeout=30, reason="paused")
    execute(dbs.src, "UPDATE acct SET balance = 5 WHERE id = 1")
    # the update waits on the source: nothing applies while paused (checked over the
    # time it would otherwise take many times over)
    from tests.support import assert_stable  # noqa: PLC0415

    assert (
        assert_stable(lambda: scalar(dbs.dst, "SELECT balance FROM acct WHERE id = 1"), seconds=3)
        == 0
    )
    with psycopg.connect(dbs.dst, autocommit=True) as conn:
        conn.execute("UPDATE replicator.pipelines SET paused = false, paused_at = NULL")
        conn.execute("SELECT pg_notify('replicator_control', %s)", [dbs.pipeline])
    wait_until(
        lambda: scalar(dbs.dst, "SELECT balance FROM acct WHERE id = 1") == 5,
        timeout=30,
        reason="applied after resume",
    )


def test_a_source_gone_back_is_refused_and_resync_all_starts_over_from_new_positions(dbs, daemon):
    setup_tables(dbs)
    d = daemon(dbs.config([{"source": "acct"}]))
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    wait_for_equal(dbs.src, dbs.dst, ["public.acct"])
    assert d.stop() == 0
    # the source went back in time (a restore, a rebuilt server): the progress the target
    # holds is far past anything the source has written
    origin = f"replicator_{dbs.pipeline}"
    execute(dbs.dst, f"SELECT pg_replication_origin_advance('{origin}', 'FF/0')")
    # ...both where a start resumes (applied_lsn, committed with the data) and the origin
    scalar(
        dbs.dst,
        "UPDATE replicator.pipelines SET applied_lsn = 'FF/0' WHERE pipeline = %s RETURNING 1",
        [dbs.pipeline],
    )
    d.start()
    wait_until(lambda: '"pipeline_failed"' in d.log_text(), timeout=60, reason="start refused")
    log = d.log_text()
    assert "FF/0" in log
    assert "ahead of the source" in log
    assert "resync --all" in log
    if d.alive():
        d.stop()
    res = run_cli("resync", "-c", str(d.config_path), "--all")
    assert res.returncode == 0, res.stderr
    d.start()
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming again")
    execute(dbs.src, "UPDATE acct SET balance = 1 WHERE id = 1")
    wait_for_equal(dbs.src, dbs.dst, ["public.acct"])
    # every later start resumes from the new slot's positions, not the old ones
    assert d.stop() == 0
    execute(dbs.src, "UPDATE acct SET balance = 2 WHERE id = 2", "INSERT INTO acct VALUES (99, 9)")
    d.start()
    wait_for_equal(dbs.src, dbs.dst, ["public.acct"])
    assert scalar(dbs.dst, "SELECT balance FROM acct WHERE id = 99") == 9


def test_a_table_removed_from_the_config_and_added_back_is_copied_again(dbs, daemon):
    for ddl in TABLES.values():
        execute(dbs.src, ddl)
        execute(dbs.dst, ddl)
    execute(
        dbs.src,
        "INSERT INTO acct SELECT g, 0 FROM generate_series(1, 5) g",
        "INSERT INTO ledger (acct, amount) SELECT g, 1 FROM generate_series(1, 5) g",
    )
    cfg = dbs.config([{"source": "acct"}, {"source": "ledger"}])
    d = daemon(cfg)
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    wait_for_equal(dbs.src, dbs.dst, ["public.ledger", "public.acct"])

    def reload(tables: list[dict[str, str]]) -> None:
        starts = d.log_text().count('"pipeline_streaming"')
        cfg["pipeline"][0]["table"] = tables
        d.config_path.write_text(toml_dumps(cfg))
        os.kill(d.pid, signal.SIGHUP)
        wait_until(
            lambda: d.log_text().count('"pipeline_streaming"') > starts,
            timeout=60,
            reason="restarted with the new config",
        )

    reload([{"source": "acct"}])
    # written while ledger is out of the config; acct's change moves progress past them
    execute(
        dbs.src,
        "INSERT INTO ledger (acct, amount) VALUES (1, 50), (2, 60)",
        "UPDATE ledger SET amount = 70 WHERE id = 1",
        "UPDATE acct SET balance = 3 WHERE id = 3",
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.acct"])
    reload([{"source": "acct"}, {"source": "ledger"}])
    wait_for_equal(dbs.src, dbs.dst, ["public.ledger", "public.acct"], timeout=120)
    wait_until(lambda: table_state(dbs, "ledger") == "ready", timeout=30, reason="ready")
    # and it streams again
    execute(dbs.src, "INSERT INTO ledger (acct, amount) VALUES (4, 80)")
    wait_for_equal(dbs.src, dbs.dst, ["public.ledger"])
    assert d.alive()
