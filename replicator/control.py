"""Control state kept in the target database, schema ``replicator``.

What a pipeline must remember across crashes and that must commit with the data
it describes: whether the initial copy is done, which ranges of which tables are
copied, from which source position a table's changes apply (``skip_until``), and
requests from operators (resync a table). Dead letters and conflicts live here too.

I/O. The DDL is idempotent; ``sql/target/control.sql`` is the same text for DBAs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from psycopg import AsyncConnection, sql

from replicator.config import QualifiedName
from replicator.lsn import Lsn


def control_ddl() -> str:
    return resources.files("replicator").joinpath("sql/control.sql").read_text()


async def ensure_schema(conn: AsyncConnection) -> None:
    await conn.execute(control_ddl())


# --- pipeline -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PipelineState:
    pipeline: str
    slot: str
    state: str  # "copying" | "streaming"
    consistent_lsn: Lsn | None


async def read_pipeline(conn: AsyncConnection, pipeline: str) -> PipelineState | None:
    cur = await conn.execute(
        "SELECT pipeline, slot, state, consistent_lsn::text FROM replicator.pipelines"
        " WHERE pipeline = %s",
        [pipeline],
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return PipelineState(row[0], row[1], row[2], Lsn(row[3]) if row[3] else None)


async def write_pipeline(
    conn: AsyncConnection, pipeline: str, slot: str, state: str, consistent_lsn: Lsn | None
) -> None:
    await conn.execute(
        "INSERT INTO replicator.pipelines (pipeline, slot, state, consistent_lsn)"
        " VALUES (%s, %s, %s, %s::pg_lsn)"
        " ON CONFLICT (pipeline) DO UPDATE SET slot = EXCLUDED.slot, state = EXCLUDED.state,"
        " consistent_lsn = EXCLUDED.consistent_lsn, updated_at = now()",
        [pipeline, slot, state, str(consistent_lsn) if consistent_lsn else None],
    )


async def read_key_id(conn: AsyncConnection, pipeline: str) -> str | None:
    cur = await conn.execute(
        "SELECT key_id FROM replicator.pipelines WHERE pipeline = %s", [pipeline]
    )
    row = await cur.fetchone()
    return row[0] if row else None


async def write_key_id(conn: AsyncConnection, pipeline: str, key_id: str | None) -> None:
    await conn.execute(
        "UPDATE replicator.pipelines SET key_id = %s, updated_at = now() WHERE pipeline = %s",
        [key_id, pipeline],
    )


async def forget_pipeline(conn: AsyncConnection, pipeline: str, origin: str) -> None:
    """For a full resync: the next run starts like the first one, origin progress too."""
    await conn.execute("DELETE FROM replicator.copy_ranges WHERE pipeline = %s", [pipeline])
    await conn.execute("DELETE FROM replicator.tables WHERE pipeline = %s", [pipeline])
    await conn.execute("DELETE FROM replicator.pipelines WHERE pipeline = %s", [pipeline])
    await reset_origin(conn, origin)


async def reset_origin(conn: AsyncConnection, origin: str) -> None:
    """Origin progress back to nothing, for a pipeline whose state starts afresh.

    Committing a transaction under an origin only ever moves its progress forward, so
    after the source's position went backward (a restore, a rebuilt server) the old,
    higher position would stay and every later start would resume past the new slot's
    changes. ``conn`` must not hold the origin in its session (nobody may)."""
    await conn.execute(
        "SELECT pg_catalog.pg_replication_origin_advance(%s, '0/0')"
        " WHERE CASE WHEN pg_catalog.pg_replication_origin_oid(%s) IS NULL THEN false"
        " ELSE coalesce(pg_catalog.pg_replication_origin_progress(%s, false) <> '0/0', false)"
        " END",
        [origin, origin, origin],
    )


async def read_progress(conn: AsyncConnection, pipeline: str, origin: str) -> Lsn | None:
    """Where a pipeline's committed progress stands: None if it never applied.

    The truth is ``replicator.pipelines.applied_lsn``, written in the same transaction as
    the data. Origin progress cannot be trusted for this: from PostgreSQL 16 an *abort*
    record carries the LSN that ``pg_replication_origin_xact_setup`` set, so a transaction
    that fails between it and its commit record (a backend terminated by a fast shutdown,
    a cancel, a deferred constraint) moves the origin past data it never stored. Origin
    progress serves only a pipeline that has not committed since the column was added."""
    cur = await conn.execute(
        "SELECT coalesce("
        " (SELECT applied_lsn FROM replicator.pipelines WHERE pipeline = %s),"
        " CASE WHEN pg_catalog.pg_replication_origin_oid(%s) IS NOT NULL"
        " THEN pg_catalog.pg_replication_origin_progress(%s, true) END)::text",
        [pipeline, origin, origin],
    )
    row = await cur.fetchone()
    return Lsn(row[0]) if row and row[0] is not None else None


async def source_position(conn: AsyncConnection) -> Lsn:
    """The source's current WAL position (a standby's: what it has replayed)."""
    cur = await conn.execute(
        "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery()"
        " THEN pg_catalog.pg_last_wal_replay_lsn()"
        " ELSE pg_catalog.pg_current_wal_lsn() END)::text"
    )
    row = await cur.fetchone()
    return Lsn(row[0]) if row and row[0] else Lsn(0)


# --- tables ---------------------------------------------------------------------------

# table states: "copying" (initial copy under way), "resync" (an operator asked for a
# fresh copy), "ready" (changes apply from skip_until on)


@dataclass(frozen=True, slots=True)
class TableState:
    source: QualifiedName
    state: str
    skip_until: Lsn | None
    rows: int
    bytes: int
    relation_id: int | None = None  # the source table's OID when last seen


async def read_tables(conn: AsyncConnection, pipeline: str) -> dict[QualifiedName, TableState]:
    cur = await conn.execute(
        "SELECT source_schema, source_table, state, skip_until::text, rows_copied, bytes_copied,"
        " relation_id FROM replicator.tables WHERE pipeline = %s",
        [pipeline],
    )
    out = {}
    for schema, name, state, skip, rows, nbytes, oid in await cur.fetchall():
        q = QualifiedName(schema, name)
        out[q] = TableState(
            q, state, Lsn(skip) if skip else None, rows or 0, nbytes or 0, oid and int(oid)
        )
    return out


async def read_relation_ids(conn: AsyncConnection, pipeline: str) -> dict[QualifiedName, int]:
    """The source OIDs recorded for a pipeline's tables (none before its first run)."""
    cur = await conn.execute(
        "SELECT source_schema, source_table, relation_id FROM replicator.tables"
        " WHERE pipeline = %s AND relation_id IS NOT NULL",
        [pipeline],
    )
    return {QualifiedName(s, t): int(oid) for s, t, oid in await cur.fetchall()}


