"""Schemas taken as they are: foreign keys and partitions on the target, types without
``=``, a source database with its own output settings. Each ends with target = source."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
from psycopg import sql

from replicator.catalog import read_target_table
from replicator.config import QualifiedName
from tests.integration.test_check import check, only_error
from tests.plugins.pg import DbPair, run_cli, wait_for_equal
from tests.support import execute, scalar, wait_until

# what the comparison reads with: one unambiguous text form on both sides
PINNED = "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c bytea_output=hex"


def both(dbs: DbPair, *statements: str) -> None:
    execute(dbs.src, *statements)
    execute(dbs.dst, *statements)


def streaming(dbs: DbPair) -> bool:
    return scalar(dbs.dst, "SELECT state FROM replicator.pipelines") == "streaming"


def rows(dsn: str, table: str) -> list[str]:
    with psycopg.connect(dsn, options=PINNED) as conn:
        got = conn.execute(
            sql.SQL("SELECT ROW(r.*)::text FROM {} AS r").format(sql.Identifier(table))
        ).fetchall()
    return sorted(r[0] for r in got)


def wait_rows_equal(dbs: DbPair, *tables: str, timeout: float = 60) -> None:
    wait_until(
        lambda: all(rows(dbs.src, t) == rows(dbs.dst, t) for t in tables),
        timeout=timeout,
        reason=f"target equals source for {tables}",
    )


# --- foreign keys ------------------------------------------------------------------------

FK_PAIR = (
    "CREATE TABLE parent (id int PRIMARY KEY, v text)",
    "CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent, v text)",
)


def test_fk_pair_takes_the_first_copy_and_a_source_truncate_of_both(dbs, daemon):
    both(dbs, *FK_PAIR)
    # stale rows on the target: the first copy must replace them
    execute(dbs.dst, "INSERT INTO parent VALUES (99, 'old')", "INSERT INTO child VALUES (99, 99)")
    execute(
        dbs.src,
        "INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 50) g",
        "INSERT INTO child SELECT g, g % 50 + 1, 'c' FROM generate_series(1, 200) g",
    )
    d = daemon(dbs.config([{"source": "child"}, {"source": "parent"}]))
    wait_until(lambda: streaming(dbs), timeout=60, reason="initial copy done")
    wait_for_equal(dbs.src, dbs.dst, ["public.parent", "public.child"])
    execute(
        dbs.src,
        "TRUNCATE parent, child",
        "INSERT INTO parent VALUES (1, 'again')",
        "INSERT INTO child VALUES (1, 1, 'again')",
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.parent", "public.child"])
    assert scalar(dbs.dst, "SELECT count(*) FROM child") == 1
    assert d.alive()


def test_source_truncate_of_a_table_the_target_references_from_outside_it_deletes(dbs, daemon):
    # the source has no FK, so it truncates the parent alone; on the target a table the
    # truncate does not name (mapped, here) references it: its rows stay, as on the source
    both(dbs, "CREATE TABLE parent (id int PRIMARY KEY, v text, s serial)")
    execute(dbs.src, "CREATE TABLE child (id int PRIMARY KEY, parent_id int, v text)")
    execute(dbs.dst, FK_PAIR[1])
    execute(
        dbs.src,
        "INSERT INTO parent SELECT g, 'p' FROM generate_series(1, 20) g",
        "INSERT INTO child SELECT g, g, 'c' FROM generate_series(1, 20) g",
    )
    d = daemon(dbs.config([{"source": "parent"}, {"source": "child"}]))
    wait_until(lambda: streaming(dbs), timeout=60, reason="initial copy done")
    execute(dbs.dst, "SELECT setval('parent_s_seq', 50)")
    execute(dbs.src, "TRUNCATE parent RESTART IDENTITY", "INSERT INTO parent VALUES (5, 'new')")
    wait_for_equal(dbs.src, dbs.dst, ["public.parent", "public.child"])
    assert scalar(dbs.dst, "SELECT count(*) FROM child") == 20
    # RESTART IDENTITY still restarts the target's own sequence
    assert scalar(dbs.dst, "SELECT (last_value, is_called)::text FROM parent_s_seq") == "(1,f)"
    assert d.alive()
    assert '"truncate_as_delete"' in d.log_text()


def test_check_refuses_a_copy_that_would_truncate_a_table_an_unmapped_one_references(
    dbs: DbPair, tmp_path: Path
):
    both(dbs, FK_PAIR[0])
    execute(dbs.dst, "CREATE TABLE notes (id int PRIMARY KEY, parent_id int REFERENCES parent)")
    code, report, text = check(tmp_path, dbs.config([{"source": "parent"}]))
    assert code == 1, text
    found = only_error(report, "foreign_key")
    assert found["obj"] == "dst:public.parent"
    assert "notes_parent_id_fkey" in found["message"]
    assert "public.notes" in found["message"]
    assert "snapshot = 'merge'" in found["fix"]
    # `run` refuses it too, before it truncates anything
    assert run_cli("setup", "-c", str(tmp_path / "check.toml")).returncode == 0
    res = run_cli("run", "-c", str(tmp_path / "check.toml"))
    assert res.returncode == 1
    assert "notes_parent_id_fkey" in res.stdout + res.stderr
    # with a merge the target keeps its rows: nothing to refuse, but a source TRUNCATE
    # would leave the rows of notes without theirs
    code, report, text = check(
        tmp_path, dbs.config([{"source": "parent"}], pipeline={"snapshot": "merge"})
    )
    assert code == 0, text
    (warning,) = [f for f in report["findings"] if f["check"] == "foreign_key"]
    assert warning["severity"] == "warning"
    assert "notes_parent_id_fkey" in warning["message"]


# --- partitions --------------------------------------------------------------------------

PART_TARGET = (
    "CREATE TABLE m (id int, k int, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k)",
    "CREATE TABLE m_lo PARTITION OF m FOR VALUES FROM (MINVALUE) TO (100)",
    "CREATE TABLE m_hi PARTITION OF m FOR VALUES FROM (100) TO (MAXVALUE)",
)


def test_partitioned_target_takes_the_first_copy_and_a_source_truncate(dbs, daemon):
    execute(dbs.src, "CREATE TABLE m (id int, k int, v text, PRIMARY KEY (id, k))")
    execute(dbs.dst, *PART_TARGET)
    execute(dbs.dst, "INSERT INTO m VALUES (1, 1, 'stale'), (2, 200, 'stale')")
    execute(dbs.src, "INSERT INTO m SELECT g, g * 2, 'v' FROM generate_series(1, 100) g")
    d = daemon(dbs.config([{"source": "m"}]))
    wait_until(lambda: streaming(dbs), timeout=60, reason="initial copy done")
    wait_for_equal(dbs.src, dbs.dst, ["public.m"])
    assert scalar(dbs.dst, "SELECT count(*) FROM m_hi") == 51
    execute(
        dbs.src,
        "UPDATE m SET k = 150 WHERE id = 1",  # a row moves between partitions
        "TRUNCATE m",
        "INSERT INTO m VALUES (7, 7, 'after'), (8, 800, 'after')",
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.m"])
    assert d.alive()


def test_partitioned_source_via_its_root_copies_and_streams_into_a_partitioned_target(dbs, daemon):
    both(dbs, *PART_TARGET)
    execute(dbs.src, "INSERT INTO m SELECT g, g * 2, 'v' FROM generate_series(1, 100) g")
    d = daemon(dbs.config([{"source": "m"}]))
    wait_until(lambda: streaming(dbs), timeout=60, reason="initial copy done")
    wait_for_equal(dbs.src, dbs.dst, ["public.m"])
    execute(
        dbs.src,
        "UPDATE m SET k = 300 WHERE id = 2",
        "DELETE FROM m WHERE id = 3",
        "INSERT INTO m VALUES (500, 5, 'new')",
    )
    wait_for_equal(dbs.src, dbs.dst, ["public.m"])
    execute(dbs.src, "TRUNCATE m", "INSERT INTO m VALUES (9, 9, 'after')")
    wait_for_equal(dbs.src, dbs.dst, ["public.m"])
    assert d.alive()
    # pgoutput describes each leaf too, though it sends the changes under the root: that
    # is no unconfigured table (the warning once fired for every leaf)
    assert '"relation_not_configured"' not in d.log_text()


# --- the source's own output settings ----------------------------------------------------

VALUES_DDL = (
    "CREATE TABLE vals (id int PRIMARY KEY, d date, ts timestamp, f8 float8, f4 real,"
    " iv interval, b bytea, m money)"
)
VALUES_ROWS = (
    "INSERT INTO vals VALUES"
    " (1, '2024-03-05', '2024-03-05 01:02:03.456789', 0.1234567890123456789, 0.12345679,"
    "  '1 year 2 mons -3 days 04:05:06.5', '\\x005c27ff', 12.34),"
    " (2, '1999-12-31', '2001-02-03 04:05:06', 1e-300, 3.4e38, '-1 day -00:00:01',"
    "  '\\x', -0.5)"
)


def set_source_output(dbs: DbPair) -> None:
    execute(
        dbs.src,
        *(
            sql.SQL("ALTER DATABASE {} SET {}").format(sql.Identifier(dbs.name), sql.SQL(s))
            for s in (
                "DateStyle = 'SQL, DMY'",
                "extra_float_digits = -3",
                "IntervalStyle = 'sql_standard'",
                "bytea_output = 'escape'",
            )
        ),
    )


def test_copy_and_resync_read_the_source_in_the_pinned_output_format(dbs, daemon):
    both(dbs, VALUES_DDL)
    set_source_output(dbs)
    execute(dbs.src, VALUES_ROWS)
    d = daemon(dbs.config([{"source": "vals"}]))
    wait_until(lambda: streaming(dbs), timeout=60, reason="initial copy done")
    wait_rows_equal(dbs, "vals")
    exact = "SELECT d = '2024-03-05' AND f8 = 0.1234567890123456789 FROM vals WHERE id = 1"
    assert scalar(dbs.dst, exact) is True
    # resync --table copies again, through a session of its own
    execute(dbs.dst, "UPDATE vals SET d = NULL, f8 = NULL, iv = NULL, b = NULL")
    res = run_cli("resync", "-c", str(d.config_path), "--table", "public.vals")
    assert res.returncode == 0, res.stderr
    wait_until(lambda: '"resync_done"' in d.log_text(), timeout=120, reason="resync done")
    wait_rows_equal(dbs, "vals")
    assert d.alive()


# --- types without a default equality operator -------------------------------------------


def test_full_identity_rows_with_jsonpath_and_json_update_and_delete(dbs, daemon):
    both(dbs, "CREATE TABLE docs (a int, p jsonpath, ps jsonpath[], j json)")
    execute(dbs.src, "ALTER TABLE docs REPLICA IDENTITY FULL")
    execute(
        dbs.src,
        """INSERT INTO docs VALUES (1, '$.a', ARRAY['$.x'::jsonpath], '{"k":  1}'),
           (2, '$.b[*] ? (@ > 1)', NULL, '[1, 2]'), (3, NULL, NULL, NULL)""",
    )
    d = daemon(dbs.config([{"source": "docs"}]))
    wait_until(lambda: streaming(dbs), timeout=60, reason="initial copy done")
    execute(
        dbs.src,
        "UPDATE docs SET a = 10 WHERE a = 1",
        """UPDATE docs SET j = '{"k": 2}', p = '$.c' WHERE a = 2""",
        "UPDATE docs SET ps = ARRAY['$.y'::jsonpath] WHERE a = 10",
        "DELETE FROM docs WHERE a = 2",
        "DELETE FROM docs WHERE a = 3",
    )
    wait_rows_equal(dbs, "docs")
    assert scalar(dbs.dst, "SELECT count(*) FROM docs") == 1
    assert d.alive()


def test_catalog_tells_which_column_types_compare_with_equals(dbs: DbPair):
    execute(
        dbs.dst,
        "CREATE TYPE mood AS ENUM ('a', 'b')",
        "CREATE TYPE good AS (n int, t text)",
        "CREATE TYPE bad AS (n int, j json)",
        "CREATE DOMAIN doc AS json",
        "CREATE DOMAIN num AS numeric CHECK (VALUE > 0)",
        "CREATE TABLE t (i int, v varchar(5), m mood, r int4range, g good, ia int[],"
        " jb jsonb, n num, ts timestamptz, x xid,"
        " j json, p jsonpath, pa jsonpath[], x2 xml, pt point, b bad, ba bad[], d doc)",
    )

    async def read() -> dict[str, bool]:
        async with await psycopg.AsyncConnection.connect(dbs.dst) as conn:
            table = await read_target_table(conn, QualifiedName("public", "t"))
        return {c.name: c.has_equality for c in table.columns.values()}

    got = asyncio.run(read())
    with_eq = {"i", "v", "m", "r", "g", "ia", "jb", "n", "ts", "x"}
    assert {c for c, eq in got.items() if eq} == with_eq
    assert {c for c, eq in got.items() if not eq} == {"j", "p", "pa", "x2", "pt", "b", "ba", "d"}


def test_a_published_table_the_config_does_not_name_is_warned_about_once(dbs, daemon):
    """A DBA's publication may carry more tables than the pipeline applies: their changes
    are not applied, and the first one says so (by name), once."""
    both(
        dbs,
        "CREATE TABLE kept (id int PRIMARY KEY)",
        "CREATE TABLE extra (id int PRIMARY KEY)",
    )
    execute(dbs.src, "CREATE PUBLICATION dba_pub FOR TABLE kept, extra")
    d = daemon(dbs.config([{"source": "kept"}], pipeline={"publication": "dba_pub"}))
    wait_until(lambda: streaming(dbs), timeout=60, reason="streaming")
    execute(dbs.src, "INSERT INTO extra VALUES (1)", "INSERT INTO extra VALUES (2)")
    execute(dbs.src, "INSERT INTO kept VALUES (1)")
    wait_for_equal(dbs.src, dbs.dst, ["public.kept"])
    assert scalar(dbs.dst, "SELECT count(*) FROM extra") == 0
    warned = [line for line in d.log_text().splitlines() if '"relation_not_configured"' in line]
    assert len(warned) == 1, warned
    assert '"public.extra"' in warned[0]
