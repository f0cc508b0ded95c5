"""Benchmark: replicator next to PostgreSQL's own logical replication, same clusters, same rows.

Run: ``python bench/bench_core.py [--rows N] [--txns N] [--only a,b,c] [--pg 15|18] [--json PATH]``.

Two throwaway clusters (source, target) from :mod:`replicator.localpg`, with its default
settings. Each holds two databases with identical DDL: ``bench_native``, replicated by a
``CREATE PUBLICATION`` / ``CREATE SUBSCRIPTION`` pair (``copy_data = false``, every other
option at its default), and ``bench_ours``, replicated by ``python -m replicator run`` (one
pipeline, one table, no masks, so both targets must end up byte-identical to their source).

Scenarios, each run native first and then ours, one system at a time: the other one is
paused (subscription disabled, daemon stopped with SIGTERM) and catches up, untimed, before
its own turn.

(a) one INSERT transaction of ``--rows`` rows, (b) one UPDATE transaction of every row.
    Timed from the source COMMIT until the target's replication-origin progress (read with
    ``pg_replication_origin_progress(origin, true)`` every 50 ms) reaches the source's
    ``pg_current_wal_flush_lsn()`` taken right after the commit. Then verified, untimed: row count
    and a checksum of every row's text on both sides.
(c) ``--txns`` single-row transactions from ``pgbench`` (8 clients; 80 % UPDATE of a random
    row, 20 % INSERT of a new one). CPU of the apply side (ours: the daemon process plus its
    target backends; native: the apply worker) and of the walsender, from utime+stime in
    ``/proc/<pid>/stat``, per 1,000 rows. Commit-to-target delay per touched row: the
    source row's commit timestamp (``pg_xact_commit_timestamp(xmin)``) against the local
    commit time of the target row's ``xmin``, read from the target's WAL with
    ``pg_waldump``. Both apply paths commit with ``replorigin_session_origin_timestamp``
    set, so the target's own ``pg_xact_commit_timestamp`` is the *source* commit time;
    the WAL commit record keeps the local one.

``--masks``: (a) runs a second time for ours with masks on five citizen columns (``MASKS``:
aadhaar redact, jan_aadhaar and mobile partial:4, email, income_band redact:CONFIDENTIAL),
right after the unmasked one; native has no masks and stays the reference. That run is
verified against the source with the same masks restated in SQL (``MASKED_EXPR``, held to
:mod:`replicator.masking` on generated rows first), and the slowdown masks on / off printed.

Speed only: correctness lives in the tests. Absolute times drift on a shared machine; read
the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import psycopg
from psycopg import sql

from replicator import localpg
from replicator.config import BatchConfig, PipelineConfig
from replicator.masking import compile_mask, parse_mask
from replicator.pipeline import IDLE_RECORD_BYTES

PIPELINE = "bench"
OURS_ORIGIN = f"replicator_{PIPELINE}"
OURS_APP = f"replicator:{PIPELINE}"
NATIVE_PUB = "bench_pub"
NATIVE_SUB = "bench_sub"
DB_NATIVE = "bench_native"
DB_OURS = "bench_ours"
CLIENTS = 8
# The source position a system must reach: the flushed end of WAL, not the inserted end.
# Walsenders send only flushed WAL, and a record written after the commit but not yet
# flushed (a standby snapshot on a partial page of a quiet server) would be a position
# nobody can reach until something else flushes: a catch-up wait could hang for good.
FLUSHED_LSN = "SELECT pg_current_wal_flush_lsn()::text"
POLL_S = 0.05  # how often the target's origin progress is read while waiting
PIDS_EVERY_S = 1.0  # how often the set of processes to meter is refreshed
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Autovacuum off on the table (same DDL on every side): we VACUUM between scenarios
# ourselves, so a background vacuum never lands inside one system's measurement.
DDL = """
CREATE TABLE public.citizens (
    citizen_id   bigint PRIMARY KEY,
    aadhaar      text NOT NULL,
    jan_aadhaar  text NOT NULL,
    full_name    text NOT NULL,
    mobile       text,
    email        text,
    district_id  int NOT NULL,
    income_band  text,
    dob          date,
    address      text,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    score        numeric(5, 2)
) WITH (autovacuum_enabled = false);
CREATE SEQUENCE public.citizen_ids;
"""

# One generated row per value of g (bigint), from the FROM item {source}. No colons, no
# semicolons: pgbench reads this text too (':name' is a pgbench variable).
ROW_SELECT = """
SELECT g, k.a, substr(k.j, 1, 4) || '-' || substr(k.j, 5, 4) || '-' || substr(k.j, 9, 4),
       k.f || ' ' || k.m || ' ' || k.l,
       CAST(6000000000 + g * 7927 % 3999999999 AS text),
       lower(k.f) || '.' || lower(k.l) || (g % 1000) || '@' || (ARRAY['gmail.com', 'yahoo.in',
         'rajasthan.gov.in', 'outlook.com', 'rediffmail.com'])[1 + g % 5],
       CAST(1 + g % 33 AS int),
       (ARRAY['below 1 lakh', '1-2.5 lakh', '2.5-5 lakh', '5-10 lakh', 'above 10 lakh'])[1 + g % 5],
       date '1950-01-01' + CAST(g * 37 % 25000 AS int),
       'House ' || (1 + g % 500) || ', Ward ' || (1 + g % 60) || ', ' || k.street || ', '
         || k.city || ', Rajasthan ' || (302001 + g % 900),
       make_timestamptz(2016, 1, 1, 0, 0, 0, 'UTC') + make_interval(secs => g * 97 % 250000000),
       now(),
       (g * 31 % 10000) / 100.0
