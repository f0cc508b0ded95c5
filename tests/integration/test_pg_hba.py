"""The README's pg_hba advice on a real server: the source role streams logically, and
cannot take a physical copy of the cluster (pg_basebackup) through it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from replicator import localpg
from tests.integration.dba import own_cluster, run_ok
from tests.plugins.pg import DbPair, run_cli, wait_for_equal
from tests.support import execute

README = Path(__file__).resolve().parents[2] / "README.md"
ROLE = "rs_hba"
DDL = "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric)"


def readme_hba(db: str, role: str) -> list[str]:
    """The README's pg_hba.conf lines for the source role, for this test's database and
    role, over the local socket (the test has no TLS here: `hostssl`/`host` become
    `local`, the address goes, the method is trust; DATABASE and USER are kept)."""
    text = README.read_text()
    block = re.search(r"pg_hba\.conf on the source.*?```\n(.*?)```", text, re.S)
    assert block, "the README shows the pg_hba.conf lines for the source"
    out = []
    for line in block.group(1).splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or "replicator_source" not in fields:
            continue
        database = db if fields[1] == "smart_warehouse" else fields[1]
        out.append(f"local {database} {role} trust")
    assert out
    return out


@pytest.fixture
def source(dbs: DbPair, tmp_path: Path) -> Iterator[localpg.LocalCluster]:
    root = localpg.make_root("rhba-")
    cluster = own_cluster(dbs.pair.src.install, root, readme_hba(dbs.name, ROLE))
    try:
        with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbs.name)))
        execute(cluster.conninfo(dbs.name), DDL)
        yield cluster
    finally:
        cluster.destroy()


def test_the_source_role_streams_logically_but_cannot_copy_the_cluster(
    dbs: DbPair, source: localpg.LocalCluster, daemon, tmp_path: Path
):
    execute(dbs.dst, DDL)
    run_ok(source, dbs.name, "source/publication.sql", pipeline=dbs.pipeline, tables="orders")
    run_ok(source, dbs.name, "source/roles.sql", role=ROLE, tables="orders")
    src = source.conninfo(dbs.name, user=ROLE)
    execute(src, "SELECT 1")  # the role reaches its database
    config = dbs.config([{"source": "orders"}])
    config["databases"]["src"]["dsn"] = src
    d = daemon(config)
    execute(
        source.conninfo(dbs.name), "INSERT INTO orders SELECT g, g FROM generate_series(1, 50) g"
    )
    wait_for_equal(source.conninfo(dbs.name), dbs.dst, ["public.orders"])  # logical: works
    # physical replication, the whole cluster: refused
    backup = subprocess.run(
        [
            str(source.install.tool("pg_basebackup")),
            "-h",
            str(source.socket_dir),
            "-p",
            str(source.port),
            "-U",
            ROLE,
            "-D",
            str(tmp_path / "copy"),
            "-X",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert backup.returncode != 0
    assert "no pg_hba.conf entry for replication connection" in backup.stderr
    assert not (tmp_path / "copy" / "PG_VERSION").exists()
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        psycopg.connect(source.conninfo(user=ROLE, replication="true")).close()
    # and the preflight sees nothing to warn about in the role's reach
    check = run_cli("check", "-c", str(d.config_path))
    assert "physical replication" not in check.stdout
    assert d.alive()
