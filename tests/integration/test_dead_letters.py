"""Rows the target rejects go to the dead letters, masked; the stream goes on."""

from __future__ import annotations

import orjson
import psycopg

from tests.plugins.pg import DbPair, run_cli, wait_for_equal
from tests.support import execute, scalar, snapshot, wait_until

DDL = "CREATE TABLE pay (id int PRIMARY KEY, email text, amount int)"


def letters(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT operation, key, row_data, error_class, error_message, resolved"
            " FROM replicator.dead_letters ORDER BY id"
        ).fetchall()


def test_poison_row_goes_to_dead_letters_masked_and_retry_applies_it_once(dbs: DbPair, daemon):
    execute(dbs.src, DDL)
    execute(dbs.dst, DDL, "ALTER TABLE pay ADD CONSTRAINT positive CHECK (amount >= 0)")
    d = daemon(dbs.config([{"source": "pay", "mask": {"email": "email"}}]))
    execute(
        dbs.src,
        "INSERT INTO pay SELECT g, 'user' || g || '@secret.in', g FROM generate_series(1, 100) g",
        "INSERT INTO pay VALUES (1000, 'poison@secret.in', -5)",  # the target refuses it
        "INSERT INTO pay SELECT g, 'later' || g || '@secret.in', g"
        " FROM generate_series(101, 150) g",
        "UPDATE pay SET amount = amount + 1 WHERE id <= 10",
    )
    wait_until(
        lambda: scalar(dbs.dst, "SELECT count(*) FROM pay") == 150,
        timeout=30,
        reason="the rows around the poison row arrive",
    )
    ((op, key, row, state, message, resolved),) = letters(dbs.dst)
    assert (op, key, state, resolved) == ("insert", {"id": "1000"}, "23514", None)
    assert row == {"id": "1000", "email": "p***@secret.in", "amount": "-5"}
    assert "positive" in message
    assert "poison@secret.in" not in d.log_text() + message
    assert d.alive()

    listed = run_cli("dlq", "list", "-c", str(d.config_path), "--json")
    assert listed.returncode == 0
    assert orjson.loads(listed.stdout.splitlines()[0])["key"] == {"id": "1000"}

    execute(dbs.dst, "ALTER TABLE pay DROP CONSTRAINT positive")  # the fix on the target
    first = run_cli("dlq", "retry", "-c", str(d.config_path))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "applied" in first.stdout
    before = snapshot(dbs.dst, "public.pay")
    second = run_cli("dlq", "retry", "-c", str(d.config_path))
    assert second.returncode == 0
    assert "nothing to retry" in second.stdout
    assert snapshot(dbs.dst, "public.pay") == before
    assert scalar(dbs.dst, "SELECT email FROM pay WHERE id = 1000") == "p***@secret.in"
    assert letters(dbs.dst)[0][5] == "applied"


def test_bad_updates_and_deletes_are_isolated_among_good_ones(dbs, daemon):
    execute(dbs.src, DDL)
    execute(dbs.dst, DDL, "ALTER TABLE pay ADD CONSTRAINT small CHECK (amount < 1000)")
    daemon(dbs.config([{"source": "pay"}], pipeline={"batch": {"max_delay_ms": 1000}}))
    execute(dbs.src, "INSERT INTO pay SELECT g, 'e', g FROM generate_series(1, 500) g")
    wait_until(
        lambda: scalar(dbs.dst, "SELECT count(*) FROM pay") == 500, timeout=30, reason="seeded"
    )
    with psycopg.connect(dbs.src) as conn:  # one transaction, several bad rows among good
        conn.execute("UPDATE pay SET amount = amount * 10 WHERE id % 50 = 0")  # 10 x >= 1000?
        conn.execute("DELETE FROM pay WHERE id BETWEEN 200 AND 210")
        conn.execute("UPDATE pay SET email = 'f' WHERE id % 7 = 0")
        conn.commit()
    bad = scalar(dbs.src, "SELECT count(*) FROM pay WHERE amount >= 1000")
    wait_until(lambda: len(letters(dbs.dst)) == bad, timeout=30, reason="bad rows dead-lettered")
    # everything but the rejected updates matches the source
    execute(dbs.src, "UPDATE pay SET amount = amount / 10 WHERE amount >= 1000")
    wait_for_equal(dbs.src, dbs.dst, ["public.pay"])


def test_data_type_errors_are_dead_lettered_without_the_value(dbs: DbPair, daemon):
    # text on the source, integer on the target: check warns, bad values become letters
    execute(dbs.src, "CREATE TABLE pay (id int PRIMARY KEY, email text, amount text)")
    execute(dbs.dst, DDL)
    d = daemon(dbs.config([{"source": "pay", "mask": {"email": "email"}}]))
    bad = {
        1001: "AADHAAR111122223333",  # 22P02 invalid input syntax: "..." after the colon
        1002: "98765432109876",  # 22003 value "..." is out of range for type integer
        1003: 'x"9876543210"y',  # a value with quotes in it
    }
    execute(
        dbs.src, "INSERT INTO pay SELECT g, 'u' || g || '@x.in', g FROM generate_series(1, 50) g"
    )
    with psycopg.connect(dbs.src, autocommit=True) as conn:
        for i, v in bad.items():
            conn.execute("INSERT INTO pay VALUES (%s, 'e@x.in', %s)", (i, v))
    execute(dbs.src, "INSERT INTO pay SELECT g, 'v@x.in', g FROM generate_series(51, 60) g")
    wait_until(
        lambda: (
            len(letters(dbs.dst)) == len(bad) and scalar(dbs.dst, "SELECT count(*) FROM pay") == 60
        ),
        timeout=30,
        reason="the bad rows are dead letters, the good ones arrived",
    )
    found = letters(dbs.dst)
    assert sorted(f[3] for f in found) == ["22003", "22P02", "22P02"]
    messages = [f[4] for f in found]
    listed = run_cli("dlq", "list", "-c", str(d.config_path))
    assert listed.returncode == 0, listed.stderr
    shown = "\n".join(messages) + listed.stdout + listed.stderr + d.log_text()
    for value in bad.values():
        assert value not in shown
    assert "98765" not in shown
    assert "AADHAAR" not in shown
    # what stays: the kind of error and where (the column, from COPY's context)
    assert all("column amount" in m for m in messages), messages
    assert any("invalid input syntax for type integer" in m for m in messages), messages
    assert any('value "…" is out of range for type integer' in m for m in messages), messages
    assert d.alive()
