"""`replicator check` on real servers: each kind of problem found, named, with its fix;
exit 1 on any error, 0 on a good config (warnings do not fail)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from replicator import localpg
from tests.integration.dba import Roles
from tests.plugins.pg import DbPair, run_cli
from tests.support import execute, toml_dumps

TABLE = "CREATE TABLE public.orders (id bigint PRIMARY KEY, amount numeric, note text)"


def check(tmp_path: Path, config: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    """Run the check twice (JSON and text); both must agree on the exit code."""
    path = tmp_path / "check.toml"
    path.write_text(toml_dumps(config))
    res = run_cli("check", "-c", str(path), "--json")
    text = run_cli("check", "-c", str(path))
    assert res.returncode == text.returncode, res.stderr + text.stderr
    return res.returncode, orjson.loads(res.stdout), text.stdout


def errors(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["severity"] == "error"]


def only_error(report: dict[str, Any], check_name: str) -> dict[str, Any]:
    found = errors(report)
    assert [f["check"] for f in found] == [check_name], found
    assert found[0]["fix"], found[0]
    return found[0]


@pytest.fixture
def roles(dbs: DbPair) -> Iterator[Roles]:
    r = Roles(dbs, source=f"rs_{dbs.name}", apply=f"ra_{dbs.name}")
    yield r
    r.drop()


def test_good_config_passes_with_advice_only(dbs: DbPair, tmp_path: Path):
    execute(dbs.src, TABLE)
    execute(dbs.dst, TABLE)
    code, report, text = check(tmp_path, dbs.config([{"source": "orders"}]))
    assert code == 0, text
    assert report["ok"] is True
    assert errors(report) == []
    # the test clusters keep max_slot_wal_keep_size at its default: advice, not failure
    assert "max_slot_wal_keep_size" in {f["check"] for f in report["findings"]}
    # and the tests connect as the superuser, whom initdb's pg_hba lets replicate
    # physically: warnings, each with its fix
    privilege = sorted(
        (f["obj"], f["message"].split(":")[0])
        for f in report["findings"]
        if f["check"] == "privilege" and f["severity"] == "warning" and f["fix"]
    )
    assert privilege == [
        ("dst:role postgres", "connects as a superuser"),
        ("src:role postgres", "connects as a superuser"),
        ("src:role postgres", "the role can open a physical replication connection"),
    ]
    assert text.rstrip().endswith("ok: 0 error(s), 4 warning(s)")


def test_wal_level_replica_is_an_error(dbs: DbPair, tmp_path: Path):
    root = localpg.make_root("rchk-")
    cluster = localpg.LocalCluster(
        dbs.pair.src.install, root, "replica", settings={"wal_level": "replica"}
    )
    try:
        cluster.init().start()
        execute(cluster.conninfo(), TABLE)
        execute(dbs.dst, TABLE)
        config = dbs.config([{"source": "orders"}])
        config["databases"]["src"]["dsn"] = cluster.conninfo()
        code, report, text = check(tmp_path, config)
    finally:
        cluster.destroy()
    assert code == 1
    found = only_error(report, "wal_level")
    assert found["obj"] == "src"
    assert "wal_level is 'replica'" in found["message"]
    assert "wal_level = 'logical'" in found["fix"]
    assert "ERROR   src: wal_level is 'replica'" in text


def test_table_without_replica_identity_is_an_error(dbs: DbPair, tmp_path: Path):
    execute(dbs.src, "CREATE TABLE public.log (at timestamptz, line text)")
    execute(dbs.dst, "CREATE TABLE public.log (at timestamptz, line text)")
    code, report, _ = check(tmp_path, dbs.config([{"source": "log"}]))
    assert code == 1
    found = only_error(report, "replica_identity")
    assert found["obj"] == "src:public.log"
    assert "no replica identity" in found["message"]
    assert "REPLICA IDENTITY" in found["fix"]


def test_bigint_into_int_is_an_error_and_text_into_varchar_a_warning(dbs: DbPair, tmp_path):
    execute(dbs.src, TABLE)
    execute(
        dbs.dst, "CREATE TABLE public.orders (id int PRIMARY KEY, amount numeric, note varchar(20))"
    )
    code, report, _ = check(tmp_path, dbs.config([{"source": "orders"}]))
    assert code == 1
    found = only_error(report, "type")
    assert found["obj"] == "dst:public.orders.id"
    assert "bigint on the source, integer on the target" in found["message"]
    assert found["fix"] == "ALTER TABLE public.orders ALTER COLUMN id TYPE bigint"
    warned = [f for f in report["findings"] if f["check"] == "type" and f["severity"] == "warning"]
    assert [f["obj"] for f in warned] == ["dst:public.orders.note"]


def test_missing_privileges_are_errors(roles: Roles, tmp_path: Path):
    dbs = roles.dbs
    execute(dbs.src, TABLE)
    execute(dbs.dst, TABLE)
    roles.install(["public.orders"], ["public.orders"])
    execute(
        dbs.dst,
        f"REVOKE TRUNCATE ON public.orders FROM {roles.apply}",
        f"REVOKE EXECUTE ON FUNCTION pg_replication_origin_xact_setup(pg_lsn, timestamptz)"
        f" FROM {roles.apply}",
    )
    execute(dbs.src, f"ALTER ROLE {roles.source} NOREPLICATION")
    code, report, text = check(tmp_path, roles.config([{"source": "orders"}]))
    assert code == 1
    found = {(f["obj"], f["message"].split(":")[0]) for f in errors(report)}
    assert found == {
        ("dst:public.orders", f"role {roles.apply} lacks TRUNCATE"),
        (
            f"dst:role {roles.apply}",
            "no EXECUTE on pg_replication_origin_xact_setup (revoked from PUBLIC by default)",
        ),
        (f"src:role {roles.source}", "the role has neither REPLICATION nor SUPERUSER"),
    }
    assert all(f["check"] == "privilege" for f in errors(report))
    assert "sql/target/roles.sql" in text


def test_roles_from_the_scripts_pass(roles: Roles, tmp_path: Path):
    dbs = roles.dbs
    execute(dbs.src, TABLE)
    execute(dbs.dst, TABLE)
    roles.install(["public.orders"], ["public.orders"])
    code, report, text = check(tmp_path, roles.config([{"source": "orders"}]))
    assert code == 0, text
    assert errors(report) == []
    # the scripts' roles hold nothing more than they need; only the test clusters'
    # pg_hba (initdb's `local replication all trust`) still lets the source role copy
    # the cluster (tests/integration/test_pg_hba.py runs the README's pg_hba)
    privilege = [f["message"] for f in report["findings"] if f["check"] == "privilege"]
    assert privilege == [
        "the role can open a physical replication connection: pg_basebackup would copy the "
        "whole cluster, unpublished tables included"
    ]


@pytest.mark.parametrize(
    ("target_ddl", "mask", "message"),
    [
        (
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, amount numeric, note varchar(5))",
            "redact:CONFIDENTIAL",
            "mask redact:CONFIDENTIAL writes up to 12 characters, but target column 'note' holds 5",
        ),
        (
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, amount numeric, note int)",
            "partial:4",
            "mask partial:4 writes text, but target column 'note' is of type int4",
        ),
        (
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, amount numeric,"
            " note text NOT NULL)",
            "null",
            "mask `null` on column 'note', which is NOT NULL on the target",
        ),
    ],
    ids=["too-long", "not-text", "null-into-not-null"],
)
def test_mask_that_does_not_fit_its_column_is_an_error(dbs, tmp_path, target_ddl, mask, message):
    execute(dbs.src, TABLE)
    execute(dbs.dst, target_ddl)
    code, report, _ = check(tmp_path, dbs.config([{"source": "orders", "mask": {"note": mask}}]))
    assert code == 1
    found = only_error(report, "mask")
    assert found["obj"] == "dst:public.orders"
    assert message in found["message"]


def test_missing_column_and_table_are_listed_together(dbs: DbPair, tmp_path: Path):
    execute(dbs.src, TABLE, "CREATE TABLE public.items (id int PRIMARY KEY)")
    execute(dbs.dst, "CREATE TABLE public.orders (id bigint PRIMARY KEY, amount numeric)")
    code, report, _ = check(tmp_path, dbs.config([{"source": "orders"}, {"source": "items"}]))
    assert code == 1
    assert {(f["check"], f["obj"]) for f in errors(report)} == {
        ("column", "dst:public.orders"),
        ("table", "dst:public.items"),
    }


def test_unreachable_database_is_an_error_without_the_password(dbs: DbPair, tmp_path: Path):
    execute(dbs.dst, TABLE)
    config = dbs.config([{"source": "orders"}])
    port = localpg.free_port()
    config["databases"]["src"]["dsn"] = (
        f"host=127.0.0.1 port={port} dbname=x user=u password=s3cr3t connect_timeout=5"
    )
    code, report, text = check(tmp_path, config)
    assert code == 1
    found = only_error(report, "connect")
    assert found["obj"] == "src"
    assert "s3cr3t" not in text
    assert "s3cr3t" not in orjson.dumps(report).decode()


def test_two_way_table_with_a_sequence_gets_a_warning(dbs: DbPair, tmp_path: Path):
    ddl = "CREATE TABLE public.notes (id bigserial PRIMARY KEY, body text)"
    execute(dbs.src, ddl)
    execute(dbs.dst, ddl)
    config = dbs.config([{"source": "notes"}], pipeline={"snapshot": "merge"})
    back = {**config["pipeline"][0], "name": f"{dbs.pipeline}_back", "from": "dst", "to": "src"}
    config["pipeline"].append(back)
    code, report, text = check(tmp_path, config)
    assert code == 0, text
    seq = [f for f in report["findings"] if f["check"] == "sequence"]
    assert len(seq) == 1
    assert seq[0]["severity"] == "warning"
    assert "public.notes_id_seq" in seq[0]["message"]


def test_config_errors_are_findings_too(tmp_path: Path):
    config = {
        "databases": {"a": {"dsn": "dbname=a"}},
        "pipeline": [{"name": "p", "from": "a", "to": "nowhere", "table": [{"source": "t"}]}],
    }
    code, report, text = check(tmp_path, config)
    assert code == 1
    assert [f["check"] for f in report["findings"]] == ["config"]
    assert "unknown database 'nowhere'" in report["findings"][0]["message"]
    assert "FAILED: 1 error(s)" in text


@pytest.mark.parametrize(
    ("content", "mode", "message", "fix"),
    [
        (b"a" * 32, 0o600, "distinct characters", "openssl rand -hex 32"),
        (
            b"3f9c1a07d2b84e65a1c0f3e7b2d9481c6a5e0f2b7d3c9148e6a2b0f5c7d1e934",
            0o640,
            "group",
            "chmod 600",
        ),
    ],
    ids=["weak", "group-readable"],
)
def test_a_weak_or_exposed_masking_key_is_refused_by_check_and_run(
    dbs: DbPair, tmp_path: Path, content, mode, message, fix
):
    execute(dbs.src, TABLE)
    execute(dbs.dst, TABLE)
    key = tmp_path / "mask.key"
    key.write_bytes(content)
    key.chmod(mode)
    config = dbs.config(
        [{"source": "orders", "mask": {"note": "hash"}}], masking={"key_file": str(key)}
    )
    code, report, _ = check(tmp_path, config)
    assert code == 1
    found = only_error(report, "masking")
    assert message in found["message"]
    assert fix in found["fix"]
    assert content.decode() not in orjson.dumps(report).decode()
    res = run_cli("run", "-c", str(tmp_path / "check.toml"))
    assert res.returncode == 1
    assert fix in res.stderr
    assert content.decode() not in res.stderr + res.stdout
