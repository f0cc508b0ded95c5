"""A configured source table renamed on the source is followed by its OID, never dropped."""

from __future__ import annotations

from tests.plugins.pg import DbPair, run_cli, wait_for_equal
from tests.support import execute, scalar, toml_dumps, wait_until

DDL = "CREATE TABLE t (id int PRIMARY KEY, v text)"


def start(dbs: DbPair, daemon):
    execute(dbs.src, DDL)
    execute(dbs.dst, DDL)
    execute(dbs.src, "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 10) g")
    d = daemon(dbs.config([{"source": "t"}]))
    wait_until(
        lambda: scalar(dbs.dst, "SELECT state FROM replicator.pipelines") == "streaming",
        timeout=60,
        reason="streaming",
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.t"])
    return d


def test_rows_written_after_a_rename_while_streaming_arrive(dbs, daemon):
    d = start(dbs, daemon)
    execute(
        dbs.src,
        "ALTER TABLE t RENAME TO t2",
        "INSERT INTO t2 VALUES (11, 'b')",
        "UPDATE t2 SET v = 'c' WHERE id = 1",
        "DELETE FROM t2 WHERE id = 2",
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.t2"], target_tables=["public.t"])
    log = d.log_text()
    assert '"relation_renamed"' in log
    assert '"relation":"public.t"' in log
    assert '"new_name":"public.t2"' in log
    assert '"relation_not_configured"' not in log
    assert d.alive()


def test_rows_written_between_a_rename_and_its_undoing_are_kept(dbs, daemon):
    d = start(dbs, daemon)
    execute(
        dbs.src,
        "ALTER TABLE t RENAME TO t_old",
        "INSERT INTO t_old VALUES (11, 'between')",
        "UPDATE t_old SET v = 'between' WHERE id = 1",
        "ALTER TABLE t_old RENAME TO t",
        "INSERT INTO t VALUES (12, 'after')",
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.t"])
    assert scalar(dbs.dst, "SELECT count(*) FROM t WHERE v = 'between'") == 2
    assert d.alive()


def test_a_restart_while_renamed_still_finds_the_table_and_says_to_update_the_config(dbs, daemon):
    d = start(dbs, daemon)
    execute(dbs.src, "ALTER TABLE t RENAME TO t2", "INSERT INTO t2 VALUES (11, 'b')")
    wait_for_equal(dbs.src, dbs.dst, ["public.t2"], target_tables=["public.t"])
    assert d.stop() == 0
    execute(dbs.src, "INSERT INTO t2 VALUES (12, 'while down')")
    check = run_cli("check", "-c", str(d.config_path))
    assert "renamed on the source to public.t2" in check.stdout, check.stdout + check.stderr
    assert "update the config" in check.stdout
    status = run_cli("status", "-c", str(d.config_path))
    assert "public.t was renamed to public.t2" in status.stdout, status.stdout + status.stderr
    d.start()
    execute(dbs.src, "UPDATE t2 SET v = 'after restart' WHERE id = 3")
    wait_for_equal(dbs.src, dbs.dst, ["public.t2"], target_tables=["public.t"])
    assert d.alive()
    # the config catches up with the rename: the same table, no new copy
    cfg = dbs.config([{"source": "t2", "target": "t"}])
    d.config_path.write_text(toml_dumps(cfg))
    assert d.stop() == 0
    d.start()
    execute(dbs.src, "UPDATE t2 SET v = 'renamed config' WHERE id = 4")
    wait_for_equal(dbs.src, dbs.dst, ["public.t2"], target_tables=["public.t"])
    assert '"resync_started"' not in d.log_text()
    assert scalar(dbs.dst, "SELECT source_table FROM replicator.tables") == "t2"