async def record_relation_ids(
    conn: AsyncConnection, pipeline: str, ids: dict[QualifiedName, int]
) -> None:
    """Remember each configured table's source OID, so a rename is followed after a
    restart too."""
    for name, oid in ids.items():
        await conn.execute(
            "UPDATE replicator.tables SET relation_id = %s"
            " WHERE pipeline = %s AND source_schema = %s AND source_table = %s"
            " AND relation_id IS DISTINCT FROM %s",
            [oid, pipeline, name.schema, name.name, oid],
        )


async def adopt_renamed(
    conn: AsyncConnection, pipeline: str, ids: dict[QualifiedName, int]
) -> None:
    """The config now names a renamed table by its new name: the row recorded under the
    old name (same OID) carries over, copy state and skip position with it."""
    for name, oid in ids.items():
        cur = await conn.execute(
            "SELECT source_schema, source_table FROM replicator.tables"
            " WHERE pipeline = %s AND relation_id = %s"
            " AND (source_schema, source_table) <> (%s, %s)"
            " AND NOT EXISTS (SELECT 1 FROM replicator.tables"
            "  WHERE pipeline = %s AND source_schema = %s AND source_table = %s)",
            [pipeline, oid, name.schema, name.name, pipeline, name.schema, name.name],
        )
        row = await cur.fetchone()
        if row is None:
            continue
        for table in ("copy_ranges", "tables"):
            await conn.execute(
                sql.SQL(
                    "UPDATE replicator.{} SET source_schema = %s, source_table = %s"
                    " WHERE pipeline = %s AND source_schema = %s AND source_table = %s"
                ).format(sql.Identifier(table)),
                [name.schema, name.name, pipeline, row[0], row[1]],
            )


async def forget_tables(
    conn: AsyncConnection, pipeline: str, configured: Iterable[QualifiedName]
) -> list[QualifiedName]:
    """Drop the rows of tables no longer in the config: their changes are not applied
    while they are out, so one added back later must be copied again, as a new one is."""
    keep = {(q.schema, q.name) for q in configured}
    gone = [q for q in await read_tables(conn, pipeline) if (q.schema, q.name) not in keep]
    for q in gone:
        for table in ("copy_ranges", "tables"):
            await conn.execute(
                sql.SQL(
                    "DELETE FROM replicator.{} WHERE pipeline = %s"
                    " AND source_schema = %s AND source_table = %s"
                ).format(sql.Identifier(table)),
                [pipeline, q.schema, q.name],
            )
    return gone