FROM {source},
LATERAL (SELECT
    CAST(200000000000 + g * 7919 % 799999999999 AS text) AS a,
    CAST(100000000000 + g * 104729 % 899999999999 AS text) AS j,
    (ARRAY['Asha', 'Ravi', 'Meena', 'Arjun', 'Kavita', 'Suresh', 'Pooja', 'Vikram', 'Neha',
           'Amit', 'Sunita', 'Rajesh', 'Priya', 'Mahendra', 'Anita', 'Dinesh', 'Rekha',
           'Gopal', 'Sarita', 'Bhanwar'])[1 + g % 20] AS f,
    (ARRAY['Kumar', 'Devi', 'Lal', 'Kumari', 'Singh', 'Prakash', 'Chand'])[1 + g / 7 % 7] AS m,
    (ARRAY['Sharma', 'Verma', 'Meena', 'Rathore', 'Gupta', 'Jain', 'Yadav', 'Joshi',
           'Choudhary', 'Saini', 'Bishnoi', 'Gurjar', 'Mali', 'Jat', 'Agarwal', 'Purohit'])
        [1 + g / 20 % 16] AS l,
    (ARRAY['Station Road', 'MI Road', 'Tonk Road', 'Ajmer Road', 'Sardarpura Main Road',
           'Gandhi Nagar Colony', 'Civil Lines', 'Shastri Nagar'])[1 + g % 8] AS street,
    (ARRAY['Jaipur', 'Jodhpur', 'Udaipur', 'Kota', 'Ajmer', 'Bikaner', 'Alwar', 'Bhilwara',
           'Sikar', 'Pali'])[1 + g / 8 % 10] AS city) AS k
