"""Control state kept in the target database, schema ``replicator``.

What a pipeline must remember across crashes and that must commit with the data
it describes: whether the initial copy is done, which ranges of which tables are
copied, from which source position a table's changes apply (``skip_until``), and
requests from operators (resync a table). Dead letters and conflicts live here too.

I/O. The DDL is idempotent; ``sql/target/control.sql`` is the same text for DBAs.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from psycopg import AsyncConnection

from replicator.config import QualifiedName
from replicator.lsn import Lsn


def control_ddl() -> str:
    return resources.files("replicator").joinpath("sql/control.sql").read_text()


async def ensure_schema(conn: AsyncConnection) -> None:
    await conn.execute(control_ddl())  # type: ignore[arg-type]


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


async def forget_pipeline(conn: AsyncConnection, pipeline: str) -> None:
    """For a full resync: the next run starts like the first one."""
    await conn.execute("DELETE FROM replicator.copy_ranges WHERE pipeline = %s", [pipeline])
    await conn.execute("DELETE FROM replicator.tables WHERE pipeline = %s", [pipeline])
    await conn.execute("DELETE FROM replicator.pipelines WHERE pipeline = %s", [pipeline])


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


async def read_tables(conn: AsyncConnection, pipeline: str) -> dict[QualifiedName, TableState]:
    cur = await conn.execute(
        "SELECT source_schema, source_table, state, skip_until::text, rows_copied, bytes_copied"
        " FROM replicator.tables WHERE pipeline = %s",
        [pipeline],
    )
    out = {}
    for schema, name, state, skip, rows, nbytes in await cur.fetchall():
        q = QualifiedName(schema, name)
        out[q] = TableState(q, state, Lsn(skip) if skip else None, rows or 0, nbytes or 0)
    return out


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
    table: QualifiedName
    range_no: int
    lower_key: str | None  # inclusive bound on the first key column; None: from the start
    upper_key: str | None  # exclusive bound; None: to the end
    done: bool = False


async def read_ranges(conn: AsyncConnection, pipeline: str) -> list[CopyRange]:
    cur = await conn.execute(
        "SELECT source_schema, source_table, range_no, lower_key, upper_key, done"
        " FROM replicator.copy_ranges WHERE pipeline = %s"
        " ORDER BY source_schema, source_table, range_no",
        [pipeline],
    )
    return [
        CopyRange(QualifiedName(s, t), n, lo, hi, done)
        for s, t, n, lo, hi, done in await cur.fetchall()
    ]


async def plan_ranges(conn: AsyncConnection, pipeline: str, ranges: list[CopyRange]) -> None:
    for r in ranges:
        await conn.execute(
            "INSERT INTO replicator.copy_ranges"
            " (pipeline, source_schema, source_table, range_no, lower_key, upper_key)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [pipeline, r.table.schema, r.table.name, r.range_no, r.lower_key, r.upper_key],
        )


async def mark_range_done(
    conn: AsyncConnection, pipeline: str, r: CopyRange, *, rows: int, nbytes: int, lsn: Lsn
) -> None:
    """Called inside the transaction that filled the range: done commits with the rows."""
    await conn.execute(
        "UPDATE replicator.copy_ranges SET done = true, rows_copied = %s, bytes_copied = %s,"
        " snapshot_lsn = %s::pg_lsn, finished_at = now()"
        " WHERE pipeline = %s AND source_schema = %s AND source_table = %s AND range_no = %s",
        [rows, nbytes, str(lsn), pipeline, r.table.schema, r.table.name, r.range_no],
    )
    await add_copied(conn, pipeline, r.table, rows, nbytes)