async def write_table(
    conn: AsyncConnection,
    pipeline: str,
    table: QualifiedName,
    state: str,
    *,
    skip_until: Lsn | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO replicator.tables (pipeline, source_schema, source_table, state, skip_until)"
        " VALUES (%s, %s, %s, %s, %s::pg_lsn)"
        " ON CONFLICT (pipeline, source_schema, source_table) DO UPDATE SET"
        " state = EXCLUDED.state, skip_until = EXCLUDED.skip_until, updated_at = now()",
        [pipeline, table.schema, table.name, state, str(skip_until) if skip_until else None],
    )


async def add_copied(
    conn: AsyncConnection, pipeline: str, table: QualifiedName, rows: int, nbytes: int
) -> None:
    await conn.execute(
        "UPDATE replicator.tables SET rows_copied = coalesce(rows_copied, 0) + %s,"
        " bytes_copied = coalesce(bytes_copied, 0) + %s, updated_at = now()"
        " WHERE pipeline = %s AND source_schema = %s AND source_table = %s",
        [rows, nbytes, pipeline, table.schema, table.name],
    )


# --- copy ranges ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CopyRange:
    """A part of a table's initial copy.

    Ranges are block ranges (``lower_block`` inclusive, ``upper_block`` exclusive, None
    for the table's start or end): bounds that carry no value of the table, so the
    control schema stores nothing a mask would have hidden. ``lower_key``/``upper_key``
    are key bounds that earlier versions stored: a copy they planned resumes with them
    (nothing plans new ones)."""

    table: QualifiedName
    range_no: int
    lower_key: str | None  # legacy: inclusive bound on the first key column
    upper_key: str | None  # legacy: exclusive bound
    done: bool = False
    lower_block: int | None = None
    upper_block: int | None = None
    # xmin (xid8) of the snapshot the range's rows were copied under (done ranges)
    snapshot_xmin: int | None = None
    # a catch-up pass over a done range: only the row versions a snapshot whose xmin is
    # this one may not have seen (see replicator.sync, resuming a copy)
    newer_than: int | None = None


async def read_ranges(conn: AsyncConnection, pipeline: str) -> list[CopyRange]:
    cur = await conn.execute(
        "SELECT source_schema, source_table, range_no, lower_key, upper_key, done,"
        " lower_block, upper_block, snapshot_xmin::text::bigint"
        " FROM replicator.copy_ranges WHERE pipeline = %s"
        " ORDER BY source_schema, source_table, range_no",
        [pipeline],
    )
    return [
        CopyRange(QualifiedName(s, t), n, lo, hi, done, lb, ub, xmin)
        for s, t, n, lo, hi, done, lb, ub, xmin in await cur.fetchall()
    ]


async def plan_ranges(conn: AsyncConnection, pipeline: str, ranges: list[CopyRange]) -> None:
    for r in ranges:
        await conn.execute(
            "INSERT INTO replicator.copy_ranges (pipeline, source_schema, source_table,"
            " range_no, lower_key, upper_key, lower_block, upper_block)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                pipeline,
                r.table.schema,
                r.table.name,
                r.range_no,
                r.lower_key,
                r.upper_key,
                r.lower_block,
                r.upper_block,
            ],
        )


async def mark_range_done(
    conn: AsyncConnection,
    pipeline: str,
    r: CopyRange,
    *,
    rows: int,
    nbytes: int,
    lsn: Lsn,
    xmin: int | None,
) -> None:
    """Called inside the transaction that filled the range: done commits with the rows.
    A catch-up pass (``r.newer_than``) moves only the range's snapshot forward."""
    where = [pipeline, r.table.schema, r.table.name, r.range_no]
    if r.newer_than is not None:
        await conn.execute(
            "UPDATE replicator.copy_ranges SET snapshot_xmin = %s::text::xid8"
            " WHERE pipeline = %s AND source_schema = %s AND source_table = %s AND range_no = %s",
            [xmin, *where],
        )
        return
    await conn.execute(
        "UPDATE replicator.copy_ranges SET done = true, rows_copied = %s, bytes_copied = %s,"
        " snapshot_lsn = %s::pg_lsn, snapshot_xmin = %s::text::xid8, finished_at = now()"
        " WHERE pipeline = %s AND source_schema = %s AND source_table = %s AND range_no = %s",
        [rows, nbytes, str(lsn), xmin, *where],
    )
    await add_copied(conn, pipeline, r.table, rows, nbytes)