"""

UPDATE_ALL = "UPDATE public.citizens SET score = mod(score * 7 + 1, 100), updated_at = now()"

PGBENCH_SCRIPT = (
    "\\set id random(1, :rows)\n"
    "\\set r random(1, 100)\n"
    "\\if :r <= 80\n"
    "UPDATE public.citizens SET score = mod(score + 1, 100), updated_at = now()"
    " WHERE citizen_id = :id;\n"
    "\\else\n"
    "INSERT INTO public.citizens"
    + ROW_SELECT.replace("{source}", "(SELECT nextval('public.citizen_ids')) AS s(g)")
    + ";\n\\endif\n"
)

CHECKSUM = (
    "SELECT count(*), coalesce(sum(hashtextextended(c::text, 0)), 0) FROM public.citizens AS c"
)

# --masks: the citizen columns the seed wants masked, with their rules
MASKS = {
    "aadhaar": "redact",
    "jan_aadhaar": "partial:4",
    "mobile": "partial:4",
    "email": "email",
    "income_band": "redact:CONFIDENTIAL",
}
COLUMNS = (
    "citizen_id",
    "aadhaar",
    "jan_aadhaar",
    "full_name",
    "mobile",
    "email",
    "district_id",
    "income_band",
    "dob",
    "address",
    "created_at",
    "updated_at",
    "score",
)
# The masks restated in SQL for the values ROW_SELECT generates (ASCII digits with '-'
# separators, emails with a local part of more than one letter), so that a masked target
# can be checked against its source; check_mask_mirror() holds them to replicator.masking.
_PARTIAL4 = "regexp_replace(left(c.{0}, -4), '[[:alnum:]]', '*', 'g') || right(c.{0}, 4)"
MASKED_EXPR = {
    "aadhaar": "CASE WHEN c.aadhaar IS NOT NULL THEN '***MASKED***' END",
    "jan_aadhaar": _PARTIAL4.format("jan_aadhaar"),
    "mobile": _PARTIAL4.format("mobile"),
    "email": "left(c.email, 1) || '***@' || substring(c.email from '[^@]*$')",
    "income_band": "CASE WHEN c.income_band IS NOT NULL THEN 'CONFIDENTIAL' END",
}
MASKED_CHECKSUM = (
    "SELECT count(*), coalesce(sum(hashtextextended(ROW("
    + ", ".join(MASKED_EXPR.get(col, f"c.{col}") for col in COLUMNS)
    + ")::text, 0)), 0) FROM public.citizens AS c"
)


class BenchError(RuntimeError):
    pass


def say(msg: str = "") -> None:
    print(msg, flush=True)


# --- small helpers -----------------------------------------------------------------------


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{toml_value(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, Sequence):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def toml_dumps(data: Mapping[str, Any]) -> str:
    """Enough TOML for the config shape (the idea of tests/support.py, not an import of it):
    tables one level down, ``[[pipeline]]`` with its ``[[pipeline.table]]`` entries."""
    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            plain = {k: v for k, v in value.items() if not isinstance(v, Mapping)}
            if plain:
                lines.append(f"[{key}]")
                lines.extend(f"{k} = {toml_value(v)}" for k, v in plain.items())
            for k, v in value.items():
                if isinstance(v, Mapping):
                    lines.append(f"[{key}.{k}]")
                    lines.extend(f"{sk} = {toml_value(sv)}" for sk, sv in v.items())
    for key, value in data.items():
        if isinstance(value, list):
            for item in value:
                lines.append(f"[[{key}]]")
                nested = {k: v for k, v in item.items() if isinstance(v, list)}
                lines.extend(f"{k} = {toml_value(v)}" for k, v in item.items() if k not in nested)
                for k, subs in nested.items():
                    for sub in subs:
                        lines.append(f"[[{key}.{k}]]")
                        lines.extend(f"{sk} = {toml_value(sv)}" for sk, sv in sub.items())
    return "\n".join(lines) + "\n"


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


class CpuMeter:
    """CPU seconds spent by a changing set of processes over a window.

    Processes found at ``start`` count from their value then; processes found later started
    inside the window and count from zero. A process that exits keeps its last reading.
    """

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self._pids = pids
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._refreshed = 0.0

    def start(self) -> CpuMeter:
        for pid in self._pids():
            v = cpu_seconds(pid)
            if v is not None:
                self.base[pid] = self.last[pid] = v
        self._refreshed = time.monotonic()
        return self

    def sample(self) -> None:
        if time.monotonic() - self._refreshed >= PIDS_EVERY_S:
            self._refreshed = time.monotonic()
            for pid in self._pids():
                if pid not in self.base:
                    self.base[pid] = 0.0
        for pid in self.base:
            v = cpu_seconds(pid)
            if v is not None:
                self.last[pid] = v

    def stop(self) -> float:
        self._refreshed = 0.0
        self.sample()
        return sum(self.last.get(p, b) - b for p, b in self.base.items())


def quantile(values: Sequence[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(q * 100) - 1]


# --- the clusters and the two systems -----------------------------------------------------


@dataclass
class Env:
    install: localpg.PgInstall
    root: Path
    src: localpg.LocalCluster
    dst: localpg.LocalCluster

    def admin(self, cluster: localpg.LocalCluster, *statements: str) -> None:
        with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
            for s in statements:
                conn.execute(s)  # type: ignore[arg-type]

    def checkpoint(self) -> None:
        for c in (self.src, self.dst):
            self.admin(c, "CHECKPOINT")


class System:
    """One replication system on its own pair of databases."""

    label: str
    db: str
    origin: str
    walsender_app: str

    def __init__(self, env: Env) -> None:
        self.env = env
        self.src_dsn = env.src.conninfo(self.db)
        self.dst_dsn = env.dst.conninfo(self.db)
        self.src = psycopg.connect(self.src_dsn, autocommit=True)
        self.dst = psycopg.connect(self.dst_dsn, autocommit=True)
        self.loaded = 0  # rows both sides are known to hold, equal

    def close(self) -> None:
        self.src.close()
        self.dst.close()

    def one(self, conn: psycopg.Connection, query: str, params: Sequence[Any] = ()) -> Any:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None

    # what each system defines
    def setup(self) -> None:
        raise NotImplementedError

    def activate(self) -> None:
        raise NotImplementedError

    def deactivate(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError

    def apply_pids(self) -> list[int]:
        raise NotImplementedError

    def check_alive(self) -> None:
        pass

    def walsender_pids(self) -> list[int]:
        return [
            r[0]
            for r in self.src.execute(
                "SELECT pid FROM pg_stat_replication WHERE application_name = %s",
                [self.walsender_app],
            )
        ]

    # waiting

    def wait_applied(
        self, lsn: str, *, timeout: float, meters: Sequence[CpuMeter] = ()
    ) -> tuple[float, str]:
        """Block until the target holds everything up to ``lsn``; returns (monotonic time
        seen, how). The target's origin progress is the signal. When WAL that is no commit
        of ours ends the source's WAL, no commit can reach it; two fallbacks, checked once
        a second: the flush position the system reports to its walsender (native confirms
        keepalive positions when idle), and for the daemon, which records an idle gap only
        from IDLE_RECORD_BYTES up, "idle": the walsender has sent past ``lsn``, the gap
        left is under that threshold and origin progress did not move for a second."""
        deadline = time.monotonic() + timeout
        next_feedback = time.monotonic() + 1.0
        last_idle: object = None
        while True:
            if self.one(
                self.dst,
                "SELECT coalesce(pg_replication_origin_progress(%s, true) >= %s::pg_lsn, false)",
                [self.origin, lsn],
            ):
                return time.monotonic(), "origin"
            now = time.monotonic()
            if now >= next_feedback:
                next_feedback = now + 1.0
                if self.one(
                    self.src,
                    "SELECT coalesce(bool_or(flush_lsn >= %s::pg_lsn), false)"
                    " FROM pg_stat_replication WHERE application_name = %s",
                    [lsn, self.walsender_app],
                ):
                    return time.monotonic(), "feedback"
                idle = self.one(
                    self.src,
                    "SELECT bool_or(sent_lsn >= %s::pg_lsn) FROM pg_stat_replication"
                    " WHERE application_name = %s",
                    [lsn, self.walsender_app],
                ) and self.one(
                    self.dst,
                    "SELECT p::text FROM pg_replication_origin_progress(%s, true) p"
                    " WHERE pg_wal_lsn_diff(%s::pg_lsn, p) < %s",
                    [self.origin, lsn, IDLE_RECORD_BYTES],
                )
                if idle and idle == last_idle:
                    return time.monotonic(), "idle"
                last_idle = idle
                self.check_alive()
            if now >= deadline:
                progress = self.one(
                    self.dst, "SELECT pg_replication_origin_progress(%s, true)", [self.origin]
                )
                raise BenchError(
                    f"{self.label}: target not at {lsn} after {timeout:.0f}s "
                    f"(origin progress {progress})"
                )
            for m in meters:
                m.sample()
            time.sleep(POLL_S)

    def catch_up(self, timeout: float = 600) -> None:
        lsn = self.one(self.src, FLUSHED_LSN)
        self.wait_applied(lsn, timeout=timeout)

    def checksums(self, masked: bool = False) -> tuple[tuple[int, int], tuple[int, int]]:
        s = self.src.execute(MASKED_CHECKSUM if masked else CHECKSUM).fetchone()
        d = self.dst.execute(CHECKSUM).fetchone()
        assert s is not None
        assert d is not None
        return (int(s[0]), int(s[1])), (int(d[0]), int(d[1]))


class Native(System):
    label = "native"
    db = DB_NATIVE
    walsender_app = NATIVE_SUB

    def setup(self) -> None:
        self.src.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE public.citizens").format(
                sql.Identifier(NATIVE_PUB)
            )
        )
        self.dst.execute(
            sql.SQL(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = false)"
            ).format(
                sql.Identifier(NATIVE_SUB),
                sql.Literal(self.env.src.conninfo(self.db)),
                sql.Identifier(NATIVE_PUB),
            )
        )
        row = self.dst.execute(
            "SELECT oid, substream::text, subbinary, subsynccommit FROM pg_subscription"
            " WHERE subname = %s",
            [NATIVE_SUB],
        ).fetchone()
        assert row is not None
        oid, stream, binary, sync = row
        self.origin = f"pg_{oid}"
        self.options = {
            "streaming": {"f": "off", "false": "off", "t": "on", "true": "on", "p": "parallel"}.get(
                stream, stream
            ),
            "binary": bool(binary),
            "synchronous_commit": sync,
        }
        self.enabled = True
        self._wait_running()

    def _apply_pid(self) -> int | None:
        return self.one(
            self.dst,
            "SELECT pid FROM pg_stat_subscription WHERE subname = %s AND relid IS NULL"
            " AND pid IS NOT NULL ORDER BY pid LIMIT 1",
            [NATIVE_SUB],
        )

    def _wait_running(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not (self._apply_pid() and self.walsender_pids()):
            if time.monotonic() > deadline:
                raise BenchError("native: apply worker or walsender did not start")
            time.sleep(POLL_S)

    def activate(self) -> None:
        if not self.enabled:
            self.dst.execute(
                sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(sql.Identifier(NATIVE_SUB))
            )
            self.enabled = True
        self._wait_running()
        self.catch_up()

    def deactivate(self) -> None:
        if not self.enabled:
            return
        self.dst.execute(
            sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(sql.Identifier(NATIVE_SUB))
        )
        self.enabled = False
        deadline = time.monotonic() + 60
        while self._apply_pid() or self.walsender_pids():
            if time.monotonic() > deadline:
                raise BenchError("native: apply worker did not stop")
            time.sleep(POLL_S)

    def teardown(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.dst.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(NATIVE_SUB)))

    def apply_pids(self) -> list[int]:
        # the apply worker, plus parallel apply workers where streaming = parallel
        return [
            r[0]
            for r in self.dst.execute(
                "SELECT pid FROM pg_stat_subscription WHERE subname = %s AND pid IS NOT NULL",
                [NATIVE_SUB],
            )
        ]


class Ours(System):
    label = "ours"
    db = DB_OURS
    origin = OURS_ORIGIN
    walsender_app = OURS_APP

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.config_path = env.root / "replicator.toml"
        self.log_path = env.root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exits: list[int | None] = []
        self.options = {"proto_version": PipelineConfig.model_fields["proto_version"].default}
        self.options.update(BatchConfig().model_dump())
        self.masks: Mapping[str, str] | None = None

    def write_config(self) -> None:
        """The config the next ``run`` reads (with ``self.masks`` on the table, if any)."""
        table: dict[str, Any] = {"source": "public.citizens"}
        if self.masks:
            table["mask"] = dict(self.masks)
        config = {
            "service": {"log_format": "json", "log_level": "info", "health": ""},
            "databases": {"src": {"dsn": self.src_dsn}, "dst": {"dsn": self.dst_dsn}},
            "pipeline": [
                {
                    "name": PIPELINE,
                    "from": "src",
                    "to": "dst",
                    "table": [table],
                }
            ],
        }
        self.config_path.write_text(toml_dumps(config))

    def setup(self) -> None:
        self.write_config()
        res = subprocess.run(
            [sys.executable, "-m", "replicator", "setup", "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if res.returncode != 0:
            raise BenchError(f"replicator setup failed:\n{res.stdout}{res.stderr}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"ours: daemon exited ({code}); see {self.log_path}")

    def activate(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "replicator", "run", "-c", str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        deadline = time.monotonic() + 60
        while not (self.walsender_pids() and len(self.apply_pids()) > 1):
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError("ours: daemon did not start streaming")
            time.sleep(POLL_S)
        self.catch_up()

    def deactivate(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exits.append(self.proc.wait(60))
        except subprocess.TimeoutExpired:
            self.exits.append(None)  # reported: did not stop on SIGTERM within 60 s
            self.proc.kill()
            self.proc.wait(10)
        deadline = time.monotonic() + 30
        while self.walsender_pids():
            if time.monotonic() > deadline:
                raise BenchError("ours: walsender still there after the daemon stopped")
            time.sleep(POLL_S)

    def teardown(self) -> None:
        self.deactivate()

    def apply_pids(self) -> list[int]:
        pids = [self.pid] if self.proc is not None and self.proc.poll() is None else []
        pids += [
            r[0]
            for r in self.dst.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
                [self.db, "replicator:%"],
            )
        ]
        return pids


# --- scenarios ----------------------------------------------------------------------------


def insert_sql(n: int) -> sql.Composed:
    return sql.SQL("INSERT INTO public.citizens " + ROW_SELECT).format(
        source=sql.SQL("generate_series(1::bigint, {}) AS s(g)").format(sql.Literal(n))
    )


def bulk_timeout(n: int) -> float:
    return max(300.0, n / 1000)


def run_source_txn(system: System, statement: sql.Composable | str) -> tuple[float, float, str]:
    """One source transaction; returns (statement seconds, monotonic time of COMMIT, LSN)."""
    with psycopg.connect(system.src_dsn, autocommit=True) as conn:
        conn.execute("BEGIN")
        started = time.monotonic()
        conn.execute(statement)  # type: ignore[arg-type]
        committing = time.monotonic()
        conn.execute("COMMIT")
        lsn = conn.execute(FLUSHED_LSN).fetchone()
    assert lsn is not None
    return committing - started, committing, lsn[0]


def verify(system: System, masked: bool = False) -> dict[str, Any]:
    (sc, ss), (dc, ds) = system.checksums(masked)
    return {"source_rows": sc, "target_rows": dc, "equal": sc == dc and ss == ds}


def reset(system: System) -> None:
    """Empty table on both sides: TRUNCATE replicates; the target is truncated too in case."""
    system.src.execute("SELECT setval('public.citizen_ids', 1, false)")
    system.src.execute("TRUNCATE public.citizens")
    system.catch_up()
    system.dst.execute("TRUNCATE public.citizens")
    system.loaded = 0


def ensure_loaded(system: System, n: int) -> None:
    if system.loaded == n:
        return
    say(f"  {system.label}: loading {n:,} rows (untimed)")
    reset(system)
    _, _, lsn = run_source_txn(system, insert_sql(n))
    system.wait_applied(lsn, timeout=bulk_timeout(n))
    check = verify(system)
    if not check["equal"]:
        raise BenchError(f"{system.label}: target differs from source after loading: {check}")
    system.loaded = n


def settle(system: System) -> None:
    """Same starting point for every measurement: vacuumed, analysed, checkpointed."""
    for conn in (system.src, system.dst):
        conn.execute("VACUUM (ANALYZE) public.citizens")
    system.env.checkpoint()


def bulk(kind: str, system: System, n: int, masked: bool = False) -> dict[str, Any]:
    if kind == "a":
        reset(system)
        statement: sql.Composable | str = insert_sql(n)
    else:
        ensure_loaded(system, n)
        statement = UPDATE_ALL
    settle(system)
    apply_cpu = CpuMeter(system.apply_pids).start()
    wal_cpu = CpuMeter(system.walsender_pids).start()
    stmt_s, committing, lsn = run_source_txn(system, statement)
    done, how = system.wait_applied(lsn, timeout=bulk_timeout(n), meters=(apply_cpu, wal_cpu))
    seconds = done - committing
    result: dict[str, Any] = {
        "rows": n,
        "source_statement_s": stmt_s,
        "commit_to_target_s": seconds,
        "rows_per_s": n / seconds,
        "apply_cpu_s": apply_cpu.stop(),
        "walsender_cpu_s": wal_cpu.stop(),
        "done_by": how,
    }
    if isinstance(system, Ours):
        result["daemon_peak_rss_mib"] = peak_rss_mib(system.pid)
    system.loaded = 0 if masked else n  # a masked target is not a copy of the source
    result["verify"] = verify(system, masked)
    if not result["verify"]["equal"]:
        system.loaded = 0
    return result


def check_mask_mirror(system: System) -> None:
    """MASKED_EXPR must agree with replicator.masking on generated rows, or a masked run
    could not be verified: 1,000 rows of ROW_SELECT, each masked column both ways."""
    rows = ROW_SELECT.replace("{source}", "generate_series(1::bigint, 1000) AS s(g)")
    cols = ", ".join(f"c.{col}, {MASKED_EXPR[col]}" for col in MASKS)
    query = f"SELECT {cols} FROM ({rows}) AS c({', '.join(COLUMNS)})"
    fns = [compile_mask(parse_mask(rule)) for rule in MASKS.values()]
    for row in system.src.execute(query):  # type: ignore[call-overload]
        for i, (col, fn) in enumerate(zip(MASKS, fns, strict=True)):
            raw, expected = row[2 * i], row[2 * i + 1]
            got = None if raw is None else fn(raw.encode())
            if (None if got is None else got.decode()) != expected:
                raise BenchError(f"MASKED_EXPR[{col!r}] differs from replicator.masking")


def masked_run(ours: Ours, n: int) -> dict[str, Any]:
    """(a) again for ours, with MASKS in its config; the config is restored afterwards."""
    check_mask_mirror(ours)
    ours.masks = MASKS
    ours.write_config()
    try:
        ours.activate()
        try:
            res = bulk("a", ours, n, masked=True)
        finally:
            ours.deactivate()
    finally:
        ours.masks = None
        ours.write_config()
        ours.loaded = 0
    res["masks"] = dict(MASKS)
    return res


WALDUMP_COMMIT = re.compile(
    r"tx:\s*(\d+), lsn: \S+, prev \S+ desc: COMMIT "
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC(?:; .*?subxacts: ([\d ]+))?"
)


def target_commit_times(env: Env, start: str, end: str) -> dict[int, dt.datetime]:
    """Local commit time of every transaction committed on the target in [start, end)."""
    proc = subprocess.run(
        [
            str(env.install.tool("pg_waldump")),
            "-p",
            str(env.dst.data_dir / "pg_wal"),
            "-s",
            start,
            "-e",
            end,
            "-r",
            "Transaction",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC"},
        timeout=300,
        check=False,
    )
    times: dict[int, dt.datetime] = {}
    for line in proc.stdout.splitlines():
        m = WALDUMP_COMMIT.search(line)
        if not m:
            continue
        when = dt.datetime.strptime(m[2], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC)
        times[int(m[1])] = when
        for sub in (m[3] or "").split():
            times[int(sub)] = when
    if not times:
        raise BenchError(f"pg_waldump found no commits ({proc.returncode}): {proc.stderr[-500:]}")
    return times


def delays_ms(system: System, since: dt.datetime, commits: dict[int, dt.datetime]) -> dict:
    """Per touched row: target local commit time of its xmin minus the source commit time."""
    query = (
        "SELECT citizen_id, xmin::text::bigint, pg_xact_commit_timestamp(xmin)"
        " FROM public.citizens WHERE updated_at >= %s"
    )
    source = {cid: ts for cid, _, ts in system.src.execute(query, [since])}
    delays, origin_ts, unresolved = [], [], 0
    for cid, xmin, ts in system.dst.execute(query, [since]):
        s = source.get(cid)
        local = commits.get(xmin)
        if s is None or local is None:
            unresolved += 1
            continue
        delays.append((local - s).total_seconds() * 1000)
        origin_ts.append((ts - s).total_seconds() * 1000)
    if not delays:
        raise BenchError(f"{system.label}: no row delays resolved ({unresolved} unresolved)")
    return {
        "rows": len(delays),
        "unresolved": unresolved,
        "p50_ms": quantile(delays, 0.5),
        "p99_ms": quantile(delays, 0.99),
        "max_ms": max(delays),
        # the target's own commit timestamp is the source's (origin timestamp): ~0 always
        "target_commit_ts_p50_ms": quantile(origin_ts, 0.5),
    }


def pgbench(system: System, n: int, txns: int) -> dict[str, Any]:
    env = system.env
    ensure_loaded(system, n)
    system.src.execute(
        "SELECT setval('public.citizen_ids', (SELECT max(citizen_id) FROM citizens))"
    )
    settle(system)
    script = env.root / "pgbench_mix.sql"
    script.write_text(PGBENCH_SCRIPT)
    per_client = max(1, txns // CLIENTS)
    # keep the target's WAL of this run until pg_waldump has read it
    env.admin(env.dst, "SELECT pg_create_physical_replication_slot('bench_walpin', true)")
    try:
        dst_start = system.one(system.dst, "SELECT pg_current_wal_lsn()::text")
        since = system.one(system.src, "SELECT clock_timestamp()")
        apply_cpu = CpuMeter(system.apply_pids).start()
        wal_cpu = CpuMeter(system.walsender_pids).start()
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                str(env.install.tool("pgbench")),
                "-n",
                "-c",
                str(CLIENTS),
                "-j",
                "2",
                "-t",
                str(per_client),
                "-f",
                str(script),
                "-D",
                f"rows={n}",
                "-h",
                str(env.src.socket_dir),
                "-p",
                str(env.src.port),
                "-U",
                "postgres",
                system.db,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while proc.poll() is None:
            apply_cpu.sample()
            wal_cpu.sample()
            time.sleep(POLL_S)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise BenchError(f"pgbench failed ({proc.returncode}):\n{out}\n{err}")
        pgbench_end = time.monotonic()
        lsn = system.one(system.src, FLUSHED_LSN)
        done, how = system.wait_applied(lsn, timeout=600, meters=(apply_cpu, wal_cpu))
        apply_s, wal_s = apply_cpu.stop(), wal_cpu.stop()
        dst_end = system.one(system.dst, "SELECT pg_current_wal_lsn()::text")
        commits = target_commit_times(env, dst_start, dst_end)
    finally:
        env.admin(env.dst, "SELECT pg_drop_replication_slot('bench_walpin')")
    tps = re.search(r"tps = ([\d.]+) \(without initial", out)
    rows = per_client * CLIENTS
    result: dict[str, Any] = {
        "txns": rows,
        "pgbench_s": pgbench_end - started,
        "pgbench_tps": float(tps[1]) if tps else None,
        "catch_up_after_pgbench_s": done - pgbench_end,
        "apply_cpu_s": apply_s,
        "walsender_cpu_s": wal_s,
        "apply_cpu_s_per_1k_rows": apply_s / rows * 1000,
        "walsender_cpu_s_per_1k_rows": wal_s / rows * 1000,
        "done_by": how,
        "delay": delays_ms(system, since, commits),
    }
    if isinstance(system, Ours):
        result["daemon_peak_rss_mib"] = peak_rss_mib(system.pid)
    system.loaded = 0  # inserts grew the table
    result["verify"] = verify(system)
    return result


# --- report -------------------------------------------------------------------------------


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, int) or (isinstance(v, float) and abs(v) >= 1000):
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ratio(ours: Any, native: Any) -> str:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (ours, native))
    if not numbers or not native:
        return ""
    return f"{ours / native:.2f}"


TABLE_ROWS: dict[str, list[tuple[str, str]]] = {
    "a": [
        ("commit -> target all rows (s)", "commit_to_target_s"),
        ("rows/s", "rows_per_s"),
        ("source statement (s)", "source_statement_s"),
        ("apply-side CPU (s)", "apply_cpu_s"),
        ("walsender CPU (s)", "walsender_cpu_s"),
        ("daemon peak RSS, VmHWM (MiB)", "daemon_peak_rss_mib"),
        ("target == source (count, checksum)", "verify.equal"),
    ],
    "c": [
        ("pgbench tps on the source", "pgbench_tps"),
        ("catch-up after pgbench ends (s)", "catch_up_after_pgbench_s"),
        ("apply-side CPU s / 1,000 rows", "apply_cpu_s_per_1k_rows"),
        ("walsender CPU s / 1,000 rows", "walsender_cpu_s_per_1k_rows"),
        ("commit delay p50 (ms)", "delay.p50_ms"),
        ("commit delay p99 (ms)", "delay.p99_ms"),
        ("commit delay max (ms)", "delay.max_ms"),
        ("rows timed for delay", "delay.rows"),
        ("target == source (count, checksum)", "verify.equal"),
    ],
}
TABLE_ROWS["b"] = TABLE_ROWS["a"]
TABLE_ROWS["a_masked"] = TABLE_ROWS["a"]


def dig(d: Mapping[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def print_results(results: Mapping[str, Mapping[str, Any]], args: argparse.Namespace) -> None:
    titles = {
        "a": f"(a) INSERT {args.rows:,} rows in one transaction",
        "a_masked": f"(a) again, ours with {len(MASKS)} masked columns (native: no masks, the"
        " reference)",
        "b": f"(b) UPDATE {args.rows:,} rows in one transaction",
        "c": f"(c) pgbench {args.txns:,} single-row txns, {CLIENTS} clients, 80% upd/20% ins",
    }
    lines = [("", "native", "ours", "ours/native")]
    for kind, res in results.items():
        lines.append((titles[kind], "", "", ""))
        for label, path in TABLE_ROWS[kind]:
            n, o = dig(res.get("native", {}), path), dig(res.get("ours", {}), path)
            lines.append((f"  {label}", fmt(n), fmt(o), ratio(o, n)))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    say()
    for i, line in enumerate(lines):
        if i > 0 and not line[1] and not line[2]:
            say(line[0])
            continue
        say(
            line[0].ljust(widths[0])
            + "".join("  " + c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True))
        )
        if i == 0:
            say("-" * (sum(widths) + 6))


def daemon_log_summary(path: Path) -> dict[str, Any]:
    levels: dict[str, int] = {}
    events: dict[str, int] = {}
    other = 0
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                other += 1
                continue
            level = str(rec.get("level", "?"))
            levels[level] = levels.get(level, 0) + 1
            if level not in ("info", "debug"):
                key = f"{level}:{rec.get('event')}"
                events[key] = events.get(key, 0) + 1
    return {"levels": levels, "warnings_and_errors": events, "non_json_lines": other}


def process_table() -> dict[int, tuple[int, float, str]]:
    """Every process: pid -> (ppid, CPU seconds, command line)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        table[int(entry.name)] = (int(fields[1]), cpu, cmd.strip() or stat.split(" ", 2)[1])
    return table


