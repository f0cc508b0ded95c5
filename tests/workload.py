"""A ledger workload for fault tests: a double apply or a lost transaction shows.

Each source transaction inserts a few ledger rows and moves balances; the ledger's
target copy has no unique key, so a transaction applied twice leaves duplicate ids,
and a lost one leaves the balances unequal.
"""

from __future__ import annotations

import random
import threading

import psycopg

from tests.support import execute, scalar

SOURCE_DDL = (
    "CREATE TABLE ledger (id bigserial PRIMARY KEY, acct int, amount int)",
    "CREATE TABLE acct (id int PRIMARY KEY, balance bigint)",
    "INSERT INTO acct SELECT g, 0 FROM generate_series(1, 20) g",
)
TARGET_DDL = (
    "CREATE TABLE ledger (id bigint, acct int, amount int)",  # no unique key on purpose
    "CREATE TABLE acct (id int PRIMARY KEY, balance bigint)",
    "INSERT INTO acct SELECT g, 0 FROM generate_series(1, 20) g",
)
TABLES = [{"source": "ledger"}, {"source": "acct"}]


def create(src: str, dst: str) -> None:
    execute(src, *SOURCE_DDL)
    execute(dst, *TARGET_DDL)


class LedgerWorkload:
    """Writes transactions on ``dsn`` in a thread until stopped; tolerates the source
    restarting under it (a failed transaction is retried on a new connection)."""

    def __init__(self, dsn: str, seed: int = 7) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.committed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LedgerWorkload:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    while not self.stop_event.is_set():
                        with conn.transaction():
                            for _ in range(self.rng.randint(1, 20)):
                                a, amt = self.rng.randint(1, 20), self.rng.randint(1, 100)
                                conn.execute(
                                    "INSERT INTO ledger (acct, amount) VALUES (%s, %s)", (a, amt)
                                )
                                conn.execute(
                                    "UPDATE acct SET balance = balance + %s WHERE id = %s",
                                    (amt, a),
                                )
                        self.committed += 1
            except psycopg.OperationalError:
                self.stop_event.wait(0.2)  # the source restarts: try again shortly
            except BaseException as exc:
                self.errors.append(exc)
                return


def duplicates(dst: str) -> int:
    return int(scalar(dst, "SELECT count(*) - count(DISTINCT id) FROM ledger"))
