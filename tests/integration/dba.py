"""What a DBA does by hand, for the integration tests: run the scripts in sql/ with psql,
and create (then drop) the least-privilege roles they define.

Roles are cluster-wide, so each test names its roles after its own database.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from replicator import localpg
from tests.plugins.pg import DbPair

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


def psql(
    cluster: localpg.LocalCluster, dbname: str, script: str, **variables: str
) -> subprocess.CompletedProcess[str]:
    """Run ``sql/<script>`` as the superuser; psql's own exit status tells success."""
    args = [
        str(cluster.install.tool("psql")),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(cluster.socket_dir),
        "-p",
        str(cluster.port),
        "-U",
        "postgres",
        "-d",
        dbname,
    ]
    for k, v in variables.items():
        args += ["-v", f"{k}={v}"]
    args += ["-f", str(SQL_DIR / script)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def run_ok(cluster: localpg.LocalCluster, dbname: str, script: str, **variables: str) -> str:
    res = psql(cluster, dbname, script, **variables)
    assert res.returncode == 0, f"{script} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res.stderr


@dataclass
class Roles:
    """The source and apply roles of one test, created by the DBA scripts."""

    dbs: DbPair
    source: str
    apply: str

    @property
    def src_dsn(self) -> str:
        return self.dbs.pair.src.conninfo(self.dbs.name, user=self.source)

    @property
    def dst_dsn(self) -> str:
        return self.dbs.pair.dst.conninfo(self.dbs.name, user=self.apply)

    def install(
        self, source_tables: list[str], target_tables: list[str], *, pipeline: str | None = None
    ) -> None:
        """Everything a DBA runs for one pipeline: publication, roles, slot views, pause."""
        src, dst, db = self.dbs.pair.src, self.dbs.pair.dst, self.dbs.name
        tables = ", ".join(source_tables)
        run_ok(src, db, "source/publication.sql", pipeline=pipeline or self.dbs.pipeline,
               tables=tables)  # fmt: skip
        run_ok(src, db, "source/roles.sql", role=self.source, tables=tables)
        run_ok(src, db, "source/slot_health.sql")
        run_ok(dst, db, "target/roles.sql", role=self.apply, tables=", ".join(target_tables))
        run_ok(dst, db, "target/pause.sql")

    def config(self, tables: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        cfg = self.dbs.config(tables, **kwargs)
        cfg["databases"] = {"src": {"dsn": self.src_dsn}, "dst": {"dsn": self.dst_dsn}}
        return cfg

    def drop(self) -> None:
        for cluster, role in ((self.dbs.pair.src, self.source), (self.dbs.pair.dst, self.apply)):
            drop_role(cluster, role, [self.dbs.name])


def drop_role(cluster: localpg.LocalCluster, role: str, dbnames: list[str]) -> None:
    """DROP OWNED in every database it may hold something in (its grants on parameters
    are cluster-wide: revoked from `postgres`), then DROP ROLE."""
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        if not exists:
            return
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
        )
        have = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    for db in ["postgres", *dbnames]:
        if db not in have:
            continue
        with psycopg.connect(cluster.conninfo(db), autocommit=True) as conn:
            # CASCADE: the DBA's functions live in the apply role's schema `replicator`
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def own_cluster(
    install: localpg.PgInstall,
    root: Path,
    hba: list[str],
    *,
    settings: dict[str, str] | None = None,
    files: dict[str, bytes] | None = None,
) -> localpg.LocalCluster:
    """A cluster of its own, started with exactly the pg_hba.conf lines ``hba`` (the
    superuser keeps its local access) and ``files`` written into its data directory."""
    cluster = localpg.LocalCluster(install, root, "own", settings=settings or {}).init()
    lines = ["local all postgres trust", "local replication postgres trust", *hba]
    cluster.data_dir.joinpath("pg_hba.conf").write_text("\n".join(lines) + "\n")
    owner = cluster.data_dir.stat()
    for name, content in (files or {}).items():
        path = cluster.data_dir / name
        path.write_bytes(content)
        path.chmod(0o600)
        os.chown(path, owner.st_uid, owner.st_gid)
    return cluster.start()
