"""Masking on real servers: masked on the target, found by masked keys.

That no value leaks anywhere is test_leaks.py's subject."""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
import pytest

from replicator.masking import compile_mask, parse_mask
from tests.plugins.pg import DbPair
from tests.support import execute, scalar, wait_until

CITIZENS = """
CREATE TABLE citizens (
    id int PRIMARY KEY,
    aadhaar text, jan_aadhaar text, mobile text, email text, income_band text,
    district_id int, score numeric
)
"""
MASKS = {
    "aadhaar": "redact",
    "jan_aadhaar": "partial:4",
    "mobile": "partial:4",
    "email": "email",
    "income_band": "redact:CONFIDENTIAL",
}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "mask.key"
    # a key as the README makes one (openssl rand -hex 32): raw random bytes would begin or
    # end with a whitespace byte about one time in twenty, which load_key strips
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


def expected_masked(dsn: str, key: bytes | None = None) -> list[tuple]:
    """The source rows with the configured masks applied by the masking module."""
    fns = {c: compile_mask(parse_mask(m), key) for c, m in MASKS.items()}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, aadhaar, jan_aadhaar, mobile, email, income_band, district_id, score"
            " FROM citizens ORDER BY id"
        ).fetchall()
    out = []
    for r in rows:
        vals = dict(zip(["id", *MASKS, "district_id", "score"], r, strict=True))
        for col, fn in fns.items():
            v = vals[col]
            vals[col] = None if v is None else fn(v.encode()).decode()  # type: ignore[union-attr]
        out.append(tuple(vals.values()))
    return out


def target_rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT id, aadhaar, jan_aadhaar, mobile, email, income_band, district_id, score"
            " FROM citizens ORDER BY id"
        ).fetchall()


def test_inserted_updated_and_deleted_rows_arrive_masked(dbs: DbPair, daemon):
    execute(dbs.src, CITIZENS)
    execute(dbs.dst, CITIZENS)
    daemon(dbs.config([{"source": "citizens", "mask": MASKS}]))
    execute(
        dbs.src,
        "INSERT INTO citizens SELECT g, lpad(g::text, 12, '9'),"
        " '1234-5678-' || lpad(g::text, 4, '0'), '98765' || lpad(g::text, 5, '0'),"
        " 'user' || g || '@example.com', 'band' || g % 3,"
        " g % 7, g / 3.0 FROM generate_series(1, 200) g",
        "INSERT INTO citizens (id, mobile, email)"
        " VALUES (1000, NULL, 'a@b.in'), (1001, '12', 'no-at')",
        "UPDATE citizens SET mobile = '9999900000', email = 'new@example.org' WHERE id <= 10",
        "UPDATE citizens SET id = id + 500, jan_aadhaar = '4321-8765-0000'"
        " WHERE id BETWEEN 11 AND 20",
        "DELETE FROM citizens WHERE id BETWEEN 21 AND 30",
    )
    wait_until(
        lambda: target_rows(dbs.dst) == expected_masked(dbs.src),
        timeout=30,
        reason="target holds exactly the masked source rows",
    )
    by_id = {r[0]: r for r in target_rows(dbs.dst)}
    assert by_id[1][2:6] == ("****-****-0001", "******0000", "n***@example.org", "CONFIDENTIAL")
    assert by_id[1000][3:5] == (None, "***@b.in")
    assert by_id[1001][3:5] == ("**", "***")


def test_table_keyed_by_a_hashed_column_supports_updates_and_deletes(dbs, daemon, key_file):
    ddl = "CREATE TABLE contacts (mobile text PRIMARY KEY, name text, visits int)"
    execute(dbs.src, ddl)
    execute(dbs.dst, ddl)
    daemon(
        dbs.config(
            [{"source": "contacts", "mask": {"mobile": "hash"}}],
            masking={"key_file": str(key_file)},
        )
    )
    execute(
        dbs.src,
        "INSERT INTO contacts SELECT '98' || lpad(g::text, 8, '0'), 'n' || g, 0"
        " FROM generate_series(1, 50) g",
        "UPDATE contacts SET visits = visits + 1 WHERE mobile <= '9800000025'",
        "UPDATE contacts SET mobile = '9111111111' WHERE mobile = '9800000050'",
        "DELETE FROM contacts WHERE mobile BETWEEN '9800000040' AND '9800000049'",
    )
    fn = compile_mask(parse_mask("hash"), key_file.read_bytes())
    with psycopg.connect(dbs.src) as conn:
        src = conn.execute("SELECT mobile, name, visits FROM contacts").fetchall()
    want = sorted((fn(m.encode()).decode(), n, v) for m, n, v in src)
    wait_until(
        lambda: (
            sorted(
                psycopg.connect(dbs.dst)
                .execute("SELECT mobile, name, visits FROM contacts")
                .fetchall()
            )
            == want
        ),
        timeout=30,
        reason="hashed keys updated and deleted",
    )


