"""Replication objects: publications and slots on sources, origins on targets.

``setup`` creates what a pipeline needs and reports, per object, whether it was
created or already there; running it twice changes nothing. A slot is never
dropped or recreated here: a lost slot needs the explicit full resync.

I/O. Names go through :mod:`psycopg.sql`.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import AsyncConnection, sql

from replicator import control
from replicator.config import Config, PipelineConfig, QualifiedName
from replicator.errors import SchemaError
from replicator.lsn import Lsn
from replicator.query import fetch_one
from replicator.sqlgen import table_ident


@dataclass(frozen=True, slots=True)
class SetupAction:
    database: str
    kind: str  # "publication", "slot", "origin"
    name: str
    outcome: str  # "created", "exists", "updated"
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.database}: {self.kind} {self.name} {self.outcome}{extra}"


async def ensure_publication(conn: AsyncConnection, db: str, pipe: PipelineConfig) -> SetupAction:
    name = pipe.publication_name
    wanted = {t.source for t in pipe.tables}
    for t in sorted(wanted):
        cur = await conn.execute(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s",
            (t.schema, t.name),
        )
        if await cur.fetchone() is None:
            raise SchemaError(f"{db}: source table {t} does not exist")
    cur = await conn.execute("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s", [name])
    tables = sql.SQL(", ").join(table_ident(t) for t in sorted(wanted))
    if await cur.fetchone() is None:
        await conn.execute(
            sql.SQL(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)"
            ).format(sql.Identifier(name), tables)
        )
        return SetupAction(db, "publication", name, "created", f"{len(wanted)} table(s)")
    cur = await conn.execute(
        "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = %s",
        [name],
    )
    have = {QualifiedName(s, t) for s, t in await cur.fetchall()}
    if have == wanted:
        return SetupAction(db, "publication", name, "exists")
    if pipe.publication is not None:
        missing = ", ".join(str(t) for t in sorted(wanted - have)) or "none"
        return SetupAction(
            db,
            "publication",
            name,
            "exists",
            f"managed by a DBA; not changed; tables missing from it: {missing}",
        )
    await conn.execute(
        sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(name), tables)
    )
    return SetupAction(db, "publication", name, "updated", "table list now matches the config")


async def ensure_slot(conn: AsyncConnection, db: str, pipe: PipelineConfig) -> SetupAction:
    name = pipe.slot_name
    cur = await conn.execute(
        "SELECT plugin, database, confirmed_flush_lsn FROM pg_catalog.pg_replication_slots"
        " WHERE slot_name = %s",
        [name],
    )
    row = await cur.fetchone()
    if row is not None:
        plugin, slot_db, _ = row
        if plugin != "pgoutput" or slot_db != conn.info.dbname:
            raise SchemaError(
                f"{db}: slot {name} exists but belongs to plugin {plugin!r} in database "
                f"{slot_db!r}; pick another slot name"
            )
        return SetupAction(db, "slot", name, "exists")
    cur = await conn.execute(
        "SELECT lsn FROM pg_catalog.pg_create_logical_replication_slot(%s, 'pgoutput')", [name]
    )
    (lsn,) = await fetch_one(cur)
    return SetupAction(db, "slot", name, "created", f"consistent at {Lsn(str(lsn))}")


async def ensure_origin(conn: AsyncConnection, db: str, pipe: PipelineConfig) -> SetupAction:
    name = pipe.origin_name
    cur = await conn.execute("SELECT pg_catalog.pg_replication_origin_oid(%s)", [name])
    (oid,) = await fetch_one(cur)
    if oid is not None:
        return SetupAction(db, "origin", name, "exists")
    await conn.execute("SELECT pg_catalog.pg_replication_origin_create(%s)", [name])
    return SetupAction(db, "origin", name, "created")


async def setup(config: Config) -> list[SetupAction]:
    """Create publications, origins and control tables for every pipeline, idempotently.

    The slot is created by the first ``run``, with an exported snapshot its initial
    copy reads (``snapshot = "skip"`` pipelines too, for one code path)."""
    actions: list[SetupAction] = []
    for pipe in config.pipelines:
        src = config.databases[pipe.from_].dsn.secret_value
        dst = config.databases[pipe.to].dsn.secret_value
        async with await AsyncConnection.connect(src, autocommit=True) as conn:
            actions.append(await ensure_publication(conn, pipe.from_, pipe))
            cur = await conn.execute(
                "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                [pipe.slot_name],
            )
            exists = await cur.fetchone() is not None
            actions.append(
                SetupAction(
                    pipe.from_,
                    "slot",
                    pipe.slot_name,
                    "exists" if exists else "deferred",
                    "" if exists else "created by the first `run`, with the initial copy",
                )
            )
        async with await AsyncConnection.connect(dst, autocommit=True) as conn:
            actions.append(await ensure_origin(conn, pipe.to, pipe))
            await control.ensure_schema(conn)
            actions.append(SetupAction(pipe.to, "schema", "replicator", "ensured"))
    return actions
