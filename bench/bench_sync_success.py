"""Benchmark: the seed's sync-success criterion under a mixed workload with poison rows.

Run: ``python bench/bench_sync_success.py [--minutes M] [--rate TPS] [--writers N]
[--poison FRACTION] [--preload N] [--pg 15|18] [--json PATH]``.

Two throwaway clusters (source, target) from :mod:`replicator.localpg`, loopback only. Both
hold the same three tables shaped like the citizen portal's (``applications``,
``documents``, ``feedback``); the target alone has a CHECK constraint per table
(``amount >= 0``, ``size_bytes >= 0``, ``rating BETWEEN 1 AND 5``). Rows that violate it
on the source are the poison rows: the target rejects them, and the daemon must put each
one in ``replicator.dead_letters`` and apply everything else.

1. ``--preload`` applications (with two documents each and half as many feedback rows,
   ``--poison`` of them poison) are loaded on the source; ``replicator setup``, then
   ``python -m replicator run`` as a subprocess: its initial copy takes the preload.
2. ``--writers`` threads, each on its own connection and its own rows, run ``--rate``
   transactions a second in total for ``--minutes`` (default 10): new applications with
   documents (sometimes updated in the same transaction), feedback, updates of 1-3 rows,
   deletes (an application with its documents, a document, a feedback row), an insert
   and delete of the same row in one transaction, and now and then a bulk transaction of
   a hundred-odd documents and a few dozen updates. Every ``1/--poison``-th inserted row
   (0.1 % by default) is poison; a poison row is never updated or deleted afterwards.
   Keys and poison flags are recorded once their transaction has committed.
3. Writers stop; the wait until the target has applied the source's WAL position read
   right then (the target's replication-origin progress, or the flush position the daemon
   reported to its walsender) is timed.
4. Checked, per table and key: every good row ever written is on the target with the
   source's content (``md5`` of the row's text) or, deleted on the source, absent from it;
   every poison row is in the dead letters (and no good row is); nothing else is on the
   target. The daemon's restarts and errors are read from its JSON log.

success ratio = good rows applied / good rows written; dead letters / poison rows written.
Exit status 0 when nothing is lost and every poison row is a dead letter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_core, next to this file

import psycopg
from bench_core import (
    BenchError,
    code_fingerprint,
    daemon_log_summary,
    other_cpu,
    pick_install,
    process_table,
    say,
    server_log_errors,
    toml_dumps,
)
from psycopg import sql

from replicator import localpg

DB = "portal"
PIPELINE = "sync"
ORIGIN = f"replicator_{PIPELINE}"
APP_NAME = f"replicator:{PIPELINE}"
SLOT = f"replicator_{PIPELINE}"
POLL_S = 0.05

DDL = """
CREATE SEQUENCE public.application_ids;
CREATE SEQUENCE public.feedback_ids;
CREATE TABLE public.applications (
    application_id  bigint PRIMARY KEY DEFAULT nextval('public.application_ids'),
    citizen_id      bigint NOT NULL,
    scheme_code     text NOT NULL,
    status          text NOT NULL,
    amount          numeric(12, 2) NOT NULL,
    form_data       jsonb,
    district_id     int NOT NULL,
    submitted_at    timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.documents (
    document_id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    application_id       bigint NOT NULL,
    doc_type             text NOT NULL,
    file_name            text NOT NULL,
    size_bytes           bigint NOT NULL,
    sha256               text NOT NULL,
    verification_status  text NOT NULL DEFAULT 'pending',
    uploaded_at          timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_application ON public.documents (application_id);
CREATE TABLE public.feedback (
    feedback_id   bigint PRIMARY KEY DEFAULT nextval('public.feedback_ids'),
    citizen_id    bigint,
    category      text NOT NULL,
    subject       text NOT NULL,
    message       text NOT NULL,
    rating        smallint,
    status        text NOT NULL DEFAULT 'open',
    submitted_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at   timestamptz
);
"""


@dataclass(frozen=True)
class Table:
    name: str
    key: str
    poison: str  # on the source: the rows the target's CHECK rejects
    check: str  # on the target only


TABLES = (
    Table("applications", "application_id", "amount < 0", "amount >= 0"),
    Table("documents", "document_id", "size_bytes < 0", "size_bytes >= 0"),
    Table("feedback", "feedback_id", "rating < 1", "rating BETWEEN 1 AND 5"),
)

SCHEMES = ["PMAY-G", "CMCHY", "PALANHAR", "SILICOSIS", "VIDHWA-PENSION", "INDIRA-RASOI"]
STATUSES = ["submitted", "under_review", "documents_required", "approved", "rejected"]
DOC_TYPES = ["income_certificate", "caste_certificate", "bank_passbook", "ration_card", "photo"]
CATEGORIES = ["complaint", "suggestion", "praise", "query"]

# preload: generated server-side; poison where g hits the fraction's stride
PRELOAD_APPS = """
INSERT INTO public.applications (citizen_id, scheme_code, status, amount, form_data, district_id)
SELECT 100000 + g * 7 % 90000, (ARRAY['PMAY-G', 'CMCHY', 'PALANHAR'])[1 + g % 3],
       (ARRAY['submitted', 'under_review', 'approved'])[1 + g % 3],
       CASE WHEN g % {stride} = {phase} THEN -1 ELSE 1 END * (1000 + g * 37 % 50000),
       jsonb_build_object('members', 1 + g % 6, 'bpl', g % 2 = 0), 1 + g % 33
FROM generate_series(1, {n}) AS g
"""
PRELOAD_DOCS = """
INSERT INTO public.documents (application_id, doc_type, file_name, size_bytes, sha256)
SELECT a.application_id, (ARRAY['income_certificate', 'photo'])[d],
       'doc_' || a.application_id || '_' || d || '.pdf',
       CASE WHEN (a.application_id * 2 + d) % {stride} = {phase} THEN -1 ELSE 1 END
         * (20000 + a.application_id * 131 % 900000),
       md5(a.application_id::text || d::text) || md5(d::text || a.application_id::text)
FROM public.applications a, generate_series(1, 2) AS d
"""
PRELOAD_FEEDBACK = """
INSERT INTO public.feedback (citizen_id, category, subject, message, rating)
SELECT 100000 + g * 11 % 90000, (ARRAY['complaint', 'suggestion', 'praise', 'query'])[1 + g % 4],
       'Subject ' || g, repeat('Feedback text about the portal. ', 1 + g % 5),
       CASE WHEN g % {stride} = {phase} THEN 0 ELSE 1 + g % 5 END
FROM generate_series(1, {n}) AS g
"""


class KeyPool:
    """Keys a writer may still update or delete: O(1) add, remove and random pick."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.index: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, key: Any) -> None:
        if key not in self.index:
            self.index[key] = len(self.items)
            self.items.append(key)

    def remove(self, key: Any) -> None:
        i = self.index.pop(key, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.index[last] = i

    def pick(self, rnd: random.Random) -> Any:
        return self.items[rnd.randrange(len(self.items))] if self.items else None


@dataclass
class Written:
    """What has committed on the source: good and poison keys per table (as text)."""

    good: dict[str, set[str]] = field(default_factory=lambda: {t.name: set() for t in TABLES})
    poison: dict[str, set[str]] = field(default_factory=lambda: {t.name: set() for t in TABLES})
    ops: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Written) -> None:
        for t in TABLES:
            self.good[t.name] |= other.good[t.name]
            self.poison[t.name] |= other.poison[t.name]
        self.ops.update(other.ops)


class Writer(threading.Thread):
    """One connection; its own rows only, so writers never wait on each other's locks."""

    def __init__(
        self, n: int, dsn: str, tps: float, poison: float, stop: threading.Event, seed: int
    ) -> None:
        super().__init__(name=f"writer{n}", daemon=True)
        self.dsn = dsn
        self.interval = 1.0 / tps
        self.stride = round(1 / poison) if poison > 0 else 0
        self.stop = stop
        self.rnd = random.Random(seed)
        self.inserted = self.rnd.randrange(self.stride) if self.stride else 0
        self.pools = {t.name: KeyPool() for t in TABLES}
        self.written = Written()
        self.errors: list[str] = []
        self.elapsed = 0.0

    # -- bookkeeping ---------------------------------------------------------------------

    def next_poison(self) -> bool:
        self.inserted += 1
        return bool(self.stride) and self.inserted % self.stride == 0

    def run(self) -> None:
        started = time.monotonic()
        due = started
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    now = time.monotonic()
                    if due > now:
                        self.stop.wait(due - now)
                        continue
                    due = max(due + self.interval, now - 1.0)  # never burst to catch up
                    self.one_txn(conn)
        except Exception as exc:  # reported; the check below counts what committed
            self.errors.append(f"{type(exc).__name__}: {exc}")
        self.elapsed = time.monotonic() - started

    def one_txn(self, conn: psycopg.Connection) -> None:
        r = self.rnd.random()
        kind = (
            "application"
            if r < 0.35
            else "feedback"
            if r < 0.50
            else "update"
            if r < 0.85
            else "delete"
            if r < 0.95
            else "insert_delete"
            if r < 0.98
            else "bulk"
        )
        done: list[tuple[str, str, Any, bool]] = []  # (op, table, key, poison)
        try:
            with conn.transaction():
                getattr(self, f"txn_{kind}")(conn, done)
        except psycopg.Error as exc:
            self.written.ops["failed_txns"] += 1
            if len(self.errors) < 20:
                self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            return
        self.written.ops["txns"] += 1
        for op, table, key, poison in done:
            self.written.ops[op] += 1
            if op == "insert":
                (self.written.poison if poison else self.written.good)[table].add(str(key))
                if not poison:
                    self.pools[table].add(key)
            elif op == "delete":
                self.pools[table].remove(key)

    # -- transactions ----------------------------------------------------------------------

    def insert_application(self, conn: psycopg.Connection, done: list) -> Any:
        rnd = self.rnd
        poison = self.next_poison()
        amount = round(rnd.uniform(500, 250000), 2) * (-1 if poison else 1)
        row = conn.execute(
            "INSERT INTO public.applications (citizen_id, scheme_code, status, amount,"
            " form_data, district_id) VALUES (%s, %s, 'submitted', %s, %s, %s)"
            " RETURNING application_id",
            [
                rnd.randrange(100000, 190000),
                rnd.choice(SCHEMES),
                amount,
                json.dumps({"members": rnd.randrange(1, 8), "bpl": rnd.random() < 0.4}),
                rnd.randrange(1, 34),
            ],
        ).fetchone()
        assert row is not None
        done.append(("insert", "applications", row[0], poison))
        return row[0], poison

    def insert_document(self, conn: psycopg.Connection, done: list, app: Any) -> None:
        rnd = self.rnd
        poison = self.next_poison()
        size = rnd.randrange(10_000, 5_000_000) * (-1 if poison else 1)
        row = conn.execute(
            "INSERT INTO public.documents (application_id, doc_type, file_name, size_bytes,"
            " sha256) VALUES (%s, %s, %s, %s, md5(random()::text) || md5(random()::text))"
            " RETURNING document_id",
            [app, rnd.choice(DOC_TYPES), f"upload_{rnd.randrange(10**9)}.pdf", size],
        ).fetchone()
        assert row is not None
        done.append(("insert", "documents", row[0], poison))

    def insert_feedback(self, conn: psycopg.Connection, done: list) -> Any:
        rnd = self.rnd
        poison = self.next_poison()
        row = conn.execute(
            "INSERT INTO public.feedback (citizen_id, category, subject, message, rating)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING feedback_id",
            [
                rnd.randrange(100000, 190000) if rnd.random() < 0.8 else None,
                rnd.choice(CATEGORIES),
                f"About scheme {rnd.choice(SCHEMES)}",
                "The portal " + rnd.choice(["was slow", "worked well", "lost my upload"]) * 3,
                0 if poison else (rnd.randrange(1, 6) if rnd.random() < 0.9 else None),
            ],
        ).fetchone()
        assert row is not None
        done.append(("insert", "feedback", row[0], poison))
        return row[0]

    def txn_application(self, conn: psycopg.Connection, done: list) -> None:
        app, poison = self.insert_application(conn, done)
        for _ in range(self.rnd.randrange(4)):
            self.insert_document(conn, done, app)
        if not poison and self.rnd.random() < 0.3:  # folded with its insert on the way
            conn.execute(
                "UPDATE public.applications SET status = 'under_review', updated_at = now()"
                " WHERE application_id = %s",
                [app],
            )
            done.append(("update", "applications", app, False))

    def txn_feedback(self, conn: psycopg.Connection, done: list) -> None:
        for _ in range(1 + (self.rnd.random() < 0.3)):
            self.insert_feedback(conn, done)

    def update_one(self, conn: psycopg.Connection, done: list) -> None:
        rnd = self.rnd
        table = rnd.choice(("applications", "applications", "documents", "feedback"))
        key = self.pools[table].pick(rnd)
        if key is None:
            return
        if table == "applications":
            conn.execute(
                "UPDATE public.applications SET status = %s, amount = amount + %s,"
                " form_data = form_data || jsonb_build_object('note', %s::text),"
                " updated_at = now() WHERE application_id = %s",
                [rnd.choice(STATUSES), rnd.randrange(0, 500), f"n{rnd.randrange(999)}", key],
            )
        elif table == "documents":
            conn.execute(
                "UPDATE public.documents SET verification_status = %s, updated_at = now()"
                " WHERE document_id = %s",
                [rnd.choice(["pending", "verified", "rejected"]), key],
            )
        else:
            conn.execute(
                "UPDATE public.feedback SET status = %s, rating = %s,"
                " resolved_at = CASE WHEN %s = 'resolved' THEN now() END WHERE feedback_id = %s",
                [s := rnd.choice(["open", "in_progress", "resolved"]), rnd.randrange(1, 6), s, key],
            )
        done.append(("update", table, key, False))

    def txn_update(self, conn: psycopg.Connection, done: list) -> None:
        for _ in range(self.rnd.randrange(1, 4)):
            self.update_one(conn, done)

    def txn_delete(self, conn: psycopg.Connection, done: list) -> None:
        rnd = self.rnd
        table = rnd.choice(("applications", "documents", "feedback"))
        key = self.pools[table].pick(rnd)
        if key is None:
            return
        if table == "applications":
            # with its documents; poison documents stay (never touched again)
            for (doc,) in conn.execute(
                "DELETE FROM public.documents WHERE application_id = %s AND size_bytes >= 0"
                " RETURNING document_id",
                [key],
            ).fetchall():
                done.append(("delete", "documents", doc, False))
        t = next(t for t in TABLES if t.name == table)
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE {} = %s").format(
                sql.Identifier("public", table), sql.Identifier(t.key)
            ),
            [key],
        )
        done.append(("delete", table, key, False))

    def txn_insert_delete(self, conn: psycopg.Connection, done: list) -> None:
        if self.rnd.random() < 0.5:
            key = self.insert_feedback(conn, done)
            if done[-1][3]:  # poison: keep it, it is never touched again
                return
            conn.execute("DELETE FROM public.feedback WHERE feedback_id = %s", [key])
            done.append(("delete", "feedback", key, False))
        else:
            app, poison = self.insert_application(conn, done)
            if poison:
                return
            conn.execute(
                "UPDATE public.applications SET status = 'withdrawn' WHERE application_id = %s",
                [app],
            )
            conn.execute("DELETE FROM public.applications WHERE application_id = %s", [app])
            done.append(("update", "applications", app, False))
            done.append(("delete", "applications", app, False))

    def txn_bulk(self, conn: psycopg.Connection, done: list) -> None:
        app, _ = self.insert_application(conn, done)
        for _ in range(self.rnd.randrange(60, 200)):
            self.insert_document(conn, done, app)
        for _ in range(self.rnd.randrange(10, 40)):
            self.update_one(conn, done)


