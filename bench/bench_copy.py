"""Benchmark: the initial copy of one big table, three ways, on the same two clusters.

Run: ``python bench/bench_copy.py [--rows N] [--workers 1,2] [--pg 15|18] [--json PATH]``.

Two throwaway clusters (source, target) from :mod:`replicator.localpg`, with its default
settings. The source holds one ``citizens``-shaped table of ``--rows`` rows (default
5,000,000; ~300 bytes a row on disk), loaded, frozen, analysed and checkpointed before any
measurement. Each method then copies it into its own empty database on the target (same
DDL, same primary key), one method at a time, both clusters checkpointed before each:

(i)   ``pg_dump --data-only -t public.citizens | psql`` with the install's own tools:
      wall time from starting pg_dump until psql exits.
(ii)  a native subscription's initial copy: ``CREATE SUBSCRIPTION ... WITH (copy_data =
      true)``; from issuing it until ``pg_subscription_rel`` shows the table in state
      ``s`` (synchronised) or ``r`` (ready), polled every 50 ms.
(iii) replicator's initial copy, once per ``--workers`` value: ``replicator setup``
      (untimed), then ``python -m replicator run`` as a subprocess with this interpreter;
      from starting the process until ``replicator.pipelines.state`` on the target is
      ``streaming``, polled every 50 ms. Process start-up, slot creation, range planning
      and the copy itself are all inside the time.

After each method, untimed: row count and a checksum of every row's text compared with the
source, then the target database is dropped (and the method's slot) to free the disk.
rows/s is source rows over seconds; MB/s is the source table's ``pg_table_size`` (heap and
TOAST, no index; MB = 10^6 bytes) over seconds. "vs dump" is the rate relative to
``pg_dump | psql``: above 1 is faster.

Speed only: correctness lives in the tests. Absolute times drift on a shared machine; read
the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_core, next to this file

import psycopg
from bench_core import (
    CHECKSUM,
    ROW_SELECT,
    BenchError,
    code_fingerprint,
    cpu_seconds,
    daemon_log_summary,
    other_cpu,
    peak_rss_mib,
    pick_install,
    process_table,
    say,
    server_log_errors,
    toml_dumps,
)
from psycopg import sql

from replicator import localpg
from replicator.config import CopyConfig

DB_SOURCE = "copy_src"
NATIVE_PUB = "copy_pub"
NATIVE_SUB = "copy_sub"
POLL_S = 0.05

# bench_core's citizens table plus three columns, for ~300 bytes a row on disk. Autovacuum
# off: the source is vacuumed once after loading, and nothing may run inside a measurement.
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
    score        numeric(5, 2),
    father_name  text,
    occupation   text,
    bank_account text
) WITH (autovacuum_enabled = false);
"""

FATHERS = (
    "ARRAY['Ramesh Chand', 'Mohan Lal', 'Bhanwar Singh', 'Gopal Prasad', 'Kishan Lal',"
    " 'Laxman Ram', 'Suresh Kumar', 'Prakash Chand', 'Mahendra Singh', 'Dinesh Kumar']"
)
OCCUPATIONS = (
    "ARRAY['Agricultural labourer', 'Small and marginal farmer', 'Government employee',"
    " 'Self-employed artisan', 'Daily wage worker', 'Shopkeeper', 'Homemaker', 'Student']"
)
EXTRA = (
    f"({FATHERS})[1 + r.g * 13 % 10] || ' ' || (ARRAY['Sharma', 'Meena', 'Rathore', 'Gupta',"
    " 'Jain', 'Yadav', 'Joshi', 'Saini'])[1 + r.g / 10 % 8],"
    f" ({OCCUPATIONS})[1 + r.g * 7 % 8],"
    " (ARRAY['SBIN', 'PUNB', 'BARB', 'HDFC', 'ICIC'])[1 + r.g % 5] || '0'"
    " || lpad(CAST(r.g * 31 % 999999 AS text), 6, '0') || ' / '"
    " || CAST(30000000000 + r.g * 7907 % 9999999999 AS text)"
)


