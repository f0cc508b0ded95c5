"""Rotating the masking key on a two-way setup: every hashed value ends under the new key,
hashed joins match, nothing is lost, and the old key can go."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import signal
import threading
import time
from pathlib import Path

import orjson
import psycopg

from tests.plugins.pg import TwoWay
from tests.support import execute, scalar, toml_dumps, wait_until

DDL = (
    "CREATE TABLE citizens (id int PRIMARY KEY, aadhaar text NOT NULL, name text)",
    "CREATE TABLE enrolments (id int PRIMARY KEY, aadhaar text NOT NULL, scheme text)",
    "CREATE TABLE applications (id int PRIMARY KEY, citizen int, status text)",
)


def new_key(path: Path) -> bytes:
    key = secrets.token_hex(32)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key.encode()


def h(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return sorted(conn.execute(query).fetchall())  # type: ignore[arg-type]


def expected(tw: TwoWay, table: str, key: bytes) -> list[tuple]:
    """The warehouse's rows of ``table`` as the portal must hold them under ``key``."""
    other = "name" if table == "citizens" else "scheme"
    return sorted(
        (i, h(key, a), o) for i, a, o in rows(tw.a, f"SELECT id, aadhaar, {other} FROM {table}")
    )


def portal(tw: TwoWay, table: str) -> list[tuple]:
    other = "name" if table == "citizens" else "scheme"
    return rows(tw.b, f"SELECT id, aadhaar, {other} FROM {table}")


class Writers:
    """The warehouse registers citizens and enrolments, the portal takes applications."""

    def __init__(self, tw: TwoWay, start: int) -> None:
        self.tw, self.next = tw, start
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            with (
                psycopg.connect(self.tw.a, autocommit=True) as a,
                psycopg.connect(self.tw.b, autocommit=True) as b,
            ):
                while not self.stop.is_set():
                    i = self.next
                    with a.transaction():
                        a.execute(
                            "INSERT INTO citizens VALUES (%s, %s, %s)",
                            [i, f"9{i:011d}", f"c{i}"],
                        )
                        a.execute(
                            "INSERT INTO enrolments VALUES (%s, %s, 'pds')", [i, f"9{i:011d}"]
                        )
                        a.execute("UPDATE citizens SET name = name || '+' WHERE id = %s", [i // 2])
                    b.execute("INSERT INTO applications VALUES (%s, %s, 'new')", [i, i])
                    self.next += 1
        except BaseException as exc:  # handed to the test, which fails on it
            self.errors.append(exc)

    def __enter__(self) -> Writers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def all_ready(tw: TwoWay) -> bool:
    return (
        scalar(tw.b, "SELECT count(*) FROM replicator.tables WHERE state <> 'ready'") == 0
        and scalar(tw.b, "SELECT count(*) FROM replicator.tables") == 2
    )


def test_key_rotation_rehashes_every_value_while_both_directions_stream(
    two_way: TwoWay, daemon, tmp_path: Path
):
    tw = two_way
    for ddl in DDL:
        execute(tw.a, ddl)
        execute(tw.b, ddl)
    execute(
        tw.a,
        "INSERT INTO citizens SELECT g, '9' || lpad(g::text, 11, '0'), 'c' || g"
        " FROM generate_series(1, 20000) g",
        "INSERT INTO enrolments SELECT g, '9' || lpad((g * 3 % 20000 + 1)::text, 11, '0'),"
        " 'scheme' || g % 7 FROM generate_series(1, 20000) g",
    )
    old_path, new_path = tmp_path / "mask-1.key", tmp_path / "mask-2.key"
    old = new_key(old_path)
    hashed = {"aadhaar": "hash"}
    a_to_b = [
        {"source": "citizens", "mask": hashed},
        {"source": "enrolments", "mask": hashed},
    ]
    b_to_a = [
        {"source": "citizens", "exclude": ["aadhaar"]},  # the portal edits names, never ids
        {"source": "applications"},
    ]
    config = tw.config(a_to_b, b_to_a, masking={"key_file": str(old_path)})
    d = daemon(config)
    wait_until(
        lambda: portal(tw, "citizens") == expected(tw, "citizens", old),
        timeout=120,
        reason="hashed under the first key",
    )

    with Writers(tw, 100_000) as writers:
        wait_until(
            lambda: scalar(tw.a, "SELECT count(*) FROM applications") > 50,
            timeout=60,
            reason="both directions stream",
        )
        new = new_key(new_path)
        config["masking"]["key_file"] = str(new_path)
        d.config_path.write_text(toml_dumps(config))
        started = time.monotonic()
        os.kill(d.pid, signal.SIGHUP)
        wait_until(lambda: '"hash_key_changed"' in d.log_text(), timeout=60, reason="key seen")
        wait_until(
            lambda: d.log_text().count('"resync_done"') >= 2 and all_ready(tw),
            timeout=240,
            reason="hashed tables re-copied under the new key",
        )
        took = time.monotonic() - started
        during = writers.next - 100_000
    assert not writers.errors
    assert during > 0

    for table in ("citizens", "enrolments"):
        wait_until(
            lambda t=table: portal(tw, t) == expected(tw, t, new),
            timeout=120,
            reason=f"{table}: every hashed value under the new key",
        )
    old_hashes = {h(old, a) for (a,) in rows(tw.a, "SELECT aadhaar FROM citizens")}
    on_portal = {
        a
        for (a,) in rows(tw.b, "SELECT aadhaar FROM citizens UNION SELECT aadhaar FROM enrolments")
    }
    assert not old_hashes & on_portal
    # nothing lost either way, and hashed joins on the portal match the raw join
    join = "SELECT count(*) FROM citizens c JOIN enrolments e USING (aadhaar)"
    assert scalar(tw.b, join) == scalar(tw.a, join) > 0
    wait_until(
        lambda: (
            rows(tw.a, "SELECT * FROM applications") == rows(tw.b, "SELECT * FROM applications")
        ),
        timeout=60,
        reason="applications equal",
    )
    assert rows(tw.a, "SELECT id, name FROM citizens") == rows(
        tw.b, "SELECT id, name FROM citizens"
    )
    copied = [
        orjson.loads(line)["rows"]
        for line in d.log_text().splitlines()
        if '"resync_copied"' in line
    ]
    print(  # the figures for the rotation note (pytest -s)
        f"\nrotation: rows re-hashed {sum(copied)} in {len(copied)} tables, "
        f"{took:.1f} s from SIGHUP to all ready, {during} writes meanwhile, rows lost 0"
    )

    # the old key is destroyed; a restart needs only the new one
    old_path.unlink()
    assert d.stop() == 0
    d.start()
    execute(tw.a, "INSERT INTO citizens VALUES (-1, '900000000001', 'after')")
    wait_until(
        lambda: (
            scalar(tw.b, "SELECT aadhaar FROM citizens WHERE id = -1") == h(new, "900000000001")
        ),
        timeout=60,
        reason="streaming under the new key after the old one is gone",
    )
    assert not re.search(old.decode()[:16], d.log_text())