def other_cpu(before: dict[int, tuple[int, float, str]], seconds: float) -> list[dict[str, Any]]:
    """CPU used during the run by processes outside this benchmark (our clusters are gone by
    now), grouped by the process tree they branch off ours at (another session's command,
    a stray daemon). On a shared 2-core machine they bend every number. Processes that
    came and went during the run are not seen."""
    after = process_table()
    mine: set[int] = set()
    node = os.getpid()
    while node > 0 and node not in mine:
        mine.add(node)
        node = after.get(node, (0, 0.0, ""))[0]
    groups: dict[int, float] = {}
    for pid, (_, cpu, _) in after.items():
        top, node, hops = pid, pid, 0
        while node not in mine and node > 0 and hops < 64:
            top, node, hops = node, after.get(node, (0, 0.0, ""))[0], hops + 1
        if top in mine or pid in mine:
            continue
        used = cpu - before[pid][1] if pid in before else cpu  # new: started during the run
        groups[top] = groups.get(top, 0.0) + used
    busy = [
        {"pid": top, "cpu_s": used, "share": used / seconds, "cmd": after[top][2][:70]}
        for top, used in groups.items()
        if used >= 0.05 * seconds and top in after
    ]
    return sorted(busy, key=lambda b: -b["cpu_s"])[:5]