# --- the daemon -----------------------------------------------------------------------------


class Daemon:
    def __init__(self, root: Path, src_dsn: str, dst_dsn: str) -> None:
        self.config_path = root / "replicator.toml"
        self.log_path = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.unexpected_exits: list[int | None] = []
        self.exit_code: int | None = None
        config = {
            "service": {"log_format": "json", "log_level": "info", "health": ""},
            "databases": {"src": {"dsn": src_dsn}, "dst": {"dsn": dst_dsn}},
            "pipeline": [
                {
                    "name": PIPELINE,
                    "from": "src",
                    "to": "dst",
                    "table": [{"source": f"public.{t.name}"} for t in TABLES],
                }
            ],
        }
        self.config_path.write_text(toml_dumps(config))

    def setup(self) -> None:
        res = subprocess.run(
            [sys.executable, "-m", "replicator", "setup", "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if res.returncode != 0:
            raise BenchError(f"replicator setup failed:\n{res.stdout}{res.stderr}")

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "replicator", "run", "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def ensure_running(self) -> None:
        """A daemon that exited on its own is counted and started again."""
        if self.proc is not None and self.proc.poll() is not None:
            self.unexpected_exits.append(self.proc.returncode)
            say(f"  daemon exited on its own ({self.proc.returncode}); starting it again")
            if len(self.unexpected_exits) > 5:
                raise BenchError(f"daemon keeps exiting; see {self.log_path}")
            self.start()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            self.exit_code = None

    def log_events(self) -> Counter[str]:
        events: Counter[str] = Counter()
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    events[str(json.loads(line).get("event"))] += 1
        return events


# --- checks ---------------------------------------------------------------------------------


def wait_streaming(dst_dsn: str, daemon: Daemon, timeout: float) -> float:
    started = time.monotonic()
    with psycopg.connect(dst_dsn, autocommit=True) as conn:
        while True:
            with contextlib.suppress(psycopg.errors.UndefinedTable):
                row = conn.execute(
                    "SELECT state FROM replicator.pipelines WHERE pipeline = %s", [PIPELINE]
                ).fetchone()
                if row and row[0] == "streaming":
                    return time.monotonic() - started
            daemon.ensure_running()
            if time.monotonic() - started > timeout:
                raise BenchError(f"initial copy not done after {timeout:.0f}s")
            time.sleep(POLL_S)


def wait_applied(
    src: psycopg.Connection, dst: psycopg.Connection, daemon: Daemon, lsn: str, timeout: float
) -> str:
    """Until the target holds everything up to ``lsn`` (origin progress; or the flush
    position the daemon reported to its walsender, for WAL no commit of ours ends)."""
    deadline = time.monotonic() + timeout
    while True:
        row = dst.execute(
            "SELECT coalesce(pg_replication_origin_progress(%s, true) >= %s::pg_lsn, false)",
            [ORIGIN, lsn],
        ).fetchone()
        if row and row[0]:
            return "origin"
        row = src.execute(
            "SELECT coalesce(bool_or(flush_lsn >= %s::pg_lsn), false)"
            " FROM pg_stat_replication WHERE application_name = %s",
            [lsn, APP_NAME],
        ).fetchone()
        if row and row[0]:
            return "feedback"
        daemon.ensure_running()
        if time.monotonic() > deadline:
            raise BenchError(f"target not at {lsn} after {timeout:.0f}s")
        time.sleep(POLL_S)


def rows_of(conn: psycopg.Connection, t: Table, with_poison: bool) -> dict[str, tuple]:
    query = sql.SQL("SELECT {k}::text, md5(t::text){p} FROM {t} AS t").format(
        k=sql.Identifier(t.key),
        p=sql.SQL(", " + t.poison) if with_poison else sql.SQL(""),
        t=sql.Identifier("public", t.name),
    )
    return {r[0]: tuple(r[1:]) for r in conn.execute(query)}


def check(src: psycopg.Connection, dst: psycopg.Connection, written: Written) -> dict[str, Any]:
    letters: dict[str, Counter[str]] = {t.name: Counter() for t in TABLES}
    unknown_letters = 0
    for table, key, _op in dst.execute(
        "SELECT source_table, key, operation FROM replicator.dead_letters WHERE pipeline = %s",
        [PIPELINE],
    ):
        name = table.removeprefix("public.")
        t = next((t for t in TABLES if t.name == name), None)
        if t is None or not isinstance(key, dict) or t.key not in key:
            unknown_letters += 1
            continue
        letters[name][str(key[t.key])] += 1
    out: dict[str, Any] = {"tables": {}, "unknown_dead_letters": unknown_letters}
    for t in TABLES:
        source = rows_of(src, t, with_poison=True)
        target = rows_of(dst, t, with_poison=False)
        good, poison = written.good[t.name], written.poison[t.name]
        present = good & source.keys()
        deleted = good - source.keys()
        missing = present - target.keys()
        differ = {k for k in present & target.keys() if target[k][0] != source[k][0]}
        not_deleted = deleted & target.keys()
        in_dlq = poison & letters[t.name].keys()
        out["tables"][t.name] = {
            "good_written": len(good),
            "good_on_source": len(present),
            "good_deleted": len(deleted),
            "good_applied": len(good) - len(missing) - len(differ) - len(not_deleted),
            "missing": len(missing),
            "differ": len(differ),
            "not_deleted": len(not_deleted),
            "poison_written": len(poison),
            "poison_in_dead_letters": len(in_dlq),
            "poison_on_target": len(poison & target.keys()),
            "dead_letters": sum(letters[t.name].values()),
            "dead_letters_for_good_rows": len(letters[t.name].keys() - poison),
            "duplicate_dead_letters": sum(n - 1 for n in letters[t.name].values() if n > 1),
            "extra_on_target": len(target.keys() - good - poison),
            # the bookkeeping itself: source rows no writer recorded, poison flags that differ
            "untracked_on_source": len(source.keys() - good - poison),
            "poison_flag_mismatch": sum(
                1 for k, v in source.items() if (k in poison) != bool(v[1])
            ),
            "examples": {
                "missing": sorted(missing)[:3],
                "differ": sorted(differ)[:3],
                "not_deleted": sorted(not_deleted)[:3],
                "poison_not_in_dead_letters": sorted(poison - in_dlq)[:3],
            },
        }
    tables = out["tables"].values()
    total = {
        k: sum(t[k] for t in tables) for k in next(iter(out["tables"].values())) if k != "examples"
    }
    out["total"] = total
    good_written, poison_written = total["good_written"], total["poison_written"]
    out["success_ratio"] = total["good_applied"] / good_written if good_written else None
    out["dead_letter_ratio"] = (
        total["poison_in_dead_letters"] / poison_written if poison_written else None
    )
    out["lost"] = (good_written - total["good_applied"]) + (
        poison_written - total["poison_in_dead_letters"]
    )
    return out


def preload(src_dsn: str, n: int, stride: int, writers: int) -> tuple[Written, list[dict]]:
    """Rows before the daemon's first run (its initial copy takes them); pools per writer."""
    written = Written()
    pools: list[dict[str, list]] = [{t.name: [] for t in TABLES} for _ in range(writers)]
    if n <= 0:
        return written, pools
    fmt = {"n": n, "stride": stride or 10**12, "phase": (stride or 2) // 2}
    with psycopg.connect(src_dsn, autocommit=True) as conn:
        for statement in (PRELOAD_APPS, PRELOAD_DOCS, PRELOAD_FEEDBACK):
            conn.execute(
                statement.format(**{**fmt, "n": n if statement != PRELOAD_FEEDBACK else n // 2})
            )
        conn.execute("ANALYZE")
        owner: dict[Any, int] = {}
        for app, poison in conn.execute("SELECT application_id, amount < 0 FROM applications"):
            written.ops["preload_rows"] += 1
            (written.poison if poison else written.good)["applications"].add(str(app))
            owner[app] = app % writers
            if not poison:
                pools[app % writers]["applications"].append(app)
        for doc, app, poison in conn.execute(
            "SELECT document_id, application_id, size_bytes < 0 FROM documents"
        ):
            written.ops["preload_rows"] += 1
            (written.poison if poison else written.good)["documents"].add(str(doc))
            if not poison:
                pools[owner[app]]["documents"].append(doc)
        for fid, poison in conn.execute("SELECT feedback_id, rating < 1 FROM feedback"):
            written.ops["preload_rows"] += 1
            (written.poison if poison else written.good)["feedback"].add(str(fid))
            if not poison:
                pools[fid % writers]["feedback"].append(fid)
    return written, pools


# --- report -----------------------------------------------------------------------------------


def print_report(result: dict[str, Any]) -> None:
    c = result["check"]
    rows = [
        ("good rows written", "good_written"),
        ("  still on the source", "good_on_source"),
        ("  deleted on the source", "good_deleted"),
        ("  applied (key and content)", "good_applied"),
        ("  missing on the target", "missing"),
        ("  content differs", "differ"),
        ("  deleted, still on the target", "not_deleted"),
        ("poison rows written", "poison_written"),
        ("  in dead letters", "poison_in_dead_letters"),
        ("  on the target", "poison_on_target"),
        ("dead letters", "dead_letters"),
        ("  for good rows", "dead_letters_for_good_rows"),
        ("  duplicates (same key)", "duplicate_dead_letters"),
        ("other rows on the target", "extra_on_target"),
        ("bench bookkeeping: untracked rows", "untracked_on_source"),
        ("bench bookkeeping: poison flag off", "poison_flag_mismatch"),
    ]
    names = [t.name for t in TABLES]
    header = ("", *names, "total")
    lines = [header]
    for label, key in rows:
        lines.append(
            (
                label,
                *(f"{c['tables'][n][key]:,}" for n in names),
                f"{c['total'][key]:,}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    say()
    for i, line in enumerate(lines):
        say(
            line[0].ljust(widths[0])
            + "".join("  " + x.rjust(w) for x, w in zip(line[1:], widths[1:], strict=True))
        )
        if i == 0:
            say("-" * (sum(widths) + 2 * (len(widths) - 1)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long writers run")
    parser.add_argument("--rate", type=float, default=100.0, help="transactions/s, all writers")
    parser.add_argument("--writers", type=int, default=4, help="writer connections")
    parser.add_argument("--poison", type=float, default=0.001, help="fraction of poison rows")
    parser.add_argument("--preload", type=int, default=20_000, help="applications preloaded")
    parser.add_argument("--catchup-timeout", type=float, default=600.0, help="seconds")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--pg", type=int, default=15, help="PostgreSQL major version")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.writers < 1 or not 0 <= args.poison < 1:
        parser.error("--minutes, --rate, --writers must be positive and --poison in [0, 1)")

    command = shlex.join([sys.executable, *sys.argv])
    install = pick_install(args.pg)
    root = localpg.make_root("rsync-")
    src = localpg.LocalCluster(install, root, "src")
    dst = localpg.LocalCluster(install, root, "dst")
    facts: dict[str, Any] = {"command": command}
    result: dict[str, Any] = {}
    error: str | None = None
    daemon: Daemon | None = None
    stop = threading.Event()
    writers: list[Writer] = []
    processes_before = process_table()
    run_started = time.monotonic()
    code_before = code_fingerprint()
    stride = round(1 / args.poison) if args.poison > 0 else 0
    try:
        src.init().start()
        dst.init().start()
        for cluster in (src, dst):
            with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
            with psycopg.connect(cluster.conninfo(DB), autocommit=True) as conn:
                conn.execute(DDL)
                if cluster is dst:
                    for t in TABLES:
                        conn.execute(
                            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
                                sql.Identifier("public", t.name),
                                sql.Identifier(f"{t.name}_bench_poison"),
                                sql.SQL(t.check),
                            )
                        )
        src_dsn, dst_dsn = src.conninfo(DB), dst.conninfo(DB)
        with psycopg.connect(src_dsn) as conn:
            version = conn.execute("SELECT version()").fetchone()
        facts |= {
            "nproc": len(os.sched_getaffinity(0)),
            "loadavg_at_start": os.getloadavg(),
            "python": f"{platform.python_version()} ({platform.python_implementation()})",
            "python_executable": sys.executable,
            "postgresql": version[0] if version else None,
            "pg_bindir": str(install.bindir),
            "workdir": str(root),
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        say(f"command:    {command}")
        say(f"machine:    nproc={facts['nproc']}  loadavg={os.getloadavg()[0]:.2f}")
        say(f"python:     {facts['python']}  {sys.executable}")
        say(f"postgresql: {facts['postgresql']}")
        say(
            f"workload:   {args.minutes:g} min, {args.writers} writers, {args.rate:g} txn/s in all,"
            f" poison every {stride or '-'}th inserted row; preload {args.preload:,} applications"
        )
        say(f"workdir:    {root} (daemon.log, replicator.toml, server logs)")

        written, pools = preload(src_dsn, args.preload, stride, args.writers)
        say(f"preloaded {written.ops['preload_rows']:,} rows (untimed)")
        daemon = Daemon(root, src_dsn, dst_dsn)
        daemon.setup()
        daemon.start()
        copy_s = wait_streaming(dst_dsn, daemon, timeout=600)
        say(f"daemon streaming after its initial copy: {copy_s:.1f}s")

        for i in range(args.writers):
            w = Writer(i, src_dsn, args.rate / args.writers, args.poison, stop, args.seed + i)
            for name, keys in pools[i].items():
                for k in keys:
                    w.pools[name].add(k)
            writers.append(w)
        lag_max = 0
        with (
            psycopg.connect(src_dsn, autocommit=True) as sconn,
            psycopg.connect(dst_dsn, autocommit=True) as dconn,
        ):
            started = time.monotonic()
            for w in writers:
                w.start()
            end = started + args.minutes * 60
            next_report = started + 30
            while time.monotonic() < end:
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                daemon.ensure_running()
                row = sconn.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)"
                    " FROM pg_replication_slots WHERE slot_name = %s",
                    [SLOT],
                ).fetchone()
                if row and row[0] is not None:
                    lag_max = max(lag_max, int(row[0]))
                if time.monotonic() >= next_report:
                    next_report += 30
                    txns = sum(w.written.ops["txns"] for w in writers)
                    say(
                        f"  {time.monotonic() - started:5.0f}s: {txns:,} txns,"
                        f" slot lag {int(row[0]) if row and row[0] is not None else -1:,} bytes"
                    )
            stop.set()
            for w in writers:
                w.join(60)
            writing_s = time.monotonic() - started
            # flushed, not inserted: walsenders send only flushed WAL (see bench_core)
            lsn_row = sconn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
            assert lsn_row is not None
            caught = time.monotonic()
            done_by = wait_applied(sconn, dconn, daemon, lsn_row[0], args.catchup_timeout)
            catch_up_s = time.monotonic() - caught
            for w in writers:
                written.merge(w.written)
            say(f"writers stopped after {writing_s:.0f}s; target caught up in {catch_up_s:.1f}s")
            result = {
                "writing_s": writing_s,
                "txns": written.ops["txns"],
                "txns_per_s": written.ops["txns"] / writing_s,
                "ops": dict(written.ops),
                "writer_errors": [e for w in writers for e in w.errors],
                "initial_copy_s": copy_s,
                "catch_up_s": catch_up_s,
                "done_by": done_by,
                "slot_lag_max_bytes": lag_max,
                "check": check(sconn, dconn, written),
            }
    except (BenchError, localpg.ClusterError, psycopg.Error) as exc:
        error = f"{type(exc).__name__}: {exc}"
        say(f"FAILED: {error}")
    finally:
        stop.set()
        if daemon is not None:
            daemon.stop()
            events = daemon.log_events()
            facts["daemon"] = {
                "starts": daemon.starts,
                "unexpected_exits": daemon.unexpected_exits,
                "exit_code_on_sigterm": daemon.exit_code,
                "pipeline_retries": events["pipeline_retry"],
                "pipeline_failures": events["pipeline_failed"],
                "log": daemon_log_summary(daemon.log_path),
            }
        # the target's CHECK rejecting poison rows is expected: counted, not listed
        target_errors = server_log_errors(dst)
        expected = [line for line in target_errors if "_bench_poison" in line]
        facts["target_poison_rejections_logged"] = len(expected)
        facts["server_log_problems"] = {
            "source": server_log_errors(src)[-20:],
            "target": [line for line in target_errors if "_bench_poison" not in line][-20:],
        }
        src.destroy()
        dst.destroy()
    elapsed = time.monotonic() - run_started
    facts["run_seconds"] = elapsed
    facts["loadavg_at_end"] = os.getloadavg()
    facts["other_cpu"] = other_cpu(processes_before, elapsed)
    facts["code_changed_during_run"] = code_fingerprint() != code_before
    facts["error"] = error

    ok = False
    if result:
        print_report(result)
        c = result["check"]
        ops = result["ops"]
        say()
        say(
            f"source writes: {result['txns']:,} txns ({result['txns_per_s']:.1f}/s) in"
            f" {result['writing_s']:.0f}s: {ops.get('insert', 0):,} inserts,"
            f" {ops.get('update', 0):,} updates, {ops.get('delete', 0):,} deletes,"
            f" {ops.get('failed_txns', 0)} failed txns; preload {ops.get('preload_rows', 0):,} rows"
        )
        ratio = c["success_ratio"]
        dlq = c["dead_letter_ratio"]
        say(
            f"success ratio (good rows applied / good rows written):"
            f" {c['total']['good_applied']:,} / {c['total']['good_written']:,}"
            f" = {'-' if ratio is None else f'{ratio:.5%}'}"
        )
        say(
            f"dead letters / poison rows written: {c['total']['poison_in_dead_letters']:,} /"
            f" {c['total']['poison_written']:,} = {'-' if dlq is None else f'{dlq:.1%}'}"
        )
        say(f"lost (good not applied + poison not in dead letters): {c['lost']:,}")
        say(
            f"catch-up after writers stopped: {result['catch_up_s']:.1f}s (seen by"
            f" {result['done_by']}); max slot lag during the run"
            f" {result['slot_lag_max_bytes'] / 1e6:.2f} MB; initial copy of the preload"
            f" {result['initial_copy_s']:.1f}s"
        )
        ok = (
            c["lost"] == 0
            and c["total"]["dead_letters_for_good_rows"] == 0
            and c["total"]["extra_on_target"] == 0
            and c["unknown_dead_letters"] == 0
        )
        for name, t in c["tables"].items():
            shown = {k: v for k, v in t["examples"].items() if v}
            if shown:
                say(f"  {name} examples: {shown}")
        for e in result["writer_errors"][:5]:
            say(f"writer error: {e}")
    d = facts.get("daemon")
    if d:
        log = d["log"]
        say(
            f"daemon: starts {d['starts']} (unexpected exits {d['unexpected_exits']}),"
            f" pipeline restarts (pipeline_retry) {d['pipeline_retries']},"
            f" pipeline_failed {d['pipeline_failures']}, exit code on SIGTERM"
            f" {d['exit_code_on_sigterm']}; log {log['levels']}"
            + (
                f" warnings/errors {log['warnings_and_errors']}"
                if log["warnings_and_errors"]
                else ""
            )
        )
    for side, problems in facts["server_log_problems"].items():
        if problems:
            say(f"{side} server log: {len(problems)} problem line(s), last: {problems[-1]}")
    for proc in facts["other_cpu"]:
        say(
            f"NOTE: other processes used {proc['share']:.0%} of a CPU during the run:"
            f" pid {proc['pid']} and children: {proc['cmd'][:100]}"
        )
    if facts["code_changed_during_run"]:
        say("NOTE: replicator/ changed during the run")
    if error:
        say(f"FAILED: {error}")
    say(
        f"RESULT: {'PASS' if ok and not error else 'FAIL'}"
        " (zero loss, every poison row a dead letter)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"facts": facts, "result": result}, indent=2, default=str))
        say(f"results written to {args.json}")
    return 0 if ok and not error else 1


if __name__ == "__main__":
    sys.exit(main())
