"""The DBA scripts in sql/ on real servers: idempotent, and enough for the daemon to run
under the least-privilege roles they create, and no more."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.integration.dba import Roles, psql, run_ok
from tests.plugins.pg import DbPair, run_cli, wait_for_equal
from tests.support import execute, scalar, wait_until

SOURCE_DDL = (
    "CREATE SCHEMA wh",
    "CREATE TABLE wh.schemes (code text PRIMARY KEY, name text, budget numeric)",
    "CREATE TABLE public.citizens (id bigserial PRIMARY KEY, name text, email text)",
    "CREATE TABLE public.unpublished (id int PRIMARY KEY, secret text)",
)
TARGET_DDL = (
    "CREATE SCHEMA portal",
    "CREATE TABLE portal.schemes (code text PRIMARY KEY, name text, budget numeric)",
    # a target-side serial the source does not send: the apply role needs its sequence
    "CREATE TABLE public.citizens (id bigint PRIMARY KEY, name text, email text, row_no bigserial)",
    "CREATE TABLE public.unmapped (id int PRIMARY KEY, secret text)",
)
TABLES = [
    {"source": "wh.schemes", "target": "portal.schemes"},
    {"source": "public.citizens", "mask": {"email": "email"}},
]


@pytest.fixture
def roles(dbs: DbPair) -> Iterator[Roles]:
    execute(dbs.src, *SOURCE_DDL)
    execute(dbs.dst, *TARGET_DDL)
    r = Roles(dbs, source=f"rs_{dbs.name}", apply=f"ra_{dbs.name}")
    yield r
    r.drop()


def test_every_script_runs_twice_without_error(roles: Roles):
    for _ in range(2):
        roles.install(["wh.schemes", "public.citizens"], ["portal.schemes", "public.citizens"])
    dbs = roles.dbs
    published = scalar(
        dbs.src,
        "SELECT array_agg(schemaname || '.' || tablename) FROM pg_publication_tables"
        " WHERE pubname = %s",
        [f"replicator_{dbs.pipeline}"],
    )
    assert sorted(published) == ["public.citizens", "wh.schemes"]
    assert scalar(dbs.src, "SELECT pubviaroot FROM pg_publication") is True
    attrs = scalar(
        dbs.src,
        "SELECT ARRAY[rolcanlogin, rolreplication, rolsuper, rolcreatedb, rolcreaterole]"
        " FROM pg_roles WHERE rolname = %s",
        [roles.source],
    )
    assert attrs == [True, True, False, False, False]
    assert (
        scalar(dbs.dst, "SELECT rolreplication FROM pg_roles WHERE rolname = %s", [roles.apply])
        is False
    )
    assert (
        scalar(
            dbs.dst,
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'replicator'",
        )
        == roles.apply
    )
    # the daemon's control DDL (same file as sql/target/control.sql), twice more
    for _ in range(2):
        run_ok(dbs.pair.dst, dbs.name, "target/control.sql")


def test_scripts_without_their_variables_fail_with_usage(roles: Roles):
    dbs = roles.dbs
    for cluster, script in (
        (dbs.pair.src, "source/roles.sql"),
        (dbs.pair.src, "source/publication.sql"),
        (dbs.pair.dst, "target/roles.sql"),
    ):
        res = psql(cluster, dbs.name, script)
        assert res.returncode != 0, script
        assert "usage: psql" in res.stdout + res.stderr


def test_publication_script_refuses_a_table_without_replica_identity(roles: Roles):
    dbs = roles.dbs
    execute(dbs.src, "CREATE TABLE public.nokey (a int, b text)")
    res = psql(dbs.pair.src, dbs.name, "source/publication.sql", pipeline="x", tables="nokey")
    assert res.returncode != 0
    assert "has no replica identity" in res.stderr
    assert (
        scalar(dbs.src, "SELECT count(*) FROM pg_publication WHERE pubname = 'replicator_x'") == 0
    )


def test_shorter_table_list_takes_select_away(roles: Roles):
    dbs = roles.dbs
    run_ok(dbs.pair.src, dbs.name, "source/roles.sql", role=roles.source,
           tables="wh.schemes, public.unpublished")  # fmt: skip
    run_ok(dbs.pair.src, dbs.name, "source/roles.sql", role=roles.source, tables="wh.schemes")
    with psycopg.connect(roles.src_dsn) as conn:
        conn.execute("SELECT count(*) FROM wh.schemes")
    with (
        psycopg.connect(roles.src_dsn) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT count(*) FROM public.unpublished")


def test_daemon_replicates_under_the_least_privilege_roles(roles: Roles, daemon):
    dbs = roles.dbs
    roles.install(["wh.schemes", "public.citizens"], ["portal.schemes", "public.citizens"])
    execute(
        dbs.src,
        "INSERT INTO wh.schemes VALUES ('S1', 'old age', 100), ('S2', 'widow', 200)",
        "INSERT INTO citizens (name, email) SELECT 'c' || g, 'c' || g || '@example.com'"
        " FROM generate_series(1, 50) g",
    )
    config = roles.config(TABLES)
    d = daemon(config)  # setup, then run: both as the least-privilege roles
    wait_for_equal(dbs.src, dbs.dst, ["wh.schemes"], target_tables=["portal.schemes"])
    execute(
        dbs.src,
        "INSERT INTO citizens (name, email) VALUES ('late', 'late@example.com')",
        "UPDATE wh.schemes SET budget = budget * 2 WHERE code = 'S1'",
        "DELETE FROM wh.schemes WHERE code = 'S2'",
        "DELETE FROM citizens WHERE id <= 10",
    )
    wait_for_equal(dbs.src, dbs.dst, ["wh.schemes"], target_tables=["portal.schemes"])
    wait_until(
        lambda: scalar(dbs.dst, "SELECT count(*) FROM citizens") == 41,
        timeout=60,
        reason="citizens replicated",
    )
    assert scalar(dbs.dst, "SELECT email FROM citizens WHERE name = 'late'") == "l***@example.com"
    execute(dbs.src, "TRUNCATE wh.schemes")
    wait_until(
        lambda: scalar(dbs.dst, "SELECT count(*) FROM portal.schemes") == 0,
        timeout=60,
        reason="truncate replicated",
    )
    # the streaming slot is not "abandoned": the DBA function refuses to drop it
    with psycopg.connect(dbs.src, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ObjectInUse, match="is active"):
            conn.execute(
                "SELECT replicator.drop_abandoned_slot(%s)", [f"replicator_{dbs.pipeline}"]
            )
        row = conn.execute(
            "SELECT active, retained_wal_bytes >= 0, wal_status FROM replicator.slot_health"
            " WHERE slot = %s",
            [f"replicator_{dbs.pipeline}"],
        ).fetchone()
    assert row == (True, True, "reserved")
    # and the preflight agrees the roles are enough
    check = run_cli("check", "-c", str(d.config_path))
    assert check.returncode == 0, check.stdout + check.stderr
    assert d.stop() == 0
    assert "permission denied" not in d.log_text()


def test_apply_role_cannot_read_unmapped_tables_nor_create_objects(roles: Roles):
    dbs = roles.dbs
    roles.install(["wh.schemes", "public.citizens"], ["portal.schemes", "public.citizens"])
    with psycopg.connect(roles.dst_dsn, autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM portal.schemes")
        for statement in (
            "SELECT * FROM public.unmapped",
            "CREATE TABLE public.intruder (a int)",
            "CREATE TABLE portal.intruder (a int)",
            "CREATE SCHEMA intruder",
            "CREATE ROLE intruder",
            "SET session_authorization = postgres",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)  # type: ignore[arg-type]
        # what it needs: staging tables, the replica role, origins
        conn.execute("CREATE TEMP TABLE stage (a int)")
        conn.execute("SET session_replication_role = replica")
        conn.execute("SELECT pg_replication_origin_create(%s)", [f"replicator_probe_{dbs.name}"])
    with psycopg.connect(roles.src_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM public.unpublished")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.intruder (a int)")


def test_drop_abandoned_slot_drops_only_idle_replicator_slots(roles: Roles):
    dbs = roles.dbs
    run_ok(dbs.pair.src, dbs.name, "source/slot_health.sql")
    with psycopg.connect(dbs.src, autocommit=True) as conn:
        for slot in (f"replicator_gone_{dbs.name}", f"other_{dbs.name}"):
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="not a replicator"):
            conn.execute("SELECT replicator.drop_abandoned_slot(%s)", [f"other_{dbs.name}"])
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("SELECT replicator.drop_abandoned_slot('replicator_nothing_here')")
        msg = conn.execute(
            "SELECT replicator.drop_abandoned_slot(%s)", [f"replicator_gone_{dbs.name}"]
        ).fetchone()
        assert msg is not None
        assert msg[0].startswith(f"dropped slot replicator_gone_{dbs.name}")
        left = conn.execute(
            "SELECT array_agg(slot ORDER BY slot) FROM replicator.slot_health WHERE database = %s",
            [dbs.name],
        ).fetchone()
    assert left == ([f"other_{dbs.name}"],)


def test_pause_and_resume_set_the_flag_and_notify(roles: Roles):
    dbs = roles.dbs
    roles.install(["wh.schemes", "public.citizens"], ["portal.schemes", "public.citizens"])
    execute(
        dbs.dst,
        "INSERT INTO replicator.pipelines (pipeline, slot, state)"
        f" VALUES ('{dbs.pipeline}', 'replicator_{dbs.pipeline}', 'streaming')",
    )
    with psycopg.connect(roles.dst_dsn, autocommit=True) as listener:
        listener.execute("LISTEN replicator_control")
        with psycopg.connect(dbs.dst, autocommit=True) as dba:
            said = dba.execute("SELECT replicator.pause_pipeline(%s)", [dbs.pipeline]).fetchone()
            assert said == (f"{dbs.pipeline}: paused",)
            got = list(listener.notifies(timeout=10, stop_after=1))
            assert [(n.channel, n.payload) for n in got] == [("replicator_control", dbs.pipeline)]
            row = dba.execute(
                "SELECT paused, paused_at IS NOT NULL FROM replicator.pipelines"
                " WHERE pipeline = %s",
                [dbs.pipeline],
            ).fetchone()
            assert row == (True, True)
            said = dba.execute("SELECT replicator.pause_pipeline(%s)", [dbs.pipeline]).fetchone()
            assert said is not None
            assert "already paused" in said[0]
            said = dba.execute("SELECT replicator.resume_pipeline(%s)", [dbs.pipeline]).fetchone()
            assert said == (f"{dbs.pipeline}: resumed",)
            got = list(listener.notifies(timeout=10, stop_after=2))
            assert [n.payload for n in got] == [dbs.pipeline, dbs.pipeline]
            assert dba.execute(
                "SELECT paused, paused_at FROM replicator.pipelines WHERE pipeline = %s",
                [dbs.pipeline],
            ).fetchone() == (False, None)
            with pytest.raises(psycopg.errors.UndefinedObject):
                dba.execute("SELECT replicator.pause_pipeline('no_such_pipeline')")