def code_fingerprint() -> str:
    """Hash of the daemon's source: the daemon restarts between scenarios, so an edit to the
    checkout during a run would mix two versions in one table."""
    digest = hashlib.sha256()
    pkg = Path(__file__).resolve().parent.parent / "replicator"
    for path in sorted(pkg.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".sql"):
            digest.update(str(path.relative_to(pkg)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def server_log_errors(cluster: localpg.LocalCluster) -> list[str]:
    try:
        text = cluster.log_file.read_text(errors="replace")
    except OSError:
        return []
    return [
        line for line in text.splitlines() if re.search(r"\b(ERROR|FATAL|PANIC|WARNING):", line)
    ]


# --- main ---------------------------------------------------------------------------------


def pick_install(major: int) -> localpg.PgInstall:
    for install in localpg.discover():
        if install.major == major:
            return install
    raise SystemExit(f"PostgreSQL {major} not found (have: {localpg.discover()})")


def create_databases(env: Env) -> None:
    for cluster in (env.src, env.dst):
        for db in (DB_NATIVE, DB_OURS):
            with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
            with psycopg.connect(cluster.conninfo(db), autocommit=True) as conn:
                conn.execute(DDL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for (a) and (b)")
    parser.add_argument("--txns", type=int, default=100_000, help="pgbench transactions for (c)")
    parser.add_argument("--only", default="a,b,c", help="scenarios to run, e.g. a,c")
    parser.add_argument("--pg", type=int, default=15, help="PostgreSQL major version")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--masks",
        action="store_true",
        help="run (a) for ours a second time with masks on, and print the slowdown",
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if not only or any(s not in ("a", "b", "c") for s in only):
        parser.error("--only takes a comma-separated subset of a,b,c")
    if args.masks and "a" not in only:
        parser.error("--masks needs scenario a")
    only = [s for s in ("a", "b", "c") if s in only]

    command = shlex.join([sys.executable, *sys.argv])
    install = pick_install(args.pg)
    root = localpg.make_root("rbench-")
    env = Env(
        install,
        root,
        localpg.LocalCluster(install, root, "src"),
        localpg.LocalCluster(install, root, "dst"),
    )
    results: dict[str, dict[str, Any]] = {}
    facts: dict[str, Any] = {"command": command}
    systems: list[System] = []
    error: str | None = None
    processes_before = process_table()
    run_started = time.monotonic()
    code_before = code_fingerprint()
    try:
        env.src.init().start()
        env.dst.init().start()
        create_databases(env)
        native, ours = Native(env), Ours(env)
        systems = [native, ours]
        native.setup()
        native.deactivate()
        ours.setup()
        with psycopg.connect(env.src.conninfo(DB_OURS)) as conn:
            version = conn.execute("SELECT version()").fetchone()
            row_bytes = conn.execute(
                "SELECT avg(pg_column_size(c.*)), avg(length(c::text)) FROM ("
                + ROW_SELECT.replace("{source}", "generate_series(1::bigint, 1000) AS s(g)")
                + ") AS c"
            ).fetchone()
        assert version is not None
        assert row_bytes is not None
        facts |= {
            "nproc": len(os.sched_getaffinity(0)),
            "loadavg_at_start": os.getloadavg(),
            "python": f"{platform.python_version()} ({platform.python_implementation()})",
            "python_executable": sys.executable,
            "postgresql": version[0],
            "pg_bindir": str(install.bindir),
            "row_bytes": {"pg_column_size": float(row_bytes[0]), "text": float(row_bytes[1])},
            "native_subscription": native.options,
            "ours_pipeline": ours.options,
            "workdir": str(root),
        }
        say(f"command:    {command}")
        say(f"machine:    nproc={facts['nproc']}  loadavg={os.getloadavg()[0]:.2f}")
        say(f"python:     {facts['python']}  {sys.executable}")
        say(f"postgresql: {version[0]}")
        say(
            f"rows:       ~{facts['row_bytes']['pg_column_size']:.0f} bytes on disk, "
            f"~{facts['row_bytes']['text']:.0f} as text"
        )
        say(
            "native:     CREATE SUBSCRIPTION ... WITH (copy_data = false); defaults: "
            + ", ".join(f"{k}={v}" for k, v in native.options.items())
        )
        say(
            "ours:       python -m replicator run, no masks; defaults: "
            + ", ".join(f"{k}={v}" for k, v in ours.options.items())
        )
        if args.masks:
            say(
                "masks:      (a) again for ours with "
                + ", ".join(f"{c}={r}" for c, r in MASKS.items())
            )
        say(f"workdir:    {root} (daemon.log, replicator.toml, server logs)")

        for kind in only:
            results[kind] = {}
            for system in (native, ours):
                say(f"[{kind}] {system.label} ...")
                system.activate()
                try:
                    if kind == "c":
                        res = pgbench(system, args.rows, args.txns)
                    else:
                        res = bulk(kind, system, args.rows)
                finally:
                    system.deactivate()
                results[kind][system.label] = res
                brief = (
                    f"{res['commit_to_target_s']:.2f}s, {res['rows_per_s']:,.0f} rows/s"
                    if kind != "c"
                    else f"p50 {res['delay']['p50_ms']:.1f} ms, p99 {res['delay']['p99_ms']:.1f}"
                    f" ms, apply CPU {res['apply_cpu_s_per_1k_rows']:.3f} s/1k rows"
                )
                say(f"[{kind}] {system.label}: {brief}, equal={res['verify']['equal']}")
            if kind == "a" and args.masks:
                say("[a] ours with masks ...")
                res = masked_run(ours, args.rows)
                results["a_masked"] = {"native": results["a"]["native"], "ours": res}
                say(
                    f"[a] ours with masks: {res['commit_to_target_s']:.2f}s,"
                    f" {res['rows_per_s']:,.0f} rows/s, equal={res['verify']['equal']}"
                )
    except BenchError as exc:
        error = str(exc)
        say(f"FAILED: {error}")
    finally:
        for system in systems:
            with contextlib.suppress(Exception):
                system.teardown()
            system.close()
        facts["daemon_exit_codes"] = systems[1].exits if len(systems) > 1 else []
        facts["daemon_log"] = daemon_log_summary(root / "daemon.log")
        facts["server_log_problems"] = {
            "source": server_log_errors(env.src)[-20:],
            "target": server_log_errors(env.dst)[-20:],
        }
        env.src.destroy()
        env.dst.destroy()
    elapsed = time.monotonic() - run_started
    facts["run_seconds"] = elapsed
    facts["loadavg_at_end"] = os.getloadavg()
    facts["other_cpu"] = other_cpu(processes_before, elapsed)
    facts["code_changed_during_run"] = code_fingerprint() != code_before
    facts["error"] = error
    if "a_masked" in results and "ours" in results.get("a", {}):
        off, on = results["a"]["ours"], results["a_masked"]["ours"]
        facts["masking_slowdown"] = {
            "commit_to_target": on["commit_to_target_s"] / off["commit_to_target_s"],
            "apply_cpu": on["apply_cpu_s"] / off["apply_cpu_s"] if off["apply_cpu_s"] else None,
        }

    print_results(results, args)
    slow = facts.get("masking_slowdown")
    if slow:
        off, on = results["a"]["ours"], results["a_masked"]["ours"]
        say(
            f"masks on / off (ours, (a)): commit -> target {on['commit_to_target_s']:.2f}s /"
            f" {off['commit_to_target_s']:.2f}s = {slow['commit_to_target']:.2f}"
            f" ({slow['commit_to_target'] - 1:+.1%})"
            + (
                f"; apply-side CPU {on['apply_cpu_s']:.1f}s / {off['apply_cpu_s']:.1f}s ="
                f" {slow['apply_cpu']:.2f}"
                if slow["apply_cpu"]
                else ""
            )
        )
    say()
    say(f"command: {command}")
    say("ours/native: the plain quotient of the two columns (time and CPU: lower is better")
    say("for ours below 1; rows/s and tps: higher is better for ours above 1).")
    say(
        f"Machine: {facts['nproc']} CPUs, shared. Absolute times drift from run to run; the"
        " ratios are what matter."
    )
    say(f"daemon exit codes on SIGTERM: {facts['daemon_exit_codes']}")
    log = facts["daemon_log"]
    say(
        f"daemon log: {log['levels']} non-json lines: {log['non_json_lines']}"
        + (f" warnings/errors: {log['warnings_and_errors']}" if log["warnings_and_errors"] else "")
    )
    for side, problems in facts["server_log_problems"].items():
        if problems:
            say(f"{side} server log: {len(problems)} problem line(s), last: {problems[-1]}")
    for proc in facts["other_cpu"]:
        say(
            f"NOTE: other processes used {proc['share']:.0%} of a CPU during the run:"
            f" pid {proc['pid']} and children: {proc['cmd'][:100]}"
        )
    for kind, per_system in results.items():
        for label, res in per_system.items():
            if res.get("done_by") != "origin":
                say(f"NOTE: ({kind}) {label} was seen done by its walsender feedback, not origin")
    if facts["code_changed_during_run"]:
        say("NOTE: replicator/ changed during the run; scenarios may mix daemon versions")
    if error:
        say(f"FAILED: {error}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"facts": facts, "results": results}, indent=2, default=str)
        )
        say(f"results written to {args.json}")
    equal = all(r["verify"]["equal"] for s in results.values() for r in s.values())
    return 0 if equal and not error else 1


if __name__ == "__main__":
    sys.exit(main())
