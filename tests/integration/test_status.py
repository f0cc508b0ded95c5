"""`replicator status` on real servers: read from the databases alone, daemon up or down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import psycopg

from replicator import localpg
from replicator.lsn import Lsn
from tests.plugins.pg import DbPair, run_cli, wait_for_equal
from tests.support import execute, scalar, toml_dumps, wait_until

TABLE = "CREATE TABLE public.events (id int PRIMARY KEY, kind text, at timestamptz)"
ROWS = "INSERT INTO events SELECT g, 'k' || g % 7, now() FROM generate_series({}, {}) g"


def status(config_path: Path | str) -> tuple[int, dict[str, Any], str]:
    res = run_cli("status", "-c", str(config_path), "--json")
    text = run_cli("status", "-c", str(config_path))
    assert res.returncode == text.returncode, res.stderr + text.stderr
    return res.returncode, orjson.loads(res.stdout)["pipelines"][0], text.stdout


def test_status_with_the_daemon_down_shows_lag_and_copy_progress(dbs: DbPair, daemon):
    execute(dbs.src, TABLE, ROWS.format(1, 500))
    execute(dbs.dst, TABLE)
    d = daemon(dbs.config([{"source": "events"}]))
    wait_for_equal(dbs.src, dbs.dst, ["public.events"])
    assert d.stop() == 0
    execute(dbs.src, ROWS.format(501, 600))

    code, st, text = status(d.config_path)
    assert code == 0, text
    assert st["pipeline"] == dbs.pipeline
    assert st["state"] == "streaming"
    assert st["paused"] is False
    assert st["slot"]["exists"] is True
    assert st["slot"]["active"] is False
    assert st["slot"]["wal_status"] == "reserved"
    assert st["slot"]["retained_wal_bytes"] > 0
    applied, current = Lsn(st["applied_lsn"]), Lsn(st["source_lsn"])
    assert 0 < applied < current
    assert st["lag_bytes"] == current - applied
    assert st["lag_seconds"] is None
    assert "not streaming" in st["lag_note"]
    assert st["tables"] == [
        {
            "table": "public.events",
            "state": "ready",
            "rows_copied": 500,
            "bytes_copied": st["tables"][0]["bytes_copied"],
            "ranges_done": 1,
            "ranges_total": 1,
        }
    ]
    assert st["tables"][0]["bytes_copied"] > 0
    assert (st["dead_letters"], st["conflicts"]) == (0, 0)
    assert st["problems"] == []
    assert f"{dbs.pipeline}  src -> dst  streaming" in text
    assert f"replicator_{dbs.pipeline}: inactive, wal_status reserved" in text
    assert "public.events  ready" in text


def test_status_shows_what_was_committed_with_the_data_not_an_origin_run_ahead(dbs: DbPair, daemon):
    """From PostgreSQL 16 an aborted transaction can move origin progress past data that
    was never stored; a start resumes from ``applied_lsn`` and status must say the same."""
    execute(dbs.src, TABLE, ROWS.format(1, 50))
    execute(dbs.dst, TABLE)
    d = daemon(dbs.config([{"source": "events"}]))
    wait_for_equal(dbs.src, dbs.dst, ["public.events"])
    assert d.stop() == 0
    _, before, _ = status(d.config_path)
    applied = scalar(
        dbs.dst,
        "SELECT applied_lsn::text FROM replicator.pipelines WHERE pipeline = %s",
        [dbs.pipeline],
    )
    assert before["applied_lsn"] == applied
    ahead = Lsn(Lsn(applied) + 1_000_000)
    with psycopg.connect(dbs.dst, autocommit=True) as conn:
        conn.execute("SELECT pg_replication_origin_advance(%s, %s)", [before["origin"], str(ahead)])
    _, after, _ = status(d.config_path)
    assert after["applied_lsn"] == applied, "origin progress shown instead of applied_lsn"


def test_status_while_streaming_shows_the_active_slot(dbs: DbPair, daemon):
    execute(dbs.src, TABLE)
    execute(dbs.dst, TABLE)
    d = daemon(dbs.config([{"source": "events"}]))
    execute(dbs.src, ROWS.format(1, 50))
    wait_for_equal(dbs.src, dbs.dst, ["public.events"])

    def active() -> dict[str, Any] | None:
        _, st, _ = status(d.config_path)
        return st if st["slot"]["active"] and st["applied_lsn"] else None

    st = wait_until(active, timeout=30, reason="status shows the slot streaming")
    assert isinstance(st["slot"]["active_pid"], int)
    assert isinstance(st["lag_bytes"], int)
    assert st["state"] == "streaming"
    assert st["tables"][0]["state"] == "ready"
    assert d.stop() == 0


def test_status_before_the_first_run(dbs: DbPair, daemon):
    execute(dbs.src, TABLE)
    execute(dbs.dst, TABLE)
    d = daemon(dbs.config([{"source": "events"}]), start=False)  # setup only
    code, st, text = status(d.config_path)
    assert code == 0, text
    assert st["state"] is None
    assert st["slot"]["exists"] is False
    assert st["applied_lsn"] in (None, "0/0")
    assert st["tables"] == []
    assert "not started" in text
    assert f"replicator_{dbs.pipeline}: missing" in text


def test_status_reports_an_unreachable_database_and_exits_1(dbs: DbPair, tmp_path: Path):
    execute(dbs.dst, TABLE)
    config = dbs.config([{"source": "events"}])
    config["databases"]["src"]["dsn"] = (
        f"host=127.0.0.1 port={localpg.free_port()} dbname=x user=u password=s3cr3t"
    )
    path = tmp_path / "status.toml"
    path.write_text(toml_dumps(config))
    code, st, text = status(path)
    assert code == 1
    assert st["problems"]
    assert st["problems"][0].startswith("src: cannot connect")
    assert "s3cr3t" not in text
    assert "PROBLEM" in text
    # not "missing": that would invite a destructive `resync --all` over an outage
    assert st["slot"]["exists"] is None
    assert st["source_reachable"] is False
    assert f"replicator_{dbs.pipeline}: unknown, source unreachable" in text
    assert "missing" not in text