def test_deny_mode_stops_the_pipeline_when_a_new_unclassified_column_appears(dbs, daemon):
    ddl = "CREATE TABLE p (id int PRIMARY KEY, mobile text)"
    execute(dbs.src, ddl)
    execute(dbs.dst, ddl, "ALTER TABLE p ADD COLUMN aadhaar text")
    d = daemon(
        dbs.config(
            [{"source": "p", "mask": {"id": "plain", "mobile": "partial:4"}}],
            masking={"unclassified": "deny"},
        )
    )
    execute(dbs.src, "INSERT INTO p VALUES (1, '9876543210')")
    wait_until(
        lambda: scalar(dbs.dst, "SELECT mobile FROM p WHERE id = 1") == "******3210",
        timeout=30,
        reason="classified columns replicate",
    )
    execute(
        dbs.src,
        "ALTER TABLE p ADD COLUMN aadhaar text",
        "INSERT INTO p VALUES (2, '9876543211', '123456789012')",
    )
    wait_until(lambda: not d.alive(), timeout=30, reason="daemon stops: its only pipeline failed")
    assert d.proc.returncode == 1
    log = d.log_text()
    assert "column 'aadhaar' has no mask" in log
    assert "123456789012" not in log
    assert scalar(dbs.dst, "SELECT count(*) FROM p WHERE aadhaar IS NOT NULL") == 0


@pytest.mark.parametrize(
    ("target_ddl", "mask", "message"),
    [
        (
            "CREATE TABLE m (id int PRIMARY KEY, v varchar(8))",
            {"v": "redact"},
            "writes up to 12 characters, but target column 'v' holds 8",
        ),
        (
            "CREATE TABLE m (id int PRIMARY KEY, v int)",
            {"v": "partial:2"},
            "writes text, but target column 'v' is of type int4",
        ),
        (
            "CREATE TABLE m (id int PRIMARY KEY, v text NOT NULL)",
            {"v": "null"},
            "NOT NULL on the target",
        ),
        (
            "CREATE TABLE m (id int PRIMARY KEY, v text)",
            {"id": "partial:1"},
            "lossy mask partial:1 on key or unique column 'id'",
        ),
        (
            "CREATE TABLE m (id int PRIMARY KEY, v text)",
            {"nope": "redact"},
            "mask on missing column",
        ),
    ],
    ids=["output-too-long", "non-text-target", "null-into-not-null", "lossy-key", "missing"],
)
def test_run_refuses_a_mask_the_target_cannot_honour_before_streaming(
    dbs, daemon, target_ddl, mask, message
):
    execute(dbs.src, "CREATE TABLE m (id int PRIMARY KEY, v text)")
    execute(dbs.dst, target_ddl)
    d = daemon(dbs.config([{"source": "m", "mask": mask}]))
    wait_until(lambda: not d.alive(), timeout=30, reason="daemon refuses to stream")
    assert d.proc.returncode == 1
    assert message in d.log_text()


def test_a_key_that_is_another_rows_hash_is_hashed_too_and_does_not_collide(dbs, daemon, key_file):
    ddl = "CREATE TABLE contacts (mobile text PRIMARY KEY, name text)"
    execute(dbs.src, ddl)
    execute(dbs.dst, ddl)
    daemon(
        dbs.config(
            [{"source": "contacts", "mask": {"mobile": "hash"}}],
            masking={"key_file": str(key_file)},
        )
    )
    fn = compile_mask(parse_mask("hash"), key_file.read_bytes())
    mobiles = [f"98{i:08d}" for i in range(1, 41)]
    lookalike = fn(mobiles[0].encode()).decode()  # 64 lowercase hex: "already hashed"?
    with psycopg.connect(dbs.src, autocommit=True) as conn:
        for i, m in enumerate([*mobiles, lookalike]):
            conn.execute("INSERT INTO contacts VALUES (%s, %s)", (m, f"n{i}"))
    want = sorted((fn(m.encode()).decode(), f"n{i}") for i, m in enumerate([*mobiles, lookalike]))

    def portal() -> list[tuple]:
        with psycopg.connect(dbs.dst) as conn:
            return sorted(conn.execute("SELECT mobile, name FROM contacts").fetchall())

    wait_until(lambda: portal() == want, timeout=30, reason="41 source rows, 41 portal rows")
    assert len(portal()) == 41