def insert_sql(first: int, last: int) -> sql.Composed:
    rows = ROW_SELECT.replace("{source}", "generate_series({lo}::bigint, {hi}) AS s(g)")
    return sql.SQL(
        "INSERT INTO public.citizens SELECT r.*, " + EXTRA + " FROM (" + rows + ") AS r"
    ).format(lo=sql.Literal(first), hi=sql.Literal(last))


def admin(cluster: localpg.LocalCluster, *statements: str | sql.Composable, db: str = "") -> None:
    with psycopg.connect(cluster.conninfo(db or "postgres"), autocommit=True) as conn:
        for s in statements:
            conn.execute(s)  # type: ignore[arg-type]


def one(dsn: str, query: str, params: Sequence[Any] = ()) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None


def checksum(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(CHECKSUM).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def timeout_for(rows: int) -> float:
    return max(600.0, rows / 2000)


class Bench:
    def __init__(self, install: localpg.PgInstall, root: Path, rows: int) -> None:
        self.install = install
        self.root = root
        self.rows = rows
        self.src = localpg.LocalCluster(install, root, "src")
        self.dst = localpg.LocalCluster(install, root, "dst")
        self.src_dsn = self.src.conninfo(DB_SOURCE)
        self.source_sum: tuple[int, int] = (0, 0)
        self.table_bytes = 0
        self.daemons: list[subprocess.Popen[bytes]] = []

    # -- preparation ---------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        admin(self.src, f"CREATE DATABASE {DB_SOURCE}")
        admin(
            self.src,
            DDL,
            f"CREATE PUBLICATION {NATIVE_PUB} FOR TABLE public.citizens",
            db=DB_SOURCE,
        )
        started = time.monotonic()
        step = 1_000_000  # several statements: bounded memory and WAL per transaction
        with psycopg.connect(self.src_dsn, autocommit=True) as conn:
            for lo in range(1, self.rows + 1, step):
                conn.execute(insert_sql(lo, min(self.rows, lo + step - 1)))
            conn.execute("VACUUM (FREEZE, ANALYZE) public.citizens")
            facts = conn.execute(
                "SELECT pg_table_size('public.citizens'), pg_indexes_size('public.citizens'),"
                " (SELECT avg(pg_column_size(c.*)) FROM (SELECT * FROM public.citizens"
                "  LIMIT 10000) AS c),"
                " (SELECT avg(length(c::text)) FROM (SELECT * FROM public.citizens"
                "  LIMIT 10000) AS c), version()"
            ).fetchone()
        assert facts is not None
        self.table_bytes = int(facts[0])
        self.source_sum = checksum(self.src_dsn)
        if self.source_sum[0] != self.rows:
            raise BenchError(f"source holds {self.source_sum[0]} rows, expected {self.rows}")
        return {
            "load_s": time.monotonic() - started,
            "table_bytes": self.table_bytes,
            "index_bytes": int(facts[1]),
            "row_bytes": {"pg_column_size": float(facts[2]), "text": float(facts[3])},
            "postgresql": facts[4],
        }

    def new_target(self, db: str) -> str:
        admin(self.dst, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        admin(self.dst, DDL, db=db)
        return self.dst.conninfo(db)

    def settle(self) -> None:
        for cluster in (self.src, self.dst):
            admin(cluster, "CHECKPOINT")

    def finish(self, db: str, seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
        dsn = self.dst.conninfo(db)
        target = checksum(dsn)
        result = {
            "seconds": seconds,
            "rows_per_s": self.rows / seconds,
            "mb_per_s": self.table_bytes / 1e6 / seconds,
            "target_rows": target[0],
            "equal": target == self.source_sum,
            **extra,
        }
        admin(self.dst, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
        return result

    # -- (i) pg_dump | psql ----------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        db = "copy_dump"
        self.new_target(db)
        self.settle()
        conn_args = ["-h", str(self.dst.socket_dir), "-U", "postgres", "-X"]
        dump_cmd = [
            str(self.install.tool("pg_dump")),
            "--data-only",
            "-t",
            "public.citizens",
            "-h",
            str(self.src.socket_dir),
            "-p",
            str(self.src.port),
            "-U",
            "postgres",
            DB_SOURCE,
        ]
        psql_cmd = [
            str(self.install.tool("psql")),
            *conn_args,
            "-p",
            str(self.dst.port),
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
        ]
        started = time.monotonic()
        dumper = subprocess.Popen(dump_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        loader = subprocess.Popen(
            psql_cmd,
            stdin=dumper.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert dumper.stdout is not None
        dumper.stdout.close()  # psql holds the pipe now: pg_dump sees SIGPIPE if psql dies
        _, err = loader.communicate(timeout=timeout_for(self.rows))
        dump_err = dumper.communicate(timeout=60)[1]
        seconds = time.monotonic() - started
        if dumper.returncode or loader.returncode:
            raise BenchError(
                f"pg_dump ({dumper.returncode}) | psql ({loader.returncode}) failed:\n"
                f"{dump_err.decode(errors='replace')[-800:]}\n{err.decode(errors='replace')[-800:]}"
            )
        return self.finish(db, seconds, {"command": "pg_dump --data-only -t ... | psql"})

    # -- (ii) native subscription, copy_data = true -----------------------------------------

    def native(self) -> dict[str, Any]:
        db = "copy_native"
        dsn = self.new_target(db)
        self.settle()
        create = sql.SQL(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = true)"
        ).format(sql.Identifier(NATIVE_SUB), sql.Literal(self.src_dsn), sql.Identifier(NATIVE_PUB))
        with psycopg.connect(dsn, autocommit=True) as conn:
            started = time.monotonic()
            conn.execute(create)
            deadline = started + timeout_for(self.rows)
            state = None
            while True:
                state = conn.execute(
                    "SELECT r.srsubstate::text FROM pg_subscription_rel r"
                    " JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = %s",
                    [NATIVE_SUB],
                ).fetchone()
                if state and state[0] in ("s", "r"):
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"native: table not synchronised (state {state})")
                time.sleep(POLL_S)
            seconds = time.monotonic() - started
            options = conn.execute(
                "SELECT subbinary, substream::text FROM pg_subscription WHERE subname = %s",
                [NATIVE_SUB],
            ).fetchone()
            conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(NATIVE_SUB)))
        assert options is not None
        return self.finish(
            db,
            seconds,
            {"seen_state": state[0], "binary": bool(options[0]), "streaming": options[1]},
        )

    # -- (iii) replicator ----------------------------------------------------------------

    def ours(self, workers: int, range_rows: int) -> dict[str, Any]:
        name = f"copy_w{workers}"
        db = f"copy_ours_w{workers}"
        dsn = self.new_target(db)
        config_path = self.root / f"{name}.toml"
        log_path = self.root / f"daemon_{name}.log"
        config = {
            "service": {"log_format": "json", "log_level": "info", "health": ""},
            "databases": {"src": {"dsn": self.src_dsn}, "dst": {"dsn": dsn}},
            "pipeline": [
                {
                    "name": name,
                    "from": "src",
                    "to": "dst",
                    "copy": {"workers": workers, "range_rows": range_rows},
                    "table": [{"source": "public.citizens"}],
                }
            ],
        }
        config_path.write_text(toml_dumps(config))
        res = subprocess.run(
            [sys.executable, "-m", "replicator", "setup", "-c", str(config_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if res.returncode != 0:
            raise BenchError(f"replicator setup failed:\n{res.stdout}{res.stderr}")
        self.settle()
        with psycopg.connect(dsn, autocommit=True) as conn, log_path.open("ab") as log:
            started = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "replicator", "run", "-c", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.daemons.append(proc)
            try:
                deadline = started + timeout_for(self.rows)
                while True:
                    with contextlib.suppress(psycopg.errors.UndefinedTable):
                        row = conn.execute(
                            "SELECT state FROM replicator.pipelines WHERE pipeline = %s", [name]
                        ).fetchone()
                        if row and row[0] == "streaming":
                            break
                    if proc.poll() is not None:
                        raise BenchError(f"ours: daemon exited ({proc.returncode}); {log_path}")
                    if time.monotonic() > deadline:
                        raise BenchError(f"ours: copy not done after {deadline - started:.0f}s")
                    time.sleep(POLL_S)
                seconds = time.monotonic() - started
                cpu = cpu_seconds(proc.pid)
                rss = peak_rss_mib(proc.pid)
                ranges = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE done), sum(rows_copied),"
                    " sum(bytes_copied) FROM replicator.copy_ranges WHERE pipeline = %s",
                    [name],
                ).fetchone()
            finally:
                exit_code = stop(proc)
        assert ranges is not None
        slot = f"replicator_{name}"
        with psycopg.connect(self.src_dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", [slot]
            ).fetchone() == (True,):
                if time.monotonic() > deadline:
                    raise BenchError(f"ours: slot {slot} still active after the daemon stopped")
                time.sleep(POLL_S)
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                [slot],
            )
        return self.finish(
            db,
            seconds,
            {
                "workers": workers,
                "range_rows": range_rows,
                "ranges": int(ranges[0]),
                "ranges_done": int(ranges[1]),
                "rows_copied": int(ranges[2] or 0),
                "copy_text_bytes": int(ranges[3] or 0),
                "daemon_cpu_s": cpu,
                "daemon_peak_rss_mib": rss,
                "daemon_copy_s": logged_copy_seconds(log_path),
                "daemon_exit_code": exit_code,
                "daemon_log": daemon_log_summary(log_path),
            },
        )


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return None


def logged_copy_seconds(path: Path) -> float | None:
    """The daemon's own ``initial_copy_done`` seconds (the copy alone, no start-up)."""
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("event") == "initial_copy_done":
                    return float(rec["seconds"])
    return None


# --- report ---------------------------------------------------------------------------------


def print_table(results: dict[str, dict[str, Any]]) -> None:
    base = results.get("dump", {}).get("rows_per_s")
    lines = [("method", "seconds", "rows/s", "MB/s", "vs dump", "rows equal")]
    for label, r in results.items():
        lines.append(
            (
                r["label"],
                f"{r['seconds']:.2f}",
                f"{r['rows_per_s']:,.0f}",
                f"{r['mb_per_s']:.1f}",
                f"{r['rows_per_s'] / base:.2f}" if base else "-",
                "yes" if r["equal"] else f"NO ({r['target_rows']:,})",
            )
        )
        del label
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    say()
    for i, line in enumerate(lines):
        say(
            line[0].ljust(widths[0])
            + "".join("  " + c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True))
        )
        if i == 0:
            say("-" * (sum(widths) + 2 * (len(widths) - 1)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows in the source table")
    parser.add_argument("--workers", default="1,2", help="replicator copy workers, e.g. 1,2")
    parser.add_argument(
        "--range-rows",
        type=int,
        default=CopyConfig.model_fields["range_rows"].default,
        help="pipeline.copy.range_rows for replicator (default: the config's default)",
    )
    parser.add_argument("--pg", type=int, default=15, help="PostgreSQL major version")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--workers takes a comma-separated list of integers")
    if not workers or min(workers) < 1 or args.rows < 1:
        parser.error("--workers and --rows must be positive")

    command = shlex.join([sys.executable, *sys.argv])
    install = pick_install(args.pg)
    root = localpg.make_root("rcopy-")
    bench = Bench(install, root, args.rows)
    results: dict[str, dict[str, Any]] = {}
    facts: dict[str, Any] = {"command": command}
    error: str | None = None
    processes_before = process_table()
    run_started = time.monotonic()
    code_before = code_fingerprint()
    try:
        bench.src.init().start()
        bench.dst.init().start()
        say(f"command:    {command}")
        say(f"machine:    nproc={len(os.sched_getaffinity(0))}  loadavg={os.getloadavg()[0]:.2f}")
        say(
            f"python:     {platform.python_version()} ({platform.python_implementation()})  "
            f"{sys.executable}"
        )
        say(f"workdir:    {root} (daemon_*.log, copy_w*.toml, server logs)")
        say(f"loading {args.rows:,} rows into the source (untimed) ...")
        facts |= bench.load()
        facts |= {
            "nproc": len(os.sched_getaffinity(0)),
            "loadavg_at_start": os.getloadavg(),
            "python": f"{platform.python_version()} ({platform.python_implementation()})",
            "python_executable": sys.executable,
            "pg_bindir": str(install.bindir),
            "rows": args.rows,
            "workdir": str(root),
        }
        say(f"postgresql: {facts['postgresql']}")
        say(
            f"table:      {args.rows:,} rows, {facts['table_bytes'] / 1e6:,.0f} MB"
            f" (pg_table_size) + {facts['index_bytes'] / 1e6:,.0f} MB primary key;"
            f" ~{facts['row_bytes']['pg_column_size']:.0f} bytes a row on disk,"
            f" ~{facts['row_bytes']['text']:.0f} as text; loaded in {facts['load_s']:.0f}s"
        )
        runs: list[tuple[str, str, Any]] = [
            ("dump", "pg_dump --data-only | psql", bench.dump),
            ("native", "native subscription, copy_data", bench.native),
        ]
        for w in workers:
            runs.append(
                (
                    f"ours_w{w}",
                    f"replicator, {w} worker{'s' if w > 1 else ''}",
                    lambda w=w: bench.ours(w, args.range_rows),
                )
            )
        for key, label, run in runs:
            say(f"[{label}] ...")
            res = run()
            res["label"] = label
            results[key] = res
            extra = ""
            if key.startswith("ours"):
                extra = (
                    f", {res['ranges']} ranges, daemon CPU {res['daemon_cpu_s']:.1f}s,"
                    f" copy alone {res['daemon_copy_s']}s"
                )
            say(
                f"[{label}] {res['seconds']:.2f}s, {res['rows_per_s']:,.0f} rows/s,"
                f" equal={res['equal']}{extra}"
            )
    except (BenchError, localpg.ClusterError, psycopg.Error, subprocess.TimeoutExpired) as exc:
        error = f"{type(exc).__name__}: {exc}"
        say(f"FAILED: {error}")
    finally:
        for daemon in bench.daemons:  # only our own daemons, should one still run
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
        facts["server_log_problems"] = {
            "source": server_log_errors(bench.src)[-20:],
            "target": server_log_errors(bench.dst)[-20:],
        }
        bench.src.destroy()
        bench.dst.destroy()
    elapsed = time.monotonic() - run_started
    facts["run_seconds"] = elapsed
    facts["loadavg_at_end"] = os.getloadavg()
    facts["other_cpu"] = other_cpu(processes_before, elapsed)
    facts["code_changed_during_run"] = code_fingerprint() != code_before
    facts["error"] = error

    if results:
        print_table(results)
    say()
    say(f"command: {command}")
    say(
        "seconds: start of the method until the target holds the table (dump: psql exits;"
        " native: pg_subscription_rel state s/r; replicator: process start until"
        " pipelines.state = streaming)."
    )
    say(
        f"MB/s: source pg_table_size ({bench.table_bytes / 1e6:,.0f} MB) / seconds."
        " vs dump: rows/s relative to pg_dump | psql (above 1 is faster)."
    )
    say(
        f"Machine: {facts.get('nproc', '?')} CPUs, shared. Absolute times drift from run to run;"
        " the ratios are what matter."
    )
    for key, res in results.items():
        if key.startswith("ours"):
            log = res["daemon_log"]
            say(
                f"{res['label']}: {res['ranges']} ranges of ~{res['range_rows']:,} rows"
                f" ({res['ranges_done']} done), daemon CPU {res['daemon_cpu_s']:.1f}s,"
                f" peak RSS {res['daemon_peak_rss_mib']:.0f} MiB, copy alone (its log)"
                f" {res['daemon_copy_s']}s, exit code on SIGTERM {res['daemon_exit_code']},"
                f" log {log['levels']}"
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
        say("NOTE: replicator/ changed during the run; runs may mix daemon versions")
    if error:
        say(f"FAILED: {error}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"facts": facts, "results": results}, indent=2, default=str)
        )
        say(f"results written to {args.json}")
    equal = all(r["equal"] for r in results.values())
    return 0 if equal and not error else 1


if __name__ == "__main__":
    sys.exit(main())
